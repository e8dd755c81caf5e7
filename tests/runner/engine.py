"""Running workflows for tests: the real sandbox provider, a real session manager, a recorder."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vmrunner.machines.base import Provider
from vmrunner.machines.providers import get_provider
from vmrunner.machines.testing import CountingProvider
from vmrunner.reports.events import Event, JobFinished, LogLine, Recorder, StepFinished
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import RunOutcome, run_workflow
from vmrunner.sessions import SessionManager
from vmrunner.workflow.loader import load_workflow, load_workflow_text
from vmrunner.workflow.models import Workflow

E = TypeVar("E")


@dataclass
class Ran:
    outcome: RunOutcome
    events: list[Event]
    provider: CountingProvider

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    def result(self, job_key: str) -> str:
        return next(e.result for e in self.of(JobFinished) if e.job_key == job_key)

    def finished(self, job_key: str) -> JobFinished:
        return next(e for e in self.of(JobFinished) if e.job_key == job_key)

    def logs(self, job_key: str | None = None) -> list[str]:
        return [e.text for e in self.of(LogLine) if job_key is None or e.job_key == job_key]

    def steps(self, job_key: str) -> list[StepFinished]:
        return [e for e in self.of(StepFinished) if e.job_key == job_key]


async def run(
    workflow: str | Workflow | Path,
    *,
    repo_root: Path | str = ".",
    limit: int = 4,
    sessions_limit: int | None = None,
    provider: Provider | None = None,
    **options: Any,
) -> Ran:
    """Run a workflow (YAML text, a file, or a model) on fresh sandbox machines, or on
    ``provider``'s (which stays open: its owner closes it)."""
    if isinstance(workflow, Path):
        model = load_workflow(workflow)
    elif isinstance(workflow, str):
        model = load_workflow_text(workflow, "test.yml")
    else:
        model = workflow
    counting = CountingProvider(provider or get_provider("sandbox"))
    recorder = Recorder()
    run_options = dataclasses.replace(
        RunOptions(repo_root=str(repo_root), concurrent_jobs=limit), **options
    )
    try:
        async with SessionManager(counting, limit=sessions_limit or limit) as sessions:
            outcome = await run_workflow(model, run_options, sessions, recorder)
        check_contract(recorder.events)
    finally:
        if provider is None:
            await counting.aclose()
    return Ran(outcome, recorder.events, counting)


def job_results(events: Sequence[Event]) -> dict[str, str]:
    return {e.job_key: e.result for e in events if isinstance(e, JobFinished)}


def check_contract(events: Sequence[Event]) -> None:
    """The rules of ``reports/events.py``: one finish per start, RunFinished last."""
    from vmrunner.reports.events import JobStarted, RunFinished, StepStarted

    assert isinstance(events[-1], RunFinished)
    assert sum(isinstance(e, RunFinished) for e in events) == 1
    started = [e.job_key for e in events if isinstance(e, JobStarted)]
    finished = [e.job_key for e in events if isinstance(e, JobFinished)]
    assert len(set(finished)) == len(finished)
    assert set(started) <= set(finished)
    steps = [(e.job_key, e.index) for e in events if isinstance(e, StepStarted)]
    ends = [(e.job_key, e.index) for e in events if isinstance(e, StepFinished)]
    assert sorted(steps) == sorted(ends)
    assert len(set(steps)) == len(steps)
