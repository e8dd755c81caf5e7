"""The one queue interface a trigger (the server, the CLI) uses to run workflows, whatever runs
them.

Two implementations: ``EmbeddedQueue`` (``vmrunner.fleet.embedded``: one host, in this
process, runs kept in SQLite) and ``FleetStore`` (``vmrunner.fleet.store``: PostgreSQL with
procrastinate, jobs run by ``vmrunner agent`` hosts). ``open_queue`` picks one from a
``--store`` value. This module imports neither PostgreSQL nor procrastinate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from vmrunner.errors import ConfigError
from vmrunner.runner.options import RunOptions
from vmrunner.workflow.models import Workflow


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """One job of a queued run. ``status``: pending, queued, running, then its result
    (success, failure, cancelled, skipped); a matrix job is ``matrix`` while its combinations
    (rows of their own, named like ``test (linux, 3.12)``) run, then takes their aggregate
    result. ``attempt`` grows when a lost host's job is retried."""

    run_id: str
    job_id: str
    status: str
    attempt: int
    host: str | None
    outputs: Mapping[str, str]
    reason: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """A queued run; ``status`` is running, cancelling or completed (then ``conclusion`` is set)."""

    id: str
    status: str
    conclusion: str | None
    jobs: tuple[QueuedJob, ...]

    def job(self, job_id: str) -> QueuedJob:
        return next(job for job in self.jobs if job.job_id == job_id)


class LogEntry(NamedTuple):
    """One log line of a queued run, with its id (ids grow in the order lines arrived)."""

    id: int
    job_id: str
    attempt: int
    text: str


class FollowedLine(NamedTuple):
    """One log line of a run being followed."""

    job_id: str
    attempt: int
    text: str


class JobQueue(Protocol):
    async def submit(
        self,
        workflow_text: str,
        workflow_path: str,
        options: RunOptions,
        *,
        delivery_id: str | None = None,
        priority: int = 0,
    ) -> str:
        """Queue a run of the workflow; its id. A ``delivery_id`` seen before returns that run."""
        ...

    async def run(self, run_id: str) -> QueuedRun:
        """The run and its jobs now; ``RunNotFound`` for an unknown id."""
        ...

    async def cancel(self, run_id: str) -> bool:
        """Cancel the run's jobs (running ones lose their machine); False if it had ended."""
        ...

    async def logs(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        """The run's log lines so far after line id ``after``: (id, job id, attempt, line); at
        most ``limit`` of them if given."""
        ...

    def follow(self, run_id: str) -> AsyncIterator[FollowedLine]:
        """The run's log lines (job id, attempt, line) as they come, until it ends."""
        ...


def workflow_text(workflow: Workflow) -> str:
    """The workflow file's text, as it travels to the agents."""
    if workflow.source is not None and workflow.source.text:
        return workflow.source.text
    try:
        return Path(workflow.path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{workflow.path}: cannot read the workflow: {exc.strerror or exc}"
        ) from exc


def run_json(run: QueuedRun) -> dict[str, Any]:
    """A queued run for machines (``vmrunner run --store --json``, ``GET /api/runs/{id}``)."""
    return {
        "run_id": run.id,
        "status": run.status,
        "conclusion": run.conclusion,
        "jobs": [
            {
                "job_id": j.job_id,
                "status": j.status,
                "attempt": j.attempt,
                "host": j.host,
                "labels": list(j.labels),
                "outputs": dict(j.outputs),
                "reason": j.reason,
            }
            for j in run.jobs
        ],
    }
