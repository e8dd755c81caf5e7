"""The result of a workflow run, built from its events: ``RunResult`` → ``JobResult`` →
``StepResult``.

``ResultCollector`` is an ``EventSink``; the engine (or ``vmrunner run``) adds it beside the
other sinks and asks it for the result at the end (or at any moment, for a live view)::

    collector = ResultCollector()
    await run_workflow(workflow, options, sessions, FanOut(collector, view, StoreSink(store)))
    result = collector.result()      # a frozen RunResult
    print(result.conclusion)         # "success", "failure", "cancelled" ...
    json.dumps(result.to_json())     # the shape of RUN_RESULT_SCHEMA

Results follow GitHub: a job that had a step concluding ``failure`` is never a success, even if
the engine said so, and a run with a failed job concludes ``failure``. A run that never got its
``RunFinished`` (the runner was killed) is ``in_progress`` here; the store reports it as
``interrupted`` once its runner is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vmrunner.reports.events import (
    Annotation,
    AnnotationLevel,
    Event,
    GroupEnded,
    GroupStarted,
    JobFinished,
    JobQueued,
    JobStarted,
    LogLine,
    Result,
    RunFinished,
    RunInsights,
    RunStarted,
    SnapshotRestored,
    SnapshotTaken,
    StepFinished,
    StepKind,
    StepStarted,
    run_conclusion,
)
from vmrunner.reports.insights import Insights
from vmrunner.reports.schemas import JSON_OMIT, dataclass_schema, record_json
from vmrunner.reports.timeline import (
    LIFECYCLE_SCHEMA,
    TimelineBuilder,
    TimelineEntry,
    TimelineProof,
    merged,
    prove,
)
from vmrunner.store import NOT_A_COLUMN, column

#: Where a run, job or step is in its life.
Status = Literal["queued", "in_progress", "completed"]
#: A run's conclusion: GitHub's results, plus ``interrupted`` for a run whose runner died.
Conclusion = Literal["success", "failure", "cancelled", "skipped", "interrupted"]

#: Version of the JSON shape (``RunResult.to_json``); bumped on any incompatible change.
JSON_VERSION = 1


@dataclass(frozen=True, slots=True)
class AnnotationResult:
    """An error/warning/notice/debug message attached to a job (and step; -1: the job)."""

    #: Not in the JSON: an annotation is listed under its job (or the run).
    job_key: str = field(metadata=JSON_OMIT)
    step_index: int
    level: AnnotationLevel = field(metadata={"unknown": "notice"})
    message: str
    time: float
    file: str = ""
    line: int = 0
    column: int = 0
    title: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """A snapshot taken after a step (``restored``: the job was rolled back to it)."""

    step_index: int
    snapshot_id: str
    time: float
    duration: float
    restored: bool = False


@dataclass(frozen=True, slots=True)
class StepResult:
    """One command of a job: a setup command, a step, a post step or a cleanup command."""

    index: int = field(metadata=column("step_index"))
    kind: StepKind = field(metadata={"unknown": "step"})
    name: str
    status: Status = field(metadata={"unknown": "in_progress"})
    started_at: float
    step_id: str = ""
    #: Before and after ``continue-on-error`` (None until the step finished).
    outcome: Result | None = None
    conclusion: Result | None = None
    finished_at: float | None = None
    duration: float | None = None
    exit_code: int | None = None
    timed_out: bool = False
    snapshot_id: str = ""
    outputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobResult:
    """One job (one matrix combination), identified in its run by ``job_key``."""

    job_key: str
    job_id: str
    name: str
    status: Status = field(metadata={"unknown": "queued"})
    queued_at: float | None = None
    matrix: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    #: GitHub's job result (``needs.<job>.result``); None until the job finished.
    conclusion: Result | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    allocation_seconds: float = 0.0
    session_id: str = ""
    machine_id: str = ""
    provider: str = ""
    vm_type: str = ""
    from_pool: bool = False
    #: Kept in tables of their own in the store (as are ``annotations`` and ``timeline``).
    steps: tuple[StepResult, ...] = field(default=(), metadata=NOT_A_COLUMN)
    outputs: Mapping[str, str] = field(default_factory=dict)
    annotations: tuple[AnnotationResult, ...] = field(default=(), metadata=NOT_A_COLUMN)
    snapshots: tuple[SnapshotResult, ...] = ()
    rolled_back: bool = False
    #: Why the job failed or was skipped without running its steps.
    reason: str = ""
    #: The job's Markdown summary (``GITHUB_STEP_SUMMARY``), masked.
    summary: str = ""
    #: The job's machine lifecycle, in order (``reports/timeline.py``).
    timeline: tuple[TimelineEntry, ...] = field(default=(), metadata=NOT_A_COLUMN)

    def step(self, index: int) -> StepResult | None:
        return next((s for s in self.steps if s.index == index), None)


@dataclass(frozen=True, slots=True)
class RunResult:
    """A workflow run and its jobs, in the order the jobs were first seen."""

    run_id: str = field(metadata=column("id"))
    workflow_name: str
    workflow_file: str
    event_name: str
    status: Status = field(metadata={"unknown": "in_progress"})
    started_at: float
    sha: str = ""
    ref: str = ""
    conclusion: Conclusion | None = None
    finished_at: float | None = None
    duration: float | None = None
    #: Kept in tables of their own in the store; ``insights`` is not kept.
    jobs: tuple[JobResult, ...] = field(default=(), metadata=NOT_A_COLUMN)
    #: What past runs teach about this run's commands (``learning/history.py``); None without
    #: learning.
    insights: Insights | None = field(default=None, metadata=NOT_A_COLUMN)
    #: Set when this run re-ran a job of run ``rerun_of`` from step ``from_step``
    #: (``vmrunner rerun``).
    rerun_of: str = ""
    from_step: int | None = None
    #: The run's own annotations, of no job (warnings about inputs, concurrency groups).
    run_annotations: tuple[AnnotationResult, ...] = field(
        default=(), metadata={"json": "annotations", **NOT_A_COLUMN}
    )

    def job(self, job_key: str) -> JobResult | None:
        return next((j for j in self.jobs if j.job_key == job_key), None)

    @property
    def annotations(self) -> tuple[AnnotationResult, ...]:
        """The run's own annotations, then every job's, job by job."""
        return (*self.run_annotations, *(a for job in self.jobs for a in job.annotations))

    @property
    def timeline(self) -> tuple[TimelineEntry, ...]:
        """Every job's machine lifecycle as one timeline, by time."""
        return merged(job.timeline for job in self.jobs)

    def lifecycle(self) -> TimelineProof:
        """The counts that show one machine per job, computed from the recorded timeline."""
        return prove(self.timeline)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data in the shape of ``RUN_RESULT_SCHEMA`` (stable for ``--json`` and the
        API).

        Times are Unix seconds (floats), durations seconds; absent values are ``null``.
        """
        return {
            "version": JSON_VERSION,
            **record_json(self, extra={"lifecycle": self.lifecycle().to_json()}),
        }


#: JSON Schema (draft 2020-12) of ``RunResult.to_json()``, generated from the dataclasses
#: (``reports/schemas.py``): every key is always present.
RUN_RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "vmrunner run result",
    **dataclass_schema(
        RunResult, extra={"version": {"const": JSON_VERSION}, "lifecycle": LIFECYCLE_SCHEMA}
    ),
}


def job_conclusion(result: Result, steps: tuple[StepResult, ...]) -> Result:
    """The job's result as GitHub reports it: never ``success`` after a step concluded
    ``failure``."""
    if result == "success" and any(s.conclusion == "failure" for s in steps):
        return "failure"
    return result


class ResultCollector:
    """An ``EventSink`` that builds the ``RunResult`` of the run whose events it receives.

    ``ResultCollector()`` takes no arguments; ``result()`` may be called at any time (a partial
    run is ``in_progress``). Events for a job or step never announced are tolerated (the job
    or step is created on the spot), because ``emit`` must not raise.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._run: RunResult | None = None
        self._jobs: dict[str, JobResult] = {}
        self._steps: dict[str, dict[int, StepResult]] = {}
        self._annotations: dict[str, list[AnnotationResult]] = {}
        self._snapshots: dict[str, list[SnapshotResult]] = {}
        self._timeline: dict[str, list[TimelineEntry]] = {}
        self._timeline_builder = TimelineBuilder()
        #: Every timeline entry in arrival order (``StoreSink`` writes them from here).
        self.timeline_entries: list[TimelineEntry] = []

    def emit(self, event: Event) -> None:
        entry = self._timeline_builder.entry(event)
        if entry is not None:
            self._job(entry.job_key, entry.time)
            self._timeline[entry.job_key].append(entry)
            self.timeline_entries.append(entry)
        match event:
            case RunStarted():
                self._reset()  # one collector, one run: a new run starts afresh
                self._run = RunResult(
                    run_id=event.run_id, workflow_name=event.workflow_name,
                    workflow_file=event.workflow_file, event_name=event.event_name,
                    status="in_progress", started_at=event.time, sha=event.sha, ref=event.ref,
                )
            case JobQueued():
                self._jobs[event.job_key] = replace(
                    self._job(event.job_key, event.time), job_id=event.job_id, name=event.name,
                    queued_at=event.time, matrix=dict(event.matrix), needs=tuple(event.needs),
                )
            case JobStarted():
                self._jobs[event.job_key] = replace(
                    self._job(event.job_key, event.time), status="in_progress",
                    started_at=event.time, session_id=event.session_id,
                    machine_id=event.machine_id, provider=event.provider, vm_type=event.vm_type,
                    from_pool=event.from_pool, allocation_seconds=event.allocation_seconds,
                )
            case StepStarted():
                self._job(event.job_key, event.time)
                self._steps[event.job_key][event.index] = StepResult(
                    index=event.index, kind=event.kind, name=event.name, step_id=event.step_id,
                    status="in_progress", started_at=event.time,
                )
            case StepFinished():
                self._job(event.job_key, event.time)
                steps = self._steps[event.job_key]
                started = steps.get(event.index) or StepResult(
                    index=event.index, kind="step", name=f"step {event.index}",
                    status="in_progress", started_at=event.time - event.duration,
                )
                steps[event.index] = replace(
                    started, status="completed", outcome=event.outcome,
                    conclusion=event.conclusion, finished_at=event.time, duration=event.duration,
                    exit_code=event.exit_code, timed_out=event.timed_out,
                    snapshot_id=event.snapshot_id or started.snapshot_id,
                    outputs=dict(event.outputs),
                )
            case Annotation():
                if event.job_key:  # else the run's own: no job to make up for it
                    self._job(event.job_key, event.time)
                self._annotations.setdefault(event.job_key, []).append(
                    AnnotationResult(
                        job_key=event.job_key, step_index=event.step_index, level=event.level,
                        message=event.message, time=event.time, file=event.file,
                        line=event.line, column=event.column, title=event.title,
                    )
                )
            case SnapshotTaken():
                self._job(event.job_key, event.time)
                self._snapshots[event.job_key].append(
                    SnapshotResult(event.step_index, event.snapshot_id, event.time, event.duration)
                )
                step = self._steps[event.job_key].get(event.step_index)
                if step is not None:
                    self._steps[event.job_key][event.step_index] = replace(
                        step, snapshot_id=event.snapshot_id
                    )
            case SnapshotRestored():
                self._job(event.job_key, event.time)
                taken = self._snapshots[event.job_key]
                index = next(
                    (s.step_index for s in taken if s.snapshot_id == event.snapshot_id), -1
                )
                taken.append(
                    SnapshotResult(
                        index, event.snapshot_id, event.time, event.duration, restored=True
                    )
                )
            case JobFinished():
                job = self._job(event.job_key, event.time)
                self._jobs[event.job_key] = replace(
                    job, status="completed", conclusion=event.result, finished_at=event.time,
                    duration=event.duration, outputs=dict(event.outputs),
                    rolled_back=event.rolled_back, reason=event.reason, summary=event.summary,
                )
            case RunFinished():
                run = self._run or _unknown_run(event.run_id, event.time - event.duration)
                self._run = replace(
                    run, status="completed", conclusion=event.conclusion,
                    finished_at=event.time, duration=event.duration,
                )
            case RunInsights():
                run = self._run or _unknown_run(event.run_id, event.time)
                self._run = replace(run, insights=event.insights)
            case LogLine() | GroupStarted() | GroupEnded():
                pass

    def _job(self, job_key: str, time: float) -> JobResult:
        job = self._jobs.get(job_key)
        if job is None:
            job = JobResult(
                job_key=job_key, job_id=job_key, name=job_key, status="queued", queued_at=time
            )
            self._jobs[job_key] = job
            self._steps[job_key] = {}
            self._annotations[job_key] = []
            self._snapshots[job_key] = []
            self._timeline[job_key] = []
        return job

    def result(self) -> RunResult:
        """The run as known so far, with GitHub's conclusion rules applied."""
        run = self._run or _unknown_run("", 0.0)
        jobs = tuple(self._built(key) for key in self._jobs if key)
        conclusion = run.conclusion
        if conclusion is not None and conclusion != "interrupted":
            conclusion = run_conclusion([conclusion, *(job.conclusion for job in jobs)], conclusion)
        return replace(
            run,
            jobs=jobs,
            conclusion=conclusion,
            run_annotations=tuple(self._annotations.get("", ())),
        )

    def job_result(self, job_key: str) -> JobResult | None:
        """One job as known so far (cheaper than ``result()`` while a run is going)."""
        return self._built(job_key) if job_key in self._jobs else None

    @property
    def run_id(self) -> str:
        return self._run.run_id if self._run else ""

    def _built(self, job_key: str) -> JobResult:
        job = self._jobs[job_key]
        steps = tuple(sorted(self._steps[job_key].values(), key=lambda s: s.index))
        conclusion = job.conclusion and job_conclusion(job.conclusion, steps)
        return replace(
            job, steps=steps, conclusion=conclusion,
            annotations=tuple(self._annotations[job_key]),
            snapshots=tuple(self._snapshots[job_key]),
            timeline=tuple(self._timeline[job_key]),
        )


def _unknown_run(run_id: str, started_at: float) -> RunResult:
    return RunResult(
        run_id=run_id, workflow_name="", workflow_file="", event_name="",
        status="in_progress", started_at=started_at,
    )


def human_duration(seconds: float | None) -> str:
    """``0.4s``, ``12.3s``, ``2m 03s``, ``1h 02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
