"""The single-host ``JobQueue``: runs in this process on one session manager, kept in SQLite.

This is what ``vmrunner run`` and ``vmrunner serve`` do on one host, behind the same interface
as the fleet: each submitted run is one ``run_workflow`` task, recorded by ``StoreSink``; its
jobs' states come from the run's events. Nothing survives the process (one host has nothing to
fail over to); the runs themselves stay in SQLite (``vmrunner runs``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vmrunner.errors import RunNotFound, VmrunnerError
from vmrunner.fleet.queue import FollowedLine, LogEntry, QueuedJob, QueuedRun
from vmrunner.reports.events import Event, FanOut, JobFinished, JobQueued, JobStarted, LogLine
from vmrunner.reports.storage import StoreSink
from vmrunner.runner.contexts import new_run_id
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import run_workflow
from vmrunner.sessions import SessionManager
from vmrunner.store import Store
from vmrunner.workflow.loader import load_workflow_text


@dataclass(slots=True)
class _Tracked:
    """One run as its events show it."""

    id: str
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: list[FollowedLine] = field(default_factory=list)
    conclusion: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def emit(self, event: Event) -> None:
        if isinstance(event, JobQueued):
            self.jobs[event.job_key] = {"status": "queued", "outputs": {}, "reason": ""}
        elif isinstance(event, JobStarted):
            self.jobs.setdefault(event.job_key, {"outputs": {}, "reason": ""})["status"] = "running"
        elif isinstance(event, JobFinished):
            self.jobs[event.job_key] = {
                "status": event.result,
                "outputs": dict(event.outputs),
                "reason": event.reason,
            }
        elif isinstance(event, LogLine):
            self.logs.append(FollowedLine(event.job_key, 1, event.text))
        else:
            return
        self.changed.set()


class EmbeddedQueue:
    """``async with EmbeddedQueue(sessions, store) as queue:``; leaving cancels what still runs."""

    def __init__(self, sessions: SessionManager, store: Store) -> None:
        self.sessions = sessions
        self.store = store
        self.host = socket.gethostname()
        self._runs: dict[str, _Tracked] = {}
        self._deliveries: dict[str, str] = {}
        self._group: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> EmbeddedQueue:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for tracked in self._runs.values():
            if tracked.task is not None:
                tracked.task.cancel()
        group, self._group = self._group, None
        if group is not None:
            await group.__aexit__(None, None, None)

    async def submit(
        self,
        workflow_text: str,
        workflow_path: str,
        options: RunOptions,
        *,
        delivery_id: str | None = None,
        priority: int = 0,
    ) -> str:
        """Start the run now (one host has no queue to order by ``priority``)."""
        if delivery_id is not None and delivery_id in self._deliveries:
            return self._deliveries[delivery_id]
        if self._group is None:
            raise VmrunnerError("the embedded queue is not running: use `async with EmbeddedQueue`")
        workflow = load_workflow_text(workflow_text, workflow_path)
        run_id = options.run_id or new_run_id()
        while run_id in self._runs:
            run_id = str(int(run_id) + 1)
        tracked = _Tracked(run_id)
        self._runs[run_id] = tracked
        if delivery_id is not None:
            self._deliveries[delivery_id] = run_id

        async def execute() -> None:
            with StoreSink(self.store) as keep:
                try:
                    outcome = await run_workflow(
                        workflow,
                        _with_run_id(options, run_id),
                        self.sessions,
                        FanOut(tracked, keep),
                    )
                    tracked.conclusion = outcome.conclusion
                except asyncio.CancelledError:
                    tracked.conclusion = "cancelled"
                finally:
                    tracked.changed.set()

        tracked.task = self._group.create_task(execute(), name=f"run {run_id}")
        return run_id

    async def run(self, run_id: str) -> QueuedRun:
        tracked = self._runs.get(run_id)
        if tracked is None:
            raise RunNotFound(f"no run {run_id} in this process")
        jobs = tuple(
            QueuedJob(
                run_id,
                key,
                str(job["status"]),
                1,
                self.host if job["status"] != "queued" else None,
                job["outputs"],
                job["reason"],
                (),
            )
            for key, job in sorted(tracked.jobs.items())
        )
        status = "completed" if tracked.conclusion is not None else "running"
        return QueuedRun(run_id, status, tracked.conclusion, jobs)

    async def cancel(self, run_id: str) -> bool:
        tracked = self._runs.get(run_id)
        if tracked is None:
            raise RunNotFound(f"no run {run_id} in this process")
        if tracked.conclusion is not None or tracked.task is None:
            return False
        tracked.task.cancel()
        await asyncio.wait([tracked.task])
        return True

    async def logs(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        tracked = self._runs.get(run_id)
        if tracked is None:
            raise RunNotFound(f"no run {run_id} in this process")
        end = None if limit is None else after + limit
        return [
            LogEntry(index, job, attempt, line)
            for index, (job, attempt, line) in enumerate(tracked.logs[after:end], start=after + 1)
        ]

    async def follow(self, run_id: str) -> AsyncIterator[FollowedLine]:
        tracked = self._runs.get(run_id)
        if tracked is None:
            raise RunNotFound(f"no run {run_id} in this process")
        sent = 0
        while True:
            tracked.changed.clear()
            while sent < len(tracked.logs):
                yield tracked.logs[sent]
                sent += 1
            if tracked.conclusion is not None:
                return
            await tracked.changed.wait()


def _with_run_id(options: RunOptions, run_id: str) -> RunOptions:
    import dataclasses

    return dataclasses.replace(options, run_id=run_id)
