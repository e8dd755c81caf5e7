"""A run's Markdown summary, in the spirit of GitHub's run summary page (``vmrunner run --summary
FILE``).

``render_summary(result)`` is a pure function of a ``RunResult``: a header with the workflow
and its conclusion, one table of jobs and their steps with status icons and durations, the
annotations, then each job's own summary (what its steps wrote to ``GITHUB_STEP_SUMMARY``)
as written. Text in events is masked already; what comes from names, messages and reasons is
escaped here so that it can never break the table or inject markup.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from vmrunner.errors import ConfigError
from vmrunner.reports.insights import Insights
from vmrunner.reports.results import (
    AnnotationResult,
    JobResult,
    RunResult,
    StepResult,
    human_duration,
)

ICONS: dict[str, str] = {
    "success": "✅",
    "failure": "❌",
    "skipped": "⏭️",
    "cancelled": "🚫",
    "interrupted": "⚠️",
    "rolled_back": "↩️",
    "continued": "⚠️",
    "in_progress": "⏳",
    "queued": "🕓",
}
ANNOTATION_ICONS: dict[str, str] = {"error": "❌", "warning": "⚠️", "notice": "ℹ️", "debug": "🔍"}

#: Characters with a meaning in inline Markdown (GFM, with GitHub's ``$`` math), escaped with a
#: backslash; ``<`` and ``&`` become entities so that no HTML gets through.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|~$])")
#: Control characters left after line breaks became ``<br>`` (a terminal would act on them).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def inline(text: str) -> str:
    """``text`` as literal inline Markdown: one line, no markup, no HTML, safe in a table cell."""
    text = _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return _CONTROL.sub("\ufffd", "<br>".join(text.splitlines()))


def job_icon(job: JobResult) -> str:
    if job.rolled_back:
        return ICONS["rolled_back"]
    return ICONS[job.conclusion or job.status]


def step_icon(step: StepResult) -> str:
    if step.outcome == "failure" and step.conclusion == "success":
        return ICONS["continued"]
    return ICONS[step.conclusion or step.status]


def render_summary(result: RunResult) -> str:
    """The Markdown summary of ``result`` (ends with a newline)."""
    conclusion = result.conclusion or result.status.replace("_", " ")
    icon = ICONS.get(result.conclusion or result.status, "")
    name = inline(result.workflow_name or result.workflow_file or "workflow")
    lines = [f"# {icon} {name}: {inline(conclusion)}", "", _run_line(result), ""]
    lines += _table(result)
    annotations = result.annotations
    if annotations:
        lines += ["", "## Annotations", ""]
        lines += [_annotation(a) for a in annotations]
    if result.insights:
        lines += ["", "## Learned from earlier runs", ""]
        lines += _insights(result.insights)
    for job in result.jobs:
        if job.summary.strip():
            lines += ["", f"## {inline(job.name or job.job_key)}", "", job.summary.rstrip("\n")]
    return "\n".join(lines) + "\n"


def write_summary(path: str | os.PathLike[str], results: Sequence[RunResult]) -> None:
    """Write the summary of each run to ``path`` (``vmrunner run --summary FILE``), runs apart by a
    rule.

    ``ConfigError`` when the file cannot be written.
    """
    text = "\n---\n\n".join(render_summary(result) for result in results)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the summary to {os.fspath(path)}: {exc.strerror or exc}"
        ) from exc


def _run_line(result: RunResult) -> str:
    parts = [f"Run `{_code(result.run_id)}`"]
    if result.event_name:
        parts.append(f"on {inline(result.event_name)}")
    if result.ref:
        parts.append(f"`{_code(result.ref)}`")
    if result.sha:
        parts.append(f"at `{_code(result.sha[:12])}`")
    if result.workflow_file:
        parts.append(f"from `{_code(result.workflow_file)}`")
    parts.append(f"in {human_duration(result.duration)}")
    return " ".join(parts)


def _table(result: RunResult) -> list[str]:
    if not result.jobs:
        return ["No jobs ran."]
    rows = ["| | Job / step | Result | Duration | Machine |", "|---|---|---|---|---|"]
    for job in result.jobs:
        word = job.conclusion or job.status.replace("_", " ")
        if job.rolled_back:
            word += ", rolled back"
        if job.reason:
            word += f": {job.reason}"
        machine = f"{job.provider} {job.machine_id}{' (pool)' if job.from_pool else ''}".strip()
        rows.append(
            f"| {job_icon(job)} | **{inline(job.name or job.job_key)}** | {inline(word)}"
            f" | {human_duration(job.duration)} | {inline(machine) or '-'} |"
        )
        for step in job.steps:
            word = step.conclusion or step.status.replace("_", " ")
            if step.outcome == "failure" and step.conclusion == "success":
                word = "failure (continue-on-error)"
            if step.exit_code not in (None, 0):
                word += f" (exit {step.exit_code})"
            if step.timed_out:
                word += " (timed out)"
            kind = "" if step.kind == "step" else f" ({step.kind})"
            rows.append(
                f"| {step_icon(step)} | ↳ {inline(step.name)}{kind} | {inline(word)}"
                f" | {human_duration(step.duration)} | |"
            )
    return rows


def _insights(insights: Insights) -> list[str]:
    """Lessons and suggestions, one bullet each, with the confidence and the evidence."""
    lines = [
        f"- 📚 lesson {lesson.id}: "
        f"`{_code(lesson.command.splitlines()[0] if lesson.command.strip() else '')}`"
        f" failed {lesson.occurrences} times the same way"
        + (f": {inline(lesson.excerpt)}" if lesson.excerpt else "")
        for lesson in insights.lessons
    ]
    lines += [
        f"- 💡 {inline(s.kind)} ({s.confidence:.0%}): {inline(s.message)}"
        + (f" (paths: {', '.join(f'`{_code(path)}`' for path in s.paths)})" if s.paths else "")
        + f"<br>_{inline(s.evidence)}_"
        for s in insights.suggestions
    ]
    return lines


def _annotation(annotation: AnnotationResult) -> str:
    where = annotation.file
    if where and annotation.line:
        where += f":{annotation.line}"
        if annotation.column:
            where += f":{annotation.column}"
    title = f"**{inline(annotation.title)}** " if annotation.title else ""
    location = f" ({inline(where)})" if where else ""
    icon = ANNOTATION_ICONS[annotation.level]
    return (
        f"- {icon} {annotation.level} in {inline(annotation.job_key)}{location}: "
        f"{title}{inline(annotation.message)}"
    )


def _code(text: str) -> str:
    """Text for inside single backticks: no backtick, no line break, no control character."""
    return _CONTROL.sub("\ufffd", " ".join(text.replace("`", "'").splitlines()))
