"""Sessions: one job bound to one machine, from allocation to exactly one release.

``SessionManager`` hands out sessions under a concurrency limit, tracks their states and
snapshots, releases idle ones (the reaper), persists everything in the store, and on start
reclaims machines left behind by runner processes that died.

Why the concurrency limit is exact: the manager lives on one event loop thread, and the check
"a slot is free" and the reservation (``_used += 1``) in ``_reserve`` have no ``await`` between
them, so no other caller can run in between. A freed slot is handed directly to the oldest
waiter (its future is resolved; ``_used`` does not drop), so late arrivals cannot overtake the
queue and the count never exceeds the limit. The slot is taken before allocation and freed only
after the machine's release returned, so the number of machines alive is bounded too.

Why a machine is never leaked: the machine is released *first* (retried, then reclaimed from
its record as a last resort) and the session is removed only afterwards. When every attempt
fails, the machine stays recorded as live with an ``abandoned`` note, which makes it eligible
for reclaim (by this manager on exit, by the next one on start, or by ``vmrunner sessions
reclaim``) even though its owner is alive.

Why bookkeeping never stands in the way: once a machine runs, a write to the store that fails
(a full disk, ``StoreDiskError``) does not stop its job or its release. Unsaved transitions are
kept and written with the next one that succeeds; the errors are kept in ``store_errors``. The
release of a machine and the last states of a released session that could not be written are
tried again by the reaper and on stop; if the disk is still full then, the machine stays live
in the store and the next manager reclaims it (a no-op: it is gone). Only before a machine
starts is a failed write fatal: a machine that could not be recorded could not be found after
a crash.

The manager is not thread-safe: use it from the event loop that entered it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from enum import Enum, StrEnum
from types import TracebackType
from typing import Final, Literal

from vmrunner.errors import (
    CapacityError,
    InvalidTransition,
    ReleaseError,
    SessionError,
    SessionNotFound,
    SnapshotError,
    StoreError,
)
from vmrunner.machines.base import (
    ExecResult,
    ImageRun,
    Machine,
    MachineRecord,
    MachineSpec,
    OutputCallback,
    Provider,
    SnapshotId,
)
from vmrunner.machines.local import process_start, shielded
from vmrunner.machines.pool import WarmPool, allocate_whole
from vmrunner.store import MachineRow, SessionRow, SnapshotRow, Store

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 4
#: How long ``open`` waits for a free slot by default (seconds).
DEFAULT_WAIT_TIMEOUT = 600.0
#: A session with no activity for this long is released by the reaper (seconds).
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_REAP_INTERVAL = 30.0
#: Bound on one release attempt; a release is attempted this many times, then reclaimed.
DEFAULT_RELEASE_TIMEOUT = 120.0
RELEASE_ATTEMPTS = 3
RELEASE_RETRY_DELAY = 0.05
#: Prefix of the note on a machine whose release failed definitively: reclaimable by anyone.
ABANDONED = "abandoned: "
#: Store errors kept in ``SessionManager.store_errors`` (the first ones; the rest are counted).
MAX_STORE_ERRORS = 20
#: In the note of the ``released`` transition when the machine could not be released.
RELEASE_FAILED = "machine release failed"


class _Default(Enum):
    DEFAULT = "DEFAULT"


#: "Not passed": use the manager's setting (``None`` means "no limit").
DEFAULT: Final = _Default.DEFAULT


class SessionState(StrEnum):
    """The lifecycle of a session; ``TRANSITIONS`` lists the allowed moves.

    initializing → active ⇄ executing / paused → completed | failed | rolled_back →
    terminating → released. Executing and paused are transient: when the command, snapshot or
    restore ends, the session returns to the state it came from (a restore ends in
    rolled_back). Any state but released may move to terminating.
    """

    #: A slot is reserved and the machine is being allocated.
    INITIALIZING = "initializing"
    #: The machine is ready; no command is running.
    ACTIVE = "active"
    #: At least one command is running in the machine.
    EXECUTING = "executing"
    #: A snapshot or restore is in progress.
    PAUSED = "paused"
    #: The job finished successfully; release follows.
    COMPLETED = "completed"
    #: The job (or the allocation) failed; post steps and cleanup may still run.
    FAILED = "failed"
    #: The machine was restored to an earlier snapshot.
    ROLLED_BACK = "rolled_back"
    #: The machine is being released.
    TERMINATING = "terminating"
    #: The machine is gone; final.
    RELEASED = "released"


S = SessionState
#: Transitions among these states (every command and snapshot passes through two) are kept in
#: memory and written with the next other transition, or when this many wait: they cost a
#: commit each, and reclaiming a dead runner's machines needs only the durable states. Another
#: process reading the store meanwhile sees the session ``active``.
_TRANSIENT = frozenset({S.ACTIVE, S.EXECUTING, S.PAUSED})
MAX_UNSAVED_TRANSITIONS = 64

TRANSITIONS: Mapping[SessionState, frozenset[SessionState]] = {
    S.INITIALIZING: frozenset({S.ACTIVE, S.FAILED, S.TERMINATING}),
    S.ACTIVE: frozenset(
        {S.EXECUTING, S.PAUSED, S.COMPLETED, S.FAILED, S.ROLLED_BACK, S.TERMINATING}
    ),
    S.EXECUTING: frozenset({S.ACTIVE, S.FAILED, S.ROLLED_BACK, S.TERMINATING}),
    S.PAUSED: frozenset({S.ACTIVE, S.FAILED, S.ROLLED_BACK, S.TERMINATING}),
    S.FAILED: frozenset({S.EXECUTING, S.PAUSED, S.ROLLED_BACK, S.TERMINATING}),
    S.ROLLED_BACK: frozenset(
        {S.ACTIVE, S.EXECUTING, S.PAUSED, S.COMPLETED, S.FAILED, S.TERMINATING}
    ),
    S.COMPLETED: frozenset({S.TERMINATING}),
    S.TERMINATING: frozenset({S.RELEASED}),
    S.RELEASED: frozenset(),
}
#: States in which the reaper leaves a session alone (work in progress or already ending).
_BUSY_STATES = frozenset({S.INITIALIZING, S.EXECUTING, S.PAUSED, S.TERMINATING, S.RELEASED})


@dataclass(frozen=True, slots=True)
class Transition:
    """A state a session entered, at a wall-clock time, with an optional reason."""

    state: SessionState
    at: float
    note: str = ""


#: Told of each state change: ``SessionManager.observe`` (the runner's lifecycle timeline uses it).
TransitionObserver = Callable[["Session", Transition], None]


@dataclass(frozen=True, slots=True)
class SessionStats:
    """A snapshot of the manager's capacity and counters since it started."""

    #: Sessions holding a slot (allocating, live or releasing) / callers queued for one.
    active: int
    waiting: int
    limit: int
    created: int
    released: int
    #: Allocations that failed; fail-fast requests refused; waits that timed out.
    failed_allocations: int
    rejected: int
    timed_out: int
    #: Sessions released by the reaper; machines of dead runners reclaimed at start.
    reaped: int
    reclaimed: int
    #: Machines whose release failed definitively (recorded as abandoned).
    release_failures: int


@dataclass(frozen=True, slots=True)
class ReclaimAction:
    """What reclaiming did about one machine or one session of a dead runner."""

    kind: Literal["machine", "session"]
    id: str
    provider: str
    owner_pid: int
    ok: bool
    note: str


@dataclass(frozen=True, slots=True)
class Owner:
    """A runner process, identified by pid and start time (so a reused pid is not mistaken)."""

    pid: int
    start: int | None

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), process_start(os.getpid()))

    def alive(self) -> bool:
        """Whether this very process still runs (not merely some process with its pid)."""
        start = process_start(self.pid)
        if start is None:
            return False
        return self.start is None or start == self.start


class Session:
    """One job's hold on one machine. Created by ``SessionManager``, never directly."""

    def __init__(
        self,
        manager: SessionManager,
        session_id: str,
        spec: MachineSpec,
        idle_timeout: float | None,
    ) -> None:
        self.id = session_id
        self.spec = spec
        self.idle_timeout = idle_timeout
        self._manager = manager
        self._machine: Machine | None = None
        self._state = S.INITIALIZING
        self._transitions: list[Transition] = []
        self._snapshots: list[SnapshotRow] = []
        self._running = 0
        self._return_to: list[SessionState] = []
        self._release: asyncio.Task[None] | None = None
        self.last_activity = manager.clock()
        self._persisted_activity = self.last_activity
        #: Transient transitions not written yet: (state, at, note, wall-clock activity).
        self._unsaved: list[tuple[SessionState, float, str, float]] = []

    def __repr__(self) -> str:
        machine = self._machine.id if self._machine else None
        return f"<Session {self.id} {self._state.value} machine={machine}>"

    @property
    def machine(self) -> Machine:
        if self._machine is None:
            raise SessionError(f"session {self.id} has no machine ({self._state.value})")
        return self._machine

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def transitions(self) -> tuple[Transition, ...]:
        return tuple(self._transitions)

    @property
    def snapshots(self) -> tuple[SnapshotRow, ...]:
        return tuple(self._snapshots)

    def touch(self) -> None:
        """Record activity: keeps the reaper away for another idle timeout."""
        self.last_activity = self._manager.clock()

    def idle_for(self) -> float:
        return self._manager.clock() - self.last_activity

    async def exec(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - Machine.exec's contract
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        write: Mapping[str, str] | None = None,
        collect: Sequence[str] = (),
        image: ImageRun | None = None,
    ) -> ExecResult:
        """Run a command in the session's machine (in a one-shot container of ``image`` there:
        ``Machine.exec_image``, the command its args); the session is ``executing`` meanwhile.

        Output counts as activity. See ``Machine.exec`` for the arguments.
        """
        machine = self.machine
        relay: OutputCallback | None = None
        if on_output is not None:
            callback = on_output

            def relay(stream: Literal["stdout", "stderr"], chunk: bytes) -> None:
                self.touch()
                callback(stream, chunk)

        self._enter(S.EXECUTING)
        try:
            if image is not None:
                return await machine.exec_image(
                    image, list(command), env=env, timeout=timeout, on_output=relay, write=write,
                    collect=collect,
                )  # fmt: skip
            return await machine.exec(
                command, env=env, cwd=cwd, timeout=timeout, on_output=relay, stdin=stdin,
                write=write, collect=collect,
            )
        finally:
            self.touch()
            self._leave(S.EXECUTING)

    def set_state(self, state: SessionState, *, note: str = "") -> None:
        """Move the session to ``state``, recorded with its time (and ``note``);
        ``InvalidTransition`` when the lifecycle (``TRANSITIONS``) does not allow it."""
        self._manager._update_state(self.id, state, note=note)

    async def snapshot(self, name: str = "") -> SnapshotRow:
        """Take a snapshot (the session is ``paused`` meanwhile) and append it to ``snapshots``."""
        machine = self.machine
        self._enter(S.PAUSED)
        try:
            snapshot_id = await machine.snapshot(name)
            info = self._manager._add_snapshot(self.id, snapshot_id, name)
        finally:
            self.touch()
            self._leave(S.PAUSED)
        return info

    async def restore(self, snapshot_id: SnapshotId) -> None:
        """Bring the machine back to one of this session's snapshots; ends ``rolled_back``."""
        if all(s.snapshot_id != snapshot_id for s in self._snapshots):
            raise SnapshotError(f"session {self.id} has no snapshot {snapshot_id}")
        machine = self.machine
        self._enter(S.PAUSED)
        try:
            await machine.restore(snapshot_id)
        except BaseException:
            self._leave(S.PAUSED)
            raise
        finally:
            self.touch()
        self._leave(S.PAUSED, S.ROLLED_BACK)

    def _enter(self, transient: SessionState) -> None:
        """Enter a transient state (nested commands share one ``executing``)."""
        if self._running and self._state is transient:
            self._running += 1
            return
        before = self._state
        self._manager._update_state(self.id, transient)
        self._return_to.append(before)
        self._running = 1

    def _leave(self, transient: SessionState, to: SessionState | None = None) -> None:
        if self._state is not transient:
            self._running = 0  # moved on meanwhile (failed, releasing): nothing to return to
            self._return_to.clear()
            return
        self._running -= 1
        if self._running:
            return
        back = self._return_to.pop()
        self._manager._update_state(self.id, to or back)


class SessionManager:
    """Hands out sessions under a concurrency limit; see the module docstring for guarantees.

    Use as ``async with SessionManager(provider, limit=...) as manager`` to run the reaper and
    reclaim machines of dead runners on start. The provider (which may be a ``WarmPool``) is
    borrowed: the manager never closes it.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        limit: int = DEFAULT_LIMIT,
        store: Store | None = None,
        wait_timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        reap_interval: float = DEFAULT_REAP_INTERVAL,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        release_attempts: int = RELEASE_ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
        reclaim_on_start: bool = True,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.provider = provider
        self.limit = limit
        self.clock = clock
        self.wait_timeout = wait_timeout
        self.idle_timeout = idle_timeout
        self.reap_interval = reap_interval
        self.release_timeout = release_timeout
        self.release_attempts = max(1, release_attempts)
        self.reclaim_on_start = reclaim_on_start
        self.owner = Owner.current()
        self._store = store
        self._owns_store = store is None
        self._sessions: dict[str, Session] = {}
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._group: asyncio.TaskGroup | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._abandoned: dict[str, MachineRecord] = {}
        self._counts = dict.fromkeys(
            (
                "created",
                "released",
                "failed_allocations",
                "rejected",
                "timed_out",
                "reaped",
                "reclaimed",
                "release_failures",
            ),
            0,
        )
        self.reclaimed: list[ReclaimAction] = []
        self._attached: list[WarmPool] = []
        self._closing = False
        self._allocating = 0
        self._settled = asyncio.Event()
        self._settled.set()
        #: Observers by the label they watch (None: every session).
        self._observers: dict[tuple[str, str] | None, list[TransitionObserver]] = {}
        #: Writes to the store that failed while machines ran (see the module docstring).
        self.store_errors: list[StoreError] = []
        self.store_failures = 0
        #: Releases (machine id: time, note, session id) and released sessions not yet written.
        self._unwritten_releases: dict[str, tuple[float, str, str | None]] = {}
        self._unwritten_sessions: list[Session] = []

    # Lifecycle

    @property
    def store(self) -> Store:
        if self._store is None:
            raise SessionError(
                "the session manager is not running: use `async with SessionManager(...)`"
            )
        return self._store

    async def __aenter__(self) -> SessionManager:
        if self._store is None:
            self._store = Store.open()
        try:
            for wrapper in _provider_chain(self.provider):
                if isinstance(wrapper, WarmPool) and wrapper.journal is None:
                    wrapper.attach(StoreJournal(self._store))
                    self._attached.append(wrapper)
            if self.reclaim_on_start:
                self.reclaimed = await reclaim_orphans(self._store, self._resolve, [self.provider])
                self._counts["reclaimed"] += sum(
                    1 for a in self.reclaimed if a.kind == "machine" and a.ok
                )
            group = asyncio.TaskGroup()
            await group.__aenter__()
        except BaseException:
            self._close_store()
            raise
        self._group = group
        self._reaper = group.create_task(self._reap_forever(), name="session-reaper")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await shielded(self._shutdown())

    async def _shutdown(self) -> None:
        """Refuse new sessions, stop the reaper, release every session, retry abandoned machines."""
        self._closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    SessionError("the session manager is stopping: no new sessions")
                )
        await self._settled.wait()  # allocations in flight end (bounded by the provider) first
        if self._reaper is not None:
            self._reaper.cancel()
        if self._group is not None:
            group, self._group = self._group, None
            await group.__aexit__(None, None, None)
        pending = list(self._sessions.values())
        results = await asyncio.gather(
            *(self._release(s, "session manager stopped") for s in pending), return_exceptions=True
        )
        for session, result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("releasing session %s on shutdown failed: %s", session.id, result)
        for record in list(self._abandoned.values()):
            with suppress(Exception):
                await self._reclaim_abandoned(record)
        self._write_unwritten()
        self._close_store()

    def _close_store(self) -> None:
        if self._owns_store and self._store is not None:
            for pool in self._attached:  # the store is about to close: stop journaling into it
                pool.journal = None
            self._attached.clear()
            self._store.close()
            self._store = None

    def _resolve(self, provider_name: str) -> Provider | None:
        """The provider that can reclaim a record of ``provider_name``."""
        if provider_name == self.provider.name:
            return self.provider
        return named_provider(provider_name)

    # Capacity

    async def _reserve(self, wait: bool, patience: float | None) -> None:
        if self._used < self.limit and not self._waiters:
            self._used += 1  # no await since the check: atomic on the event loop
            return
        if not wait:
            self._counts["rejected"] += 1
            raise CapacityError(f"all {self.limit} session slots are in use")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(patience):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._free_slot()  # the slot was handed over as we gave up: pass it on
            else:
                waiter.cancel()
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                self._counts["timed_out"] += 1
                raise CapacityError(
                    f"no session slot became free within {patience}s (limit {self.limit})"
                ) from exc
            raise

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the oldest waiter; _used is unchanged
                return
        self._used -= 1

    # Allocation

    async def _acquire(
        self,
        spec: MachineSpec | None,
        wait: bool,
        patience: float | _Default | None,
        idle_timeout: float | _Default | None,
    ) -> Session:
        """Reserve a slot (waiting up to ``patience``), then allocate a machine: what ``open``
        does before its block runs."""
        store = self.store
        spec = spec or MachineSpec()
        self._check_open()
        await self._reserve(wait, self.wait_timeout if patience is DEFAULT else patience)
        try:
            self._check_open()
            session = self._new_session(
                store, spec, self.idle_timeout if idle_timeout is DEFAULT else idle_timeout
            )
        except BaseException:
            self._free_slot()
            raise
        self._allocating += 1
        self._settled.clear()
        try:
            return await self._allocate(store, session, spec)
        finally:
            self._allocating -= 1
            if not self._allocating:
                self._settled.set()

    async def _allocate(self, store: Store, session: Session, spec: MachineSpec) -> Session:
        try:
            machine = await allocate_whole(self.provider, spec)
        except BaseException as exc:
            self._counts["failed_allocations"] += 1
            with suppress(Exception):
                self._update_state(session.id, S.FAILED, note=f"allocation failed: {exc!r}")
            await self._release(session, "allocation failed")
            raise
        session._machine = machine
        try:
            store.attach_machine(session.id, machine_row(machine.record, session.id))
            self._update_state(session.id, S.ACTIVE)
        except BaseException:
            await self._release(session, "recording the machine failed")
            raise
        return session

    def _check_open(self) -> None:
        if self._closing:
            raise SessionError("the session manager is stopping: no new sessions")

    def _new_session(self, store: Store, spec: MachineSpec, idle_timeout: float | None) -> Session:
        session = Session(self, f"s-{secrets.token_hex(6)}", spec, idle_timeout)
        now = time.time()
        store.add_session(
            SessionRow(
                id=session.id,
                state=S.INITIALIZING.value,
                vm_type=spec.vm_type,
                provider=self.provider.name,
                owner_pid=self.owner.pid,
                owner_start=self.owner.start,
                created_at=now,
                updated_at=now,
                last_activity=now,
                labels=dict(spec.labels),
            )
        )
        session._transitions.append(Transition(S.INITIALIZING, now))
        self._notify(session, session._transitions[-1])
        self._sessions[session.id] = session
        self._counts["created"] += 1
        return session

    def get_session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id} (it may have been released)")
        return session

    def _update_state(self, session_id: str, state: SessionState, *, note: str = "") -> None:
        """Move a session to ``state`` (recorded with its time); ``InvalidTransition`` if not
        allowed."""
        session = self.get_session(session_id)
        if state not in TRANSITIONS[session._state]:
            raise InvalidTransition(
                f"session {session_id} cannot go from {session._state.value} to {state.value}"
            )
        self._record(session, state, note)

    def _record(self, session: Session, state: SessionState, note: str = "") -> None:
        now = time.time()
        wall_activity = now - (self.clock() - session.last_activity)
        entry = (state, now, note, wall_activity)
        unsaved = session._unsaved
        if (
            session._state in _TRANSIENT
            and state in _TRANSIENT
            and not note
            and len(unsaved) < MAX_UNSAVED_TRANSITIONS
        ):
            unsaved.append(entry)
        else:
            try:
                with self.store.transaction():  # all or nothing: a failed write leaves them unsaved
                    for state_, at, note_, activity in (*unsaved, entry):
                        self.store.set_session_state(
                            session.id, state_.value, at, note=note_, last_activity=activity
                        )
            except StoreError as exc:  # kept, to be written with the next transition
                unsaved.append(entry)
                self._store_failed(exc, f"recording session {session.id} {state.value}")
            else:
                unsaved.clear()
                session._persisted_activity = session.last_activity
        session._state = state
        session._transitions.append(Transition(state, now, note))
        self._notify(session, session._transitions[-1])

    def _write_unwritten(self) -> None:
        """Write the releases and final session states a full disk refused, while it lets us."""
        try:
            for machine_id, (at, note, session_id) in list(self._unwritten_releases.items()):
                self.store.mark_machine_released(machine_id, at, note=note, session_id=session_id)
                del self._unwritten_releases[machine_id]
            for session in list(self._unwritten_sessions):
                with self.store.transaction():
                    for state, at, note, activity in session._unsaved:
                        self.store.set_session_state(
                            session.id, state.value, at, note=note, last_activity=activity
                        )
                session._unsaved.clear()
                self._unwritten_sessions.remove(session)
        except StoreError as exc:
            self._store_failed(exc, "writing what a full disk refused")

    def _store_failed(self, exc: StoreError, doing: str) -> None:
        """A bookkeeping write failed while machines run: kept for the caller, logged once."""
        self.store_failures += 1
        if len(self.store_errors) < MAX_STORE_ERRORS:
            self.store_errors.append(exc)
        if self.store_failures == 1:
            log.warning("%s: %s (the session goes on; later writes retry)", doing, exc)

    def observe(
        self, observer: TransitionObserver, *, label: tuple[str, str] | None = None
    ) -> Callable[[], None]:
        """Call ``observer(session, transition)`` after every state change of every session,
        or only of the sessions carrying ``label`` (key, value), such as one run's: a server
        with many runs does not call every run's observer for every session. It must be
        quick; its exceptions are ignored. Returns the function that stops it."""
        watching = self._observers.setdefault(label, [])
        watching.append(observer)

        def stop() -> None:
            if observer in watching:
                watching.remove(observer)
            if not watching and self._observers.get(label) is watching:
                del self._observers[label]

        return stop

    def _notify(self, session: Session, transition: Transition) -> None:
        if not self._observers:
            return
        for key in (None, *session.spec.labels.items()):
            for observer in tuple(self._observers.get(key, ())):
                with suppress(Exception):
                    observer(session, transition)

    def _add_snapshot(
        self, session_id: str, snapshot_id: SnapshotId, name: str = ""
    ) -> SnapshotRow:
        """Register a snapshot taken in the session's machine."""
        session = self.get_session(session_id)
        info = SnapshotRow(session_id, snapshot_id, name, time.time())
        self.store.add_snapshot(info)
        session._snapshots.append(info)
        return info

    @property
    def active_count(self) -> int:
        """Slots in use: sessions allocating, live, or being released."""
        return self._used

    def stats(self) -> SessionStats:
        return SessionStats(
            active=self._used,
            waiting=sum(1 for w in self._waiters if not w.done()),
            limit=self.limit,
            **self._counts,
        )

    def sessions(self) -> list[Session]:
        """Sessions not yet released, oldest first."""
        return list(self._sessions.values())

    # The scoped form

    @asynccontextmanager
    async def open(
        self,
        spec: MachineSpec | None = None,
        *,
        wait: bool = True,
        timeout: float | _Default | None = DEFAULT,  # noqa: ASYNC109 - the wait for a slot
        idle_timeout: float | _Default | None = DEFAULT,
    ) -> AsyncIterator[Session]:
        """A session whose machine is released exactly once when the block ends, however it ends.

        On an exception (including cancellation and timeouts) the session is marked failed,
        the machine released under a shield, and the exception propagates. A session already
        released (by the reaper, or because the manager stopped) is not released again.

        ``wait=False`` raises ``CapacityError`` at once when all slots are taken; otherwise the
        caller queues (first come, first served) up to ``timeout`` seconds, then gets
        ``CapacityError``.
        """
        session = await self._acquire(spec, wait, timeout, idle_timeout)
        try:
            yield session
        except BaseException as exc:
            if S.FAILED in TRANSITIONS[session.state] and session._release is None:
                with suppress(Exception):
                    self._update_state(session.id, S.FAILED, note=f"{type(exc).__name__}: {exc}")
            with suppress(ReleaseError):  # recorded as abandoned; the job's error matters more
                await self._release(session, "session ended with an error")
            raise
        if session.state is S.ACTIVE and session._release is None:
            self._update_state(session.id, S.COMPLETED)  # failed and rolled_back stay as they are
        await self._release(session, "session ended")

    # Release

    async def _release(self, session: Session, note: str) -> None:
        """Release once: the first caller starts the release, everyone awaits the same one."""
        if session._release is None:
            if session.state is not S.TERMINATING:
                self._record(session, S.TERMINATING, note)
            session._release = asyncio.ensure_future(self._do_release(session, note))
        await shielded(session._release)

    async def _do_release(self, session: Session, note: str) -> None:
        error: Exception | None = None
        if session._machine is not None:
            error = await self._release_machine(session._machine, session.id)
        final = note if error is None else f"{note}; {RELEASE_FAILED}: {error}"
        with suppress(Exception):
            self._record(session, S.RELEASED, final)
        if session._unsaved:  # the disk was full: written later (reaper, stop)
            self._unwritten_sessions.append(session)
        self._sessions.pop(session.id, None)
        self._counts["released"] += 1
        self._free_slot()
        if error is not None:
            raise ReleaseError(
                f"session {session.id}: cannot release machine {session.machine.id}: {error}"
            ) from error

    async def _release_machine(self, machine: Machine, session_id: str) -> Exception | None:
        """Release (retrying), else reclaim from the record; the last error if all failed."""
        last: Exception | None = None
        for attempt in range(self.release_attempts):
            if attempt:
                await asyncio.sleep(RELEASE_RETRY_DELAY * 2 ** (attempt - 1))
            try:
                async with asyncio.timeout(self.release_timeout):
                    await self.provider.release(machine)
            except Exception as exc:
                last = exc
                log.warning(
                    "releasing machine %s (attempt %d) failed: %s", machine.id, attempt + 1, exc
                )
                continue
            try:
                self.store.mark_machine_released(
                    machine.id, time.time(), note="released", session_id=session_id
                )
            except StoreError as exc:  # it is gone: written later (reaper, stop, next manager)
                self._store_failed(exc, f"recording the release of machine {machine.id}")
                self._unwritten_releases[machine.id] = (time.time(), "released", session_id)
            return None
        record = machine.record
        try:
            await self._reclaim_abandoned(record, note=f"reclaimed after failed release: {last}")
        except Exception as exc:
            self._counts["release_failures"] += 1
            self._abandoned[machine.id] = record
            with suppress(Exception):
                self.store.note_machine(machine.id, f"{ABANDONED}{exc}")
            return exc
        return None

    async def _reclaim_abandoned(self, record: MachineRecord, *, note: str = "reclaimed") -> None:
        async with asyncio.timeout(self.release_timeout):
            await self.provider.reclaim(record)
        self._abandoned.pop(record.machine_id, None)
        try:
            self.store.mark_machine_released(record.machine_id, time.time(), note=note)
        except StoreError as exc:
            self._store_failed(exc, f"recording the release of machine {record.machine_id}")
            self._unwritten_releases[record.machine_id] = (time.time(), note, None)

    # The reaper

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception:
                log.exception("the session reaper failed; it keeps running")

    async def reap(self) -> list[str]:
        """Release every session idle past its timeout now; returns their ids.

        Sessions running a command, snapshotting or being released are never idle. Also
        saves the latest activity of the others in the store.
        """
        now = self.clock()
        stale = [
            s
            for s in self._sessions.values()
            if s.idle_timeout is not None
            and s._release is None
            and s.state not in _BUSY_STATES
            and now - s.last_activity > s.idle_timeout
        ]
        self._counts["reaped"] += len(stale)
        results = await asyncio.gather(
            *(
                self._release(
                    s, f"idle for {now - s.last_activity:.1f}s (timeout {s.idle_timeout}s)"
                )
                for s in stale
            ),
            return_exceptions=True,
        )
        for session, result in zip(stale, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("reaping session %s: %s", session.id, result)
        if self._unwritten_releases or self._unwritten_sessions:
            self._write_unwritten()
        wall = time.time()
        for session in self._sessions.values():
            if session.last_activity != session._persisted_activity and session._release is None:
                try:
                    self.store.touch_session(session.id, wall - (now - session.last_activity))
                except StoreError as exc:
                    self._store_failed(exc, f"recording the activity of session {session.id}")
                    continue
                session._persisted_activity = session.last_activity
        return [s.id for s in stale]


class StoreJournal:
    """Records a warm pool's idle machines in the store (``machines.pool.MachineJournal``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def machine_pooled(self, record: MachineRecord) -> None:
        self.store.put_machine(machine_row(record, None))

    def machine_discarded(self, machine_id: str, note: str) -> None:
        self.store.mark_machine_released(machine_id, time.time(), note=note)


#: The fields a machine record and a machine row share.
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(MachineRecord))


def machine_row(record: MachineRecord, session_id: str | None) -> MachineRow:
    """The store row of a machine just allocated (or pooled, with no session)."""
    shared = {name: getattr(record, name) for name in _RECORD_FIELDS}
    return MachineRow(**shared, allocated_at=time.time(), session_id=session_id)


def machine_record(row: MachineRow) -> MachineRecord:
    return MachineRecord(**{name: getattr(row, name) for name in _RECORD_FIELDS})


def _provider_chain(provider: Provider) -> Iterable[Provider]:
    """The provider and the ones it wraps (wrappers expose ``inner``)."""
    current: object = provider
    while isinstance(current, Provider):
        yield current
        current = getattr(current, "inner", None)


def named_provider(name: str) -> Provider | None:
    """A provider by name from the registry, or None if there is no such provider here."""
    try:
        from vmrunner.machines.providers import get_provider
    except ImportError:
        return None
    try:
        provider: Provider = get_provider(name)
    except Exception as exc:
        log.warning("cannot get the %s provider to reclaim its machines: %s", name, exc)
        return None
    return provider


async def reclaim_orphans(
    store: Store,
    resolve: Callable[[str], Provider | None],
    scan: Iterable[Provider] = (),
) -> list[ReclaimAction]:
    """Release machines, and close sessions, left by runner processes that are gone.

    Sources: machines the store records as live, and ``leftovers()`` of the providers in
    ``scan`` (machines on disk the store may not know, e.g. a crash right after allocation).
    A machine whose owner still runs is left alone, unless its release was abandoned.
    """
    actions: list[ReclaimAction] = []
    seen: set[str] = set()
    for row in store.machines():
        seen.add(row.machine_id)
        if Owner(row.owner_pid, row.owner_start).alive() and not row.note.startswith(ABANDONED):
            continue
        actions.append(await _reclaim_one(store, resolve(row.provider), machine_record(row)))
    for provider in scan:
        try:
            leftovers = provider.leftovers()
        except Exception as exc:
            log.warning("listing leftover machines of %s failed: %s", provider.name, exc)
            continue
        for record in leftovers:
            if record.machine_id in seen or Owner(record.owner_pid, record.owner_start).alive():
                continue
            seen.add(record.machine_id)
            actions.append(await _reclaim_one(store, provider, record))
    for session in store.sessions():
        if Owner(session.owner_pid, session.owner_start).alive():
            continue
        now = time.time()
        note = f"reclaimed: runner pid {session.owner_pid} is gone"
        with store.transaction():
            if session.state != S.TERMINATING.value:
                store.set_session_state(session.id, S.TERMINATING.value, now, note=note)
            store.set_session_state(session.id, S.RELEASED.value, now, note=note)
        actions.append(
            ReclaimAction("session", session.id, session.provider, session.owner_pid, True, note)
        )
    return actions


async def _reclaim_one(
    store: Store, provider: Provider | None, record: MachineRecord
) -> ReclaimAction:
    def action(ok: bool, note: str) -> ReclaimAction:
        return ReclaimAction(
            "machine", record.machine_id, record.provider, record.owner_pid, ok, note
        )

    if provider is None:
        note = f"no {record.provider} provider available to reclaim it"
        return action(False, note)
    try:
        await provider.reclaim(record)
    except Exception as exc:
        note = f"reclaim failed: {exc}"
        if store.machine(record.machine_id) is not None:
            store.note_machine(record.machine_id, f"{ABANDONED}{note}")
        return action(False, note)
    note = f"reclaimed: runner pid {record.owner_pid} is gone"
    if store.machine(record.machine_id) is not None:
        store.mark_machine_released(record.machine_id, time.time(), note=note)
    return action(True, note)
