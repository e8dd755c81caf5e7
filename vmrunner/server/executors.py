"""Where the server's runs execute: here (``LocalRuns``) or on a fleet (``QueuedRuns``).

The service decides which runs an event starts and keeps its own rows; an ``Executor`` runs
one of them to its conclusion, reporting job statuses to GitHub on the way, cancels it, and
describes it for the API and the pull request comment. ``LocalRuns`` is the single host: the
workflow runs in this process on the server's session manager, recorded in SQLite.
``QueuedRuns`` (``vmrunner.server.queued``) hands runs to a ``JobQueue``: ``vmrunner serve
--store postgresql://...``, jobs run by ``vmrunner agent`` hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from vmrunner.errors import RunNotFound, VmrunnerError
from vmrunner.learning.history import Learning, LearningSink, add_insights
from vmrunner.reports.events import FanOut
from vmrunner.reports.results import ResultCollector, RunResult
from vmrunner.reports.storage import RunHistory, StoreSink
from vmrunner.runner.concurrency import ConcurrencyGroups
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import run_workflow
from vmrunner.server.checks import CheckSink
from vmrunner.server.github import GitHubClient
from vmrunner.server.metrics import Metrics, MetricsSink
from vmrunner.server.reporting import StatusSink, comment_body
from vmrunner.server.state import ServerRun
from vmrunner.sessions import SessionManager
from vmrunner.store import Store
from vmrunner.workflow.models import Workflow

#: How long statuses may take to be sent when a run is cancelled.
REPORT_GRACE = 10.0


class Executor(Protocol):
    #: Runs go on without this server (a fleet): they take no run slot, the server does not
    #: wait for them when it drains, and it watches them again after a restart.
    detached: bool

    async def execute(
        self, run: ServerRun, workflow: Workflow, options: RunOptions, target_url: str
    ) -> str:
        """Run it to its end, posting job statuses; its conclusion."""
        ...

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run this server started; False when it is not running."""
        ...

    async def describe(self, run_id: str) -> dict[str, Any] | None:
        """The run's result, for ``GET /api/runs/{id}`` (None if unknown)."""
        ...

    def logs(self, run_id: str) -> AsyncIterator[list[dict[str, Any]]]:
        """The run's log lines, a page at a time (never all of them in memory)."""
        ...

    async def comment(self, runs: Sequence[ServerRun], repository: str) -> str:
        """The pull request comment for the newest run of each workflow."""
        ...


class LocalRuns:
    """Runs in this process on the server's session manager, kept in SQLite."""

    detached = False

    def __init__(
        self, store: Store, sessions: SessionManager, github: GitHubClient, metrics: Metrics,
        *, max_step_log: int = 0, checks: bool = False, statuses: bool = True,
    ) -> None:
        self.store = store
        #: What each run reports to GitHub: a check run and/or a commit status per job.
        self.checks, self.statuses = checks, statuses
        #: Bytes of output kept per step (0: the default, ``max_step_log_default()``).
        self.max_step_log = max_step_log
        self.sessions = sessions
        self.github = github
        self.metrics = metrics
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        #: One registry for every run here, so that a push can stop or queue behind an earlier run.
        self.groups = ConcurrencyGroups()

    async def execute(
        self, run: ServerRun, workflow: Workflow, options: RunOptions, target_url: str
    ) -> str:
        task = asyncio.current_task()
        if task is None:
            raise VmrunnerError("a run must be awaited in an asyncio task")
        self._tasks[run.run_id] = task
        collector = ResultCollector()
        statuses = StatusSink(
            self.github, collector, repository=run.repository, sha=run.sha,
            workflow=workflow.name or Path(run.workflow_file).stem, target_url=target_url,
        )
        checks = CheckSink(
            self.github, collector, repository=run.repository, sha=run.sha,
            workflow=workflow.name or Path(run.workflow_file).stem,
            workflow_file=run.workflow_file, run_id=run.run_id,
            details_url=target_url.replace("/api/runs/", "/runs/", 1),  # the dashboard's page
        )
        try:
            with (
                StoreSink(self.store, max_step_log=self.max_step_log or None) as keep,
                Learning.open(self.store.path) as learning,
            ):
                if self.statuses:
                    statuses.start()
                if self.checks:
                    checks.start()
                try:
                    sinks = FanOut(keep, collector, MetricsSink(self.metrics), statuses, checks)
                    outcome = await run_workflow(
                        workflow,
                        options,
                        self.sessions,
                        LearningSink(
                            learning, repository=run.repository, workflow=workflow, then=sinks
                        ),
                        self.groups,
                    )
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(
                            asyncio.shield(asyncio.gather(statuses.drain(), checks.drain())),
                            REPORT_GRACE,
                        )
        finally:
            self._tasks.pop(run.run_id, None)
        return outcome.conclusion

    async def cancel(self, run_id: str) -> bool:
        task = self._tasks.get(run_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def describe(self, run_id: str) -> dict[str, Any] | None:
        try:
            return RunHistory(self.store).get_run(run_id).to_json()
        except RunNotFound:
            return None

    async def logs(self, run_id: str) -> AsyncIterator[list[dict[str, Any]]]:
        after = 0
        while page := self.store.run_log_page(run_id, after=after):
            after = page[-1][0]
            yield [asdict(row) for _, row in page]

    async def comment(self, runs: Sequence[ServerRun], repository: str) -> str:
        history = RunHistory(self.store)
        results: list[RunResult] = []
        for run in runs:
            with contextlib.suppress(RunNotFound):
                results.append(history.get_run(run.run_id))
        return comment_body(add_insights(results, repository, self.store.path))
