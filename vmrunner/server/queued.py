"""``QueuedRuns``: the server's runs handed to a ``JobQueue`` (``vmrunner serve --store``).

The server still decides which workflows an event runs; each becomes one queued run, submitted
with a delivery key (the webhook's delivery id and the workflow file), so that a redelivered
webhook, even one that reaches another server instance, makes no second run. Agents check the
commit out of the server's mirror (``repo_root``), so they must see the server's filesystem at
the same path (the same host, or a shared one): see docs/fleet.md.

The run is watched by polling ``queue.run`` (cheap: two indexed reads); each job's change
becomes a commit status. The run goes on without the server: when the server stops, only the
watch stops, and a restarted server watches it again (submitting is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from vmrunner.errors import RunNotFound
from vmrunner.fleet.queue import JobQueue, QueuedJob, QueuedRun, run_json, workflow_text
from vmrunner.reports.summary import inline
from vmrunner.runner.options import RunOptions
from vmrunner.server.github import GitHubClient, Status, StatusState
from vmrunner.server.metrics import Metrics
from vmrunner.server.reporting import final_state, status_context
from vmrunner.server.state import ServerRun
from vmrunner.store import LOG_PAGE
from vmrunner.workflow.models import Workflow

log = logging.getLogger(__name__)
#: Seconds between two looks at a watched run.
WATCH_INTERVAL = 0.5


def delivery_key(delivery_id: str, workflow_file: str) -> str:
    """One run per delivery and workflow, whichever server instance submits it."""
    return f"{delivery_id}/{workflow_file}"


def job_status(job: QueuedJob) -> tuple[StatusState, str]:
    """A fleet job as a commit status: its state and description."""
    if job.status == "pending":
        return "pending", "waiting for the jobs it needs"
    if job.status == "matrix":
        return "pending", "matrix combinations running"
    if job.status == "queued":
        return "pending", "queued" + (f" (attempt {job.attempt})" if job.attempt > 1 else "")
    if job.status == "running":
        return "pending", f"running on {job.host}" + (
            f" (attempt {job.attempt})" if job.attempt > 1 else ""
        )
    words = (
        job.status
        + (f" on {job.host}" if job.host else "")
        + (f": {job.reason}" if job.reason else "")
    )
    return final_state(job.status), words[:140]


def run_summary(run: QueuedRun, workflow: str) -> str:
    """A queued run in Markdown, for the pull request comment."""
    conclusion = run.conclusion or run.status
    lines = [
        f"# {inline(workflow)}: {inline(conclusion)}",
        "",
        f"Run {run.id} on the fleet.",
        "",
        "| Job | Result | Host | Attempt |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {inline(j.job_id)} | {inline(j.status)} | {inline(j.host or '')} | {j.attempt} |"
        for j in run.jobs
    ]
    return "\n".join(lines) + "\n"


class QueuedRuns:
    """An ``Executor`` over a ``JobQueue`` (a ``FleetStore``)."""

    detached = True

    def __init__(self, queue: JobQueue, github: GitHubClient, metrics: Metrics) -> None:
        self.queue = queue
        self.github = github
        self.metrics = metrics
        #: Server run id -> queued run id, where another server instance submitted it first.
        self._ids: dict[str, str] = {}
        #: Runs this server submitted (again, after a restart) and watches; runs asked to cancel
        #: before that, cancelled right after their submit.
        self._submitted: set[str] = set()
        self._cancel_asked: set[str] = set()

    def queued_id(self, run_id: str) -> str:
        return self._ids.get(run_id, run_id)

    async def execute(
        self, run: ServerRun, workflow: Workflow, options: RunOptions, target_url: str
    ) -> str:
        try:
            return await self._execute(run, workflow, options, target_url)
        finally:
            self._submitted.discard(run.run_id)
            self._cancel_asked.discard(run.run_id)

    async def _execute(
        self, run: ServerRun, workflow: Workflow, options: RunOptions, target_url: str
    ) -> str:
        text = workflow_text(workflow)
        if options.secrets:
            log.warning(
                "run %s: the secrets of %s are not sent to the fleet (never written into its "
                "database); agents use their own --secret-file",
                run.run_id,
                run.repository,
            )
        queued = await self.queue.submit(
            text,
            run.workflow_file,
            options,
            delivery_id=delivery_key(run.delivery_id, run.workflow_file),
        )
        if queued != run.run_id:
            self._ids[run.run_id] = queued
            log.info(
                "run %s: delivery %s was queued as run %s already",
                run.run_id,
                run.delivery_id,
                queued,
            )
        self._submitted.add(run.run_id)
        if run.run_id in self._cancel_asked:  # asked before it was (re)submitted
            await self.queue.cancel(queued)
        name = workflow.name or Path(run.workflow_file).stem
        posted: dict[str, tuple[StatusState, str]] = {}
        while True:
            row = await self.queue.run(queued)
            for job in row.jobs:
                state = job_status(job)
                if posted.get(job.job_id) != state:
                    posted[job.job_id] = state
                    await self.github.create_status(
                        run.repository,
                        run.sha,
                        Status(state[0], status_context(name, job.job_id), state[1], target_url),
                    )
            if row.status == "completed":
                conclusion = row.conclusion or "failure"
                self.metrics.runs.labels(conclusion).inc()
                return conclusion
            await asyncio.sleep(WATCH_INTERVAL)

    async def cancel(self, run_id: str) -> bool:
        """The server asks only for runs it knows are running; one it has not submitted yet
        (it is being fetched, or the server just restarted and watches its runs again: its
        queued id may not be known) is cancelled right after its submit."""
        if run_id not in self._submitted:
            self._cancel_asked.add(run_id)
            return True
        try:
            return await self.queue.cancel(self.queued_id(run_id))
        except RunNotFound:
            return False

    async def describe(self, run_id: str) -> dict[str, Any] | None:
        try:
            return run_json(await self.queue.run(self.queued_id(run_id)))
        except RunNotFound:
            return None

    async def logs(self, run_id: str) -> AsyncIterator[list[dict[str, Any]]]:
        queued, after = self.queued_id(run_id), 0
        while page := await self.queue.logs(queued, after, limit=LOG_PAGE):
            after = page[-1][0]
            yield [
                {"job_key": job, "attempt": attempt, "text": line}
                for _, job, attempt, line in page
            ]

    async def comment(self, runs: Sequence[ServerRun], repository: str) -> str:
        parts = ["## vmrunner", ""]
        for run in runs:
            try:
                parts.append(
                    run_summary(
                        await self.queue.run(self.queued_id(run.run_id)),
                        Path(run.workflow_file).stem,
                    )
                )
            except RunNotFound:
                continue
        return "\n".join(parts)
