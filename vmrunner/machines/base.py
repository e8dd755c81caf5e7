"""The two contracts every backend implements: ``Provider`` and ``Machine``.

A provider starts machines of a ``vm_type`` and stops them; a machine runs commands through the
guest agent, moves files in and out as tar streams, and (where the provider declares it) takes
and restores snapshots. Nothing above this layer knows how a machine is made.

Resource contract (the rule the session manager builds on):
- ``Provider.allocate`` either returns a machine whose agent answered, or raises
  ``AllocationError`` having freed everything it started.
- ``Provider.release`` frees everything the machine held (processes, mounts, files, sockets)
  and is idempotent: releasing a machine that is already gone is not an error. It must complete
  even when the calling task is being cancelled (implementations shield their teardown).
- ``Provider.reclaim`` does the same for a machine left behind by a runner process that died,
  knowing only its ``MachineRecord``.

A port forward (``Machine.forward``, where the provider declares it) lets programs in the machine
reach one host unix socket through ``127.0.0.1:PORT`` inside, over the agent's own stream: the
machine gets no route to the host.

Snapshots live as long as their machine; ``export_snapshot`` copies one out to a host folder and
``import_snapshot`` seeds a fresh machine of the same provider with it (``vmrunner rerun``).
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

from vmrunner.errors import ExecError, ForwardUnsupported, SnapshotUnsupported, TransferError

Stream = Literal["stdout", "stderr"]
#: Called with each chunk of output as the command produces it.
OutputCallback = Callable[[Stream, bytes], None]
SnapshotId = str
#: ``private``: the machine's own network namespace with outbound NAT through a user-mode
#: network stack (the host's loopback, gateway and own addresses unreachable); ``host``: the
#: host's network as it is; ``none``: loopback only.
NetworkMode = Literal["private", "host", "none"]

DEFAULT_VM_TYPE = "default"
#: A VM's size when its spec names none.
DEFAULT_VM_CPUS = 1
DEFAULT_VM_MEMORY_MIB = 512


class Isolation(StrEnum):
    """How strongly a provider separates a machine from the host."""

    NONE = "none"
    NAMESPACES = "namespaces"
    VM = "vm"


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """What to allocate: a machine type (image plus size), its network mode and its limits.

    A limit left ``None`` takes the provider's default for the machine type (see
    ``machines/limits.py``); every provider enforces the limits it is given or refuses them.
    """

    vm_type: str = DEFAULT_VM_TYPE
    network: NetworkMode = "host"
    cpus: int | None = None
    memory_mib: int | None = None
    #: The most processes (and threads) the machine may hold at once.
    pids: int | None = None
    #: The budget of the machine's writable space (workspace, home, temp, tool cache).
    disk_mib: int | None = None
    #: Free-form labels for bookkeeping (job, run); never interpreted by providers.
    labels: Mapping[str, str] = field(default_factory=dict)
    #: An OCI image (``node:20``, ``ghcr.io/o/i@sha256:...``) whose root file system becomes the
    #: machine's (a ``container:`` job), where ``Capabilities.containers`` says so; '' for none.
    image: str = ""
    #: The registry's user name and password for ``image`` (``container.credentials``).
    image_credentials: tuple[str, str] | None = field(default=None, repr=False)
    #: Who the machine's commands run as in ``image`` (``uid[:gid]`` or a name of its
    #: ``/etc/passwd``); '' for the image's own user (root when it names none).
    image_user: str = ""
    #: Variables added to the image's own environment (``container.env``).
    image_env: tuple[tuple[str, str], ...] = ()
    #: Service containers (``services:``) that run in the machine, on its network, from their
    #: images; started, and healthy where they have a health check, before it is handed out.
    services: tuple[ServiceSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """``--health-cmd`` and its timing (Docker's meaning): the service is healthy once the
    command succeeds, unhealthy after ``retries`` failures past ``start_period``."""

    command: str
    interval: float = 10.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service container: reachable from the machine by ``label`` as a host name."""

    label: str
    image: str
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    env: tuple[tuple[str, str], ...] = ()
    #: ``uid[:gid]`` or a name of the image's; '' for the image's own user.
    user: str = ""
    #: Replaces the image's entrypoint and command (``--entrypoint``); '' keeps them.
    entrypoint: str = ""
    #: Replaces the image's command (``command:``); empty keeps it.
    command: tuple[str, ...] = ()
    workdir: str = ""
    health: HealthCheck | None = None


@dataclass(frozen=True, slots=True)
class ImageRun:
    """One command run in a container of ``image`` inside a machine (a Docker action's step):
    its own root file system, the machine's network, processes and limits."""

    image: str
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    #: Replaces the image's entrypoint (and drops its command); '' keeps them.
    entrypoint: str = ""
    user: str = ""
    workdir: str = ""
    #: Machine folders shown in the container: (machine path, container path).
    binds: tuple[tuple[str, str], ...] = ()
    #: A folder of the machine to build the image from, ``image`` being its Dockerfile
    #: (relative to it); '' when ``image`` is pulled.
    context: str = ""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do; callers check these instead of catching errors."""

    isolation: Isolation
    snapshots: bool
    network_modes: frozenset[str] = frozenset({"host", "none"})
    #: ``Machine.forward``: a port inside the machine that leads to a host unix socket.
    forward: bool = False
    #: ``MachineSpec.image``: machines whose root file system is an OCI image.
    containers: bool = False
    #: ``Machine.export_snapshot`` and ``import_snapshot`` (``vmrunner rerun``).
    snapshot_export: bool = False


@dataclass(frozen=True, slots=True)
class MachinePaths:
    """GitHub-like locations inside the machine."""

    workspace: str
    temp: str
    home: str
    tool_cache: str = ""

    @property
    def work(self) -> str:
        """The runner's work folder (``/home/runner/work``, as on GitHub's runners): it holds
        ``_temp`` and each repository's workspace, ``work/<repo>/<repo>``."""
        return str(PurePosixPath(self.temp).parent)


#: Lists every entry of some directories with type and size (directory sizes vary by
#: filesystem, so only their names count). Equal listings mean nothing was added or resized.
_FINGERPRINT = (
    'for d in "$@"; do [ -d "$d" ] && find "$d" -xdev \\( -type d -printf "d %p\\n" \\)'
    ' -o -printf "%y %p %s\\n"; done | LC_ALL=C sort'
)


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How one command ended. ``exit_code`` is None when a signal ended it."""

    exit_code: int | None
    duration: float
    signal: int | None = None
    timed_out: bool = False
    #: Output kept when no ``on_output`` callback was given.
    stdout: bytes = b""
    stderr: bytes = b""
    #: The ``collect`` files as they were when the command ended (missing ones empty).
    files: Mapping[str, bytes] = field(default_factory=dict)
    #: Those of them cut at the agent's limit (``MAX_COLLECT``).
    truncated: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """What must be persisted to find and release a machine after the runner died."""

    machine_id: str
    provider: str
    vm_type: str
    #: Host pid of the machine's root process and its start time (guards against pid reuse).
    pid: int | None
    pid_start: int | None
    #: Host directory holding the machine's state, removed on release.
    state_dir: str
    #: The runner process that owns the machine (pid and start time).
    owner_pid: int
    owner_start: int | None
    created_at: float = field(default_factory=time.time)
    data: Mapping[str, Any] = field(default_factory=dict)


class Machine(ABC):
    """One isolated machine, reached through its guest agent."""

    id: str
    spec: MachineSpec
    paths: MachinePaths
    #: Whether the machine came from the warm pool (set by the pool).
    from_pool: bool = False

    @property
    @abstractmethod
    def provider_name(self) -> str: ...

    @property
    @abstractmethod
    def record(self) -> MachineRecord:
        """The persistable description of this machine."""

    @abstractmethod
    async def exec(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced inside the machine
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        write: Mapping[str, str] | None = None,
        collect: Sequence[str] = (),
    ) -> ExecResult:
        """Run one command (argv, or a string for ``sh -c``) and wait for it.

        Output is streamed to ``on_output`` while the command runs; without a callback it is
        collected into the result. On timeout or task cancellation the command's whole process
        group is killed before this returns (or re-raises ``CancelledError``). ``write``: text
        files written just before the command starts; ``collect``: files read when it has
        ended, however it ended (``ExecResult.files``). A job's step needs both, and they cost
        no extra process.
        """

    @abstractmethod
    async def put(self, dest_dir: str, tar_data: bytes) -> None:
        """Unpack a tar stream into ``dest_dir`` inside the machine (created if missing)."""

    @abstractmethod
    async def get(self, path: str) -> bytes:
        """A tar stream of ``path`` (a file or a directory) inside the machine."""

    async def ping(self) -> float:
        """Round-trip time to the agent, in seconds."""
        started = time.perf_counter()
        await self.exec(["true"])
        return time.perf_counter() - started

    async def fingerprint(self) -> bytes:
        """A listing of the machine's writable directories (each entry's type, path, size):
        equal before and after a restore means the restore left nothing behind. Listed by
        ``find`` inside the machine; a provider that sees those directories from the host
        lists them there instead, without a process."""
        paths = self.paths
        dirs = [d for d in (paths.workspace, paths.temp, paths.home) if d]
        result = await self.exec(["sh", "-c", _FINGERPRINT, "sh", *dirs])
        if not result.ok:
            raise TransferError(
                f"cannot list the writable directories of {self.id}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result.stdout

    async def limits_hit(self) -> list[str]:
        """Plain reasons for the limits the machine ran into so far, each once, e.g. ``out of
        memory: the machine's limit is 256 MiB``; a failed step is explained with them."""
        return []

    async def snapshot(self, name: str = "") -> SnapshotId:
        """Capture the machine's state; cost grows with what changed since the last one."""
        raise SnapshotUnsupported(f"the {self.provider_name} provider cannot take snapshots")

    async def restore(self, snapshot_id: SnapshotId) -> None:
        """Bring the machine back exactly to a snapshot taken earlier."""
        raise SnapshotUnsupported(f"the {self.provider_name} provider cannot restore snapshots")

    async def export_snapshot(self, snapshot_id: SnapshotId, dest_dir: str) -> None:
        """Copy a snapshot out to the host folder ``dest_dir`` (created), so it outlives the
        machine.

        Only ``import_snapshot`` of a machine of the same provider reads the folder.
        """
        raise SnapshotUnsupported(f"the {self.provider_name} provider cannot export snapshots")

    async def import_snapshot(self, source_dir: str) -> None:
        """Replace this (fresh, idle) machine's state with a snapshot ``export_snapshot`` wrote."""
        raise SnapshotUnsupported(f"the {self.provider_name} provider cannot import snapshots")

    async def exec_image(
        self,
        run: ImageRun,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced inside the machine
        on_output: OutputCallback | None = None,
        write: Mapping[str, str] | None = None,
        collect: Sequence[str] = (),
    ) -> ExecResult:
        """``exec`` in a one-shot container of ``run.image`` inside this machine (its own
        root, ``run.binds`` from the machine; ``env`` over the image's): the image's entrypoint
        (or ``run.entrypoint``) with ``args`` (or the image's command when none are given), as
        ``docker run`` would. ``write`` and ``collect`` are machine paths. Only where
        ``Capabilities.containers``."""
        raise ExecError(f"the {self.provider_name} provider cannot run container images")

    def forward(self, target: Path, port: int = 0) -> AbstractAsyncContextManager[int]:
        """Listen on ``127.0.0.1:port`` inside the machine (0: any free port) and carry every
        connection made there to a new connection to the host unix socket ``target``.

        ``async with machine.forward(target) as port:`` gives the port inside the machine; on
        exit the listener and every connection of the forward are closed. Only where the
        provider declares ``Capabilities.forward``; elsewhere ``ForwardUnsupported``. A port
        that is taken is a ``ForwardError``. A forward lives as long as the agent's connection:
        a Firecracker snapshot resets that connection, so a forward is opened after snapshots
        (or again), and a QEMU restore brings back the agent's forwards as they were then.
        """
        return _unsupported_forward(self.provider_name)

    # Conveniences built on put/get, shared by every provider.

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or replace one file inside the machine."""
        target = PurePosixPath(path)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(target.name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        await self.put(str(target.parent), buffer.getvalue())

    async def read_file(self, path: str) -> bytes:
        """The contents of one regular file inside the machine."""
        data = await self.get(path)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                for member in tar:
                    if member.isfile():
                        extracted = tar.extractfile(member)
                        if extracted is not None:
                            return extracted.read()
        except tarfile.TarError as exc:
            raise TransferError(f"cannot read {path}: {exc}") from exc
        raise TransferError(f"{path} is not a regular file")

    async def upload(self, host_path: str | os.PathLike[str], dest_dir: str) -> None:
        """Copy a host file or directory (recursively) into ``dest_dir`` inside the machine."""
        source = os.fspath(host_path)
        buffer = io.BytesIO()
        try:
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                tar.add(source, arcname=os.path.basename(source.rstrip("/")) or ".")
        except OSError as exc:
            raise TransferError(f"cannot read {source}: {exc}") from exc
        await self.put(dest_dir, buffer.getvalue())


@asynccontextmanager
async def _unsupported_forward(provider: str) -> AsyncIterator[int]:
    raise ForwardUnsupported(f"the {provider} provider cannot forward ports into its machines")
    yield 0  # pragma: no cover - a generator, so that the error comes with ``async with``


class Provider(ABC):
    """Starts and stops machines of one backend."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    @abstractmethod
    async def allocate(self, spec: MachineSpec) -> Machine:
        """Start one machine whose agent answers, or raise ``AllocationError``."""

    @abstractmethod
    async def release(self, machine: Machine) -> None:
        """Stop the machine and free all it held; idempotent and cancellation-safe."""

    async def reclaim(self, record: MachineRecord) -> None:
        """Release a machine known only by its record (its runner died); idempotent."""
        raise NotImplementedError(f"the {self.name} provider cannot reclaim machines")

    def leftovers(self) -> list[MachineRecord]:
        """Records of every machine this provider has on disk, alive or left behind."""
        return []

    async def preflight(self) -> None:
        """Raise ``AllocationError`` saying what to fix when this host cannot give machines at
        all (a missing tool, no user namespaces): asked once, before a run's first job."""
        return None

    async def aclose(self) -> None:
        """Free provider-wide resources (pools, caches); machines are released separately."""
        return None
