"""The dashboard's HTML, rendered on the server from the reports' records (no templates, no CDN).

Every function returns a whole page or a fragment as a string; every value from a run is
escaped here, so a step name or log line can never become markup. The pages work without
JavaScript; ``/static/dashboard.js`` only adds the live log (SSE) and live step states.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from markdown_it import MarkdownIt

from vmrunner.reports.insights import Insights
from vmrunner.reports.results import JobResult, RunResult, StepResult, human_duration
from vmrunner.reports.svg import render_svg

#: The run list's filters, in the order of its form.
FILTERS = ("repository", "workflow", "event", "result")
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


@dataclass(frozen=True, slots=True)
class RunLine:
    """One line of the runs list, from the server's queue or the local store."""

    run_id: str
    repository: str
    workflow: str
    event: str
    ref: str
    sha: str
    #: queued, running/in_progress, completed, interrupted
    state: str
    conclusion: str | None
    started_at: float | None
    duration: float | None

    @property
    def result(self) -> str:
        return self.conclusion or self.state

    def matches(self, filters: Mapping[str, str]) -> bool:
        fields = {"repository": self.repository, "workflow": self.workflow,
                  "event": self.event, "result": self.result}
        return all(
            not wanted or wanted.lower() in fields[key].lower()
            for key, wanted in filters.items() if key in fields
        )


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who looks: whether they may cancel and re-run, and the form token of their session."""

    operate: bool
    csrf: str


def page(title: str, body: str, *, nav: bool = True) -> str:
    links = (
        '<nav><a href="/">Runs</a> <a href="/sessions">Sessions</a> '
        '<a href="/pool">Warm pool</a> <a href="/logout">Log out</a></nav>'
        if nav else ""
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · vmrunner</title>"
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head>'
        f'<body><header><a class="brand" href="/">vmrunner</a>{links}</header>'
        f"<main>{body}</main></body></html>"
    )


def login_page(next_path: str, error: str = "") -> str:
    problem = f'<p class="error">{escape(error)}</p>' if error else ""
    return page(
        "Log in",
        "<h1>Log in</h1>" + problem
        + '<form method="get" action="/login" class="login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label>API token <input type="password" name="token" autocomplete="off" '
        'required></label> <button>Log in</button></form>'
        "<p>A token of scope <code>read</code> or more: "
        "<code>vmrunner tokens create NAME --scope read</code>.</p>",
        nav=False,
    )


def badge(result: str | None) -> str:
    word = result or "queued"
    return f'<span class="badge {escape(word)}">{escape(word.replace("_", " "))}</span>'


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, UTC)
    return f'<time datetime="{moment.isoformat()}">{moment:%Y-%m-%d %H:%M:%S}Z</time>'


def runs_page(lines: Sequence[RunLine], filters: Mapping[str, str]) -> str:
    inputs = "".join(
        f'<label>{key} <input name="{key}" value="{escape(filters.get(key, ""))}"></label> '
        for key in FILTERS
    )
    rows = "".join(
        f'<tr><td><a href="/runs/{escape(line.run_id)}">{escape(line.run_id)}</a></td>'
        f"<td>{escape(line.repository)}</td><td>{escape(line.workflow)}</td>"
        f"<td>{escape(line.event)}</td><td>{escape(line.ref)}</td>"
        f"<td>{badge(line.result)}</td><td>{human_duration(line.duration)}</td>"
        f"<td>{when(line.started_at)}</td></tr>"
        for line in lines
    )
    table = (
        '<div class="scroll"><table class="runs"><thead><tr><th>Run</th><th>Repository</th>'
        "<th>Workflow</th><th>Event</th><th>Ref</th><th>Result</th><th>Duration</th>"
        f"<th>Started</th></tr></thead><tbody>{rows}</tbody></table></div>"
        if lines else "<p>No runs match.</p>"
    )
    return page(
        "Runs",
        f'<h1>Runs</h1><form class="filters" method="get" action="/">{inputs}'
        f"<button>Filter</button></form>{table}",
    )


def run_page(
    result: RunResult, line: RunLine | None, viewer: Viewer, *, host: str | None = None
) -> str:
    """A run: actions, its job graph, each job with machine, host, steps and logs, annotations,
    the timeline and insights. ``host``: where its jobs ran (default: this host)."""
    where = host or socket.gethostname()
    repository = line.repository if line else ""
    facts = (
        f"<dl class=\"facts\"><dt>Repository</dt><dd>{escape(repository or '-')}</dd>"
        f"<dt>Workflow</dt><dd>{escape(result.workflow_name or result.workflow_file)}</dd>"
        f"<dt>Event</dt><dd>{escape(result.event_name)}</dd>"
        f"<dt>Ref</dt><dd>{escape(result.ref or '-')} {escape(result.sha[:12])}</dd>"
        f"<dt>Started</dt><dd>{when(result.started_at)}</dd>"
        f"<dt>Duration</dt><dd>{human_duration(result.duration)}</dd></dl>"
    )
    parts = [
        f'<h1>Run {escape(result.run_id)} <span id="run-status">'
        f"{badge(result.conclusion or result.status)}</span></h1>",
        _actions(result, line, viewer),
        facts,
        _graph(result.jobs),
        _annotations(result),
        *(_job(job, where) for job in result.jobs),
        _timeline(result),
        _insights(result.insights),
    ]
    return page(f"Run {result.run_id}", "".join(parts)).replace(
        "<main>",
        f'<main id="run" data-run="{escape(result.run_id)}" '
        f'data-status="{escape(result.status)}">',
        1,
    )


def _actions(result: RunResult, line: RunLine | None, viewer: Viewer) -> str:
    if not viewer.operate or line is None:
        return ""
    csrf = f'<input type="hidden" name="csrf" value="{escape(viewer.csrf)}">'
    run = escape(result.run_id)
    if line.state in ("queued", "running"):
        button = f'<form method="post" action="/runs/{run}/cancel">{csrf}<button>Cancel</button>'
    else:
        button = f'<form method="post" action="/runs/{run}/rerun">{csrf}<button>Re-run</button>'
    return f'<div class="actions">{button}</form></div>'


def job_levels(jobs: Sequence[JobResult]) -> list[list[JobResult]]:
    """Jobs in columns: a job sits one column right of the last job it needs."""
    by_id: dict[str, list[JobResult]] = {}
    for job in jobs:
        by_id.setdefault(job.job_id, []).append(job)
    level: dict[str, int] = {}

    def depth(job_id: str, seen: frozenset[str]) -> int:
        if job_id in level:
            return level[job_id]
        needs = {n for job in by_id.get(job_id, ()) for n in job.needs if n in by_id}
        found = 1 + max((depth(n, seen | {job_id}) for n in needs - seen), default=-1)
        level[job_id] = found
        return found

    columns: list[list[JobResult]] = []
    for job in jobs:
        index = depth(job.job_id, frozenset())
        while len(columns) <= index:
            columns.append([])
        columns[index].append(job)
    return columns


def _graph(jobs: Sequence[JobResult]) -> str:
    columns = "".join(
        '<div class="level">' + "".join(
            f'<a class="node" href="#job-{escape(job.job_key)}">'
            f"{badge(job.conclusion or job.status)} {escape(job.name or job.job_key)}"
            + (f'<small>needs {escape(", ".join(job.needs))}</small>' if job.needs else "")
            + "</a>"
            for job in column
        ) + "</div>"
        for column in job_levels(jobs)
    )
    return f'<section><h2>Jobs</h2><div class="graph">{columns}</div></section>'


def _job(job: JobResult, host: str) -> str:
    machine = (
        f"<dl class=\"facts\"><dt>Machine</dt><dd>{escape(job.machine_id or '-')}</dd>"
        f"<dt>Provider</dt><dd>{escape(job.provider or '-')} {escape(job.vm_type)}"
        f"{' (warm pool)' if job.from_pool else ''}</dd>"
        f"<dt>Host</dt><dd>{escape(host if job.machine_id else '-')}</dd>"
        f"<dt>Duration</dt><dd>{human_duration(job.duration)}</dd></dl>"
    )
    reason = f'<p class="reason">{escape(job.reason)}</p>' if job.reason else ""
    key = escape(job.job_key)
    steps = "".join(_step(job, step) for step in job.steps)
    summary = (
        f'<details class="summary"><summary>Summary</summary>{_MARKDOWN.render(job.summary)}'
        "</details>" if job.summary else ""
    )
    return (
        f'<section class="job" id="job-{key}"><h2>{badge(job.conclusion or job.status)} '
        f"{escape(job.name or job.job_key)}</h2>{machine}{reason}"
        f'<table class="steps"><thead><tr><th>#</th><th>Step</th><th>Result</th>'
        f"<th>Duration</th></tr></thead><tbody>{steps}</tbody></table>"
        f'<details class="joblog"><summary>Job output</summary>'
        f'<pre class="log" data-job="{key}" data-step="-1"></pre></details>'
        f"{summary}</section>"
    )


def _step(job: JobResult, step: StepResult) -> str:
    key, running = escape(job.job_key), step.status != "completed"
    result = step.conclusion or step.status
    return (
        f'<tr id="step-{key}-{step.index}"><td>{step.index}</td>'
        f'<td><details{" open" if running or result == "failure" else ""}>'
        f"<summary>{escape(step.name)}</summary>"
        f'<pre class="log" data-job="{key}" data-step="{step.index}"></pre></details></td>'
        f'<td class="result">{badge(result)}</td>'
        f'<td class="duration">{human_duration(step.duration)}</td></tr>'
    )


def _annotations(result: RunResult) -> str:
    found = result.annotations
    if not found:
        return ""
    items = "".join(
        f'<li class="{escape(a.level)}"><b>{escape(a.level)}</b> '
        + (f"<code>{escape(a.file)}:{a.line}</code> " if a.file else "")
        + (f"<em>{escape(a.title)}</em> " if a.title else "")
        + f"{escape(a.message)}"
        + (f" <small>({escape(a.job_key)})</small>" if a.job_key else "")
        + "</li>"
        for a in found
    )
    return f'<section><h2>Annotations</h2><ul class="annotations">{items}</ul></section>'


def _timeline(result: RunResult) -> str:
    entries = result.timeline
    if not entries:
        return ""
    svg = render_svg(entries, result.started_at, title=f"Run {result.run_id}")
    svg = svg.split("\n", 1)[1] if svg.startswith("<?xml") else svg
    return (
        '<section><h2>Machine lifecycle</h2><div class="scroll timeline">'
        f"{svg}</div></section>"
    )


def _insights(insights: Insights | None) -> str:
    if not insights:
        return ""
    lessons = "".join(
        f"<li><code>{escape(lesson.command)}</code> failed {lesson.occurrences} times: "
        f"<pre>{escape(lesson.excerpt)}</pre></li>"
        for lesson in insights.lessons
    )
    suggestions = "".join(
        f"<li><b>{escape(s.kind)}</b> {escape(s.message)} <small>{escape(s.evidence)}</small></li>"
        for s in insights.suggestions
    )
    return (
        "<section><h2>Insights</h2>"
        + (f"<h3>Lessons</h3><ul>{lessons}</ul>" if lessons else "")
        + (f"<h3>Suggestions</h3><ul>{suggestions}</ul>" if suggestions else "")
        + "</section>"
    )


def table_page(title: str, intro: str, rows: Iterable[Mapping[str, Any]]) -> str:
    """Sessions and the warm pool: a table of records (every value escaped)."""
    listed = list(rows)
    if not listed:
        return page(title, f"<h1>{escape(title)}</h1><p>{escape(intro)}</p><p>None.</p>")
    keys = list(listed[0])
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_text(row.get(k)))}</td>" for k in keys) + "</tr>"
        for row in listed
    )
    return page(
        title,
        f"<h1>{escape(title)}</h1><p>{escape(intro)}</p><div class=\"scroll\"><table>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>",
    )


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


def filters_query(filters: Mapping[str, str]) -> str:
    return urlencode({k: v for k, v in filters.items() if v})
