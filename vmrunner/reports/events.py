"""What a run reports while it happens: a stream of small, immutable events.

The engine (``vmrunner/runner/``) emits events; everything that shows or keeps a run
consumes them through ``EventSink``: the live terminal view, the JSON result, the Markdown
summary, the store (runs, jobs, steps, logs), the server and the lifecycle timeline (allocation,
session states, commands with the machine they ran in, snapshots, release: ``reports/timeline.py``).
The engine knows nothing of its consumers, and the consumers never reach into the engine.

Rules every emitter keeps:
- Text in events (log lines, messages, outputs, names) is already masked: secret values and
  ``add-mask`` values appear only as ``***``.
- A job is identified within a run by its ``job_key``: the job id, plus the matrix values for a
  matrix job (``test (small, 1)``), unique within the run.
- Times are ``time.time()`` wall-clock seconds; durations are seconds.
- For each ``JobStarted`` exactly one ``JobFinished`` follows; for each ``StepStarted`` exactly one
  ``StepFinished``; ``RunFinished`` comes last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from vmrunner.reports.insights import Insights

#: GitHub's results: a step's outcome/conclusion and a job's result use these words.
Result = Literal["success", "failure", "cancelled", "skipped"]
#: Where a command of a job comes from, in execution order.
StepKind = Literal["setup", "step", "post", "cleanup"]
Stream = Literal["stdout", "stderr"]
AnnotationLevel = Literal["debug", "notice", "warning", "error"]


def run_conclusion(results: Iterable[str | None], otherwise: Result = "success") -> Result:
    """GitHub's rule for a run's conclusion, from its jobs' results: ``failure`` if one failed,
    else ``cancelled`` if one was cancelled, else ``otherwise``. The engine (``RunFinished``),
    the results (``ResultCollector``) and the fleet's store all conclude with it."""
    seen = set(results)
    if "failure" in seen:
        return "failure"
    if "cancelled" in seen:
        return "cancelled"
    return otherwise


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    workflow_name: str
    workflow_file: str
    event_name: str
    time: float
    #: The commit and ref the run is for, when known.
    sha: str = ""
    ref: str = ""


@dataclass(frozen=True, slots=True)
class JobQueued:
    """A job (or matrix combination) is known and waits for its `needs` or a slot."""

    run_id: str
    job_key: str
    job_id: str
    name: str
    time: float
    matrix: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobStarted:
    """The job got its session and machine."""

    run_id: str
    job_key: str
    time: float
    session_id: str
    machine_id: str
    provider: str
    vm_type: str
    from_pool: bool
    #: Seconds spent waiting for a slot and allocating the machine.
    allocation_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class StepStarted:
    run_id: str
    job_key: str
    #: Position in the job's execution order (setup commands, steps, post steps, cleanup).
    index: int
    kind: StepKind
    name: str
    time: float
    step_id: str = ""
    #: What runs (masked): the ``run:`` script, ``uses: <action>``, or the setup/cleanup command.
    command: str = ""
    #: The machine the command runs in (from the job's session); '' when unknown.
    machine_id: str = ""


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of output (masked), attributed to a step; ``step_index`` -1 means the job."""

    run_id: str
    job_key: str
    step_index: int
    stream: Stream
    text: str
    time: float
    #: Nesting from ``::group::`` workflow commands (0 outside groups).
    group_depth: int = 0


@dataclass(frozen=True, slots=True)
class GroupStarted:
    run_id: str
    job_key: str
    step_index: int
    title: str
    time: float


@dataclass(frozen=True, slots=True)
class GroupEnded:
    run_id: str
    job_key: str
    step_index: int
    time: float


@dataclass(frozen=True, slots=True)
class Annotation:
    """An ``::error``/``::warning``/``::notice``/``::debug`` workflow command, or a runner
    notice."""

    run_id: str
    job_key: str
    step_index: int
    level: AnnotationLevel
    message: str
    time: float
    file: str = ""
    line: int = 0
    column: int = 0
    title: str = ""


@dataclass(frozen=True, slots=True)
class StepFinished:
    run_id: str
    job_key: str
    index: int
    #: Before continue-on-error is applied, and after (GitHub's `steps.<id>.outcome/conclusion`).
    outcome: Result
    conclusion: Result
    time: float
    duration: float
    exit_code: int | None = None
    timed_out: bool = False
    snapshot_id: str = ""
    outputs: Mapping[str, str] = field(default_factory=dict)
    #: The machine the command ran in (from the job's session); '' when unknown.
    machine_id: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    run_id: str
    job_key: str
    step_index: int
    snapshot_id: str
    time: float
    duration: float


@dataclass(frozen=True, slots=True)
class SnapshotRestored:
    run_id: str
    job_key: str
    snapshot_id: str
    time: float
    duration: float


@dataclass(frozen=True, slots=True)
class JobFinished:
    run_id: str
    job_key: str
    #: GitHub's job result; ``rolled_back`` is reported separately, the result stays "failure".
    result: Result
    time: float
    duration: float
    outputs: Mapping[str, str] = field(default_factory=dict)
    rolled_back: bool = False
    #: Why a job failed without running (unsupported container, timeout, cancelled ...).
    reason: str = ""
    #: The job's summary Markdown (``GITHUB_STEP_SUMMARY`` contents), masked.
    summary: str = ""


@dataclass(frozen=True, slots=True)
class AllocationRequested:
    """The job asks the session manager for a machine (it may wait for a slot first)."""

    run_id: str
    job_key: str
    time: float
    provider: str
    vm_type: str


@dataclass(frozen=True, slots=True)
class SessionStateChanged:
    """The job's session entered ``state`` (a ``SessionState`` value), at the manager's time."""

    run_id: str
    job_key: str
    session_id: str
    #: '' while the machine is being allocated (and when allocation failed).
    machine_id: str
    state: str
    time: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """The session manager starts releasing the job's machine (the session is terminating)."""

    run_id: str
    job_key: str
    session_id: str
    machine_id: str
    time: float


@dataclass(frozen=True, slots=True)
class MachineReleased:
    """The session manager's release of the job's machine returned (``ok``: the machine is gone;
    otherwise it is recorded as abandoned, to be reclaimed)."""

    run_id: str
    job_key: str
    session_id: str
    machine_id: str
    time: float
    ok: bool = True
    note: str = ""


@dataclass(frozen=True, slots=True)
class Progress:
    """A long operation of a job under way (an action fetched, snapshots exported), for a
    progress bar: shown while it lasts, never stored. ``total`` is None while unknown; the
    operation's last event has ``finished`` set. Emitters send a few per second at most."""

    run_id: str
    job_key: str
    #: What is going on, for people: ``fetching actions/setup-node@v4: receiving objects``.
    task: str
    done: int
    total: int | None
    time: float
    finished: bool = False


@dataclass(frozen=True, slots=True)
class RunFinished:
    run_id: str
    #: success when every job succeeded or was skipped by its condition; failure otherwise.
    conclusion: Result
    time: float
    duration: float


@dataclass(frozen=True, slots=True)
class RunInsights:
    """What past runs teach about this run's commands (``learning/history.py``); before
    ``RunFinished``."""

    run_id: str
    time: float
    insights: Insights


Event = (
    RunStarted
    | JobQueued
    | JobStarted
    | StepStarted
    | LogLine
    | GroupStarted
    | GroupEnded
    | Annotation
    | StepFinished
    | SnapshotTaken
    | SnapshotRestored
    | JobFinished
    | RunInsights
    | RunFinished
    | AllocationRequested
    | SessionStateChanged
    | ReleaseRequested
    | MachineReleased
    | Progress
)


class EventSink(Protocol):
    """Anything that consumes run events. ``emit`` must be quick and must not raise."""

    def emit(self, event: Event) -> None: ...


class FanOut:
    """Sends each event to several sinks, in order."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)


class Recorder:
    """Keeps every event in a list: for tests and for building results after the fact."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)
