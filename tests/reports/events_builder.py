"""Valid event sequences for tests of what shows or keeps a run (results, summary, store, view).

The builder keeps the rules of ``vmrunner.reports.events``: one ``JobFinished`` per ``JobStarted``,
one ``StepFinished`` per ``StepStarted``, ``RunFinished`` last, times that only go forward. Calls
on different jobs interleave their events, as parallel jobs do. Every event goes to ``sink`` as
it is made (and is kept in ``events``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmrunner.reports.events import (
    Annotation,
    AnnotationLevel,
    Event,
    EventSink,
    GroupEnded,
    GroupStarted,
    JobFinished,
    JobQueued,
    JobStarted,
    LogLine,
    Result,
    RunFinished,
    RunStarted,
    SnapshotRestored,
    SnapshotTaken,
    StepFinished,
    StepKind,
    StepStarted,
)
from vmrunner.reports.results import ResultCollector, RunResult


class RunBuilder:
    def __init__(
        self,
        run_id: str = "run-0001",
        *,
        workflow: str = "CI",
        workflow_file: str = ".github/workflows/ci.yml",
        event: str = "push",
        start: float = 1_700_000_000.0,
        sink: EventSink | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.workflow_file = workflow_file
        self.event_name = event
        self.now = start
        self.started_at = start
        self.sink = sink
        self.events: list[Event] = []
        self.jobs: dict[str, JobBuilder] = {}

    def tick(self, seconds: float = 0.25) -> float:
        self.now += seconds
        return self.now

    def add(self, event: Event) -> None:
        self.events.append(event)
        if self.sink is not None:
            self.sink.emit(event)

    def start(self, *, sha: str = "0123abcd", ref: str = "refs/heads/main") -> RunBuilder:
        self.add(
            RunStarted(
                self.run_id, self.workflow, self.workflow_file, self.event_name, self.now, sha, ref
            )
        )
        return self

    def job(
        self,
        key: str,
        *,
        job_id: str | None = None,
        name: str | None = None,
        matrix: Mapping[str, Any] | None = None,
        needs: Sequence[str] = (),
    ) -> JobBuilder:
        job = JobBuilder(self, key)
        self.jobs[key] = job
        self.add(
            JobQueued(
                self.run_id,
                key,
                job_id or key.split(" ")[0],
                name or key,
                self.tick(0.01),
                dict(matrix or {}),
                tuple(needs),
            )
        )
        return job

    def finish(self, conclusion: Result | None = None) -> RunBuilder:
        """End the run; the conclusion defaults to what the jobs' results say."""
        if conclusion is None:
            results = {job.result for job in self.jobs.values()}
            conclusion = (
                "failure"
                if "failure" in results
                else "cancelled"
                if "cancelled" in results
                else "success"
            )
        now = self.tick()
        self.add(RunFinished(self.run_id, conclusion, now, now - self.started_at))
        return self


@dataclass
class JobBuilder:
    run: RunBuilder
    key: str
    started_at: float = 0.0
    next_index: int = 0
    result: Result | None = None
    failed: bool = False
    snapshots: list[str] = field(default_factory=list)

    def begin(
        self, *, provider: str = "sandbox", from_pool: bool = False, vm_type: str = "default"
    ) -> JobBuilder:
        self.started_at = self.run.tick()
        slug = self.key.replace(" ", "_")
        self.run.add(
            JobStarted(
                self.run.run_id,
                self.key,
                self.started_at,
                f"sess-{slug}",
                f"m-{slug}",
                provider,
                vm_type,
                from_pool,
                allocation_seconds=0.05,
            )
        )
        return self

    def step(
        self,
        name: str,
        *,
        kind: StepKind = "step",
        step_id: str = "",
        lines: Iterable[str] = (),
        stderr: Iterable[str] = (),
        group: tuple[str, Iterable[str]] | None = None,
        annotations: Iterable[tuple[AnnotationLevel, str]] = (),
        exit_code: int | None = 0,
        outcome: Result | None = None,
        conclusion: Result | None = None,
        seconds: float = 1.5,
        snapshot: bool = False,
        outputs: Mapping[str, str] | None = None,
        timed_out: bool = False,
    ) -> JobBuilder:
        """One command: start, output, annotations, finish (and a snapshot after success)."""
        run, index = self.run, self.next_index
        self.next_index += 1
        started = run.tick(0.01)
        run.add(StepStarted(run.run_id, self.key, index, kind, name, started, step_id))
        for text in lines:
            run.add(LogLine(run.run_id, self.key, index, "stdout", text, run.tick(0.001)))
        if group is not None:
            title, grouped = group
            run.add(GroupStarted(run.run_id, self.key, index, title, run.tick(0.001)))
            for text in grouped:
                run.add(
                    LogLine(
                        run.run_id, self.key, index, "stdout", text, run.tick(0.001), group_depth=1
                    )
                )
            run.add(GroupEnded(run.run_id, self.key, index, run.tick(0.001)))
        for text in stderr:
            run.add(LogLine(run.run_id, self.key, index, "stderr", text, run.tick(0.001)))
        for level, message in annotations:
            run.add(
                Annotation(
                    run.run_id,
                    self.key,
                    index,
                    level,
                    message,
                    run.tick(0.001),
                    file="src/app.py",
                    line=3,
                )
            )
        if outcome is None:
            outcome = "success" if exit_code == 0 and not timed_out else "failure"
        conclusion = conclusion or outcome
        if conclusion == "failure":
            self.failed = True
        run.now = started + seconds
        snapshot_id = ""
        if snapshot and outcome == "success":
            snapshot_id = f"snap-{self.key}-{index}".replace(" ", "_")
        run.add(
            StepFinished(
                run.run_id,
                self.key,
                index,
                outcome,
                conclusion,
                run.now,
                seconds,
                exit_code,
                timed_out,
                snapshot_id,
                dict(outputs or {}),
            )
        )
        if snapshot_id:
            self.snapshots.append(snapshot_id)
            run.add(SnapshotTaken(run.run_id, self.key, index, snapshot_id, run.tick(0.05), 0.05))
        return self

    def skipped_step(self, name: str, *, kind: StepKind = "step") -> JobBuilder:
        """A step whose ``if:`` was false (GitHub still lists it, as skipped)."""
        run, index = self.run, self.next_index
        self.next_index += 1
        started = run.tick(0.001)
        run.add(StepStarted(run.run_id, self.key, index, kind, name, started))
        run.add(StepFinished(run.run_id, self.key, index, "skipped", "skipped", started, 0.0, None))
        return self

    def log(self, text: str, *, step_index: int = -1) -> JobBuilder:
        self.run.add(
            LogLine(self.run.run_id, self.key, step_index, "stdout", text, self.run.tick(0.001))
        )
        return self

    def finish(
        self,
        result: Result | None = None,
        *,
        rollback: bool = False,
        reason: str = "",
        summary: str = "",
        outputs: Mapping[str, str] | None = None,
    ) -> JobBuilder:
        if rollback and self.snapshots:
            self.run.add(
                SnapshotRestored(
                    self.run.run_id, self.key, self.snapshots[-1], self.run.tick(0.1), 0.1
                )
            )
        self.result = result or ("failure" if self.failed else "success")
        now = self.run.tick()
        self.run.add(
            JobFinished(
                self.run.run_id,
                self.key,
                self.result,
                now,
                now - self.started_at if self.started_at else 0.0,
                dict(outputs or {}),
                rolled_back=rollback and bool(self.snapshots),
                reason=reason,
                summary=summary,
            )
        )
        return self

    def skip(self, reason: str = "") -> JobBuilder:
        """The job never ran (its ``if:`` was false or a job it needs failed)."""
        return self.finish("skipped", reason=reason)


def collect(builder: RunBuilder) -> RunResult:
    """The result a ``ResultCollector`` builds from the builder's events."""
    collector = ResultCollector()
    for event in builder.events:
        collector.emit(event)
    return collector.result()


def simple_run(sink: EventSink | None = None, run_id: str = "run-0001") -> RunBuilder:
    """One job, three steps, all green."""
    run = RunBuilder(run_id, sink=sink).start()
    job = run.job("build").begin()
    job.step("Set up job", kind="setup", lines=["machine ready"], seconds=0.2)
    job.step("Checkout", lines=["Fetched 12 files"], seconds=0.8, snapshot=True)
    job.step(
        "Test",
        step_id="test",
        lines=["collected 3 items", "3 passed"],
        group=("pytest", ["a ok", "b ok"]),
        seconds=75.0,
        outputs={"count": "3"},
    )
    job.finish(outputs={"count": "3"}, summary="### Tests\n3 passed")
    return run.finish()


def failing_matrix_run(sink: EventSink | None = None, run_id: str = "run-0002") -> RunBuilder:
    """A matrix of two jobs running in parallel (one fails), a job that needs them and is
    skipped."""
    run = RunBuilder(run_id, workflow="Matrix", sink=sink).start()
    small = run.job("test (small)", job_id="test", matrix={"size": "small"})
    large = run.job("test (large)", job_id="test", matrix={"size": "large"})
    deploy = run.job("deploy", needs=("test",))
    small.begin()
    large.begin(from_pool=True)
    small.step("Build", lines=["building small"])
    large.step("Build", lines=["building large"], snapshot=True)
    small.step("Test", lines=["ok"], snapshot=True)
    large.step(
        "Test",
        stderr=["AssertionError: 1 != 2"],
        exit_code=1,
        annotations=[("error", "test_size failed")],
    )
    large.skipped_step("Upload")
    large.step("Post Build", kind="post")
    small.finish()
    large.finish(rollback=True)
    deploy.skip("a job it needs failed")
    return run.finish()
