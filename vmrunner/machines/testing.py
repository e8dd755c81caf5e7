"""A test double built on the real contract: ``CountingProvider`` wraps any provider.

It passes every call through to the wrapped (real) provider and keeps the evidence a test needs:
how often each machine was allocated and released, how many machines were alive at once, and
which commands ran in which machine. It can also make the next call of an operation fail (or do
nothing) on demand, so fault handling is tested against real machines, not against mocks.

"Alive" counts a machine from the moment its allocation *starts* until its release returns, so
``max_alive`` is an upper bound on the resources held at any instant.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmrunner.errors import (
    AgentError,
    AllocationError,
    ExecError,
    ReleaseError,
    SnapshotError,
    TransferError,
)
from vmrunner.machines.base import (
    ExecResult,
    Machine,
    MachineRecord,
    MachineSpec,
    OutputCallback,
    Provider,
    SnapshotId,
)

Operation = Literal[
    "allocate", "ping", "exec", "put", "get", "snapshot", "restore", "release", "reclaim"
]
EventKind = Literal[
    "allocating",
    "allocated",
    "allocation-failed",
    "releasing",
    "released",
    "release-failed",
    "reclaimed",
]

_DEFAULT_ERRORS: Mapping[Operation, type[Exception]] = {
    "allocate": AllocationError,
    "ping": AgentError,
    "exec": ExecError,
    "put": TransferError,
    "get": TransferError,
    "snapshot": SnapshotError,
    "restore": SnapshotError,
    "release": ReleaseError,
    "reclaim": ReleaseError,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One lifecycle step, timestamped with ``time.monotonic()``."""

    kind: EventKind
    machine_id: str | None
    at: float


@dataclass(frozen=True, slots=True)
class ExecRecord:
    """One command sent to a machine."""

    machine_id: str
    command: tuple[str, ...] | str
    at: float


@dataclass(frozen=True, slots=True)
class _Fault:
    error: BaseException | None  # None: skip the operation and pretend it succeeded
    machine_id: str | None


class CountingProvider(Provider):
    """Wraps ``inner``, counting allocations, releases, live machines and commands."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        # A wrapper is transparent: it reports the wrapped provider's name and capabilities, so
        # records and capability checks do not depend on the wrapping.
        setattr(self, "name", inner.name)  # noqa: B010
        setattr(self, "capabilities", inner.capabilities)  # noqa: B010
        self.allocations: Counter[str] = Counter()
        self.releases: Counter[str] = Counter()
        self.reclaims: Counter[str] = Counter()
        self.alive: set[str] = set()
        self.allocating = 0
        self.max_alive = 0
        self.events: list[Event] = []
        self.execs: list[ExecRecord] = []
        self._faults: dict[Operation, deque[_Fault]] = {}

    # Faults

    def fail_next(
        self,
        operation: Operation,
        error: BaseException | None = None,
        *,
        times: int = 1,
        machine_id: str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``operation`` raise ``error`` before reaching the
        machine.

        Without ``error`` the operation's usual error class is raised (``AllocationError`` for
        allocate, ``ReleaseError`` for release, ...). With ``machine_id`` only calls on that
        machine count.
        """
        made = (
            error
            if error is not None
            else _DEFAULT_ERRORS[operation](f"injected {operation} fault")
        )
        self._faults.setdefault(operation, deque()).extend(
            _Fault(made, machine_id) for _ in range(times)
        )

    def skip_next(
        self, operation: Operation, *, times: int = 1, machine_id: str | None = None
    ) -> None:
        """Make the next ``times`` calls of ``operation`` return at once without doing anything.

        A sabotage, e.g. a ``restore`` that silently leaves the machine dirty. (A skipped
        ``release`` or ``reclaim`` really leaves the machine running: the caller must free it.)
        """
        self._faults.setdefault(operation, deque()).extend(
            _Fault(None, machine_id) for _ in range(times)
        )

    def clear_faults(self) -> None:
        """Drop every fault not triggered yet."""
        self._faults.clear()

    def _fault(self, operation: Operation, machine_id: str | None) -> bool:
        """Raise or report (True: skip) the pending fault for this call, if any."""
        pending = self._faults.get(operation)
        if not pending:
            return False
        for fault in pending:
            if fault.machine_id is None or fault.machine_id == machine_id:
                pending.remove(fault)
                if fault.error is not None:
                    raise fault.error
                return True
        return False

    # Evidence

    @property
    def allocation_count(self) -> int:
        return sum(self.allocations.values())

    @property
    def release_count(self) -> int:
        return sum(self.releases.values())

    def commands_in(self, machine_id: str) -> list[tuple[str, ...] | str]:
        """The commands sent to one machine, in order."""
        return [record.command for record in self.execs if record.machine_id == machine_id]

    def time_of(self, kind: EventKind, machine_id: str) -> float:
        """When ``machine_id`` first went through ``kind`` (KeyError if it never did)."""
        for event in self.events:
            if event.kind == kind and event.machine_id == machine_id:
                return event.at
        raise KeyError(f"{machine_id} was never {kind}")

    def _event(self, kind: EventKind, machine_id: str | None) -> None:
        self.events.append(Event(kind, machine_id, time.monotonic()))

    # The contract

    async def allocate(self, spec: MachineSpec) -> Machine:
        self._fault("allocate", None)
        self.allocating += 1
        self.max_alive = max(self.max_alive, len(self.alive) + self.allocating)
        self._event("allocating", None)
        try:
            machine = await self.inner.allocate(spec)
        except BaseException:
            self._event("allocation-failed", None)
            raise
        finally:
            self.allocating -= 1
        self.allocations[machine.id] += 1
        self.alive.add(machine.id)
        self._event("allocated", machine.id)
        return CountingMachine(self, machine)

    async def release(self, machine: Machine) -> None:
        inner = machine.inner if isinstance(machine, CountingMachine) else machine
        if self._fault("release", machine.id):
            return
        self._event("releasing", machine.id)
        try:
            await self.inner.release(inner)
        except BaseException:
            self._event("release-failed", machine.id)
            raise
        self.releases[machine.id] += 1
        self.alive.discard(machine.id)
        self._event("released", machine.id)

    async def reclaim(self, record: MachineRecord) -> None:
        if self._fault("reclaim", record.machine_id):
            return
        await self.inner.reclaim(record)
        self.reclaims[record.machine_id] += 1
        self.alive.discard(record.machine_id)
        self._event("reclaimed", record.machine_id)

    def leftovers(self) -> list[MachineRecord]:
        return self.inner.leftovers()

    async def aclose(self) -> None:
        await self.inner.aclose()


class CountingMachine(Machine):
    """A machine of a ``CountingProvider``: records commands and applies injected faults."""

    def __init__(self, provider: CountingProvider, inner: Machine) -> None:
        self.inner = inner
        self._provider = provider
        self.id = inner.id
        self.spec = inner.spec
        self.paths = inner.paths
        self.from_pool = inner.from_pool

    @property
    def provider_name(self) -> str:
        return self.inner.provider_name

    @property
    def record(self) -> MachineRecord:
        return self.inner.record

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
    ) -> ExecResult:
        if self._provider._fault("exec", self.id):
            return ExecResult(exit_code=0, duration=0.0)
        recorded = command if isinstance(command, str) else tuple(command)
        self._provider.execs.append(ExecRecord(self.id, recorded, time.monotonic()))
        return await self.inner.exec(
            command, env=env, cwd=cwd, timeout=timeout, on_output=on_output, stdin=stdin,
            write=write, collect=collect,
        )

    async def ping(self) -> float:
        # Not recorded: a readiness check is not a command of the job.
        if self._provider._fault("ping", self.id):
            return 0.0
        return await self.inner.ping()

    async def put(self, dest_dir: str, tar_data: bytes) -> None:
        if not self._provider._fault("put", self.id):
            await self.inner.put(dest_dir, tar_data)

    async def get(self, path: str) -> bytes:
        if self._provider._fault("get", self.id):
            return b""
        return await self.inner.get(path)

    def forward(self, target: Path, port: int = 0) -> AbstractAsyncContextManager[int]:
        return self.inner.forward(target, port)

    async def fingerprint(self) -> bytes:
        # Not recorded either: the pool's verification, not a command of the job.
        return await self.inner.fingerprint()

    async def snapshot(self, name: str = "") -> SnapshotId:
        if self._provider._fault("snapshot", self.id):
            return f"skipped-{name}"
        return await self.inner.snapshot(name)

    async def restore(self, snapshot_id: SnapshotId) -> None:
        if not self._provider._fault("restore", self.id):
            await self.inner.restore(snapshot_id)

    async def export_snapshot(self, snapshot_id: SnapshotId, dest_dir: str) -> None:
        await self.inner.export_snapshot(snapshot_id, dest_dir)

    async def import_snapshot(self, source_dir: str) -> None:
        await self.inner.import_snapshot(source_dir)
