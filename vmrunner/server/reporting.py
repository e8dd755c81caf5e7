"""One run's results on GitHub: a commit status per job, and the pull request's summary comment.

``StatusSink`` turns run events into statuses (pending when a job is queued and when it
starts, then its final state) and posts them in order from one task per run, so a final state
can never be overtaken by a pending one. The final state comes from the job's conclusion as the
results see it (a failing step makes the job a failure), and only ``success`` maps to success:
failure and rolled-back jobs are ``failure``, cancelled or interrupted ones ``error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from vmrunner.reports.events import Event, JobFinished, JobQueued, JobStarted
from vmrunner.reports.results import ResultCollector, RunResult
from vmrunner.reports.summary import render_summary
from vmrunner.server.github import GitHubClient, Status, StatusState


def final_state(conclusion: str | None, rolled_back: bool = False) -> StatusState:
    if rolled_back or conclusion == "failure":
        return "failure"
    if conclusion in ("success", "skipped"):
        return "success"
    return "error"


def status_context(workflow: str, job_key: str) -> str:
    return f"vmrunner/{workflow}/{job_key}"


class StatusSink:
    """An ``EventSink`` posting a run's job statuses; ``await sink.drain()`` once the run ended."""

    def __init__(
        self,
        github: GitHubClient,
        collector: ResultCollector,
        *,
        repository: str,
        sha: str,
        workflow: str,
        target_url: str,
    ) -> None:
        self.github = github
        self.collector = collector
        self.repository = repository
        self.sha = sha
        self.workflow = workflow
        self.target_url = target_url
        self._queue: asyncio.Queue[Status | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.sent: list[Status] = []
        self._last: dict[str, StatusState] = {}

    def start(self) -> None:
        if self.github.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._post_all(), name=f"statuses-{self.sha[:8]}"
            )

    def emit(self, event: Event) -> None:
        status = self._status(event)
        if status is not None and self._task is not None:
            self._last[status.context] = status.state
            self._queue.put_nowait(status)

    def _status(self, event: Event) -> Status | None:
        if isinstance(event, JobQueued):
            return self._make(event.job_key, "pending", "queued")
        if isinstance(event, JobStarted):
            return self._make(event.job_key, "pending", f"running on {event.provider}")
        if isinstance(event, JobFinished):
            job = self.collector.job_result(event.job_key)
            conclusion = job.conclusion if job is not None else event.result
            rolled_back = event.rolled_back or (job is not None and job.rolled_back)
            if event.result == "failure":
                conclusion = "failure"
            state = final_state(conclusion, rolled_back)
            words = f"{conclusion}" + (" (rolled back)" if rolled_back else "")
            if event.reason:
                words += f": {event.reason}"
            return self._make(event.job_key, state, f"{words} in {event.duration:.1f}s")
        return None

    def _make(self, job_key: str, state: StatusState, description: str) -> Status:
        return Status(state, status_context(self.workflow, job_key), description, self.target_url)

    async def _post_all(self) -> None:
        while (status := await self._queue.get()) is not None:
            await self.github.create_status(self.repository, self.sha, status)
            self.sent.append(status)

    async def drain(self) -> None:
        """Post what is queued, then stop; a job still pending (the run was cancelled) becomes an
        error."""
        if self._task is None:
            return
        for context, state in self._last.items():
            if state == "pending":
                self._queue.put_nowait(
                    Status("error", context, "cancelled before it finished", self.target_url)
                )
        self._last.clear()
        self._queue.put_nowait(None)
        await self._task


def comment_body(results: Sequence[RunResult]) -> str:
    """The pull request comment: the newest run of each workflow for the pull request."""
    parts = ["## vmrunner", ""]
    for result in results:
        parts.append(render_summary(result))
    return "\n".join(parts)
