"""The warm pool: machines started ahead of time, so allocation costs a queue pop.

``WarmPool`` is itself a ``Provider`` wrapping another one. It keeps ``sizes[vm_type]``
machines idle per machine type; ``allocate`` pops one at once and wakes the refill, or falls
back to a cold allocation when the pool is empty. Rules:

- Readiness: a machine enters the pool only after its agent answered a ping.
- A machine that ran a job is never handed to another job as it is. On ``release`` it is
  destroyed (``reuse="destroy"``, the default) or, with ``reuse="restore"``, restored to the
  pristine snapshot taken right after it started, then verified (ping, and a fingerprint of its
  writable directories equal to the pristine one) before going back. Any failure destroys it.
- Refill runs in a TaskGroup owned by the pool: ``async with WarmPool(...) as pool`` starts it,
  leaving stops it and releases every idle machine (``aclose``).
- Idle machines are reported to an optional ``MachineJournal`` (the session manager's store),
  so that a runner that crashes leaves records for the next one to reclaim.

The pool owns the provider it wraps: ``aclose`` closes it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

from vmrunner.machines.base import (
    Machine,
    MachineRecord,
    MachineSpec,
    Provider,
    SnapshotId,
)
from vmrunner.machines.local import is_same_process, shielded

log = logging.getLogger(__name__)

Reuse = Literal["destroy", "restore"]

RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 30.0
#: Seconds a woken refill waits before starting a machine: a start holds the event loop for a
#: while (spawning its processes), and the allocation that woke the refill is answered first.
REFILL_DELAY = 0.01


def _still_running(machine: Machine) -> bool:
    """Whether the machine's root process is still the one that started it (cheap: /proc)."""
    record = machine.record
    return record.pid is None or is_same_process(record.pid, record.pid_start)


async def allocate_whole(provider: Provider, spec: MachineSpec) -> Machine:
    """``provider.allocate(spec)``, never interrupted half-way by a cancellation.

    A cancellation waits for the allocation to finish, releases the machine, then propagates.
    Interrupting the start of a process can hang asyncio for good (CPython gh-103847: a
    ``create_subprocess_exec`` cancelled while connecting its pipes never finishes), and an
    allocation is short and bounded by the provider anyway.
    """
    task = asyncio.ensure_future(provider.allocate(spec))
    try:
        return await shielded(task)
    except asyncio.CancelledError:
        if task.done() and not task.cancelled() and task.exception() is None:
            await shielded(provider.release(task.result()))
        raise


class MachineJournal(Protocol):
    """Where the pool records its idle machines, so they can be reclaimed after a crash."""

    def machine_pooled(self, record: MachineRecord) -> None:
        """The machine is idle in the pool (freshly started, or restored for reuse)."""

    def machine_discarded(self, machine_id: str, note: str) -> None:
        """The pool released the machine."""


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of the pool's state and counters since it was created."""

    idle: Mapping[str, int]
    sizes: Mapping[str, int]
    starting: int
    busy: int
    #: Allocations served from the pool / started cold because it was empty or did not match.
    hits: int
    misses: int
    #: Machines started to fill the pool.
    refills: int
    #: Machines restored, verified and put back (``reuse="restore"``).
    recycled: int
    #: Machines the pool released (after a job, a failed verification, or on close).
    discarded: int
    #: Failed starts, restores, verifications and releases.
    failures: int


@dataclass(slots=True)
class _Pristine:
    snapshot_id: SnapshotId
    fingerprint: bytes


class WarmPool(Provider):
    """A provider that hands out pre-started machines of another provider."""

    def __init__(
        self,
        provider: Provider,
        sizes: Mapping[str, int],
        *,
        reuse: Reuse = "destroy",
        journal: MachineJournal | None = None,
        specs: Mapping[str, MachineSpec] | None = None,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        if any(size < 0 for size in sizes.values()):
            raise ValueError(f"pool sizes must be >= 0, got {dict(sizes)}")
        if reuse not in ("destroy", "restore"):
            raise ValueError(f"reuse must be 'destroy' or 'restore', got {reuse!r}")
        if reuse == "restore" and not provider.capabilities.snapshots:
            raise ValueError(
                f"reuse='restore' needs snapshots, which the {provider.name} provider lacks"
            )
        self.inner = provider
        setattr(self, "name", provider.name)  # noqa: B010  (transparent wrapper)
        setattr(self, "capabilities", provider.capabilities)  # noqa: B010
        self.sizes = dict(sizes)
        self.reuse: Reuse = reuse
        self.journal = journal
        self._specs = {t: (specs or {}).get(t) or MachineSpec(vm_type=t) for t in self.sizes}
        self._retry_delay = retry_delay
        self._idle: dict[str, deque[Machine]] = {t: deque() for t in self.sizes}
        self._need = {t: asyncio.Event() for t in self.sizes}
        self._changed = asyncio.Condition()
        self._busy: dict[str, Machine] = {}
        self._loaned: dict[str, set[str]] = {t: set() for t in self.sizes}
        self._pristine: dict[str, _Pristine] = {}
        self._starting = 0
        self._counts = dict.fromkeys(
            ("hits", "misses", "refills", "recycled", "discarded", "failures"), 0
        )
        self._group: asyncio.TaskGroup | None = None
        self._refills: list[asyncio.Task[None]] = []
        self._closed = False

    # Lifecycle

    async def __aenter__(self) -> WarmPool:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        self._refills = [
            group.create_task(self._refill(t), name=f"pool-refill-{t}") for t in self.sizes
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await shielded(self.aclose())

    async def aclose(self) -> None:
        """Stop refilling, release every idle machine, close the wrapped provider. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._refills:
            task.cancel()
        if self._group is not None:
            group, self._group = self._group, None
            await group.__aexit__(None, None, None)
        idle = [m for queue in self._idle.values() for m in queue]
        for queue in self._idle.values():
            queue.clear()
        results = await asyncio.gather(
            *(self._destroy(m, "pool closed") for m in idle), return_exceptions=True
        )
        for machine, result in zip(idle, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("pool: releasing idle machine %s failed: %s", machine.id, result)
        await self.inner.aclose()

    def attach(self, journal: MachineJournal) -> None:
        """Record idle machines in ``journal`` from now on, starting with those idle already."""
        self.journal = journal
        for queue in self._idle.values():
            for machine in queue:
                journal.machine_pooled(machine.record)

    def idle_records(self) -> list[MachineRecord]:
        """The records of the machines idle now (a benchmark reads their processes' CPU)."""
        return [m.record for queue in self._idle.values() for m in queue]

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            idle={t: len(q) for t, q in self._idle.items()},
            sizes=dict(self.sizes),
            starting=self._starting,
            busy=len(self._busy),
            **self._counts,
        )

    async def wait_filled(self) -> None:
        """Wait until every machine type has its full number of idle machines."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: all(len(self._idle[t]) >= n for t, n in self.sizes.items())
            )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # The contract

    async def allocate(self, spec: MachineSpec) -> Machine:
        queue = self._idle.get(spec.vm_type)
        while queue and self._serves(spec):
            machine = queue.popleft()
            if not _still_running(machine):  # died while idle: never hand it out
                self._counts["failures"] += 1
                await shielded(self._destroy(machine, "died while idle in the pool"))
                continue
            machine.from_pool = True
            self._busy[machine.id] = machine
            self._loaned[spec.vm_type].add(machine.id)
            self._counts["hits"] += 1
            self._need[spec.vm_type].set()
            return machine
        self._counts["misses"] += 1
        if spec.vm_type in self._need:
            self._need[spec.vm_type].set()
        machine = await allocate_whole(self.inner, spec)
        self._busy[machine.id] = machine
        return machine

    def _serves(self, spec: MachineSpec) -> bool:
        """Whether a pool machine fits ``spec`` (everything but the labels must match)."""
        template = self._specs[spec.vm_type]
        return dataclasses.replace(spec, labels={}) == dataclasses.replace(template, labels={})

    async def release(self, machine: Machine) -> None:
        self._busy.pop(machine.id, None)
        vm_type = machine.spec.vm_type
        try:
            if not await self._try_recycle(machine):
                await shielded(self._destroy(machine, "released after a job"))
        finally:
            loaned = self._loaned.get(vm_type)
            if loaned is not None and machine.id in loaned:
                loaned.discard(machine.id)  # only now: a recycled machine is idle already
                self._need[vm_type].set()

    async def _try_recycle(self, machine: Machine) -> bool:
        """Restore, verify and re-queue a pool machine; False when it must be destroyed."""
        pristine = self._pristine.get(machine.id)
        queue = self._idle.get(machine.spec.vm_type)
        if (
            pristine is None
            or queue is None
            or self._closed
            or len(queue) >= self.sizes[machine.spec.vm_type]
        ):
            return False
        try:
            clean = await self._recycle(machine, pristine)
        except Exception as exc:
            self._counts["failures"] += 1
            log.warning("pool: recycling %s failed, destroying it: %s", machine.id, exc)
            return False
        except BaseException:
            await shielded(self._destroy(machine, "cancelled while recycling"))
            raise
        if not clean:
            self._counts["failures"] += 1
            log.warning(
                "pool: %s does not match its pristine state after restore, destroying it",
                machine.id,
            )
            return False
        if self._closed or len(queue) >= self.sizes[machine.spec.vm_type]:
            return False  # closed or refilled meanwhile
        queue.append(machine)
        self._counts["recycled"] += 1
        if self.journal is not None:
            self.journal.machine_pooled(machine.record)
        await self._notify()
        return True

    async def reclaim(self, record: MachineRecord) -> None:
        await self.inner.reclaim(record)

    def leftovers(self) -> list[MachineRecord]:
        return self.inner.leftovers()

    # Filling

    async def _refill(self, vm_type: str) -> None:
        """Keep ``sizes[vm_type]`` machines idle; back off exponentially while starts fail."""
        delay = self._retry_delay
        while True:
            while self._deficit(vm_type) > 0:
                try:
                    machine = await self._start(vm_type)
                except Exception as exc:
                    self._counts["failures"] += 1
                    log.warning(
                        "pool: starting a %s machine failed (retry in %.1fs): %s",
                        vm_type,
                        delay,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
                    continue
                delay = self._retry_delay
                self._idle[vm_type].append(machine)
                self._counts["refills"] += 1
                await self._notify()
            self._need[vm_type].clear()
            await self._need[vm_type].wait()
            await asyncio.sleep(REFILL_DELAY)

    def _deficit(self, vm_type: str) -> int:
        """Machines to start: in restore mode, machines on loan count (they come back)."""
        loaned = len(self._loaned[vm_type]) if self.reuse == "restore" else 0
        return self.sizes[vm_type] - len(self._idle[vm_type]) - loaned

    async def _start(self, vm_type: str) -> Machine:
        """A started, answering machine (with its pristine snapshot when reusing), journaled."""
        self._starting += 1
        try:
            machine = await allocate_whole(self.inner, self._specs[vm_type])
        finally:
            self._starting -= 1
        try:
            await machine.ping()
            if self.reuse == "restore":
                fingerprint = await machine.fingerprint()
                snapshot_id = await machine.snapshot("pristine")
                self._pristine[machine.id] = _Pristine(snapshot_id, fingerprint)
            if self.journal is not None:
                self.journal.machine_pooled(machine.record)
        except BaseException as exc:
            await shielded(self._destroy(machine, f"failed readiness: {exc}"))
            raise
        return machine

    async def _recycle(self, machine: Machine, pristine: _Pristine) -> bool:
        """Restore the pristine snapshot; True when the machine answers and matches it."""
        await machine.restore(pristine.snapshot_id)
        await machine.ping()
        return await machine.fingerprint() == pristine.fingerprint

    async def _destroy(self, machine: Machine, note: str) -> None:
        self._pristine.pop(machine.id, None)
        try:
            await self.inner.release(machine)
        except BaseException:
            self._counts["failures"] += 1
            raise
        self._counts["discarded"] += 1
        if self.journal is not None:
            self.journal.machine_discarded(machine.id, note)
