"""The ``firecracker`` provider: each machine is a Firecracker microVM driven through its API.

One machine is one ``firecracker --api-sock SOCK --id ID`` process (or the same behind the
``jailer``). Once its API socket answers, the provider configures the microVM with Firecracker's
REST API (HTTP over that unix socket, see ``FirecrackerApi``) and boots it::

    PUT /machine-config       vcpu_count, mem_size_mib (from the MachineSpec)
    PUT /boot-source          kernel_image_path (an uncompressed ``vmlinux`` on x86_64),
                              boot_args (plus ``vmrunner.agent=vsock:PORT``), initrd_path
    PUT /drives/rootfs        a per-machine copy-on-write copy of the image's ext4 rootfs
    PUT /network-interfaces/eth0   only for network "host": a TAP device from ``taps``
    PUT /vsock                guest_cid 3, uds_path: the host end of the guest's vsock
    PUT /actions              InstanceStart

The guest image starts the agent with ``--vsock PORT``; the host reaches it through the vsock
device's unix socket: connect, send ``CONNECT PORT\\n``, read ``OK HOSTPORT\\n``, then the
stream is the agent's (Firecracker's "host-initiated connections").

Snapshots are Firecracker's full snapshots plus a copy of the disk: ``PATCH /vm Paused``,
``PUT /snapshot/create`` (microVM state and guest memory files), a reflink (or sparse) copy of
the rootfs, ``PATCH /vm Resumed``. Firecracker resets vsock connections when it snapshots,
so the agent is reconnected afterwards. A restore replaces the process: the old one is killed,
the disk copy put back at the drive's path, a fresh process gets ``PUT /snapshot/load`` (with
``resume_vm``) before any other configuration, and the agent is reconnected.

Releasing is SIGTERM, the grace period, SIGKILL (the guest's state is thrown away with its
disk copy, so an orderly guest shutdown through ``SendCtrlAltDel`` would buy nothing).
Everything a machine holds lives in ``VMRUNNER_HOME/machines/<id>/`` (and, with the jailer,
in its chroot under ``chroot_base_dir``, by default ``VMRUNNER_HOME/jailer``), recorded in
``machine.json`` before the process starts, so a runner that dies leaves nothing unknown.
``tests/machines/fake_firecracker.py`` is a stand-in for the binary that checks every request
against Firecracker's OpenAPI document, for hosts where Firecracker cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import httpx

from vmrunner.config import vmrunner_home
from vmrunner.errors import (
    AgentError,
    AllocationError,
    ImageError,
    MachineError,
    ReleaseError,
    SnapshotError,
)
from vmrunner.machines.agent import DEFAULT_GRACE
from vmrunner.machines.base import (
    DEFAULT_VM_CPUS,
    DEFAULT_VM_MEMORY_MIB,
    Capabilities,
    Isolation,
    Machine,
    MachinePaths,
    MachineRecord,
    MachineSpec,
    Provider,
    SnapshotId,
)
from vmrunner.machines.client import AgentClient, wait_through_cancellation
from vmrunner.machines.images import DEFAULT_NAME, ImageStore
from vmrunner.machines.local import (
    AgentMachine,
    base_record,
    check_owner,
    create_machine_dir,
    kill_process,
    process_start,
    read_records,
    remove_machine_dir,
    shielded,
    write_record,
)
from vmrunner.machines.sandbox import HOME, TEMP, TOOL_CACHE, WORKSPACE

#: The guest's vsock context id (3 is the first one free for guests).
GUEST_CID = 3
#: The vsock port the guest's agent listens on (``agent.py --vsock PORT``).
DEFAULT_AGENT_PORT = 1024
#: Firecracker's usual guest command line: no reboot (Firecracker exits), no PCI scan; the
#: image adds its own (root device, panic policy) and the provider the agent's vsock port.
DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k pci=off"
#: How long a new process may take to open its API socket.
SOCKET_TIMEOUT = 10.0
#: How long a guest may take from InstanceStart (or snapshot load) to its agent's first answer.
BOOT_TIMEOUT = 60.0
#: How long one API request may take.
API_TIMEOUT = 30.0
#: How long release may take before it says what is left.
RELEASE_TIMEOUT = 30.0
API_SOCKET = "api.sock"
VSOCK_SOCKET = "vsock.sock"
DISK = "rootfs.ext4"
LOG = "firecracker.log"
#: ioctl(FICLONE): share the extents of another file (btrfs, xfs, ...).
FICLONE = 0x40049409
#: ioctl(KVM_GET_API_VERSION) and the only version KVM has ever answered.
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


# The API client.


class FirecrackerApi:
    """Firecracker's REST API on one unix socket; errors come out as the caller's class.

    Every failure (no socket, a broken connection, a 4xx/5xx answer) raises ``error`` (an
    ``AllocationError`` unless the caller says otherwise) whose message names the request and
    carries Firecracker's ``fault_message``.
    """

    def __init__(
        self, socket_path: str | os.PathLike[str], *, timeout: float = API_TIMEOUT
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self._reach = SocketPath(self.socket_path)
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self._reach.path),
            base_url="http://localhost",
            timeout=timeout,
        )

    async def put(
        self, path: str, body: Mapping[str, Any], *, error: type[MachineError] = AllocationError
    ) -> None:
        await self.request("PUT", path, body, error=error)

    async def patch(
        self, path: str, body: Mapping[str, Any], *, error: type[MachineError] = AllocationError
    ) -> None:
        await self.request("PATCH", path, body, error=error)

    async def get(self, path: str, *, error: type[MachineError] = AllocationError) -> Any:
        response = await self.request("GET", path, error=error)
        try:
            return response.json()
        except ValueError as exc:
            raise error(f"Firecracker answered GET {path} with no JSON: {exc}") from exc

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        error: type[MachineError] = AllocationError,
    ) -> httpx.Response:
        try:
            response = await self._client.request(
                method, path, json=dict(body) if body is not None else None
            )
        except httpx.HTTPError as exc:
            raise error(f"Firecracker {method} {path} failed: {exc or type(exc).__name__}") from exc
        if response.status_code >= 300:
            raise error(f"Firecracker refused {method} {path}: {fault_message(response)}")
        return response

    async def aclose(self) -> None:
        await self._client.aclose()
        self._reach.close()


def fault_message(response: httpx.Response) -> str:
    """Firecracker's ``fault_message`` (or what the answer holds instead), with the status."""
    try:
        message = response.json().get("fault_message")
    except (ValueError, AttributeError):
        message = None
    if not isinstance(message, str) or not message:
        message = response.text.strip()[:500] or response.reason_phrase
    return f"{message} (HTTP {response.status_code})"


def unsupported_reason(firecracker: str | None = None) -> str | None:
    """Why this host cannot run Firecracker machines (None if it seems it can).

    Checks the binary and that ``/dev/kvm`` opens read-write and speaks the KVM API; whether
    KVM can really boot a guest only an allocation tells.
    """
    binary = firecracker or shutil.which("firecracker")
    if binary is None or not os.access(binary, os.X_OK):
        return "firecracker binary not found"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"KVM cannot boot a guest: /dev/kvm: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"KVM cannot boot a guest: /dev/kvm answers no KVM API: {exc.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"KVM cannot boot a guest: unknown KVM API version {version}"
    return None


# Host files.


class SocketPath:
    """A unix socket's path short enough to connect to, however deep the socket lives.

    ``sun_path`` holds 108 bytes; a longer path is reached through an ``O_PATH`` descriptor of
    its directory (``/proc/self/fd/N/name``), held until ``close``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        full = os.fspath(path)
        self._fd: int | None = None
        self.path = full
        if len(os.fsencode(full)) >= 100:
            self._fd = os.open(os.path.dirname(full) or ".", os.O_PATH | os.O_CLOEXEC)
            self.path = f"/proc/self/fd/{self._fd}/{os.path.basename(full)}"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.close()


def clone_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` sharing extents where the file system can (reflink),
    otherwise copying only the data regions (holes stay holes)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        except OSError:
            _sparse_copy(src.fileno(), dst.fileno())
    os.replace(tmp, target)


def _sparse_copy(src: int, dst: int) -> None:
    size = os.fstat(src).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        while start < end:
            copied = os.copy_file_range(src, dst, end - start, start, start)
            if copied == 0:
                break
            start += copied
        offset = end
    os.ftruncate(dst, size)


# Configuration.


@dataclass(frozen=True, slots=True)
class BootFiles:
    """What the guest boots from: Firecracker takes an ELF ``vmlinux`` on x86_64."""

    kernel: Path
    rootfs: Path
    initrd: Path | None = None
    cmdline: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Jailer:
    """Run Firecracker through the ``jailer`` (chroot, namespaces, dropped privileges).

    The chroot is ``chroot_base_dir/<exec-file name>/<machine id>/root``; every file the
    microVM uses is placed inside it and named to Firecracker relative to it.
    """

    binary: str = "jailer"
    uid: int = 0
    gid: int = 0
    chroot_base_dir: str | None = None
    extra_args: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one machine's files are on the host, and how Firecracker names them."""

    #: The directory holding the API socket, vsock socket, disk and snapshots.
    vm_dir: Path
    #: With the jailer: the chroot root (``vm_dir``), Firecracker's "/".
    chroot: Path | None

    def api(self, path: Path) -> str:
        """``path`` as the Firecracker process sees it."""
        if self.chroot is None:
            return str(path)
        return "/" + str(path.relative_to(self.chroot))

    def socket_arg(self, path: Path) -> str:
        """A socket's path for Firecracker: relative to its working directory (``vm_dir``),
        as an absolute one may not fit in a socket address; in the jail, from its root."""
        return self.api(path) if self.chroot is not None else path.name

    @property
    def api_socket(self) -> Path:
        return self.vm_dir / API_SOCKET

    @property
    def vsock(self) -> Path:
        return self.vm_dir / VSOCK_SOCKET

    @property
    def disk(self) -> Path:
        return self.vm_dir / DISK

    @property
    def snapshots(self) -> Path:
        return self.vm_dir / "snapshots"


# The machine.


class FirecrackerMachine(AgentMachine):
    """A microVM; its agent is reached over vsock, its process may be replaced by a restore."""

    def __init__(self, *, layout: _Layout, api: FirecrackerApi, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = layout
        self.api = api
        self.snapshot_dirs: dict[str, Path] = {}
        self.lock = asyncio.Lock()
        self.provider: FirecrackerProvider | None = None

    def _owner(self) -> FirecrackerProvider:
        if self.released or self.provider is None:
            raise SnapshotError(f"machine {self.id} was released")
        return self.provider

    # Both run to the end once started (a cancelled caller gets its CancelledError after): a
    # microVM left paused, or without a process, would be of no use to anyone.

    async def snapshot(self, name: str = "") -> SnapshotId:
        async with self.lock:
            return await shielded(self._owner()._snapshot(self, name))

    async def restore(self, snapshot_id: SnapshotId) -> None:
        async with self.lock:
            await shielded(self._owner()._restore(self, snapshot_id))


# The provider.


class FirecrackerProvider(Provider):
    """Machines that are Firecracker microVMs on this host (needs KVM and the binary).

    The guest boots ``kernel``/``rootfs``/``initrd`` when given, otherwise the ``image`` of
    ``ImageStore(images)`` (its ``vmlinuz`` unpacked to the ELF Firecracker wants).
    ``firecracker`` is the program to run (default: ``firecracker`` on PATH; any argv that takes
    Firecracker's ``--api-sock``/``--id``, such as the stand-in). Network "host" attaches one of
    the pre-made TAP devices in ``taps`` as eth0 (addressing it is the host's and image's
    business); "none" attaches no network device at all.
    """

    name: ClassVar[str] = "firecracker"
    capabilities: ClassVar[Capabilities] = Capabilities(
        isolation=Isolation.VM, snapshots=True, forward=True
    )

    def __init__(
        self,
        home: Path | None = None,
        *,
        kernel: str | os.PathLike[str] | None = None,
        rootfs: str | os.PathLike[str] | None = None,
        initrd: str | os.PathLike[str] | None = None,
        boot_args: str = DEFAULT_BOOT_ARGS,
        image: str = DEFAULT_NAME,
        images: Path | None = None,
        firecracker: str | Sequence[str] | None = None,
        jailer: Jailer | None = None,
        agent_port: int = DEFAULT_AGENT_PORT,
        taps: Sequence[str] = (),
        grace: float = DEFAULT_GRACE,
        boot_timeout: float = BOOT_TIMEOUT,
    ) -> None:
        self.home = Path(home) if home is not None else vmrunner_home()
        self.machines_dir = self.home / "machines"
        self.kernel = Path(kernel) if kernel is not None else None
        self.rootfs = Path(rootfs) if rootfs is not None else None
        self.initrd = Path(initrd) if initrd is not None else None
        self.boot_args = boot_args
        self.image = image
        self.images = images
        self._files: BootFiles | None = None
        self.firecracker = (
            [firecracker] if isinstance(firecracker, str) else list(firecracker or [])
        )
        self.jailer = jailer
        self.agent_port = agent_port
        self.taps = list(taps)
        self.grace = grace
        self.boot_timeout = boot_timeout
        self._taps_in_use: set[str] = set()

    # Allocation.

    def _firecracker_argv(self) -> list[str]:
        return self.firecracker or [shutil.which("firecracker") or "firecracker"]

    def _argv(self, machine_id: str, layout: _Layout) -> list[str]:
        firecracker = self._firecracker_argv()
        if self.jailer is None:
            return [
                *firecracker,
                "--api-sock",
                layout.socket_arg(layout.api_socket),
                "--id",
                machine_id,
            ]
        jail = self.jailer
        return [
            jail.binary,
            "--id", machine_id,
            "--exec-file", firecracker[0],
            "--uid", str(jail.uid),
            "--gid", str(jail.gid),
            "--chroot-base-dir", self._chroot_base(jail),
            *jail.extra_args,
            "--",
            "--api-sock", layout.socket_arg(layout.api_socket),
        ]  # fmt: skip

    def _chroot_base(self, jail: Jailer) -> str:
        return jail.chroot_base_dir or str(self.home / "jailer")

    def _layout(self, machine_id: str, state_dir: Path) -> _Layout:
        if self.jailer is None:
            return _Layout(vm_dir=state_dir / "vm", chroot=None)
        exec_name = os.path.basename(self._firecracker_argv()[0])
        root = Path(self._chroot_base(self.jailer)) / exec_name / machine_id / "root"
        return _Layout(vm_dir=root, chroot=root)

    def _boot_files(self) -> BootFiles:
        """The guest's kernel, rootfs, initrd and command line (resolved once, then kept)."""
        if self._files is not None:
            return self._files
        if self.kernel is not None and self.rootfs is not None:
            files = BootFiles(kernel=self.kernel, rootfs=self.rootfs, initrd=self.initrd)
        elif self.kernel is not None or self.rootfs is not None:
            raise AllocationError(
                "the firecracker provider takes a kernel and a rootfs together, or an image"
            )
        else:
            try:
                store = ImageStore(self.images)
                image = store.get(self.image)
                kernel = store.vmlinux(image)
            except ImageError as exc:
                raise AllocationError(
                    f"no guest image for the firecracker provider: {exc}"
                ) from exc
            files = BootFiles(kernel, image.rootfs_raw, image.initrd, image.cmdline)
        for path in (files.kernel, files.rootfs, files.initrd):
            if path is not None and not path.is_file():
                raise AllocationError(f"the firecracker guest image file {path} does not exist")
        self._files = files
        return files

    def _take_tap(self, spec: MachineSpec) -> str | None:
        if spec.network == "none":
            return None
        if spec.network != "host":
            raise AllocationError(f"the firecracker provider has no network mode {spec.network!r}")
        held = self._taps_in_use | {
            str(r.data.get("tap")) for r in self.leftovers() if r.data.get("tap")
        }
        free = [tap for tap in self.taps if tap not in held]
        if not free:
            why = "all are in use" if self.taps else "none configured (taps=[...])"
            raise AllocationError(
                f"the firecracker provider gives network 'host' through a TAP device: {why}"
            )
        self._taps_in_use.add(free[0])
        return free[0]

    async def allocate(self, spec: MachineSpec) -> Machine:
        files = await asyncio.to_thread(self._boot_files)
        tap = self._take_tap(spec)
        record = base_record(self.name, spec, self.machines_dir)
        layout = self._layout(record.machine_id, Path(record.state_dir))
        record = replace(
            record,
            data={
                **record.data,
                "tap": tap,
                "vm_dir": str(layout.vm_dir),
                "chroot": str(layout.chroot.parent) if layout.chroot else None,
            },
        )
        process: asyncio.subprocess.Process | None = None
        api: FirecrackerApi | None = None
        client: AgentClient | None = None
        try:
            state_dir = create_machine_dir(self.machines_dir, record)
            await shielded(asyncio.to_thread(self._prepare, layout, files))
            process = await self._start(record.machine_id, layout, state_dir)
            api = FirecrackerApi(layout.api_socket)
            await self._boot(api, layout, spec, files, tap)
            client = await self._connect(layout, process, state_dir, record.machine_id)
        except BaseException as exc:
            await shielded(self._abandon(record, layout, process, api, client, tap))
            if isinstance(exc, OSError):
                raise AllocationError(f"cannot start machine {record.machine_id}: {exc}") from exc
            raise
        record = replace(record, pid=process.pid, pid_start=process_start(process.pid))
        machine = FirecrackerMachine(
            layout=layout,
            api=api,
            provider_name=self.name,
            spec=spec,
            paths=MachinePaths(workspace=WORKSPACE, temp=TEMP, home=HOME, tool_cache=TOOL_CACHE),
            record=record,
            process=process,
            client=client,
        )
        machine.provider = self
        try:
            write_record(record)
        except BaseException:
            await self.release(machine)
            raise
        return machine

    def _prepare(self, layout: _Layout, files: BootFiles) -> None:
        """The machine's own files: its disk (a copy-on-write copy) and, jailed, the kernel."""
        layout.vm_dir.mkdir(parents=True, mode=0o700)
        layout.snapshots.mkdir(mode=0o700)
        clone_file(files.rootfs, layout.disk)
        if layout.chroot is not None:
            jail = self.jailer
            if jail is None:
                raise AllocationError(f"{layout.vm_dir}: a jailed layout, but no jailer is set")
            for source in (files.kernel, files.initrd):
                if source is not None:
                    target = layout.chroot / source.name
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copyfile(source, target)
            for path in (layout.vm_dir, layout.snapshots, *layout.vm_dir.iterdir()):
                os.chown(path, jail.uid, jail.gid)

    def _kernel_api(self, layout: _Layout, path: Path) -> str:
        return layout.api(layout.chroot / path.name) if layout.chroot is not None else str(path)

    async def _start(
        self, machine_id: str, layout: _Layout, state_dir: Path
    ) -> asyncio.subprocess.Process:
        """Start a Firecracker process and wait for its API socket to accept connections."""
        for stale in (layout.api_socket, layout.vsock):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        argv = self._argv(machine_id, layout)
        try:
            with open(state_dir / LOG, "ab") as log:  # noqa: ASYNC230 - a local file
                creation = asyncio.ensure_future(
                    asyncio.create_subprocess_exec(
                        *argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        cwd=layout.vm_dir,
                    )
                )
                cancelled = await wait_through_cancellation(creation)
                process = creation.result()
        except OSError as exc:
            raise AllocationError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
        try:
            if cancelled:
                raise asyncio.CancelledError
            await self._wait_socket(process, layout.api_socket, state_dir)
        except BaseException:
            await shielded(self._kill(process))
            raise
        return process

    async def _wait_socket(
        self, process: asyncio.subprocess.Process, socket: Path, state_dir: Path
    ) -> None:
        deadline = time.monotonic() + SOCKET_TIMEOUT
        delay = 0.002
        while True:
            if process.returncode is not None:
                raise AllocationError(
                    f"firecracker exited with status {process.returncode} before opening its "
                    f"API socket: {_tail(state_dir / LOG) or 'no output'}"
                )
            with contextlib.suppress(OSError), SocketPath(socket) as path:
                _, writer = await asyncio.open_unix_connection(path)
                writer.close()
                return
            if time.monotonic() > deadline:
                raise AllocationError(f"firecracker did not open its API socket {socket}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _boot(
        self,
        api: FirecrackerApi,
        layout: _Layout,
        spec: MachineSpec,
        files: BootFiles,
        tap: str | None,
    ) -> None:
        await api.put("/machine-config", {
            "vcpu_count": spec.cpus or DEFAULT_VM_CPUS,
            "mem_size_mib": spec.memory_mib or DEFAULT_VM_MEMORY_MIB,
        })
        boot_args = [self.boot_args, *files.cmdline, f"vmrunner.agent=vsock:{self.agent_port}"]
        boot: dict[str, Any] = {
            "kernel_image_path": self._kernel_api(layout, files.kernel),
            "boot_args": " ".join(arg for arg in boot_args if arg),
        }
        if files.initrd is not None:
            boot["initrd_path"] = self._kernel_api(layout, files.initrd)
        await api.put("/boot-source", boot)
        await api.put(
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "path_on_host": layout.api(layout.disk),
                "is_root_device": True,
                "is_read_only": False,
            },
        )
        if tap is not None:
            await api.put("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap})
        await api.put(
            "/vsock", {"guest_cid": GUEST_CID, "uds_path": layout.socket_arg(layout.vsock)}
        )
        await api.put("/actions", {"action_type": "InstanceStart"})

    async def _connect(
        self,
        layout: _Layout,
        process: asyncio.subprocess.Process,
        state_dir: Path,
        machine_id: str,
        *,
        error: type[MachineError] = AllocationError,
    ) -> AgentClient:
        """Reach the agent through the vsock device (retrying while the guest boots)."""
        name = f"the agent of machine {machine_id}"
        deadline = time.monotonic() + self.boot_timeout
        why = "no answer"
        while True:
            if process.returncode is not None:
                raise error(
                    f"firecracker exited with status {process.returncode}: "
                    f"{_tail(state_dir / LOG) or 'no output'}"
                )
            try:
                client = await vsock_connect(layout.vsock, self.agent_port, name=name)
                try:
                    async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                        await client.ping()
                except BaseException:
                    await client.close()
                    raise
                return client
            except (OSError, AgentError, TimeoutError, ConnectionError) as exc:
                why = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                log = _tail(state_dir / LOG, 500)
                raise error(
                    f"{name} did not answer over vsock within {self.boot_timeout}s: {why}"
                    + (f"; firecracker said: {log}" if log else "")
                )
            await asyncio.sleep(0.02)

    async def _abandon(
        self,
        record: MachineRecord,
        layout: _Layout,
        process: asyncio.subprocess.Process | None,
        api: FirecrackerApi | None,
        client: AgentClient | None,
        tap: str | None,
    ) -> None:
        if client is not None:
            await client.close()
        if api is not None:
            await api.aclose()
        if process is not None:
            await self._kill(process)
        self._taps_in_use.discard(tap or "")
        with contextlib.suppress(ReleaseError):
            await asyncio.to_thread(self._remove, record)

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM, the grace period, SIGKILL; then reap our child."""
        start = process_start(process.pid)
        if not await kill_process(process.pid, start, self.grace):
            raise ReleaseError(f"firecracker process {process.pid} survived SIGKILL")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await process.wait()

    # Snapshots.

    async def _snapshot(self, machine: FirecrackerMachine, name: str) -> SnapshotId:
        layout = machine.layout
        snapshot_id = f"{len(machine.snapshot_dirs) + 1:04d}{'-' if name else ''}{_slug(name)}"
        directory = layout.snapshots / snapshot_id
        try:
            directory.mkdir(mode=0o700)
            if self.jailer is not None:
                os.chown(directory, self.jailer.uid, self.jailer.gid)
        except OSError as exc:
            raise SnapshotError(f"cannot prepare snapshot {snapshot_id}: {exc}") from exc
        try:
            await machine.api.patch("/vm", {"state": "Paused"}, error=SnapshotError)
            try:
                await machine.api.put(
                    "/snapshot/create",
                    {
                        "snapshot_type": "Full",
                        "snapshot_path": layout.api(directory / "vmstate"),
                        "mem_file_path": layout.api(directory / "memory"),
                    },
                    error=SnapshotError,
                )
                # Firecracker flushed the disk on snapshot/create: it is consistent while paused.
                await asyncio.to_thread(clone_file, layout.disk, directory / DISK)
            finally:
                await shielded(machine.api.patch("/vm", {"state": "Resumed"}, error=SnapshotError))
            # Taking the snapshot reset every vsock connection: the agent's stream is gone.
            await self._reconnect(machine, error=SnapshotError)
        except BaseException as exc:
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(exc, OSError):
                raise SnapshotError(f"machine {machine.id}: snapshot failed: {exc}") from exc
            raise
        machine.snapshot_dirs[snapshot_id] = directory
        return snapshot_id

    async def _reconnect(self, machine: FirecrackerMachine, *, error: type[MachineError]) -> None:
        await machine.client.close()
        machine.client = await self._connect(
            machine.layout, machine.process, machine.state_dir, machine.id, error=error
        )

    async def _restore(self, machine: FirecrackerMachine, snapshot_id: SnapshotId) -> None:
        directory = machine.snapshot_dirs.get(snapshot_id)
        if directory is None:
            raise SnapshotError(f"machine {machine.id} has no snapshot {snapshot_id!r}")
        layout = machine.layout
        # The memory and device state belong to a new process: the old one goes first.
        await machine.client.close()
        await machine.api.aclose()
        await shielded(self._kill(machine.process))
        try:
            await asyncio.to_thread(clone_file, directory / DISK, layout.disk)
            if self.jailer is not None:
                os.chown(layout.disk, self.jailer.uid, self.jailer.gid)
                with contextlib.suppress(FileNotFoundError):  # the jailer copies it in again
                    (layout.vm_dir / os.path.basename(self._firecracker_argv()[0])).unlink()
            process = await self._start(machine.id, layout, machine.state_dir)
        except (OSError, AllocationError) as exc:
            raise SnapshotError(f"machine {machine.id}: cannot restart firecracker: {exc}") from exc
        machine.process = process
        machine.api = FirecrackerApi(layout.api_socket)
        machine._record = replace(
            machine.record, pid=process.pid, pid_start=process_start(process.pid)
        )
        try:
            write_record(machine.record)
        except AllocationError as exc:
            raise SnapshotError(str(exc)) from exc
        await machine.api.put(
            "/snapshot/load",
            {
                "snapshot_path": layout.api(directory / "vmstate"),
                "mem_backend": {
                    "backend_type": "File",
                    "backend_path": layout.api(directory / "memory"),
                },
                "resume_vm": True,
            },
            error=SnapshotError,
        )
        machine.client = await self._connect(
            layout, process, machine.state_dir, machine.id, error=SnapshotError
        )

    # Release.

    async def release(self, machine: Machine) -> None:
        if not isinstance(machine, FirecrackerMachine) or machine.provider_name != self.name:
            raise ReleaseError(f"machine {machine.id} does not belong to the {self.name} provider")
        await machine.release_once(lambda: self._teardown(machine))

    async def _teardown(self, machine: FirecrackerMachine) -> None:
        # Wait for a snapshot or restore in flight: it may be starting a new process.
        locked = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RELEASE_TIMEOUT):
                locked = await machine.lock.acquire()
        try:
            await machine.client.close()
            await machine.api.aclose()
            await self._kill(machine.process)
            self._taps_in_use.discard(str(machine.record.data.get("tap") or ""))
            await asyncio.to_thread(self._remove, machine.record)
        finally:
            if locked:
                machine.lock.release()  # a snapshot waiting for it finds the machine released

    def _remove(self, record: MachineRecord) -> None:
        chroot = record.data.get("chroot")
        if chroot:
            shutil.rmtree(str(chroot), ignore_errors=True)
            if os.path.exists(str(chroot)):
                raise ReleaseError(
                    f"cannot remove the jail {chroot} of machine {record.machine_id}"
                )
        remove_machine_dir(self.machines_dir, record.state_dir)

    def leftovers(self) -> list[MachineRecord]:
        return read_records(self.machines_dir, self.name)

    async def reclaim(self, record: MachineRecord) -> None:
        check_owner(record, self.name)
        if record.pid is not None and not await kill_process(
            record.pid, record.pid_start, self.grace
        ):
            raise ReleaseError(
                f"machine {record.machine_id}: process {record.pid} survived SIGKILL"
            )
        await asyncio.to_thread(self._remove, record)


async def vsock_connect(uds_path: Path, port: int, *, name: str = "agent") -> AgentClient:
    """A client for the agent on guest vsock ``port``, through Firecracker's vsock socket.

    Firecracker's host-initiated connection: ``CONNECT PORT\\n`` answered by ``OK HOSTPORT\\n``;
    when nothing listens on the port, Firecracker closes the connection instead.
    """
    with SocketPath(uds_path) as path:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    try:
        writer.write(f"CONNECT {port}\n".encode())
        line = await reader.readline()
        if not line.startswith(b"OK ") or not line.endswith(b"\n"):
            raise ConnectionError(f"vsock port {port}: {line.decode('utf-8', 'replace')!r}")
    except BaseException:
        writer.close()
        raise
    client = AgentClient(reader, writer, name=name)
    client.start()
    return client


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40]


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace").strip()
    except OSError:
        return ""
