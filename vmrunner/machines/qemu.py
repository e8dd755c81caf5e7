"""The ``qemu`` provider: each machine is a QEMU virtual machine booted from a guest image.

One machine is one ``qemu-system-x86_64`` process (its own session, so the whole group can be
killed) with, in ``VMRUNNER_HOME/machines/<id>/``:

- ``disk.qcow2``: a copy-on-write overlay on the image's read-only root file system, so the
  work folder (``/home/runner/work``, where a job's workspace ``<repo>/<repo>`` is made, as on
  GitHub's runners) lives on the guest's own disk and dies with the overlay;
- ``agent.sock``: the host end of a virtio-serial port named ``vmrunner``, where the guest
  agent (PID 1 in the guest, see ``images``) serves one ``AgentClient``;
- ``qmp.sock``: the QMP monitor, spoken through the ``qemu.qmp`` library (``_qmp``);
- ``console.log`` (the guest's serial console) and ``qemu.log``.

Choices (measured on Debian 12's QEMU 7.2 with Debian's 6.1 cloud kernel):

- Machine type ``pc``: under TCG ``microvm`` (virtio-mmio devices) hung early in the kernel's
  boot, before the timers were set up, in every try here, even with ``tsc=reliable
  no_timer_check lpj=`` and ``pit=on,pic=on,rtc=on``; ``pc`` boots to a ready agent in 13-25 s
  (idle to busy host) every time, and the ready state makes boots rare anyway.
- CPU model ``max`` under TCG (``host`` under KVM), ``tsc=reliable no_timer_check`` on the
  kernel command line under TCG: TCG's TSC is not trustworthy and the checks can stall boots.
- Under TCG, process creation dominates a command's round trip. The guest runs with
  ``mitigations=off norandmaps init_on_alloc=0`` (the VM, not the guest kernel, is the
  boundary): together they more than halve it. Measured and left out (no gain beyond the
  noise, or a cost): ``thread=single``, ``la57=off``, ``-cpu qemu64`` (a little faster, but
  programs built for x86-64-v2 would no longer run).
- Accelerator: KVM only when a real tiny boot under KVM prints the image's probe line (a
  ``/dev/kvm`` that exists may still not boot a guest), else TCG. The answer is cached in the
  images directory per QEMU binary and host kernel (``accelerator()``).
- Network ``none``: no network device at all. Network ``host``: QEMU's user-mode NAT (the
  guest reaches what the host reaches, as 10.0.2.15 behind 10.0.2.2, the host's loopback
  included: QEMU forwards 10.0.2.2 to the host's 127.0.0.1; nothing reaches the guest).
  Network ``private`` (the default): the same device, but QEMU runs in a network namespace of
  its own, made and equipped before QEMU starts (``network``: routes making the host's own
  addresses unreachable, and slirp4netns with ``--disable-host-loopback`` as its way out), then
  entered with ``nsenter``: QEMU's 10.0.2.2 leads to that namespace's loopback, which is down,
  and the guest reaches the internet but not the host. The guest sees the same network in both
  modes, so they share one ready state.
- The ready state: the first allocation of an image and shape (memory, cpus, network) boots a
  machine cold, stops it once its agent answered, and saves its whole state (QMP ``migrate`` to
  a file) beside its disk, which becomes read-only. Every later machine gets an overlay on that
  disk and starts with ``-incoming`` from that file: no boot, no kernel, the agent already
  waiting on its port (the host connects to the new QEMU's socket before the guest resumes).
- Containers (``container:``, ``services:``, Docker steps): images pulled on the host, copied
  into the guest and run there through the agent's chroot exec (``guest_containers``), after
  the ready state is restored: they change nothing of the saved state.
- Snapshots: HMP ``savevm``/``loadvm`` (through QMP's ``human-monitor-command``), kept inside
  the machine's own overlay: memory, devices and disk together, so a restored machine goes on
  exactly where it was, its processes included. The agent's connection stays open across a
  restore; requests in flight at that moment are lost with the state they belonged to.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from vmrunner.config import vmrunner_home
from vmrunner.errors import (
    AllocationError,
    ImageError,
    MachineError,
    ReleaseError,
    SnapshotError,
)
from vmrunner.machines import container, guest_containers, oci, services
from vmrunner.machines._qmp import Monitor
from vmrunner.machines.agent import DEFAULT_GRACE
from vmrunner.machines.base import (
    DEFAULT_VM_CPUS,
    DEFAULT_VM_MEMORY_MIB,
    DEFAULT_VM_TYPE,
    Capabilities,
    ExecResult,
    ImageRun,
    Isolation,
    Machine,
    MachinePaths,
    MachineRecord,
    MachineSpec,
    OutputCallback,
    Provider,
    SnapshotId,
)
from vmrunner.machines.client import AgentClient, wait_through_cancellation
from vmrunner.machines.images import (
    AGENT_PORT,
    DEFAULT_NAME,
    HOME,
    PROBE_OK,
    TEMP,
    TOOL_CACHE,
    WORKSPACE,
    Image,
    ImageStore,
)
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
    stop_process,
    write_record,
)
from vmrunner.machines.network import (
    PrivateNetwork,
    attach_private_network_fd,
    new_namespace,
    reclaim_helper,
)

QEMU = "qemu-system-x86_64"
MACHINE_TYPE = "pc"
#: A working KVM boots the probe in well under a second; a broken one hangs.
PROBE_TIMEOUT = 10.0
#: A cold boot under TCG takes ~13 s on an idle host; a busy CI host may take a lot longer.
BOOT_TIMEOUT = 180.0
#: Restoring the ready state takes about a second.
INCOMING_TIMEOUT = 60.0
#: QMP ``quit`` before signals.
QUIT_TIMEOUT = 3.0
#: Unix socket paths longer than this do not fit ``sockaddr_un``.
MAX_SOCKET_PATH = 107
QEMU_MISSING = "QEMU is not installed: apt-get install qemu-system-x86 qemu-utils"

T = TypeVar("T")
log = logging.getLogger(__name__)

PATHS = MachinePaths(workspace=WORKSPACE, temp=TEMP, home=HOME, tool_cache=TOOL_CACHE)
#: A container job's places (``container.py``), the same in the guest and in the job's root.
CONTAINER_PATHS = MachinePaths(
    workspace=container.WORKSPACE, temp=container.TEMP, home=container.HOME,
    tool_cache=container.TOOL_CACHE,
)  # fmt: skip


# The accelerator.


def accelerator(qemu: str, image: Image, cache: Path) -> str:
    """``kvm`` when a real boot under KVM works here, else ``tcg``; probed once and cached."""
    binary = os.path.realpath(qemu)
    try:
        key = f"{binary}:{os.stat(binary).st_mtime_ns}:{platform.release()}"
    except OSError as exc:
        raise AllocationError(QEMU_MISSING) from exc
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and known.get(key) in ("kvm", "tcg"):
        return str(known[key])
    found = "kvm" if _kvm_boots(binary, image) else "tcg"
    known = known if isinstance(known, dict) else {}
    known[key] = found
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = cache.with_name(cache.name + f".{os.getpid()}")
        staging.write_text(json.dumps(known, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, cache)
    return found


def _kvm_boots(qemu: str, image: Image) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = [
        qemu, "-accel", "kvm", "-M", MACHINE_TYPE, "-m", "128", "-nodefaults",
        "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", "console=ttyS0 panic=-1 vmrunner.probe=1",
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return PROBE_OK.encode() in done.stdout


# Command lines.


@dataclass(frozen=True, slots=True)
class Shape:
    """What a machine's QEMU command line depends on besides its files (and its ready state)."""

    accel: str
    memory_mib: int
    cpus: int
    network: str

    def key(self, image: Image, qemu: str = QEMU) -> str:
        """Names the ready state: it only fits the same image, command line and QEMU build."""
        try:
            build = f"{os.path.realpath(qemu)}@{os.stat(qemu).st_mtime_ns}"
        except OSError:
            build = qemu
        argv = qemu_argv(qemu, image, self, Path("/machine"), incoming=Path("/ready"))
        text = "\0".join([image.digest, build, *argv])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def qemu_argv(
    qemu: str, image: Image, shape: Shape, state_dir: Path, *, incoming: Path | None = None
) -> list[str]:
    """The command line of one machine; device ids are fixed so a saved state fits any copy."""
    cmdline = [
        "console=ttyS0", *image.cmdline, f"vmrunner.agent=port:{AGENT_PORT}",
        # TCG has no trustworthy TSC; skip the checks that sometimes stall the boot on it.
        *(["tsc=reliable", "no_timer_check"] if shape.accel == "tcg" else []),
        # One job owns the whole guest, and the VM is the boundary: the guest kernel's own
        # side-channel mitigations only slow every syscall (under TCG, by half).
        "mitigations=off",
        # The same reasoning, under TCG only, for two hardening features every new process
        # paid for there (``true``: ~79 ms of QEMU CPU time, 44 without ASLR, 33 without
        # zeroed kernel allocations too; see ``bench/qemu.py``): TCG keys translated code by
        # virtual address, so libraries mapped at new random addresses each exec are translated
        # again each exec; and zeroing every kernel allocation is emulated code.
        *(["norandmaps", "init_on_alloc=0"] if shape.accel == "tcg" else []),
    ]  # fmt: skip
    argv = [
        qemu,
        "-name", state_dir.name,
        "-M", MACHINE_TYPE,
        "-accel", shape.accel if shape.accel != "tcg" else "tcg,thread=multi",
        "-cpu", "host" if shape.accel == "kvm" else "max",
        "-m", str(shape.memory_mib),
        "-smp", str(shape.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{state_dir / 'console.log'}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", " ".join(cmdline),
        "-drive",
        f"file={state_dir / 'disk.qcow2'},if=none,id=root,format=qcow2,cache=unsafe,discard=unmap",
        "-device", "virtio-blk-pci,drive=root,id=rootdisk",
        "-device", "virtio-serial-pci,id=serial0",
        "-chardev", f"socket,id=agent,path={state_dir / 'agent.sock'},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT},id=agentport",
        "-qmp", f"unix:{state_dir / 'qmp.sock'},server=on,wait=off",
        "-device", "virtio-rng-pci,id=rng0",
    ]  # fmt: skip
    if shape.network in ("host", "private"):
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,id=nic0"]
    else:
        argv += ["-nic", "none"]
    if incoming is not None:
        argv += ["-incoming", f"exec:cat {_quoted(incoming)}"]
    return argv


def _quoted(path: Path) -> str:
    text = str(path)
    if any(c in text for c in " '\"\\$`"):
        raise AllocationError(f"unsupported characters in the path {text}")
    return text


# The machine.


class QemuMachine(AgentMachine):
    """A QEMU virtual machine; commands go through its agent, snapshots through QMP."""

    #: A container job's root in the guest, where every command runs (``guest_containers``).
    job: guest_containers.JobRoot | None = None
    #: Its service containers, once started.
    services: services.Services | None = None
    #: The host's image cache, for Docker steps.
    images: oci.ImageStore | None = None
    _one_shot = 0

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
        """In a container job, in the job's root, as its user, over the image's environment."""
        job = self.job
        if job is None:
            return await super().exec(
                command, env=env, cwd=cwd, timeout=timeout, on_output=on_output, stdin=stdin,
                write=write, collect=collect,
            )  # fmt: skip
        return await self._usable().exec(
            command, env={**job.env, **(env or {})}, cwd=cwd or container.WORKSPACE,
            timeout=timeout, on_output=on_output, stdin=stdin, write=write, collect=collect,
            root=job.root, user=job.user,
        )  # fmt: skip

    async def put(self, dest_dir: str, tar_data: bytes) -> None:
        """In a container job whose user is not root, what is put becomes that user's."""
        await super().put(dest_dir, tar_data)
        if self.job is not None and self.job.user != (0, 0):
            await guest_containers.give(self._usable(), dest_dir, tar_data, self.job.user)

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
        """A one-shot container in the guest (its root stays there until the VM goes)."""
        client = self._usable()
        assert self.images is not None
        context = await self.get(run.context) if run.context else None
        self._one_shot += 1
        return await guest_containers.exec_image(
            client, self.images, run, args, f"step-{self._one_shot}", context=context, env=env,
            timeout=timeout, on_output=on_output, write=write, collect=collect,
        )  # fmt: skip

    def __init__(
        self,
        *,
        spec: MachineSpec,
        record: MachineRecord,
        process: asyncio.subprocess.Process,
        monitor: Monitor,
        client: AgentClient,
        paths: MachinePaths = PATHS,
    ) -> None:
        super().__init__(
            provider_name="qemu",
            spec=spec,
            paths=paths,
            record=record,
            process=process,
            client=client,
            group=True,
        )
        self.monitor = monitor
        #: The helper of a ``private`` network.
        self.network: PrivateNetwork | None = None
        self._snapshots: list[str] = []
        self._lock = asyncio.Lock()

    async def snapshot(self, name: str = "") -> SnapshotId:
        """Save memory, devices and disk into the machine's overlay (HMP ``savevm``)."""
        async with self._lock:
            self._check()
            snapshot_id = f"vmr{len(self._snapshots) + 1}"
            try:
                await self.monitor.human(f"savevm {snapshot_id}")
            except MachineError as exc:
                raise SnapshotError(f"machine {self.id}: cannot snapshot: {exc}") from exc
            self._snapshots.append(snapshot_id)
            return snapshot_id

    async def restore(self, snapshot_id: SnapshotId) -> None:
        """Bring memory, devices and disk back to a snapshot (HMP ``loadvm``); it runs on."""
        async with self._lock:
            self._check()
            if snapshot_id not in self._snapshots:
                raise SnapshotError(f"machine {self.id} has no snapshot {snapshot_id!r}")
            try:
                await self.monitor.human(f"loadvm {snapshot_id}")
                if await self.monitor.status() != "running":
                    await self.monitor.execute("cont")
            except MachineError as exc:
                raise SnapshotError(f"machine {self.id}: cannot restore: {exc}") from exc

    def _check(self) -> None:
        if self.released:
            raise SnapshotError(f"machine {self.id} was released")


# The provider.


class QemuProvider(Provider):
    """Machines that are QEMU VMs on this host, booted from images of ``ImageStore``."""

    name: ClassVar[str] = "qemu"
    capabilities: ClassVar[Capabilities] = Capabilities(
        isolation=Isolation.VM,
        snapshots=True,
        network_modes=frozenset({"private", "host", "none"}),
        forward=True,
        containers=True,
    )

    def __init__(
        self,
        home: Path | None = None,
        *,
        images: Path | None = None,
        image: str | None = None,
        accel: str | None = None,
        qemu: str | None = None,
        ready_state: bool = True,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        """``image`` names the image for every vm_type (default: the vm_type's own name, and
        ``default`` for the default type); ``accel`` skips the probe (``kvm`` or ``tcg``);
        ``ready_state=False`` boots every machine cold."""
        self.home = Path(home) if home is not None else vmrunner_home()
        self.machines_dir = self.home / "machines"
        self.store = ImageStore(images)
        self.image_name = image
        self.grace = grace
        self.ready_state = ready_state
        self._accel = accel
        self._qemu = qemu
        self._ready_locks: dict[str, asyncio.Lock] = {}
        #: The host's cache of unpacked OCI images (pulled here, copied into guests).
        self.oci = oci.ImageStore(self.home / "cache")

    # Resolution.

    def qemu(self) -> str:
        qemu = self._qemu or shutil.which(QEMU)
        if qemu is None or not os.access(qemu, os.X_OK):
            raise AllocationError(QEMU_MISSING)
        return qemu

    def image_for(self, vm_type: str) -> Image:
        name = self.image_name or (DEFAULT_NAME if vm_type == DEFAULT_VM_TYPE else vm_type)
        try:
            return self.store.get(name)
        except ImageError as exc:
            raise AllocationError(str(exc)) from exc

    async def accelerator(self, image: Image) -> str:
        """The accelerator machines use (probed once per host, then read from the cache)."""
        if self._accel is None:
            cache = self.store.root / "accelerator.json"
            self._accel = await asyncio.to_thread(accelerator, self.qemu(), image, cache)
            log.info("qemu machines run with the %s accelerator", self._accel)
        return self._accel

    # Allocation.

    async def allocate(self, spec: MachineSpec) -> Machine:
        if spec.network not in self.capabilities.network_modes:
            raise AllocationError(
                f"the qemu provider cannot give a machine network {spec.network!r}"
            )
        qemu = self.qemu()
        image = self.image_for(spec.vm_type)
        shape = Shape(
            await self.accelerator(image),
            spec.memory_mib or DEFAULT_VM_MEMORY_MIB,
            spec.cpus or DEFAULT_VM_CPUS,
            spec.network,
        )
        # Images are pulled before the machine starts: a bad reference costs no boot.
        job_image, service_images = await guest_containers.pull(self.oci, spec)
        ready = await self._ready(qemu, image, shape) if self.ready_state else None
        try:
            machine = await self._start(qemu, image, shape, spec, ready)
        except AllocationError as exc:
            if ready is None:
                raise
            # A ready state QEMU cannot load (damaged, or from another build) is made again.
            log.warning("the ready state %s failed (%s): booting afresh", ready, exc)
            await asyncio.to_thread(shutil.rmtree, ready, True)
            ready = await self._ready(qemu, image, shape)
            machine = await self._start(qemu, image, shape, spec, ready)
        machine.images = self.oci
        try:
            if job_image is not None:
                machine.job = await guest_containers.job_root(
                    machine.client, job_image, spec, machine.id
                )
            if spec.services:
                machine.services = await guest_containers.start_services(
                    machine.client, service_images, spec, machine.state_dir / "services"
                )
        except BaseException:
            await self.release(machine)
            raise
        return machine

    async def _start(
        self, qemu: str, image: Image, shape: Shape, spec: MachineSpec, ready: Path | None
    ) -> QemuMachine:
        record = base_record(self.name, spec, self.machines_dir)
        record = replace(
            record,
            data={**record.data, "group": True, "image": image.digest, "accel": shape.accel},
        )
        state_dir = create_machine_dir(self.machines_dir, record)
        process: asyncio.subprocess.Process | None = None
        monitor = Monitor(f"qemu {record.machine_id}")
        client: AgentClient | None = None
        network: PrivateNetwork | None = None
        netns: int | None = None
        try:
            if len(str(state_dir / "agent.sock")) > MAX_SOCKET_PATH:
                raise AllocationError(f"the machine directory {state_dir} is too long a path")
            backing = ready / "disk.qcow2" if ready is not None else image.rootfs
            await _run(
                "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                "-b", str(backing), str(state_dir / "disk.qcow2"),
            )  # fmt: skip
            argv = qemu_argv(
                qemu, image, shape, state_dir, incoming=ready / "state" if ready else None
            )
            if spec.network == "private":
                # Equipped before QEMU starts in it, so the guest never runs without the rules.
                netns = new_namespace()
                network = await attach_private_network_fd(netns, log_path=state_dir / "network.log")
                record = replace(record, data={**record.data, **network.record})
                write_record(record)
                argv = ["nsenter", f"--net=/proc/self/fd/{netns}", "--", *argv]
            process = await _spawn(
                argv, state_dir, record.machine_id, pass_fds=() if netns is None else (netns,)
            )
            record = replace(record, pid=process.pid, pid_start=process_start(process.pid))
            write_record(record)
            client = await self._connect(state_dir, monitor, process, record, ready is not None)
        except BaseException as exc:
            await shielded(self._abandon(state_dir, process, monitor, client, network))
            if isinstance(exc, MachineError | TimeoutError | OSError) and not isinstance(
                exc, AllocationError
            ):
                why = _tail(state_dir / "qemu.log") or _tail(state_dir / "console.log") or str(exc)
                raise AllocationError(
                    f"machine {record.machine_id} did not start: {exc}; {why}"
                ) from exc
            raise
        finally:
            if netns is not None:  # QEMU and the helper's tap device keep the namespace
                os.close(netns)
        machine = QemuMachine(
            spec=spec, record=record, process=process, monitor=monitor, client=client,
            paths=CONTAINER_PATHS if spec.image else PATHS,
        )
        machine.network = network
        return machine

    async def _connect(
        self,
        state_dir: Path,
        monitor: Monitor,
        process: asyncio.subprocess.Process,
        record: MachineRecord,
        incoming: bool,
    ) -> AgentClient:
        exited = asyncio.ensure_future(process.wait())
        try:
            async with asyncio.timeout(INCOMING_TIMEOUT if incoming else BOOT_TIMEOUT):
                await _first(monitor.connect(str(state_dir / "qmp.sock"), INCOMING_TIMEOUT), exited)
                reader, writer = await _first(_open_unix(state_dir / "agent.sock"), exited)
                client = AgentClient(
                    reader, writer, name=f"the agent of machine {record.machine_id}"
                )
                client.start()
                try:
                    if incoming:
                        while (status := await monitor.status()) in ("inmigrate", "postmigrate"):
                            await _first(asyncio.sleep(0.005), exited)
                        if status != "running":
                            await monitor.execute("cont")
                    await _first(client.ping(), exited)
                except BaseException:
                    await client.close()
                    raise
                return client
        finally:
            exited.cancel()

    async def _abandon(
        self,
        state_dir: Path,
        process: asyncio.subprocess.Process | None,
        monitor: Monitor,
        client: AgentClient | None,
        network: PrivateNetwork | None,
    ) -> None:
        if client is not None:
            await client.close()
        await monitor.close()
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, 9)
            with contextlib.suppress(TimeoutError):
                await stop_process(process, 0, group=True)
        if network is not None:
            with contextlib.suppress(TimeoutError):
                await network.aclose()
        with contextlib.suppress(ReleaseError):
            await asyncio.to_thread(remove_machine_dir, self.machines_dir, str(state_dir))

    # The ready state.

    async def _ready(self, qemu: str, image: Image, shape: Shape) -> Path:
        """The saved state of a machine that just became ready, made once per image and shape."""
        key = shape.key(image, qemu)
        target = self.store.root / "ready" / f"{image.digest}-{key}"
        if (target / "state").exists():
            return target
        lock = self._ready_locks.setdefault(key, asyncio.Lock())
        async with lock:
            lockfile = await asyncio.to_thread(_flock, self.store.root / "ready" / f".{key}.lock")
            try:
                if not (target / "state").exists():
                    await self._save_ready(qemu, image, shape, target)
            finally:
                lockfile.close()
        return target

    async def _save_ready(self, qemu: str, image: Image, shape: Shape, target: Path) -> None:
        spec = MachineSpec(memory_mib=shape.memory_mib, cpus=shape.cpus, network=shape.network)  # type: ignore[arg-type]
        machine = await self._start(qemu, image, shape, spec, None)
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            await machine.monitor.execute("stop")
            await machine.monitor.execute(
                "migrate", {"uri": f"exec:cat > {_quoted(staging / 'state')}"}
            )
            async with asyncio.timeout(INCOMING_TIMEOUT):
                while True:
                    info = await machine.monitor.execute("query-migrate")
                    if info.get("status") == "completed":
                        break
                    if info.get("status") in ("failed", "cancelled"):
                        raise AllocationError(
                            f"cannot save the ready state: {info.get('error-desc', info)}"
                        )
                    await asyncio.sleep(0.01)
            await self._quit(machine)
            os.replace(machine.state_dir / "disk.qcow2", staging / "disk.qcow2")
            (staging / "disk.qcow2").chmod(0o444)
            staging.rename(target)
        except MachineError as exc:
            raise AllocationError(
                f"cannot save the ready state of image {image.name}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            await self.release(machine)

    # Release.

    async def release(self, machine: Machine) -> None:
        if not isinstance(machine, QemuMachine):
            raise ReleaseError(f"machine {machine.id} does not belong to the qemu provider")
        await machine.release_once(lambda: self._teardown(machine))

    async def _quit(self, machine: QemuMachine) -> None:
        await machine.client.close()
        if machine.process.returncode is None:
            with contextlib.suppress(MachineError, TimeoutError):
                async with asyncio.timeout(QUIT_TIMEOUT):
                    await machine.monitor.execute("quit")
        await machine.monitor.close()
        try:
            await stop_process(machine.process, self.grace, group=True)
        except TimeoutError as exc:
            raise ReleaseError(
                f"machine {machine.id}: QEMU process {machine.process.pid} survived SIGKILL"
            ) from exc

    async def _teardown(self, machine: QemuMachine) -> None:
        try:
            await self._quit(machine)
            if machine.services is not None:  # they ended with the connection
                await machine.services.aclose()
        finally:
            if machine.network is not None:
                await machine.network.aclose()
        await asyncio.to_thread(remove_machine_dir, self.machines_dir, machine.record.state_dir)

    def leftovers(self) -> list[MachineRecord]:
        return read_records(self.machines_dir, self.name)

    async def reclaim(self, record: MachineRecord) -> None:
        check_owner(record, self.name)
        if record.pid is not None and not await kill_process(
            record.pid, record.pid_start, self.grace, group=True
        ):
            raise ReleaseError(
                f"machine {record.machine_id}: QEMU process {record.pid} survived SIGKILL"
            )
        if not await reclaim_helper(record.data, self.grace):
            raise ReleaseError(f"machine {record.machine_id}: its network helper survived SIGKILL")
        await asyncio.to_thread(remove_machine_dir, self.machines_dir, record.state_dir)


# Helpers.


async def _run(*argv: str) -> None:
    """Run a short helper (qemu-img) to its end even when cancelled, then re-raise: a helper
    left running would write into a machine directory that is being removed."""
    await shielded(_run_to_end(*argv))


async def _run_to_end(*argv: str) -> None:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await process.communicate()
    except OSError as exc:
        raise AllocationError(f"cannot run {argv[0]}: {exc.strerror}; {QEMU_MISSING}") from exc
    if process.returncode != 0:
        raise AllocationError(f"{argv[0]} failed: {stderr.decode(errors='replace').strip()}")


async def _spawn(
    argv: Sequence[str], state_dir: Path, machine_id: str, pass_fds: Sequence[int] = ()
) -> asyncio.subprocess.Process:
    """Start QEMU in its own session; the machine id in its environment marks it as ours."""
    with open(state_dir / "qemu.log", "wb") as log:  # noqa: ASYNC230 - a local file, created empty
        creation = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "VMRUNNER_MACHINE_ID": machine_id},
                pass_fds=pass_fds,
            )
        )
        cancelled = await wait_through_cancellation(creation)
    try:
        process = creation.result()
    except OSError as exc:
        raise AllocationError(f"cannot start {argv[0]}: {exc.strerror}; {QEMU_MISSING}") from exc
    if cancelled:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise asyncio.CancelledError
    return process


async def _first(work: Coroutine[Any, Any, T], exited: asyncio.Future[int]) -> T:
    """The result of ``work``, unless QEMU exits first (then ``MachineError``)."""
    task = asyncio.ensure_future(work)
    try:
        pending: set[asyncio.Future[Any]] = {task, exited}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.done() and not task.cancelled():
        return task.result()
    raise MachineError(f"QEMU exited with status {exited.result()}")


async def _open_unix(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    while True:
        try:
            return await asyncio.open_unix_connection(str(path), limit=1 << 20)
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.005)


def _flock(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")  # noqa: SIM115 - closed by the caller
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _tail(path: Path, size: int = 1500) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace").strip()
    except OSError:
        return ""
