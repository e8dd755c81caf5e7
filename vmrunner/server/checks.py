"""One run's jobs as GitHub check runs: created when a job starts, completed with its conclusion.

``CheckSink`` is an ``EventSink`` like ``reporting.StatusSink``: it turns a run's events into
Checks API requests and sends them in order from one task per run. A job's check run gets its
conclusion, a summary (the step table, then the job's own ``GITHUB_STEP_SUMMARY`` Markdown) and
its annotations. GitHub takes at most 50 annotations per request (each later request appends),
so the completing request carries the first 50 and further updates the rest. An annotation
without a file is put on the workflow file, line 1, as GitHub Actions does.

The check run's ``external_id`` is our run id: a ``check_run.rerequested`` webhook names it, and
the service re-runs that run (``Service._rerequested``). Writing check runs needs a GitHub App
(``checks: write``); a plain token cannot.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vmrunner.reports.events import Event, JobFinished, JobStarted
from vmrunner.reports.results import AnnotationResult, JobResult, ResultCollector, human_duration
from vmrunner.reports.summary import inline, step_icon
from vmrunner.server.github import GitHubClient

#: GitHub's limits: annotations per request, characters of a summary, title and message.
MAX_ANNOTATIONS = 50
MAX_SUMMARY = 65535
MAX_TITLE = 255
MAX_MESSAGE = 64 * 1024
#: Our job conclusions as check run conclusions.
CONCLUSIONS = {"success": "success", "failure": "failure", "cancelled": "cancelled",
               "skipped": "skipped", "interrupted": "cancelled"}
LEVELS = {"error": "failure", "warning": "warning", "notice": "notice", "debug": "notice"}


def iso(timestamp: float) -> str:
    """ISO 8601 in UTC, as the Checks API takes times."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_conclusion(job: JobResult | None, event: JobFinished) -> str:
    if event.rolled_back or event.result == "failure" or (job is not None and job.rolled_back):
        return "failure"
    if "timed out" in event.reason or "timeout" in event.reason:
        return "timed_out"
    conclusion = (job.conclusion if job is not None else None) or event.result
    return CONCLUSIONS.get(conclusion, "neutral")


def annotation_json(annotation: AnnotationResult, workflow_file: str) -> dict[str, Any]:
    """One Checks API annotation (path and line required: the workflow file's first line when
    the message named no file)."""
    line = max(1, annotation.line) if annotation.file else 1
    body: dict[str, Any] = {
        "path": annotation.file or workflow_file,
        "start_line": line,
        "end_line": line,
        "annotation_level": LEVELS.get(annotation.level, "notice"),
        "message": _clip(annotation.message or annotation.level, MAX_MESSAGE),
    }
    if annotation.title:
        body["title"] = _clip(annotation.title, MAX_TITLE)
    if annotation.column > 0 and annotation.file:
        body["start_column"] = body["end_column"] = annotation.column
    return body


def check_summary(job: JobResult) -> str:
    """The step table, then the job's own summary Markdown."""
    rows = ["| | Step | Result | Duration |", "|---|---|---|---|"]
    for step in job.steps:
        word = step.conclusion or step.status.replace("_", " ")
        if step.exit_code not in (None, 0):
            word += f" (exit {step.exit_code})"
        rows.append(
            f"| {step_icon(step)} | {inline(step.name)} | {inline(word)} "
            f"| {human_duration(step.duration)} |"
        )
    machine = f"{job.provider} `{job.machine_id}`" if job.machine_id else "no machine"
    head = [f"Ran in {human_duration(job.duration)} on {machine}.", ""]
    if job.reason:
        head = [f"**{inline(job.reason)}**", "", *head]
    text = "\n".join([*head, *rows, "", job.summary]).strip()
    return _clip(text, MAX_SUMMARY)


@dataclass(frozen=True, slots=True)
class _Request:
    job_key: str
    body: dict[str, Any]
    #: Annotations left for further updates (50 each).
    more: tuple[dict[str, Any], ...] = ()


class CheckSink:
    """An ``EventSink`` creating and completing one check run per job; ``await drain()`` after
    the run."""

    def __init__(
        self,
        github: GitHubClient,
        collector: ResultCollector,
        *,
        repository: str,
        sha: str,
        workflow: str,
        workflow_file: str,
        run_id: str,
        details_url: str,
    ) -> None:
        self.github = github
        self.collector = collector
        self.repository, self.sha = repository, sha
        self.workflow, self.workflow_file = workflow, workflow_file
        self.run_id, self.details_url = run_id, details_url
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        #: job key -> check run id, once created.
        self.ids: dict[str, int] = {}
        self._open: set[str] = set()

    def start(self) -> None:
        if self.github.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._send_all(), name=f"checks-{self.run_id}"
            )

    def name(self, job_key: str) -> str:
        return f"{self.workflow} / {job_key}"

    def emit(self, event: Event) -> None:
        if self._task is None:
            return
        if isinstance(event, JobStarted):
            self._open.add(event.job_key)
            self._queue.put_nowait(_Request(event.job_key, {
                "status": "in_progress", "started_at": iso(event.time),
                "output": {"title": f"running on {event.provider}",
                           "summary": f"Machine `{event.machine_id}` ({event.vm_type})."},
            }))
        elif isinstance(event, JobFinished):
            self._open.discard(event.job_key)
            self._queue.put_nowait(self._finished(event))

    def _finished(self, event: JobFinished) -> _Request:
        job = self.collector.job_result(event.job_key)
        conclusion = check_conclusion(job, event)
        found = job.annotations if job is not None else ()
        annotations = tuple(annotation_json(a, self.workflow_file) for a in found)
        counts = {lvl: sum(1 for a in found if a.level == lvl) for lvl in ("error", "warning")}
        title = f"{conclusion} in {human_duration(event.duration)}" + "".join(
            f", {n} {level}{'s' if n > 1 else ''}" for level, n in counts.items() if n
        )
        summary = check_summary(job) if job is not None else event.reason or conclusion
        body = {
            "status": "completed", "conclusion": conclusion, "completed_at": iso(event.time),
            "output": {"title": _clip(title, MAX_TITLE),
                       "summary": summary,
                       "annotations": list(annotations[:MAX_ANNOTATIONS])},
        }
        return _Request(event.job_key, body, annotations[MAX_ANNOTATIONS:])

    async def _send_all(self) -> None:
        while (request := await self._queue.get()) is not None:
            await self._send(request)

    async def _send(self, request: _Request) -> None:
        body = request.body
        check_id = self.ids.get(request.job_key)
        if check_id is None:
            created = await self.github.create_check_run(self.repository, {
                "name": self.name(request.job_key), "head_sha": self.sha,
                "external_id": self.run_id, "details_url": self.details_url, **body,
            })
            if created is None:
                return
            self.ids[request.job_key] = check_id = created
        elif not await self.github.update_check_run(self.repository, check_id, body):
            return
        more = request.more
        while more:
            chunk, more = more[:MAX_ANNOTATIONS], more[MAX_ANNOTATIONS:]
            output = {"title": body["output"]["title"], "summary": body["output"]["summary"],
                      "annotations": list(chunk)}
            await self.github.update_check_run(self.repository, check_id, {"output": output})

    async def drain(self) -> None:
        """Send what is queued, then stop; a job still running (the run was cancelled) is
        completed as cancelled."""
        if self._task is None:
            return
        for job_key in sorted(self._open):
            self._queue.put_nowait(_Request(job_key, {
                "status": "completed", "conclusion": "cancelled",
                "completed_at": iso(datetime.now(UTC).timestamp()),
                "output": {"title": "cancelled", "summary": "Cancelled before it finished."},
            }))
        self._open.clear()
        self._queue.put_nowait(None)
        await self._task


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
