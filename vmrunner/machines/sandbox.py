"""The ``sandbox`` provider (the default): each machine is a bubblewrap sandbox.

A machine is one ``bwrap`` process with its own mount, pid, ipc and uts namespaces, no
capabilities, running the guest agent with the host's system ``python3``. Its network:

- ``private`` (the default): its own network namespace, given a way out by ``network`` (a
  slirp4netns helper attached once the agent answered, before the machine is handed out) and
  an ``/etc/resolv.conf`` naming the helper's DNS; the host's loopback, gateway and own
  addresses are unreachable;
- ``none``: its own network namespace with loopback only;
- ``host``: the host's network as it is, its loopback services included (a warning says so).

Its file system is built from nothing:

- read-only: ``/usr`` (and the ``/bin``, ``/sbin``, ``/lib*`` links or directories beside it)
  and ``/etc`` with its secret files (shadow passwords, ssh host keys) masked;
- writable, each a fresh host directory under ``VMRUNNER_HOME/machines/<id>/``:
  ``/home/runner`` (HOME, holding the work folder: ``work/_temp``, the machine's default
  folder ``work/workspace`` and a job's workspace ``work/<repo>/<repo>``), ``/tmp`` (also
  ``/var/tmp``) and ``/opt/hostedtoolcache``; everything else, the root included, is read-only;
- ``/proc`` of its own pid namespace and a minimal ``/dev``.

Limits (``machines/limits.py``): the machine's processes are all in one cgroup
(``machines/cgroups.py``) with its memory, process and CPU limits; the three writable
directories live on a file system of their own of the machine's disk budget
(``machines/disk.py``), mounted at ``<id>/disk``. Both are named in the machine's record
before they exist, and freed after its processes are gone (or by reclaim, after a crash).

So the host's ``/root``, ``/home``, ``/run``, ``/var``, ``/opt``, ``/work`` and the runner's
state directory are simply not there. Every process of the machine lives in its pid namespace,
whose init is bwrap: when bwrap goes, the kernel kills them all; and bwrap dies with the
runner (``--die-with-parent``).

Snapshots capture the three writable directories with ``DirectorySnapshots``; tracking starts
at the first snapshot (which copies the trees in full, normally a checkout), so allocation
stays cheap and an unused machine never pays for it. ``export_snapshot`` writes one snapshot's
trees to a host folder (a copy: reflinks where the filesystem can) and ``import_snapshot``
copies such a folder into a fresh machine's writable directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from vmrunner.config import warn_host_network
from vmrunner.errors import AllocationError, ExecError, ReleaseError, SnapshotError
from vmrunner.machines import build, container, seccomp, services, sudo
from vmrunner.machines.agent import DEFAULT_GRACE
from vmrunner.machines.base import (
    Capabilities,
    ExecResult,
    ImageRun,
    Isolation,
    Machine,
    MachinePaths,
    MachineRecord,
    MachineSpec,
    OutputCallback,
    SnapshotId,
)
from vmrunner.machines.cgroups import Cgroups, MachineCgroup
from vmrunner.machines.disk import NO_ROOT, MachineDisk, reserve, resolve_disk
from vmrunner.machines.identity import (
    AGENT_GID,
    AGENT_UID,
    ROOT_UID,
    RUNNER_GID,
    RUNNER_UID,
    IdMap,
    chown_tree,
    group_lines,
    id_map,
    passwd_lines,
    user_namespace,
)
from vmrunner.machines.limits import Limits, resolve_limits
from vmrunner.machines.local import (
    RELEASE_TIMEOUT,
    AgentMachine,
    Launch,
    LocalProvider,
    namespace_pid,
)
from vmrunner.machines.network import (
    RESOLV_CONF,
    PrivateNetwork,
    attach_private_network,
    reclaim_helper,
)
from vmrunner.machines.oci import ContainerImage, Credentials, ImageStore
from vmrunner.machines.snapshots import DirectorySnapshots, import_trees

HOME = "/home/runner"
WORKSPACE = f"{HOME}/work/workspace"
TEMP = f"{HOME}/work/_temp"
TOOL_CACHE = "/opt/hostedtoolcache"
AGENT_IN_MACHINE = "/run/vmrunner"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Interpreters tried for the agent, in order; each must live in a directory the sandbox sees.
PYTHONS = ("/usr/bin/python3", "/bin/python3", "/usr/local/bin/python3")
#: Host directories beside /usr that merged-/usr systems turn into links.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Directories of /etc that hold secrets: never in a machine's /etc (nor the fake guest's).
SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d", "/etc/vmrunner")

#: The parts of the host's /etc a machine sees (globs of names directly in /etc).
ETC_KEPT = (
    "alternatives", "bash.bashrc", "bash_completion*", "bindresvport.blacklist", "ca-certificates*",
    "debian_version", "dpkg", "emacs", "environment", "ethertypes", "fonts", "gai.conf",
    "gitconfig", "gnutls", "host.conf", "ImageMagick*", "inputrc", "issue", "issue.net", "java*",
    "ld.so.*", "locale.*", "localtime", "login.defs", "lsb-release", "magic", "magic.mime",
    "mailcap", "mime.types", "mke2fs.conf", "networks", "nsswitch.conf", "os-release", "perl",
    "pki", "profile", "profile.d", "protocols", "python3*", "rpc", "services", "shells", "skel",
    "ssl", "subversion", "terminfo", "timezone", "vim", "wgetrc", "X11", "xattr.conf", "xdg",
    "zsh*",
)  # fmt: skip
#: Files of the machine's /etc written for it, never the host's.
ETC_WRITTEN = frozenset(
    {"passwd", "group", "hostname", "hosts", "machine-id", "resolv.conf", "shadow", "gshadow"}
)
#: What /proc must keep read-only (bubblewrap does it only when its probe succeeds).
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
#: The capabilities the machine's processes may hold inside its user namespace: the agent
#: needs them to start commands as ``runner`` or ``root``; root keeps those that act on files
#: and ports (see ``Agent._as``), the runner none.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
)  # fmt: skip

BWRAP_MISSING = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
#: Joins the cgroups named before ``--`` (``cgroup.procs`` files), then execs what follows: so
#: bwrap and every process it makes start inside the machine's cgroup (shell builtins only).
JOIN_CGROUP = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'

log = logging.getLogger(__name__)
#: The image of the container machine being allocated (pulled before ``_launch``'s thread).
_IMAGE: contextvars.ContextVar[ContainerImage | None] = contextvars.ContextVar(
    "image", default=None
)
#: The images of its services, by label.
_SERVICES: contextvars.ContextVar[Mapping[str, ContainerImage] | None] = contextvars.ContextVar(
    "services", default=None
)


@dataclass(frozen=True, slots=True)
class _Containers:
    """What a running machine needs to attach container roots (``container.attach``)."""

    images: ImageStore
    pid: int
    space: Path
    owner: int


class SandboxMachine(AgentMachine):
    """A bubblewrap sandbox; snapshots cover its writable directories."""

    _snapshots: DirectorySnapshots | None = None
    _snapshot_lock: asyncio.Lock | None = None
    _cgroup: MachineCgroup | None = None
    _disk_full = False

    async def limits_hit(self) -> list[str]:
        """From the cgroup's counters and the disk's free space (full now, or seen full)."""
        reasons: list[str] = []
        data = self.record.data
        if self._cgroup is None and data.get("cgroup"):
            self._cgroup = MachineCgroup.from_data(data["cgroup"])
        if self._cgroup is not None:
            reasons += self._cgroup.limits_hit()
        if data.get("disk"):
            disk = MachineDisk.from_data(data["disk"])
            self._disk_full = self._disk_full or disk.full()
            if self._disk_full:
                reasons.append(disk.reason())
        return reasons

    def _forget_limits_hit(self) -> None:
        """A restored machine starts counting afresh (a pool hands it to another job)."""
        if self.record.data.get("cgroup"):
            self._cgroup = MachineCgroup.from_data(self.record.data["cgroup"]).rebased()
        self._disk_full = False
    #: The helper of a ``private`` network, once attached.
    network: PrivateNetwork | None = None
    #: Its service containers, once started.
    services: services.Services | None = None
    #: Set once running, where the runner may attach container roots (as root).
    containers: _Containers | None = None
    _one_shot = 0

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
        """A one-shot container: its root stays attached (on the machine's disk) until the
        machine goes, which frees it with the rest."""
        client, where = self._usable(), self.containers
        if where is None:
            raise ExecError(container.ROOT_NEEDED)
        credentials = Credentials(*run.credentials) if run.credentials else None

        async def prepare(binds: tuple[services.Bind, ...]) -> tuple[ContainerImage, str]:
            if run.context:
                context = await self.get(run.context)
                image = await asyncio.to_thread(
                    build.build_image, where.images, context, run.image, ids=where.owner
                )
            else:
                image = await where.images.pull(
                    run.image, ids=where.owner, credentials=credentials
                )
            self._one_shot += 1
            root = await container.attach(
                image, pid=where.pid, space=where.space, name=f"step-{self._one_shot}",
                owner=where.owner, binds=binds,
            )  # fmt: skip
            return image, root

        return await services.run_once(
            client, run, args, prepare, env=env, timeout=timeout, on_output=on_output,
            write=write, collect=collect,
        )  # fmt: skip

    async def snapshot(self, name: str = "") -> SnapshotId:
        engine = await self._engine()
        if engine is None:  # the first snapshot: the state now is the base
            engine = await self._start_engine()
            return engine.list()[0].id
        return await engine.snapshot(name)

    async def restore(self, snapshot_id: SnapshotId) -> None:
        engine = await self._engine()
        if engine is None:
            raise SnapshotError(f"machine {self.id} has no snapshot {snapshot_id!r}")
        await engine.restore(snapshot_id)
        self._forget_limits_hit()

    async def fingerprint(self) -> bytes:
        """The writable directories listed from the host: no process in the machine."""
        if self.released:
            raise SnapshotError(f"machine {self.id} was released")
        return await asyncio.to_thread(
            _listing, [self.writable[name] for name in sorted(self.writable)]
        )

    async def export_snapshot(self, snapshot_id: SnapshotId, dest_dir: str) -> None:
        engine = await self._engine()
        if engine is None:
            raise SnapshotError(f"machine {self.id} has no snapshot {snapshot_id!r}")
        await asyncio.to_thread(engine.export_sync, snapshot_id, dest_dir)

    async def import_snapshot(self, source_dir: str) -> None:
        if await self._engine() is not None:
            raise SnapshotError(
                f"machine {self.id} has snapshots: import only into a fresh machine"
            )
        await asyncio.to_thread(
            import_trees, source_dir, {name: str(path) for name, path in self.writable.items()}
        )

    async def _engine(self) -> DirectorySnapshots | None:
        if self.released:
            raise SnapshotError(f"machine {self.id} was released")
        return self._snapshots

    async def _start_engine(self) -> DirectorySnapshots:
        if self._snapshot_lock is None:
            self._snapshot_lock = asyncio.Lock()
        async with self._snapshot_lock:
            if self._snapshots is None:
                engine = DirectorySnapshots(
                    {name: str(path) for name, path in self.writable.items()},
                    self.state_dir / "snapshots",
                )
                await engine.start()
                self._snapshots = engine
            return self._snapshots

    async def _closed(self) -> None:
        if self.services is not None:
            await self.services.aclose()
        if self.network is not None:
            await self.network.aclose()
        if self._snapshots is not None:
            await self._snapshots.aclose()


def _listing(roots: list[Path]) -> bytes:
    """Every entry under ``roots`` (not crossing into other file systems) as sorted lines of
    type, path and size (a directory's name only: its size depends on the file system)."""
    lines: list[str] = []
    for root in roots:
        try:
            device = root.lstat().st_dev
        except FileNotFoundError:
            continue
        lines.append(f"d {root}")
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                lines.append(f"? {folder} {exc.errno}")
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    lines.append(f"? {entry.path}")
                    continue
                if entry.is_dir(follow_symlinks=False):
                    lines.append(f"d {entry.path}")
                    if info.st_dev == device:
                        stack.append(entry.path)
                else:
                    kind = (
                        "l"
                        if entry.is_symlink()
                        else "f"
                        if entry.is_file(follow_symlinks=False)
                        else "o"
                    )
                    lines.append(f"{kind} {entry.path} {info.st_size}")
    lines.sort()
    return "\n".join(lines).encode(errors="surrogateescape")


class SandboxProvider(LocalProvider):
    """Machines that are bubblewrap sandboxes on this host."""

    name: ClassVar[str] = "sandbox"
    capabilities: ClassVar[Capabilities] = Capabilities(
        isolation=Isolation.NAMESPACES,
        snapshots=True,
        network_modes=frozenset({"private", "host", "none"}),
        forward=True,
        containers=True,
        snapshot_export=True,
    )
    machine_class: ClassVar[type[AgentMachine]] = SandboxMachine

    def __init__(
        self,
        home: Path | None = None,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        slirp4netns: str | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        super().__init__(home, grace=grace)
        self._bwrap = bwrap
        self._python = python
        self._id_map: IdMap | None = None
        self._userns_fd: int | None = None
        self._userns_lock = threading.Lock()
        self._cgroups: Cgroups | None = None
        self._passable = False
        self._slirp4netns = slirp4netns
        self.images = ImageStore(self.cache_dir)

    async def allocate(self, spec: MachineSpec) -> Machine:
        if not spec.image and not spec.services:
            return await super().allocate(spec)
        if os.geteuid() != 0:
            raise AllocationError(container.ROOT_NEEDED)
        owner = self._ids().host_id(ROOT_UID)

        async def pull(reference: str, login: tuple[str, str] | None) -> ContainerImage:
            return await self.images.pull(
                reference, ids=owner, credentials=Credentials(*login) if login else None
            )

        # The job's image and its services' images, pulled at once.
        wanted = [(spec.image, spec.image_credentials)] if spec.image else []
        wanted += [(service.image, service.credentials) for service in spec.services]
        pulled = await asyncio.gather(*(pull(ref, login) for ref, login in wanted))
        image = pulled.pop(0) if spec.image else None
        tokens = (
            _IMAGE.set(image),
            _SERVICES.set({s.label: i for s, i in zip(spec.services, pulled, strict=True)}),
        )
        try:
            return await super().allocate(spec)
        finally:
            _IMAGE.reset(tokens[0])
            _SERVICES.reset(tokens[1])

    async def aclose(self) -> None:
        with self._userns_lock:
            if self._userns_fd is not None:
                os.close(self._userns_fd)
                self._userns_fd = None
        await super().aclose()

    async def preflight(self) -> None:
        """The tools, the id range and the user namespace every machine needs (the namespace
        is made here, once, as the first machine would make it)."""
        self._tools()
        try:
            await asyncio.to_thread(self._userns, self._ids())
        except AllocationError as exc:
            if "user namespace" not in str(exc):
                raise
            raise AllocationError(
                f"{exc}; allow user namespaces (sysctl -w user.max_user_namespaces=15000; on "
                "Ubuntu 24.04 also sysctl -w kernel.apparmor_restrict_unprivileged_userns=0), or "
                "choose --provider qemu or --provider host"
            ) from exc

    def _tools(self) -> tuple[str, str]:
        bwrap = self._bwrap or shutil.which("bwrap")
        if bwrap is None or not os.access(bwrap, os.X_OK):
            raise AllocationError(BWRAP_MISSING)
        python = self._python or next((p for p in PYTHONS if os.access(p, os.X_OK)), None)
        if python is None:
            raise AllocationError(
                "no system python3 for the sandbox's agent (looked for "
                f"{', '.join(PYTHONS)}): apt-get install python3-minimal"
            )
        return bwrap, python

    def _ids(self) -> IdMap:
        if self._id_map is None:
            self._id_map = id_map()
        return self._id_map

    def _userns(self, ids: IdMap) -> int:
        """The user namespace every machine of this provider runs in (made once, kept open).

        One namespace serves every machine: each still has its own mount, pid, ipc, uts and
        network namespaces, so nothing of one machine can be named from another.
        """
        with self._userns_lock:
            if self._userns_fd is None:
                self._userns_fd = user_namespace(ids)
            return self._userns_fd

    def _remove_dir(self, state_dir: str) -> None:
        try:
            super()._remove_dir(state_dir)
        except ReleaseError:
            ids = self._ids()
            if ids.privileged or not Path(state_dir).is_dir():
                raise
            # Files of the machine's ids: a runner that is not root removes them as the root
            # of the machines' user namespace, which it owns.
            if Path(state_dir).resolve().parent != self.machines_dir.resolve():
                raise
            userns = self._userns(ids)
            subprocess.run(
                ["nsenter", f"--user=/proc/self/fd/{userns}", "--", "rm", "-rf", "--", state_dir],
                pass_fds=(userns,), capture_output=True, timeout=RELEASE_TIMEOUT, check=False,
            )
            super()._remove_dir(state_dir)

    def _reachable(self, ids: IdMap, state_dir: Path) -> None:
        """bubblewrap runs as the agent's unprivileged host id and finds the machine's
        directories by path: open the runner's own directories to passers-by (0711: nothing
        listed, every file inside private), and say plainly when a parent is closed to them."""
        if not ids.privileged:
            return
        state_dir.chmod(0o711)
        if self._passable:
            return
        for folder in (self.home, self.machines_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o711)
            folder.chmod(0o711)
        for parent in self.home.parents:
            if not parent.stat().st_mode & 0o001:
                raise AllocationError(
                    f"the sandbox cannot reach its machines in {self.machines_dir}: {parent} is"
                    f" closed to other users (mode {parent.stat().st_mode & 0o777:o}); choose a"
                    " VMRUNNER_HOME whose parents others may enter, e.g. /var/lib/vmrunner"
                )
        self._passable = True  # checked once: only the machine's own directory is new
    def _plan(self, spec: MachineSpec, record: MachineRecord) -> MachineRecord:
        limits = resolve_limits(spec.cpus, spec.memory_mib, spec.pids)
        limits = Limits(
            limits.cpus,
            limits.memory_mib,
            limits.pids,
            resolve_disk(spec.disk_mib, self.machines_dir),
        )
        data = dict(record.data)
        data["limits"] = {
            "cpus": limits.cpus,
            "memory_mib": limits.memory_mib,
            "pids": limits.pids,
            "disk_mib": limits.disk_mib,
        }
        if limits.cpus or limits.memory_mib or limits.pids:
            if self._cgroups is None:
                self._cgroups = Cgroups.detect()
            data["cgroup"] = self._cgroups.plan(f"vmrunner-{record.machine_id}", limits).to_data()
        if limits.disk_mib:
            if os.geteuid() != 0:
                raise AllocationError(NO_ROOT)
            data["disk"] = MachineDisk.plan(Path(record.state_dir), limits.disk_mib).to_data()
            data["disk"]["default"] = spec.disk_mib is None
        if spec.image:
            data["overlay"] = container.plan(Path(record.state_dir))
        return replace(record, data=data)

    def _free(self, record: MachineRecord) -> None:
        if record.data.get("overlay"):  # before the disk holding its upper layer
            container.unmount_root(record.data["overlay"])
        if record.data.get("cgroup"):
            MachineCgroup.from_data(record.data["cgroup"]).remove()
        if record.data.get("disk"):
            MachineDisk.from_data(record.data["disk"]).release()

    def _limits(self, record: MachineRecord) -> tuple[list[str], Path]:
        """Make the machine's cgroup and disk: the command that joins the cgroup, and where
        the writable directories go."""
        prefix: list[str] = []
        if record.data.get("cgroup"):
            cgroup = MachineCgroup.from_data(record.data["cgroup"])
            cgroup.create()
            prefix = ["/bin/sh", "-c", JOIN_CGROUP, "vmrunner-join", *cgroup.procs_files, "--"]
        if record.data.get("disk"):
            disk = MachineDisk.from_data(record.data["disk"])
            default = bool(record.data["disk"].get("default"))
            with reserve(self.machines_dir, disk.size_mib, default=default) as size:
                disk = replace(disk, size_mib=size)
                disk.create(self.cache_dir)
            return prefix, Path(disk.mount)
        return prefix, Path(record.state_dir)

    def _launch(self, state_dir: Path, record: MachineRecord, spec: MachineSpec) -> Launch:
        image = _IMAGE.get()
        if spec.image and image is not None:
            return self._launch_container(state_dir, record, spec, image)
        bwrap, python = self._tools()
        ids = self._ids()
        self._reachable(ids, state_dir)
        agent = self.agent_argv(python, AGENT_IN_MACHINE)
        prefix, space = self._limits(record)
        writable = {
            "home": space / "home",
            "tmp": space / "tmp",
            "toolcache": space / "toolcache",
        }
        for path in writable.values():
            path.mkdir(mode=0o755)
        for inner in ("work", "work/workspace", "work/_temp"):
            (writable["home"] / inner).mkdir(mode=0o755)
        fds = _Fds()
        try:
            if ids.privileged:  # otherwise the agent's user owns them already
                runner = ids.host_id(RUNNER_UID), ids.host_id(RUNNER_GID)
                for name in ("home", "toolcache"):
                    chown_tree(str(writable[name]), *runner)
                os.chown(writable["tmp"], ids.host_id(ROOT_UID), ids.host_id(ROOT_UID))
            writable["tmp"].chmod(0o1777)
            options = [
                "--userns", fds.keep(os.dup(self._userns(ids))),
                "--uid", str(AGENT_UID), "--gid", str(AGENT_GID),
                *namespace_args(spec, hostname=record.machine_id),
                *[arg for cap in CAPABILITIES for arg in ("--cap-add", cap)],
                "--seccomp", fds.data(seccomp.baseline()),
                *system_args(),
                *etc_args(
                    fds, etc_view(self.cache_dir), hostname=record.machine_id,
                    private=spec.network == "private",
                    aliases=[service.label for service in spec.services],
                ),
                *sudo_args(fds, python),
                "--perms", "0755", "--dir", "/home",
                "--perms", "0755", "--dir", "/opt",
                "--bind", str(writable["home"]), HOME,
                "--bind", str(writable["tmp"]), "/tmp",
                "--bind", str(writable["toolcache"]), TOOL_CACHE,
                "--dir", "/var",
                # empty and read-only, as a path jobs may name (GitHub's runners have it)
                "--dir", "/root",
                "--symlink", "../tmp", "/var/tmp",
                *bundle_args(fds, self.bundle_dir(python)),
                "--remount-ro", "/",
                "--chdir", WORKSPACE,
                "--clearenv",
                *env_args(
                    HOME=HOME,
                    PATH=PATH,
                    LANG="C.UTF-8",
                    USER="runner",
                    RUNNER_TEMP=TEMP,
                    RUNNER_TOOL_CACHE=TOOL_CACHE,
                    VMRUNNER_MACHINE_ID=record.machine_id,
                ),
            ]  # fmt: skip
        except BaseException:
            fds.close()
            raise
        agent += ["--user", f"{RUNNER_UID}:{RUNNER_GID}", "--sudo", sudo.SOCKET]
        if not ids.privileged:
            agent += ["--own", f"{HOME}:{TOOL_CACHE}"]
        return Launch(
            argv=[bwrap, "--", *agent],
            piped_args=options,
            paths=MachinePaths(workspace=WORKSPACE, temp=TEMP, home=HOME, tool_cache=TOOL_CACHE),
            env={"PATH": os.environ.get("PATH", os.defpath)},
            writable=writable,
            pass_fds=fds.fds,
            run_as=(ids.agent_host, ids.agent_host) if ids.privileged else None,
            prefix=prefix,
        )

    def _launch_container(
        self, state_dir: Path, record: MachineRecord, spec: MachineSpec, image: ContainerImage
    ) -> Launch:
        """A sandbox whose root is ``image`` (see ``container.py``)."""
        bwrap, python = self._tools()
        ids = self._ids()
        self._reachable(ids, state_dir)
        agent = self.agent_argv(python, AGENT_IN_MACHINE)
        agent[:1] = container.interpreter(python)
        uid, gid = container.user_ids(spec.image_user or image.user, image.rootfs)
        prefix, space = self._limits(record)
        writable = {name: space / name for name in ("home", "tmp", "toolcache", "work")}
        for path in writable.values():
            path.mkdir(mode=0o755)
        for inner in ("workspace", "_temp"):
            (writable["work"] / inner).mkdir(mode=0o755)
        for name in ("home", "toolcache", "work"):
            chown_tree(str(writable[name]), ids.host_id(uid), ids.host_id(gid))
        os.chown(writable["tmp"], ids.host_id(ROOT_UID), ids.host_id(ROOT_UID))
        writable["tmp"].chmod(0o1777)
        root = container.mount_root(image, space, record.data["overlay"], ids.host_id(ROOT_UID))
        private = spec.network == "private"
        fds = _Fds()
        try:
            options = [
                "--userns", fds.keep(os.dup(self._userns(ids))),
                "--uid", str(AGENT_UID), "--gid", str(AGENT_GID),
                *namespace_args(spec, hostname=record.machine_id),
                *[arg for cap in CAPABILITIES for arg in ("--cap-add", cap)],
                "--seccomp", fds.data(seccomp.baseline()),
                "--bind", str(root), "/",
                "--proc", "/proc", "--dev", "/dev",
                *[arg for path in PROC_READ_ONLY for arg in ("--ro-bind-try", path, path)],
                "--tmpfs", "/run",
                "--ro-bind", "/usr", container.HOST_USR,
                *etc_files(
                    fds, hostname=record.machine_id, private=private,
                    aliases=[service.label for service in spec.services],
                ),
                "--bind", str(writable["home"]), container.HOME,
                "--bind", str(writable["work"]), container.WORK,
                "--bind", str(writable["toolcache"]), container.TOOL_CACHE,
                "--bind", str(writable["tmp"]), "/tmp",
                *bundle_args(fds, self.bundle_dir(python)),
                "--chdir", container.WORKSPACE,
                "--clearenv",
                *env_args(**container.environment(image, record.machine_id, spec.image_env)),
            ]  # fmt: skip
        except BaseException:
            fds.close()
            raise
        agent += ["--user", f"{uid}:{gid}"]
        return Launch(
            argv=[bwrap, "--", *agent],
            piped_args=options,
            paths=MachinePaths(
                workspace=container.WORKSPACE, temp=container.TEMP, home=container.HOME,
                tool_cache=container.TOOL_CACHE,
            ),
            env={"PATH": os.environ.get("PATH", os.defpath)},
            writable=writable,
            pass_fds=fds.fds,
            run_as=(ids.agent_host, ids.agent_host),
            prefix=prefix,
        )

    async def _started(self, machine: AgentMachine) -> None:
        if machine.spec.network == "host":
            warn_host_network(log.warning)
        if not isinstance(machine, SandboxMachine):
            return
        if machine.spec.network == "private":
            netns_pid = await asyncio.to_thread(namespace_pid, machine.process.pid, "net")
            machine.network = await attach_private_network(
                netns_pid, log_path=machine.state_dir / "network.log",
                slirp4netns=self._slirp4netns,
            )  # fmt: skip
            machine.add_record_data(machine.network.record)
        if os.geteuid() != 0:
            return  # no container roots attached later (as the host's root only)
        disk = machine.record.data.get("disk")
        machine.containers = _Containers(
            self.images, await asyncio.to_thread(namespace_pid, machine.process.pid, "mnt"),
            Path(MachineDisk.from_data(disk).mount) if disk else machine.state_dir,
            self._ids().host_id(ROOT_UID),
        )
        if machine.spec.services:
            where = machine.containers
            machine.services = services.Services(machine.client, machine.state_dir / "services")

            async def attach(image: ContainerImage, name: str) -> str:
                return await container.attach(
                    image, pid=where.pid, space=where.space, name=name, owner=where.owner,
                    binds=services.ETC_BINDS,
                )  # fmt: skip

            await machine.services.start(machine.spec.services, _SERVICES.get() or {}, attach)

    async def _reclaim(self, record: MachineRecord) -> None:
        await super()._reclaim(record)
        if not await reclaim_helper(record.data, self.grace):
            raise ReleaseError(f"machine {record.machine_id}: its network helper survived SIGKILL")


class _Fds:
    """Descriptors opened for one launch, passed to bwrap and closed after it started."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def keep(self, fd: int) -> str:
        self.fds.append(fd)
        return str(fd)

    def data(self, content: bytes) -> str:
        """A memory file holding ``content``, which bwrap copies into the machine: no host
        path behind it shows in the machine's mount table."""
        fd = os.memfd_create("vmrunner", os.MFD_CLOEXEC)
        self.fds.append(fd)
        os.write(fd, content)  # a memory file takes it whole
        os.lseek(fd, 0, os.SEEK_SET)
        return str(fd)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def namespace_args(spec: MachineSpec, *, hostname: str) -> list[str]:
    """Every namespace but the user's (made beforehand, see ``identity.py``); the cgroup
    namespace's root is the machine's cgroup, joined before bubblewrap starts."""
    args = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname", hostname,
        "--cap-drop", "ALL",
    ]  # fmt: skip
    if spec.network in ("none", "private"):
        args.append("--unshare-net")
    return args


def system_args() -> list[str]:
    """Read-only system directories, mirroring the host's layout (links stay links), and the
    machine's own ``/proc`` and ``/dev``."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    # The kernel's knobs and triggers stay read-only, whatever bubblewrap's own probe found.
    for path in PROC_READ_ONLY:
        args += ["--ro-bind-try", path, path]
    return args


def etc_args(
    fds: _Fds, view: Path, *, hostname: str, private: bool = False, aliases: Sequence[str] = ()
) -> list[str]:
    """A machine's own ``/etc``: the shared ``view`` (see ``etc_view``) read-only, with the
    host name and the resolver written for this machine over its placeholders."""
    return [
        "--ro-bind", str(view), "/etc",
        *etc_files(fds, hostname=hostname, private=private, aliases=aliases),
    ]  # fmt: skip


def etc_files(
    fds: _Fds, *, hostname: str, private: bool = False, aliases: Sequence[str] = ()
) -> list[str]:
    """The files of ``/etc`` written for one machine: its name, hosts (``aliases`` are names
    of its loopback: its services' labels) and resolver."""
    args: list[str] = []
    files = {
        "hostname": f"{hostname}\n",
        "hosts": f"127.0.0.1 {' '.join(['localhost', *aliases])}\n"
        f"::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 {hostname}\n",
        "machine-id": uuid.uuid4().hex + "\n",
        # On a private network the host's resolver (often its loopback) is out of reach: the
        # network helper's DNS instead.
        "resolv.conf": RESOLV_CONF if private else _host_resolver(),
    }
    for name, text in files.items():
        args += ["--perms", "0644", "--ro-bind-data", fds.data(text.encode()), f"/etc/{name}"]
    return args


_views: dict[Path, Path] = {}
_views_lock = threading.Lock()


def etc_view(fallback: Path) -> Path:
    """The ``/etc`` every machine sees, made once per state of the host's ``/etc``: what
    programs read (certificates, the loader's cache, alternatives, time zone, shells'
    profiles...) copied from the host, the machine's users, and placeholders for the files each
    machine gets its own of; nothing else of the host's (its users, shadow files, keys).

    One bind of a copy instead of one per entry (those cost ~17 ms a machine). It lives in
    ``/run/vmrunner`` (root) or ``$XDG_RUNTIME_DIR/vmrunner``, so the mount table inside shows
    no path of the runner's state; ``fallback`` (the runner's cache) otherwise.
    """
    if os.geteuid() == 0:
        base = Path("/run/vmrunner")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "vmrunner"
    else:
        base = fallback
    with _views_lock:
        if base in _views and _views[base].is_dir():
            return _views[base]
        entries = _etc_entries()
        view = base / f"etc-{_fingerprint(entries)}"
        if not view.is_dir():
            base.mkdir(parents=True, exist_ok=True, mode=0o711)
            _build_view(base, view, entries)
        _views[base] = view
        return view


def _etc_entries() -> list[str]:
    try:
        names = sorted(os.listdir("/etc"))
    except OSError:
        names = []
    return [
        f"/etc/{name}"
        for name in names
        if name not in ETC_WRITTEN and any(fnmatch.fnmatchcase(name, glob) for glob in ETC_KEPT)
    ]


def _fingerprint(entries: list[str]) -> str:
    """Changes whenever a file of ``entries`` (or the users written beside them) does."""
    digest = hashlib.sha256(("\n".join(passwd_lines()) + "\n".join(group_lines())).encode())
    for entry in entries:
        walked = os.walk(entry) if os.path.isdir(entry) and not os.path.islink(entry) else []
        paths = [entry] + [os.path.join(folder, name) for folder, dirs, files in walked
                           for name in sorted(dirs + files)]
        for path in paths:
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                digest.update(f"{path} {st.st_mode} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _build_view(base: Path, view: Path, entries: list[str]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".etc-", dir=base))
    try:
        for path in entries:
            target = staging / os.path.basename(path)
            with contextlib.suppress(OSError, shutil.Error):
                if os.path.islink(path):
                    os.symlink(os.readlink(path), target)
                elif os.path.isdir(path):
                    shutil.copytree(
                        path, target, symlinks=True, ignore=_secrets, copy_function=_copy_readable
                    )
                else:
                    _copy_readable(path, str(target))
        (staging / "passwd").write_text("\n".join(passwd_lines()) + "\n", encoding="utf-8")
        (staging / "group").write_text("\n".join(group_lines()) + "\n", encoding="utf-8")
        for name in ("hostname", "hosts", "machine-id", "resolv.conf"):
            (staging / name).touch()
        for folder, _, files in os.walk(staging):
            os.chmod(folder, 0o755)
            for name in files:
                if not os.path.islink(os.path.join(folder, name)):
                    os.chmod(os.path.join(folder, name), 0o644)
        try:
            staging.rename(view)
        except OSError:
            if not view.is_dir():  # not just another process that made the same view first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _secrets(folder: str, names: list[str]) -> set[str]:
    """What a view never copies: directories of secrets (``SECRET_DIRS``) and unreadable files."""
    hidden = {name for name in names if os.path.join(folder, name) in SECRET_DIRS}
    return hidden | {
        name for name in names
        if not os.path.islink(os.path.join(folder, name))
        and not os.stat(os.path.join(folder, name)).st_mode & 0o004
    }


def _copy_readable(source: str, dest: str) -> None:
    with contextlib.suppress(PermissionError):
        shutil.copy2(source, dest)


def _host_resolver() -> str:
    try:
        with open("/etc/resolv.conf", encoding="utf-8") as file:
            return file.read()
    except OSError:
        return ""


def bundle_args(fds: _Fds, bundle: Path) -> list[str]:
    """The agent's files, copied in (a bind would show the runner's cache path inside)."""
    args: list[str] = []
    for inside, files in _bundle_files(bundle):
        args += ["--perms", "0755", "--dir", inside]
        for name, content in files:
            args += ["--perms", "0644", "--ro-bind-data", fds.data(content), f"{inside}/{name}"]
    return args


@functools.cache
def _bundle_files(bundle: Path) -> tuple[tuple[str, tuple[tuple[str, bytes], ...]], ...]:
    """Each folder of the bundle as the machine sees it, with its files' contents: read once
    (a bundle's name holds the digest of what it contains, so it never changes)."""
    folders = []
    for folder, _, files in sorted(os.walk(bundle)):
        inside = os.path.normpath(os.path.join(AGENT_IN_MACHINE, os.path.relpath(folder, bundle)))
        contents = tuple((name, Path(folder, name).read_bytes()) for name in sorted(files))
        folders.append((inside, contents))
    return tuple(folders)


def sudo_args(fds: _Fds, python: str) -> list[str]:
    """``/usr/local/sbin/sudo`` (see ``sudo.py``) and ``/run``, where its socket lives."""
    folder = os.path.dirname(sudo.PROGRAM)
    args = ["--tmpfs", "/run"]
    if not os.path.isdir(folder):
        return args  # no place for it on this host's /usr: jobs have no sudo
    args += ["--tmpfs", folder]
    for name in sorted(os.listdir(folder)):
        if name != "sudo":
            args += ["--ro-bind", f"{folder}/{name}", f"{folder}/{name}"]
    args += ["--perms", "0755", "--ro-bind-data", fds.data(sudo.shim(python)), sudo.PROGRAM]
    return [*args, "--remount-ro", folder]


def env_args(**env: str) -> list[str]:
    return [arg for name, value in env.items() for arg in ("--setenv", name, value)]
