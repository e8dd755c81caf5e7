"""The machine lifecycle timeline of a run: the evidence that every job had one machine.

A run promises one machine per job: allocated once when the job starts, every setup command,
step, post step and cleanup command run in it, released exactly once when the job ends. The
timeline shows that promise kept, run by run, from what was recorded while it happened:

- ``TimelineBuilder`` turns run events into ``TimelineEntry``s (allocation requested, machine
  allocated, each session state, each command started and finished with the machine it ran in,
  snapshots and restores, release requested, machine released). ``ResultCollector`` keeps them
  per job; ``StoreSink`` persists them; ``RunHistory`` reads them back.
- ``prove`` computes the counts from those entries alone (never from what should have
  happened): machines allocated and released, commands per machine, whether each command ran
  in its own job's machine, how many machines were alive at once.
- ``visible`` drops the transient ``executing``/``paused`` round trips that every command and
  snapshot makes, for people reading a table; the JSON keeps every entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from vmrunner.reports.events import (
    AllocationRequested,
    Event,
    JobStarted,
    MachineReleased,
    ReleaseRequested,
    SessionStateChanged,
    SnapshotRestored,
    SnapshotTaken,
    StepFinished,
    StepStarted,
)
from vmrunner.reports.schemas import COUNT, JSON_OMIT, dataclass_schema, record_json

#: What happened, in the order a job's life goes.
TimelineKind = Literal[
    "allocation_requested",
    "machine_allocated",
    "session_state",
    "command_started",
    "command_finished",
    "snapshot_taken",
    "snapshot_restored",
    "release_requested",
    "machine_released",
]
KINDS: tuple[str, ...] = get_args(TimelineKind)
#: Session states a command or snapshot passes through and leaves again.
TRANSIENT_STATES = frozenset({"executing", "paused"})


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One moment of a job's machine lifecycle (wall-clock ``time``, Unix seconds).

    ``state`` is the session's state once this happened, as last reported by the session
    manager; ``machine_id`` for a command is the machine of the session that ran it.
    """

    time: float
    job_key: str
    kind: TimelineKind = field(metadata={"unknown": "session_state"})
    session_id: str = ""
    machine_id: str = ""
    state: str = ""
    #: The command's position in its job (commands, snapshots); None otherwise.
    step_index: int | None = None
    #: setup, step, post or cleanup (commands only).
    step_kind: str = ""
    name: str = ""
    exit_code: int | None = None
    #: A finished command's outcome; a release's: success, or failure (the machine was abandoned).
    outcome: str = ""
    #: Allocation time, a command's or snapshot's duration (seconds).
    seconds: float | None = None
    #: Provider and machine type, snapshot id, or the session manager's note.
    detail: str = ""

@dataclass(slots=True)
class _JobTrack:
    session_id: str = ""
    machine_id: str = ""
    state: str = ""
    names: dict[int, tuple[str, str]] = field(default_factory=dict)


class TimelineBuilder:
    """Turns the events of one run into timeline entries (``entry`` is None for other events)."""

    def __init__(self) -> None:
        self._jobs: dict[str, _JobTrack] = {}

    def entry(self, event: Event) -> TimelineEntry | None:
        match event:
            case AllocationRequested():
                return self._new(
                    event.job_key,
                    event.time,
                    "allocation_requested",
                    detail=f"{event.provider} {event.vm_type}",
                )
            case JobStarted():
                track = self._track(event.job_key)
                track.session_id, track.machine_id = event.session_id, event.machine_id
                pool = " from the warm pool" if event.from_pool else ""
                return self._new(
                    event.job_key,
                    event.time,
                    "machine_allocated",
                    seconds=event.allocation_seconds,
                    detail=f"{event.provider} {event.vm_type}{pool}",
                )
            case SessionStateChanged():
                track = self._track(event.job_key)
                track.session_id, track.state = event.session_id, event.state
                track.machine_id = event.machine_id or track.machine_id
                return self._new(
                    event.job_key,
                    event.time,
                    "session_state",
                    machine_id=event.machine_id,
                    detail=event.note,
                )
            case StepStarted():
                self._track(event.job_key).names[event.index] = (event.kind, event.name)
                return self._new(
                    event.job_key, event.time, "command_started", machine_id=event.machine_id,
                    step_index=event.index, step_kind=event.kind, name=event.name,
                )
            case StepFinished():
                kind, name = self._track(event.job_key).names.get(
                    event.index, ("step", f"step {event.index}")
                )
                return self._new(
                    event.job_key, event.time, "command_finished", machine_id=event.machine_id,
                    step_index=event.index, step_kind=kind, name=name, exit_code=event.exit_code,
                    outcome=event.outcome, seconds=event.duration,
                )
            case SnapshotTaken():
                return self._new(
                    event.job_key, event.time, "snapshot_taken", step_index=event.step_index,
                    seconds=event.duration, detail=event.snapshot_id,
                )
            case SnapshotRestored():
                return self._new(
                    event.job_key,
                    event.time,
                    "snapshot_restored",
                    seconds=event.duration,
                    detail=event.snapshot_id,
                )
            case ReleaseRequested():
                return self._new(
                    event.job_key, event.time, "release_requested", machine_id=event.machine_id
                )
            case MachineReleased():
                return self._new(
                    event.job_key, event.time, "machine_released", machine_id=event.machine_id,
                    outcome="success" if event.ok else "failure", detail=event.note,
                )
        return None

    def _track(self, job_key: str) -> _JobTrack:
        return self._jobs.setdefault(job_key, _JobTrack())

    def _new(
        self, job_key: str, time: float, kind: TimelineKind, *, machine_id: str = "", **values: Any
    ) -> TimelineEntry:
        track = self._track(job_key)
        return TimelineEntry(
            time,
            job_key,
            kind,
            session_id=track.session_id,
            machine_id=machine_id or track.machine_id,
            state=track.state,
            **values,
        )


def merged(timelines: Iterable[Sequence[TimelineEntry]]) -> tuple[TimelineEntry, ...]:
    """Several jobs' entries as one timeline, by time (a job's own order kept on ties)."""
    return tuple(sorted((e for entries in timelines for e in entries), key=lambda e: e.time))


def visible(entries: Sequence[TimelineEntry]) -> list[TimelineEntry]:
    """The entries worth a row in a table (every entry's ``state`` still shows the state).

    Left out: the ``executing``/``paused`` round trips that each command and snapshot makes (a
    return to another state, e.g. ``rolled_back``, stays), and a state change told again at
    once by the job's next entry (``active`` by "machine allocated", ``released`` by
    "machine released").
    """
    shown: list[TimelineEntry] = []
    before: dict[str, str] = {}
    current: dict[str, str] = {}
    for position, entry in enumerate(entries):
        if entry.kind != "session_state":
            shown.append(entry)
            continue
        key, state = entry.session_id or entry.job_key, entry.state
        previous = current.get(key, "")
        current[key] = state
        if state in TRANSIENT_STATES:
            before.setdefault(key, previous)
            continue
        if previous in TRANSIENT_STATES and before.pop(key, None) == state:
            continue
        before.pop(key, None)
        after = next((e for e in entries[position + 1:] if e.job_key == entry.job_key), None)
        if after is not None and after.kind != "session_state" and after.state == state:
            continue
        shown.append(entry)
    return shown


def state_during(entries: Sequence[TimelineEntry], position: int) -> str:
    """The session state shown for ``entries[position]``: for a command, ``executing`` when the
    session reported it between the command's start and finish; else the entry's own state."""
    entry = entries[position]
    if entry.kind != "command_started":
        return entry.state
    for later in entries[position + 1:]:
        if later.job_key != entry.job_key:
            continue
        if later.kind == "command_finished" and later.step_index == entry.step_index:
            break
        if later.kind == "session_state" and later.state == "executing":
            return "executing"
    return entry.state


@dataclass(frozen=True, slots=True)
class MachineUse:
    """One machine as the timeline saw it: who had it, when, and what ran in it."""

    machine_id: str
    job_key: str
    session_id: str
    allocated_at: float
    released_at: float | None
    #: Successful releases recorded (exactly one when the promise is kept).
    releases: int = field(metadata=COUNT)
    #: Commands started in this machine.
    commands: int = field(metadata=COUNT)

    def overlaps(self, other: MachineUse) -> bool:
        """Both machines were alive at the same moment (from their recorded times)."""
        end, other_end = self.released_at or float("inf"), other.released_at or float("inf")
        return self.allocated_at < other_end and other.allocated_at < end


@dataclass(frozen=True, slots=True)
class TimelineProof:
    """Counts computed from a run's timeline entries: the invariants, checked."""

    #: Jobs that were given a machine.
    jobs: int = field(metadata=COUNT)
    machines_allocated: int = field(metadata=COUNT)
    machines_released: int = field(metadata=COUNT)
    machines: tuple[MachineUse, ...]
    commands: int = field(metadata=COUNT)
    #: Commands that ran in a machine other than their job's (or in none): 0 when kept.
    stray_commands: int = field(metadata=COUNT)
    #: Jobs that received more than one machine: none when kept (not in the JSON).
    jobs_with_several_machines: tuple[str, ...] = field(metadata=JSON_OMIT)
    #: The most machines alive at one moment.
    peak_machines: int = field(metadata=COUNT)

    @property
    def total_machines(self) -> int:
        return len({m.machine_id for m in self.machines})

    @property
    def commands_in_own_machine(self) -> bool:
        return self.stray_commands == 0

    @property
    def released_once(self) -> bool:
        """Every machine allocated was released exactly once."""
        return all(m.releases == 1 for m in self.machines)

    @property
    def kept(self) -> bool:
        """One machine per job, every command in it, each released once."""
        return (
            self.machines_allocated == self.jobs == self.machines_released
            and self.commands_in_own_machine
            and self.released_once
            and not self.jobs_with_several_machines
        )

    def to_json(self) -> dict[str, Any]:
        return record_json(
            self,
            extra={
                "total_machines": self.total_machines,
                "commands_in_own_machine": self.commands_in_own_machine,
                "released_once": self.released_once,
                "kept": self.kept,
            },
        )


#: JSON Schema of ``TimelineProof.to_json()`` (the ``lifecycle`` key of a run result).
LIFECYCLE_SCHEMA: dict[str, Any] = dataclass_schema(
    TimelineProof,
    extra={
        "total_machines": {"type": "integer", **COUNT},
        "commands_in_own_machine": {"type": "boolean"},
        "released_once": {"type": "boolean"},
        "kept": {"type": "boolean"},
    },
)


def prove(entries: Iterable[TimelineEntry]) -> TimelineProof:
    """The counts of a run (or one job) from its entries alone."""
    ordered = sorted(entries, key=lambda e: e.time)
    allocated: dict[str, TimelineEntry] = {}
    own: dict[str, set[str]] = {}
    released: dict[str, list[TimelineEntry]] = {}
    commands: dict[str, int] = {}
    stray = total = 0
    for entry in ordered:
        if entry.kind == "machine_allocated" and entry.machine_id:
            allocated.setdefault(entry.machine_id, entry)
            own.setdefault(entry.job_key, set()).add(entry.machine_id)
        elif entry.kind == "machine_released" and entry.outcome == "success":
            released.setdefault(entry.machine_id, []).append(entry)
        elif entry.kind == "command_started":
            total += 1
            commands[entry.machine_id] = commands.get(entry.machine_id, 0) + 1
            if not entry.machine_id or entry.machine_id not in own.get(entry.job_key, ()):
                stray += 1
    machines = tuple(
        MachineUse(
            machine_id, entry.job_key, entry.session_id, entry.time,
            released[machine_id][0].time if machine_id in released else None,
            len(released.get(machine_id, ())), commands.get(machine_id, 0),
        )
        for machine_id, entry in allocated.items()
    )
    return TimelineProof(
        jobs=len(own),
        machines_allocated=len(allocated),
        machines_released=sum(1 for m in machines if m.releases),
        machines=machines,
        commands=total,
        stray_commands=stray,
        jobs_with_several_machines=tuple(k for k, ids in own.items() if len(ids) > 1),
        peak_machines=_peak(machines),
    )


def _peak(machines: Sequence[MachineUse]) -> int:
    """The most machines alive at once: a sweep over allocation (+1) and release (-1) times."""
    changes = sorted(
        [(m.allocated_at, 1) for m in machines]
        + [(m.released_at, -1) for m in machines if m.released_at is not None]
    )
    alive = peak = 0
    for _, change in changes:  # on a tie, -1 sorts first: a machine released as another starts
        alive += change
        peak = max(peak, alive)
    return peak


def relative_ms(time: float, start: float) -> str:
    """``T+0ms``, ``T+1234ms``: a moment relative to the run's start."""
    return f"T+{max(0, round((time - start) * 1000))}ms"
