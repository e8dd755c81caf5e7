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

The store keeps the results themselves (``RunResult`` in a ``RunRow`` naming its runner,
``JobResult``, ``StepResult``, ``AnnotationResult``, ``TimelineEntry``): its columns are their
fields, and it is given their types here since it imports nothing above it. Log lines are
``LogRow``s.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any

from vmrunner.errors import RunNotFound, StoreDiskError, StoreError
from vmrunner.reports.events import (
    Annotation,
    Event,
    GroupEnded,
    GroupStarted,
    JobFinished,
    JobQueued,
    JobStarted,
    LogLine,
    RunFinished,
    RunStarted,
    SnapshotRestored,
    SnapshotTaken,
    StepFinished,
    StepStarted,
)
from vmrunner.reports.results import (
    AnnotationResult,
    JobResult,
    ResultCollector,
    RunResult,
    StepResult,
)
from vmrunner.reports.timeline import TimelineEntry
from vmrunner.sessions import Owner
from vmrunner.store import LogRow, RunRow, Store

logger = logging.getLogger(__name__)

#: Log lines kept in memory before they are written anyway.
DEFAULT_BATCH_SIZE = 500
#: Seconds after which waiting log lines are written with the next line that arrives.
DEFAULT_FLUSH_INTERVAL = 0.5
INTERRUPTED_NOTE = "the runner stopped before the run finished"
#: Log lines and annotations kept in memory while the store refuses them (a full disk).
MAX_PENDING = 50_000
#: Seconds before log lines are tried again after a full disk (rows are tried at every change).
DISK_RETRY_INTERVAL = 2.0
#: Errors kept in ``StoreSink.errors``.
MAX_ERRORS = 20
#: Bytes of output kept per step (its lines' UTF-8 text); the rest is dropped after a mark.
DEFAULT_MAX_STEP_LOG = 64 << 20
ENV_MAX_STEP_LOG = "VMRUNNER_MAX_STEP_LOG_BYTES"


def max_step_log_default() -> int:
    """``$VMRUNNER_MAX_STEP_LOG_BYTES`` if it is a positive number of bytes, else 64 MiB."""
    value = os.environ.get(ENV_MAX_STEP_LOG, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_STEP_LOG


def truncation_mark(limit: int) -> str:
    """The line that ends a step's kept output once it reached ``limit`` bytes."""
    return (
        f"[log truncated: this step's output reached {limit / (1 << 20):g} MiB, the most kept "
        f"per step; the rest was not kept]"
    )


class StoreSink:
    """An ``EventSink`` that keeps one run (runs, jobs, steps, logs, annotations) in ``store``.

    ``StoreSink(store, *, batch_size=500, flush_interval=0.5, clock=time.monotonic, owner=None)``;
    ``owner`` is the runner process recorded with the run (default: this process);
    ``max_step_log`` caps the bytes of output kept per step (default ``max_step_log_default()``):
    past it one ``[log truncated: ...]`` line is kept and the step's further output dropped;
    ``rerun_of``/``from_step`` link a run made by ``vmrunner rerun`` to the run it continues.

    A write that fails leaves what it carried waiting: rows are marked and written again with
    the next write, log lines stay buffered (up to ``MAX_PENDING``; later ones are counted in
    ``lost``). After a full disk (``StoreDiskError``) log lines wait ``DISK_RETRY_INTERVAL``
    before the next try. The final write puts the run's rows and annotations first, giving
    up the store's reserve if the disk is full, then the log lines: a full disk costs log
    lines, never the record of how the run ended.
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
        max_step_log: int | None = None,
    ) -> None:
        self.store = store
        self.max_step_log = max_step_log or max_step_log_default()
        #: Bytes of output kept per (job, step) so far; a step past the cap is dropped.
        self._log_bytes: dict[tuple[str, int], int] = {}
        #: Lines dropped because their step's output passed ``max_step_log``.
        self.truncated_lines = 0
        self._rerun_of, self._from_step = rerun_of, from_step
        #: Errors met while writing (the first ``MAX_ERRORS``); ``emit`` must not raise.
        self.errors: list[StoreError] = []
        #: The first full or failing disk met, if any.
        self.disk_error: StoreDiskError | None = None
        #: Log lines and annotations that could not be kept.
        self.lost = 0
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._clock = clock
        self._owner = owner or Owner.current()
        self._collector = ResultCollector()
        self._run: RunRow[RunResult] | None = None
        self._finished = False
        self._jobs: dict[str, int] = {}
        #: Rows changed since they were last written (dicts: ordered sets).
        self._dirty_run = False
        self._dirty_jobs: dict[str, None] = {}
        self._dirty_steps: dict[tuple[str, int], None] = {}
        self._logs: list[LogRow] = []
        self._annotations: list[AnnotationResult] = []
        #: How many of the collector's timeline entries are written (they go with the logs).
        self._timeline_written = 0
        self._depth: dict[tuple[str, int], int] = {}
        self._last_flush = clock()
        self._retry_at = 0.0
        self._lost_noted = 0
        self._note_base: str | None = None

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
            self._failed(exc)

    def flush(self) -> None:
        """Write the waiting rows, log lines and annotations now."""
        try:
            self._sync(logs=True)
        except StoreError as exc:
            self._failed(exc)

    def close(self) -> None:
        """Write what is left; a run that did not finish is recorded as interrupted."""
        if self._run is not None and not self._finished:
            self._finished = True
            now = time.time()
            run = self._run.run
            self._run = replace(
                self._run,
                run=replace(
                    run, status="completed", conclusion="interrupted", finished_at=now,
                    duration=max(0.0, now - run.started_at),
                ),
                note=INTERRUPTED_NOTE,
            )
            self._dirty_run = True
        self._final_write()

    @property
    def recorded(self) -> bool:
        """Whether the run's record is in the store as it ended (log lines aside)."""
        return self._finished and not (self._dirty_run or self._dirty_jobs or self._dirty_steps)

    def _failed(self, exc: StoreError) -> None:
        if not self.errors:
            logger.warning(
                "cannot keep run %s in the store: %s", self._collector.run_id or "?", exc
            )
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(exc)
        if isinstance(exc, StoreDiskError):
            self.disk_error = self.disk_error or exc
            self._retry_at = self._clock() + DISK_RETRY_INTERVAL

    def _write(self, event: Event) -> None:
        match event:
            case RunStarted():
                if self._run is not None:  # the sink is reused: the previous run is over
                    self.close()
                    self._jobs, self._depth, self._finished = {}, {}, False
                    self._log_bytes = {}
                    self._timeline_written = 0
                    # What the previous run could not write is its loss, not this run's.
                    self._rows_written()
                    self._logs, self._annotations = [], []
                    self.lost, self._lost_noted, self._note_base = 0, 0, None
                self._run = RunRow(
                    RunResult(
                        run_id=event.run_id, workflow_name=event.workflow_name,
                        workflow_file=event.workflow_file, event_name=event.event_name,
                        status="in_progress", started_at=event.time, sha=event.sha,
                        ref=event.ref, rerun_of=self._rerun_of, from_step=self._from_step,
                    ),
                    self._owner.pid, self._owner.start,
                )
                self._dirty_run = True
                self._sync()
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
                if self._keep():
                    self._annotations.append(AnnotationResult(
                        event.job_key, event.step_index, event.level, event.message, event.time,
                        event.file, event.line, event.column, event.title,
                    ))
                self._maybe_flush(event.run_id, event.time)
            case JobQueued() | JobStarted() | SnapshotRestored():
                self._mark_job(event.run_id, event.job_key, event.time)
                self._sync()
            case StepStarted() | StepFinished():
                self._mark_step(event.run_id, event.job_key, event.index, event.time)
                self._sync(logs=isinstance(event, StepFinished))
            case SnapshotTaken():
                self._mark_step(event.run_id, event.job_key, event.step_index, event.time)
                self._sync()
            case JobFinished():
                self._mark_job(event.run_id, event.job_key, event.time)
                self._sync(logs=True)
            case RunFinished():
                result = self._collector.result()
                run = self._ensure_run(event.run_id, event.time - event.duration)
                self._run = replace(run, run=replace(
                    run.run, status="completed", conclusion=result.conclusion,
                    finished_at=event.time, duration=event.duration,
                ))
                self._dirty_run = True
                self._finished = True
                self._final_write()

    def _ensure_run(self, run_id: str, time_: float) -> RunRow[RunResult]:
        """The run's row; one is made up if the run's first event was not ``RunStarted``."""
        if self._run is None:
            self._run = RunRow(
                RunResult(
                    run_id=run_id, workflow_name="", workflow_file="", event_name="",
                    status="in_progress", started_at=time_,
                ),
                self._owner.pid, self._owner.start,
            )
            self._dirty_run = True
        return self._run

    def _mark_job(self, run_id: str, job_key: str, time_: float) -> None:
        self._ensure_run(run_id, time_)
        self._jobs.setdefault(job_key, len(self._jobs))
        self._dirty_jobs[job_key] = None

    def _mark_step(self, run_id: str, job_key: str, index: int, time_: float) -> None:
        if job_key not in self._jobs:
            self._mark_job(run_id, job_key, time_)
        self._dirty_steps[(job_key, index)] = None

    def _keep(self) -> bool:
        """Whether one more log line or annotation fits in memory while the store refuses them."""
        if len(self._logs) + len(self._annotations) < MAX_PENDING:
            return True
        self.lost += 1
        return False

    def _log(self, run_id: str, time_: float, row: LogRow) -> None:
        kept = self._capped(row)
        if kept is not None and self._keep():
            self._logs.append(kept)
        self._maybe_flush(run_id, time_)

    def _capped(self, row: LogRow) -> LogRow | None:
        """``row``; the truncation mark for the first row past the step's cap; None after it."""
        key = (row.job_key, row.step_index)
        kept = self._log_bytes.get(key, 0)
        if kept > self.max_step_log:
            self.truncated_lines += 1
            return None
        kept += len(row.text) if row.text.isascii() else len(row.text.encode())
        if kept <= self.max_step_log:
            self._log_bytes[key] = kept
            return row
        self._log_bytes[key] = self.max_step_log + 1
        self.truncated_lines += 1
        return replace(row, kind="line", stream="stdout", text=truncation_mark(self.max_step_log))

    def _maybe_flush(self, run_id: str, time_: float) -> None:
        now = self._clock()
        if now < self._retry_at:
            return
        waiting = len(self._logs) + len(self._annotations)
        if waiting >= self._batch_size or now - self._last_flush >= self._flush_interval:
            self._ensure_run(run_id, time_)
            self._sync(logs=True)

    def _sync(self, *, logs: bool = False) -> None:
        """Write the changed rows, and the waiting log lines if ``logs``, in one transaction."""
        if logs:
            self._last_flush = self._clock()
        timeline = self._collector.timeline_entries[self._timeline_written:] if logs else []
        written = len(self._logs), len(self._annotations)
        with self.store.transaction():
            self._write_rows()
            if logs:
                self.store.add_run_logs(self._logs)
                self.store.add_run_annotations(self._run_id(), self._annotations)
                self.store.add_run_timeline(self._run_id(), timeline)
        self._rows_written()
        if logs:
            del self._logs[: written[0]]
            del self._annotations[: written[1]]
            self._timeline_written += len(timeline)

    def _run_id(self) -> str:
        return self._run.run.run_id if self._run else self._collector.run_id

    def _write_rows(self) -> None:
        """Upsert the changed rows, parents first (the run, then jobs, then steps)."""
        if self._run is None and not (
            self._dirty_jobs or self._dirty_steps or self._logs or self._annotations
        ):
            return
        run = self._ensure_run(self._collector.run_id, time.time())
        if self._dirty_run:
            self.store.put_run(run)
        for job_key in self._dirty_jobs:
            job = self._collector.job_result(job_key)
            if job is not None:
                self.store.put_run_job(run.run.run_id, self._jobs[job_key], job)
        for job_key, index in self._dirty_steps:
            job = self._collector.job_result(job_key)
            step = job.step(index) if job else None
            if step is not None:
                self.store.put_run_step(run.run.run_id, job_key, step)

    def _rows_written(self) -> None:
        self._dirty_run = False
        self._dirty_jobs.clear()
        self._dirty_steps.clear()

    def _final_write(self) -> None:
        """Everything left, the record of how the run ended first (see the class docstring)."""
        try:
            self._with_reserve(self._write_record)
        except StoreError as exc:
            self._failed(exc)
            return  # the rows could not be written: log lines after them would be orphans
        while self._logs or self._collector.timeline_entries[self._timeline_written:]:
            chunk = self._logs[: self._batch_size]
            timeline = self._collector.timeline_entries[self._timeline_written:]
            try:
                self._with_reserve(functools.partial(self._write_logs, chunk, timeline))
            except StoreError as exc:
                self._failed(exc)
                break
            del self._logs[: len(chunk)]
            self._timeline_written += len(timeline)
        if self._logs or self.lost:
            self.lost += len(self._logs)
            self._logs.clear()
            self._note_lost()

    def _write_record(self) -> None:
        with self.store.transaction():
            self._write_rows()
            self.store.add_run_annotations(self._run_id(), self._annotations)
        self._rows_written()
        self._annotations.clear()

    def _write_logs(self, chunk: list[LogRow], timeline: list[TimelineEntry]) -> None:
        with self.store.transaction():
            self.store.add_run_logs(chunk)
            self.store.add_run_timeline(self._run_id(), timeline)

    def _with_reserve(self, write: Callable[[], None]) -> None:
        """``write()``; once more after giving up the store's reserve if the disk was full."""
        try:
            write()
        except StoreDiskError as exc:
            if not self.store.release_reserve():
                raise
            self._failed(exc)
            write()

    def _note_lost(self) -> None:
        """Say on the run's row that log lines are missing, and why (best effort)."""
        if self._run is None or self.lost == self._lost_noted:
            return
        if self._note_base is None:
            self._note_base = self._run.note
        why = f": {self.disk_error}" if self.disk_error else ""
        note = f"{self.lost} log lines and annotations could not be kept{why}"
        self._run = replace(
            self._run, note=f"{self._note_base}; {note}" if self._note_base else note
        )
        self._lost_noted = self.lost
        try:
            self.store.put_run(self._run)
        except StoreError as exc:
            self._failed(exc)


class RunHistory:
    """Runs kept in the store, read back as ``RunResult``s: ``RunHistory(store)``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list_runs(self, limit: int | None = 20, workflow: str | None = None) -> list[RunResult]:
        """The newest runs first; only those of ``workflow`` (its name or file) if given."""
        rows = self.store.runs(RunResult, limit=limit, workflow=workflow)
        return [self._result(row) for row in rows]

    def resolve(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names, exactly or by a unique prefix (as git does);
        ``latest`` is the newest run, ``-N`` the N-th newest (``-1``: the newest)."""
        if run_id == "latest" or (run_id[:1] == "-" and run_id[1:].isdigit()):
            back = 1 if run_id == "latest" else int(run_id[1:])
            rows = self.store.runs(RunResult, limit=back) if back > 0 else []
            if len(rows) < back or not rows:
                raise RunNotFound(
                    f"no run {run_id!r}: {len(rows)} runs are kept (`vmrunner runs list`)"
                )
            return rows[back - 1].run.run_id
        if run_id and self.store.run(run_id, RunResult) is not None:
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
        row = self.store.run(self.resolve(run_id), RunResult)
        if row is None:
            raise RunNotFound(f"no run {run_id!r}")
        return self._result(row)

    def logs(
        self, run_id: str, job_key: str | None = None, step: int | None = None
    ) -> list[LogRow]:
        """A run's output in order (lines and group markers); one job's or one step's if asked."""
        return self.store.run_logs(self.resolve(run_id), job_key, step)

    def iter_logs(
        self, run_id: str, job_key: str | None = None, step: int | None = None, *, after: int = 0
    ) -> Iterator[tuple[int, LogRow]]:
        """``logs`` as (sequence number, row), read a page at a time (bounded memory), from the
        line after number ``after`` (to follow a run as it is written)."""
        return self.store.iter_run_logs(self.resolve(run_id), job_key, step, after=after)

    def mark_interrupted(self, now: float | None = None) -> list[str]:
        """Record as interrupted every unfinished run whose runner process is gone; their ids."""
        marked = []
        for row in self.store.runs(RunResult, limit=None, unfinished=True):
            if not Owner(
                row.owner_pid, row.owner_start
            ).alive() and self.store.finish_unfinished_run(
                row.run.run_id, "interrupted", time.time() if now is None else now, _gone(row)
            ):
                marked.append(row.run.run_id)
        return marked

    def _result(self, row: RunRow[RunResult]) -> RunResult:
        run_id = row.run.run_id
        steps: dict[str, list[StepResult]] = {}
        for job_key, step in self.store.run_steps(run_id, StepResult):
            steps.setdefault(job_key, []).append(step)
        annotations: dict[str, list[AnnotationResult]] = {}
        for annotation in self.store.run_annotations(run_id, AnnotationResult):
            annotations.setdefault(annotation.job_key, []).append(annotation)
        timelines: dict[str, list[TimelineEntry]] = {}
        for moment in self.store.run_timeline(run_id, TimelineEntry):
            timelines.setdefault(moment.job_key, []).append(moment)
        jobs = tuple(
            replace(
                job,
                steps=tuple(steps.get(job.job_key, ())),
                annotations=tuple(annotations.get(job.job_key, ())),
                timeline=tuple(timelines.get(job.job_key, ())),
            )
            for job in self.store.run_jobs(run_id, JobResult)
        )
        run = replace(row.run, jobs=jobs, run_annotations=tuple(annotations.get("", [])))
        if run.status != "completed" and not Owner(row.owner_pid, row.owner_start).alive():
            run = replace(run, status="completed", conclusion="interrupted")
        return run


def _gone(row: RunRow[Any]) -> str:
    return f"its runner (pid {row.owner_pid}) is gone"
