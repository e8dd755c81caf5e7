"""Keeping runs: ``StoreSink`` writes a run's events to the store as they arrive, ``RunHistory``
reads them back.

Wiring (``vmrunner run``)::

    with Store.open() as store, StoreSink(store) as keep:
        await run_workflow(workflow, options, sessions, FanOut(view, keep))
    # keep.errors lists StoreErrors met while writing (emit never raises)

Rows are written as their events arrive, each change in its own transaction (never a half
written record). Log lines and annotations are buffered and written with one statement when
a step, job or run finishes, when ``batch_size`` lines wait, or ``flush_interval`` seconds after
the last write; ``close()`` (or leaving the ``with``) writes what is left. A run whose
``RunFinished`` never came is ``interrupted``: ``close()`` records it so when the engine stopped
early, and ``RunHistory`` reports it so when the runner process that wrote it is gone (killed),
``RunHistory.mark_interrupted()`` writing that down for good.

The store only knows rows (``vmrunner.store``); turning events into rows and rows back into a
``RunResult`` happens here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from types import TracebackType
from typing import Any, TypeVar, get_args

from vmrunner.errors import RunNotFound, StoreError
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
    RunStarted,
    SnapshotRestored,
    SnapshotTaken,
    StepFinished,
    StepKind,
    StepStarted,
)
from vmrunner.reports.results import (
    AnnotationResult,
    Conclusion,
    JobResult,
    ResultCollector,
    RunResult,
    SnapshotResult,
    Status,
    StepResult,
)
from vmrunner.reports.timeline import TimelineEntry, TimelineKind
from vmrunner.sessions import Owner
from vmrunner.store import AnnotationRow, LogRow, RunJobRow, RunRow, RunStepRow, Store, TimelineRow

logger = logging.getLogger(__name__)

#: Log lines kept in memory before they are written anyway.
DEFAULT_BATCH_SIZE = 500
#: Seconds after which waiting log lines are written with the next line that arrives.
DEFAULT_FLUSH_INTERVAL = 0.5
INTERRUPTED_NOTE = "the runner stopped before the run finished"


class StoreSink:
    """An ``EventSink`` that keeps one run (runs, jobs, steps, logs, annotations) in ``store``.

    ``StoreSink(store, *, batch_size=500, flush_interval=0.5, clock=time.monotonic, owner=None)``;
    ``owner`` is the runner process recorded with the run (default: this process);
    ``rerun_of``/``from_step`` link a run made by ``vmrunner rerun`` to the run it continues.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        owner: Owner | None = None,
        rerun_of: str = "",
        from_step: int | None = None,
    ) -> None:
        self.store = store
        self._rerun_of, self._from_step = rerun_of, from_step
        #: Errors met while writing; ``emit`` must not raise, so they are kept (and logged).
        self.errors: list[StoreError] = []
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._clock = clock
        self._owner = owner or Owner.current()
        self._collector = ResultCollector()
        self._run: RunRow | None = None
        self._finished = False
        self._jobs: dict[str, int] = {}
        self._logs: list[LogRow] = []
        self._annotations: list[AnnotationRow] = []
        #: How many of the collector's timeline entries are written (they go with the logs).
        self._timeline_written = 0
        self._depth: dict[tuple[str, int], int] = {}
        self._last_flush = clock()

    def __enter__(self) -> StoreSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def emit(self, event: Event) -> None:
        self._collector.emit(event)
        try:
            self._write(event)
        except StoreError as exc:
            if not self.errors:
                logger.warning("cannot keep run %s in the store: %s", event.run_id, exc)
            self.errors.append(exc)

    def flush(self) -> None:
        """Write the waiting log lines and annotations now."""
        try:
            self._flush()
        except StoreError as exc:
            self.errors.append(exc)

    def close(self) -> None:
        """Write what is left; a run that did not finish is recorded as interrupted."""
        self.flush()
        if self._run is not None and not self._finished:
            self._finished = True
            try:
                self.store.finish_unfinished_run(
                    self._run.id, "interrupted", time.time(), INTERRUPTED_NOTE
                )
            except StoreError as exc:
                self.errors.append(exc)

    def _write(self, event: Event) -> None:
        match event:
            case RunStarted():
                if self._run is not None:  # the sink is reused: the previous run is over
                    self.close()
                    self._jobs, self._depth, self._finished = {}, {}, False
                    self._timeline_written = 0
                self._run = RunRow(
                    id=event.run_id, workflow_name=event.workflow_name,
                    workflow_file=event.workflow_file, event_name=event.event_name,
                    status="in_progress", started_at=event.time, owner_pid=self._owner.pid,
                    owner_start=self._owner.start, sha=event.sha, ref=event.ref,
                    rerun_of=self._rerun_of, from_step=self._from_step,
                )
                self.store.put_run(self._run)
            case LogLine():
                self._log(event.run_id, event.time, LogRow(
                    event.run_id, event.job_key, event.step_index, "line", event.stream,
                    event.text, event.time, event.group_depth,
                ))
            case GroupStarted():
                depth = self._depth.get((event.job_key, event.step_index), 0)
                self._depth[(event.job_key, event.step_index)] = depth + 1
                self._log(event.run_id, event.time, LogRow(
                    event.run_id, event.job_key, event.step_index, "group", "stdout",
                    event.title, event.time, depth,
                ))
            case GroupEnded():
                depth = max(0, self._depth.get((event.job_key, event.step_index), 0) - 1)
                self._depth[(event.job_key, event.step_index)] = depth
                self._log(event.run_id, event.time, LogRow(
                    event.run_id, event.job_key, event.step_index, "endgroup", "stdout", "",
                    event.time, depth,
                ))
            case Annotation():
                self._annotations.append(AnnotationRow(
                    event.run_id, event.job_key, event.step_index, event.level, event.message,
                    event.time, event.file, event.line, event.column, event.title,
                ))
                self._maybe_flush(event.run_id, event.time)
            case JobQueued() | JobStarted() | SnapshotRestored():
                with self.store.transaction():
                    self._put_job(event.run_id, event.job_key, event.time)
            case StepStarted() | StepFinished():
                with self.store.transaction():
                    if isinstance(event, StepFinished):
                        self._flush()
                    self._put_step(event.run_id, event.job_key, event.index, event.time)
            case SnapshotTaken():
                with self.store.transaction():
                    self._put_step(event.run_id, event.job_key, event.step_index, event.time)
            case JobFinished():
                with self.store.transaction():
                    self._flush()
                    self._put_job(event.run_id, event.job_key, event.time)
            case RunFinished():
                result = self._collector.result()
                with self.store.transaction():
                    self._flush()
                    run = self._ensure_run(event.run_id, event.time - event.duration)
                    self._run = replace(
                        run, status="completed", conclusion=result.conclusion,
                        finished_at=event.time, duration=event.duration,
                    )
                    self.store.put_run(self._run)
                self._finished = True

    def _ensure_run(self, run_id: str, time_: float) -> RunRow:
        """The run's row; one is made up if the run's first event was not ``RunStarted``."""
        if self._run is None:
            self._run = RunRow(
                id=run_id, workflow_name="", workflow_file="", event_name="", status="in_progress",
                started_at=time_, owner_pid=self._owner.pid, owner_start=self._owner.start,
            )
            self.store.put_run(self._run)
        return self._run

    def _put_job(self, run_id: str, job_key: str, time_: float) -> None:
        self._ensure_run(run_id, time_)
        job = self._collector.job_result(job_key)
        assert job is not None  # the collector saw the event first
        seq = self._jobs.setdefault(job_key, len(self._jobs))
        self.store.put_run_job(job_row(run_id, seq, job))

    def _put_step(self, run_id: str, job_key: str, index: int, time_: float) -> None:
        if job_key not in self._jobs:
            self._put_job(run_id, job_key, time_)
        job = self._collector.job_result(job_key)
        step = job.step(index) if job else None
        if step is not None:
            self.store.put_run_step(step_row(run_id, job_key, step))

    def _log(self, run_id: str, time_: float, row: LogRow) -> None:
        self._logs.append(row)
        self._maybe_flush(run_id, time_)

    def _maybe_flush(self, run_id: str, time_: float) -> None:
        waiting = len(self._logs) + len(self._annotations)
        if waiting >= self._batch_size or self._clock() - self._last_flush >= self._flush_interval:
            with self.store.transaction():
                self._ensure_run(run_id, time_)
                self._flush()

    def _flush(self) -> None:
        self._last_flush = self._clock()
        timeline = self._collector.timeline_entries[self._timeline_written:]
        if not (self._logs or self._annotations or timeline):
            return
        with self.store.transaction():
            if self._logs:
                self._ensure_run(self._logs[0].run_id, self._logs[0].time)
            elif self._annotations:
                self._ensure_run(self._annotations[0].run_id, self._annotations[0].time)
            elif timeline:
                self._ensure_run(self._collector.run_id, timeline[0].time)
            self.store.add_run_logs(self._logs)
            self.store.add_run_annotations(self._annotations)
            run_id = self._run.id if self._run else self._collector.run_id
            self.store.add_run_timeline([timeline_row(run_id, entry) for entry in timeline])
        self._logs, self._annotations = [], []
        self._timeline_written += len(timeline)


class RunHistory:
    """Runs kept in the store, read back as ``RunResult``s: ``RunHistory(store)``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list_runs(self, limit: int | None = 20, workflow: str | None = None) -> list[RunResult]:
        """The newest runs first; only those of ``workflow`` (its name or file) if given."""
        return [self._result(row) for row in self.store.runs(limit=limit, workflow=workflow)]

    def resolve(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names, exactly or by a unique prefix (as git does)."""
        if run_id and self.store.run(run_id) is not None:
            return run_id
        matches = self.store.run_ids(run_id, limit=5) if run_id else []
        if not matches:
            raise RunNotFound(f"no run {run_id!r} (`vmrunner runs list` shows the runs kept)")
        if len(matches) > 1:
            shown = ", ".join(matches[:4]) + (", ..." if len(matches) > 4 else "")
            raise RunNotFound(f"the run id prefix {run_id!r} is ambiguous: {shown}")
        return matches[0]

    def get_run(self, run_id: str) -> RunResult:
        """The run ``run_id`` (or a unique prefix of it) names; ``RunNotFound`` otherwise."""
        row = self.store.run(self.resolve(run_id))
        if row is None:
            raise RunNotFound(f"no run {run_id!r}")
        return self._result(row)

    def logs(
        self, run_id: str, job_key: str | None = None, step: int | None = None
    ) -> list[LogRow]:
        """A run's output in order (lines and group markers); one job's or one step's if asked."""
        return self.store.run_logs(self.resolve(run_id), job_key, step)

    def mark_interrupted(self, now: float | None = None) -> list[str]:
        """Record as interrupted every unfinished run whose runner process is gone; their ids."""
        marked = []
        for row in self.store.runs(limit=None, unfinished=True):
            if not Owner(
                row.owner_pid, row.owner_start
            ).alive() and self.store.finish_unfinished_run(
                row.id, "interrupted", time.time() if now is None else now, _gone(row)
            ):
                marked.append(row.id)
        return marked

    def _result(self, row: RunRow) -> RunResult:
        steps: dict[str, list[StepResult]] = {}
        for step in self.store.run_steps(row.id):
            steps.setdefault(step.job_key, []).append(step_result(step))
        annotations: dict[str, list[AnnotationResult]] = {}
        for annotation in self.store.run_annotations(row.id):
            annotations.setdefault(annotation.job_key, []).append(annotation_result(annotation))
        timelines: dict[str, list[TimelineEntry]] = {}
        for moment in self.store.run_timeline(row.id):
            timelines.setdefault(moment.job_key, []).append(timeline_entry(moment))
        jobs = tuple(
            job_result(
                job,
                steps.get(job.job_key, []),
                annotations.get(job.job_key, []),
                timelines.get(job.job_key, []),
            )
            for job in self.store.run_jobs(row.id)
        )
        status: Status = _choice(row.status, Status, "in_progress")
        conclusion: Conclusion | None = _choice(row.conclusion, Conclusion, None)
        if status != "completed" and not Owner(row.owner_pid, row.owner_start).alive():
            status, conclusion = "completed", "interrupted"
        return RunResult(
            run_id=row.id, workflow_name=row.workflow_name, workflow_file=row.workflow_file,
            event_name=row.event_name, status=status, started_at=row.started_at, sha=row.sha,
            ref=row.ref, conclusion=conclusion, finished_at=row.finished_at,
            duration=row.duration, jobs=jobs, rerun_of=row.rerun_of, from_step=row.from_step,
            run_annotations=tuple(annotations.get("", [])),
        )


def _gone(row: RunRow) -> str:
    return f"its runner (pid {row.owner_pid}) is gone"


def job_row(run_id: str, seq: int, job: JobResult) -> RunJobRow:
    """A job's row (its steps and annotations have their own)."""
    return RunJobRow(
        run_id=run_id, job_key=job.job_key, seq=seq, job_id=job.job_id, name=job.name,
        status=job.status, conclusion=job.conclusion, matrix=dict(job.matrix), needs=job.needs,
        queued_at=job.queued_at, started_at=job.started_at, finished_at=job.finished_at,
        duration=job.duration, allocation_seconds=job.allocation_seconds,
        session_id=job.session_id, machine_id=job.machine_id, provider=job.provider,
        vm_type=job.vm_type, from_pool=job.from_pool, outputs=dict(job.outputs),
        snapshots=tuple(asdict(s) for s in job.snapshots), rolled_back=job.rolled_back,
        reason=job.reason, summary=job.summary,
    )


def step_row(run_id: str, job_key: str, step: StepResult) -> RunStepRow:
    return RunStepRow(
        run_id=run_id, job_key=job_key, step_index=step.index, kind=step.kind, name=step.name,
        status=step.status, started_at=step.started_at, step_id=step.step_id,
        outcome=step.outcome, conclusion=step.conclusion, finished_at=step.finished_at,
        duration=step.duration, exit_code=step.exit_code, timed_out=step.timed_out,
        snapshot_id=step.snapshot_id, outputs=dict(step.outputs),
    )


def job_result(
    row: RunJobRow,
    steps: list[StepResult],
    annotations: list[AnnotationResult],
    timeline: list[TimelineEntry] | None = None,
) -> JobResult:
    return JobResult(
        job_key=row.job_key, job_id=row.job_id, name=row.name,
        status=_choice(row.status, Status, "queued"), queued_at=row.queued_at,
        matrix=dict(row.matrix), needs=tuple(row.needs),
        conclusion=_choice(row.conclusion, Result, None), started_at=row.started_at,
        finished_at=row.finished_at, duration=row.duration,
        allocation_seconds=row.allocation_seconds, session_id=row.session_id,
        machine_id=row.machine_id, provider=row.provider, vm_type=row.vm_type,
        from_pool=row.from_pool, steps=tuple(steps), outputs=dict(row.outputs),
        annotations=tuple(annotations),
        snapshots=tuple(SnapshotResult(**dict(s)) for s in row.snapshots),
        rolled_back=row.rolled_back, reason=row.reason, summary=row.summary,
        timeline=tuple(timeline or ()),
    )


def timeline_row(run_id: str, entry: TimelineEntry) -> TimelineRow:
    return TimelineRow(
        run_id=run_id,
        job_key=entry.job_key,
        time=entry.time,
        kind=entry.kind,
        session_id=entry.session_id,
        machine_id=entry.machine_id,
        state=entry.state,
        step_index=entry.step_index,
        step_kind=entry.step_kind,
        name=entry.name,
        exit_code=entry.exit_code,
        outcome=entry.outcome,
        seconds=entry.seconds,
        detail=entry.detail,
    )


def timeline_entry(row: TimelineRow) -> TimelineEntry:
    kind: TimelineKind = _choice(row.kind, TimelineKind, "session_state")
    return TimelineEntry(
        time=row.time, job_key=row.job_key, kind=kind, session_id=row.session_id,
        machine_id=row.machine_id, state=row.state, step_index=row.step_index,
        step_kind=row.step_kind, name=row.name, exit_code=row.exit_code, outcome=row.outcome,
        seconds=row.seconds, detail=row.detail,
    )


def step_result(row: RunStepRow) -> StepResult:
    kind: StepKind = _choice(row.kind, StepKind, "step")
    return StepResult(
        index=row.step_index, kind=kind, name=row.name,
        status=_choice(row.status, Status, "in_progress"), started_at=row.started_at,
        step_id=row.step_id, outcome=_choice(row.outcome, Result, None),
        conclusion=_choice(row.conclusion, Result, None), finished_at=row.finished_at,
        duration=row.duration, exit_code=row.exit_code, timed_out=row.timed_out,
        snapshot_id=row.snapshot_id, outputs=dict(row.outputs),
    )


def annotation_result(row: AnnotationRow) -> AnnotationResult:
    level: AnnotationLevel = _choice(row.level, AnnotationLevel, "notice")
    return AnnotationResult(
        job_key=row.job_key, step_index=row.step_index, level=level, message=row.message,
        time=row.time, file=row.file, line=row.line, column=row.column, title=row.title,
    )


_T = TypeVar("_T")


def _choice(value: str | None, literal: Any, default: _T) -> _T:
    """``value`` if it is one of the ``Literal`` type's words, else ``default`` (a newer writer's
    word)."""
    return value if value in get_args(literal) else default  # type: ignore[return-value]
