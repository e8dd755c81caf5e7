"""The machine service's state: VMs held for remote callers, their owners and quotas.

Every VM is one session of the host's ``SessionManager``, held open by a task of the service
until its owner deletes it, the reaper finds it idle past ``idle_timeout`` (its client
vanished), or the service stops. So a VM gets what a local job's machine gets: one release,
however it ends, persisted sessions and machines, and ``sessions reclaim`` after a crash.

Quotas are per caller (an API token's name, or a JWT's user): ``max_vms`` machines held at once
and ``max_sessions`` commands running at once. A request past either is refused before anything
is started. The host's own limit is the session manager's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from vmrunner.errors import AllocationError, CapacityError, SessionNotFound
from vmrunner.machines.base import ExecResult, MachineSpec, NetworkMode
from vmrunner.server.machines_forward import Relay
from vmrunner.sessions import Session, SessionManager, SessionState, Transition

#: Seconds a failed VM stays listed (so that a poller sees ``failed``), and a cancelled name
#: is remembered (so that an allocation arriving after its cancellation is refused).
FORGET_AFTER = 300.0
LABEL = "vmrunner.vm"
CREATING, RUNNING, FAILED = "creating", "running", "failed"


@dataclass(frozen=True, slots=True)
class Quota:
    max_vms: int
    max_sessions: int


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


@dataclass(eq=False)
class Vm:
    """One VM of the service; ``session`` is set once it runs."""

    id: str
    name: str
    owner: str
    spec: MachineSpec
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    status: str = CREATING
    error: str = ""
    session: Session | None = None
    running: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: Its open port forwards, by id (``machines_forward.py``).
    forwards: dict[str, Relay] = field(default_factory=dict)

    def set_status(self, status: str, error: str = "") -> None:
        self.status, self.error, self.updated_at = status, error, time.time()

    def describe(self) -> dict[str, Any]:
        """The VM as the API shows it (the prototype's fields, then ours)."""
        body: dict[str, Any] = {
            "id": self.id, "name": self.name, "status": self.status,
            "vm_type": self.spec.vm_type, "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at), "user_id": self.owner,
            "error": self.error or None, "labels": dict(self.spec.labels),
        }
        if self.session is not None and self.status == RUNNING:
            machine = self.session.machine
            record = machine.record
            paths = machine.paths
            body["session_id"] = self.session.id
            body["paths"] = {
                "workspace": paths.workspace, "temp": paths.temp, "home": paths.home,
                "tool_cache": paths.tool_cache,
            }
            body["machine"] = {
                "id": machine.id, "provider": machine.provider_name, "pid": record.pid,
                "pid_start": record.pid_start, "state_dir": record.state_dir,
                "from_pool": machine.from_pool,
            }
        return body


class MachineService:
    """Holds VMs for callers; use as ``async with``, inside the session manager's."""

    def __init__(
        self,
        sessions: SessionManager,
        *,
        default_quota: Quota,
        quotas: Mapping[str, Quota] | None = None,
        vm_types: tuple[str, ...] = (),
        idle_timeout: float | None = 600.0,
    ) -> None:
        self.sessions = sessions
        self.default_quota = default_quota
        self.quotas = dict(quotas or {})
        self.vm_types = vm_types
        self.idle_timeout = idle_timeout
        self._vms: dict[str, Vm] = {}
        self._forgotten: dict[tuple[str, str], float] = {}
        self._group: asyncio.TaskGroup | None = None
        self._stop_observing: Callable[[], None] = _nothing

    async def __aenter__(self) -> MachineService:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._stop_observing = self.sessions.observe(self._on_transition)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_observing()
        for vm in self._vms.values():
            vm.done.set()
        assert self._group is not None
        await self._group.__aexit__(et, e, tb)

    def _on_transition(self, session: Session, transition: Transition) -> None:
        """A VM's session released by someone else (the reaper, a stop) ends the VM."""
        vm = self._vms.get(session.spec.labels.get(LABEL, ""))
        if vm is not None and transition.state is SessionState.TERMINATING:
            vm.done.set()

    # Reading

    def quota(self, owner: str) -> Quota:
        return self.quotas.get(owner, self.default_quota)

    def owned(self, owner: str) -> list[Vm]:
        self._expire()
        return [vm for vm in self._vms.values() if vm.owner == owner and not vm.done.is_set()]

    def get(self, owner: str, vm_id: str) -> Vm:
        vm = self._vms.get(vm_id)
        if vm is None or vm.owner != owner or vm.done.is_set():
            raise SessionNotFound(f"no VM {vm_id}")
        if vm.session is not None:
            vm.session.touch()
        return vm

    def running(self, owner: str, vm_id: str) -> Session:
        vm = self.get(owner, vm_id)
        if vm.status != RUNNING or vm.session is None:
            raise SessionNotFound(f"VM {vm_id} is {vm.status}, not running")
        return vm.session

    def usage(self, owner: str) -> dict[str, Any]:
        quota = self.quota(owner)
        live = [vm for vm in self.owned(owner) if vm.status in (CREATING, RUNNING)]
        commands = sum(vm.running for vm in live)
        return {
            "max_vms": quota.max_vms, "max_concurrent_sessions": quota.max_sessions,
            "current_vms": len(live), "current_concurrent_sessions": commands,
            "at_capacity": len(live) >= quota.max_vms,
            "vm_usage_percent": 100.0 * len(live) / max(1, quota.max_vms),
            "session_usage_percent": 100.0 * commands / max(1, quota.max_sessions),
            "host_limit": self.sessions.limit, "host_in_use": self.sessions.active_count,
        }

    # Changing

    def create(self, owner: str, spec: MachineSpec, name: str = "") -> Vm:
        """Start allocating a VM for ``owner``; ``CapacityError`` at once past a limit."""
        if self.vm_types and spec.vm_type not in self.vm_types:
            raise AllocationError(
                f"unknown vm_type {spec.vm_type!r}: this host serves {', '.join(self.vm_types)}"
            )
        if (spec.image or spec.services) and not self.sessions.provider.capabilities.containers:
            raise AllocationError(
                f"the {self.sessions.provider.name} provider of this host cannot run container "
                "images"
            )
        if name and (owner, name) in self._forgotten:
            raise AllocationError(f"allocation {name!r} was cancelled by its client")
        usage = self.usage(owner)
        if usage["at_capacity"]:
            raise CapacityError(
                f"limit reached: {owner} holds {usage['current_vms']} of {usage['max_vms']} VMs"
            )
        if sum(vm.status in (CREATING, RUNNING) for vm in self._vms.values()) >= (
            self.sessions.limit
        ):
            raise CapacityError(f"limit reached: this host runs {self.sessions.limit} VMs")
        vm_id = f"vm-{secrets.token_hex(4)}"
        labels = {**spec.labels, LABEL: vm_id, "vmrunner.vm_owner": owner}
        vm = Vm(vm_id, name or vm_id, owner, dataclasses.replace(spec, labels=labels))
        self._vms[vm_id] = vm
        assert self._group is not None, "the machine service is not running"
        self._group.create_task(self._hold(vm), name=f"vm-{vm_id}")
        return vm

    async def _hold(self, vm: Vm) -> None:
        try:
            async with self.sessions.open(vm.spec, wait=False, idle_timeout=self.idle_timeout) as s:
                vm.session = s
                vm.set_status(RUNNING)
                vm.ready.set()
                await vm.done.wait()
        except Exception as exc:
            vm.set_status(FAILED, str(exc))
        finally:
            vm.ready.set()
            vm.ended.set()
            if vm.status != FAILED or vm.done.is_set():
                self._vms.pop(vm.id, None)

    async def delete(self, owner: str, vm_id: str) -> None:
        """Release the VM (waiting for it); ``SessionNotFound`` if it is not the owner's."""
        vm = self._vms.get(vm_id)
        if vm is None or vm.owner != owner:
            raise SessionNotFound(f"no VM {vm_id}")
        vm.done.set()
        await vm.ended.wait()
        self._vms.pop(vm.id, None)

    async def forget(self, owner: str, name: str) -> None:
        """Drop the allocation ``name``: release it if it exists, refuse it if it comes later."""
        self._forgotten[(owner, name)] = time.monotonic() + FORGET_AFTER
        for vm in [v for v in self._vms.values() if v.owner == owner and v.name == name]:
            await self.delete(owner, vm.id)

    def start_command(self, owner: str, vm_id: str) -> tuple[Session, Callable[[], None]]:
        """The VM's session for one command, counted against the owner's sessions quota until
        the returned function is called."""
        session = self.running(owner, vm_id)
        vm = self._vms[vm_id]
        quota = self.quota(owner)
        if sum(v.running for v in self.owned(owner)) >= quota.max_sessions:
            raise CapacityError(
                f"limit reached: {owner} runs {quota.max_sessions} commands at once"
            )
        vm.running += 1
        counted = [True]

        def done() -> None:  # idempotent: the stream's end and the response's both call it
            if counted.pop() if counted else False:
                vm.running -= 1

        return session, done

    async def exec(self, session: Session, *args: Any, **kwargs: Any) -> ExecResult:
        """``Machine.exec`` in the session's machine, ``busy`` while it runs."""
        async with self.busy(session):
            return await session.machine.exec(*args, **kwargs)

    async def exec_image(self, session: Session, *args: Any, **kwargs: Any) -> ExecResult:
        """``Machine.exec_image`` in the session's machine, ``busy`` while it runs."""
        async with self.busy(session):
            return await session.machine.exec_image(*args, **kwargs)

    @asynccontextmanager
    async def busy(self, session: Session) -> AsyncIterator[None]:
        """Touch the session while the caller works in its machine (so the reaper leaves a
        long silent command or a large snapshot alone) without writing a state each time:
        the client's own session records its steps."""
        period = max(0.05, (self.idle_timeout or 60.0) / 4)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(period)
                session.touch()

        session.touch()
        beating = asyncio.ensure_future(heartbeat())
        try:
            yield
        finally:
            beating.cancel()
            session.touch()

    @asynccontextmanager
    async def command(self, owner: str, vm_id: str) -> AsyncIterator[Session]:
        session, done = self.start_command(owner, vm_id)
        try:
            yield session
        finally:
            done()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, until in self._forgotten.items() if until < now]:
            del self._forgotten[key]
        wall = time.time()
        for vm in [v for v in self._vms.values() if v.status == FAILED]:
            if wall - vm.updated_at > FORGET_AFTER:
                self._vms.pop(vm.id, None)


def _nothing() -> None:
    return None


def spec_of(body: Mapping[str, Any], default_network: NetworkMode) -> MachineSpec:
    """A machine spec from a ``POST /api/vms`` body (already validated by its model)."""
    return MachineSpec(
        vm_type=body.get("vm_type") or "default",
        network=body.get("network") or default_network,
        cpus=body.get("cpus"), memory_mib=body.get("memory_mib"), pids=body.get("pids"),
        disk_mib=body.get("disk_mib"), labels=dict(body.get("labels") or {}),
    )
