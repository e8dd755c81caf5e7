"""The ``sandbox`` provider (the default): each machine is a bubblewrap sandbox.

A machine is one ``bwrap`` process with its own mount, pid, ipc and uts namespaces (and network
namespace for network ``none``), no capabilities, running the guest agent with the host's
system ``python3``. Its file system is built from nothing:

- read-only: ``/usr`` (and the ``/bin``, ``/sbin``, ``/lib*`` links or directories beside it)
  and ``/etc`` with its secret files (shadow passwords, ssh host keys) masked;
- writable, each a fresh host directory under ``VMRUNNER_HOME/machines/<id>/``:
  ``/home/runner`` (HOME, holding ``work/workspace`` and ``work/_temp``), ``/tmp`` (also
  ``/var/tmp``) and ``/opt/hostedtoolcache``; everything else, the root included, is read-only;
- ``/proc`` of its own pid namespace and a minimal ``/dev``.

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
import os
import shutil
from pathlib import Path
from typing import ClassVar

from vmrunner.errors import AllocationError, SnapshotError
from vmrunner.machines.agent import DEFAULT_GRACE
from vmrunner.machines.base import (
    Capabilities,
    Isolation,
    MachinePaths,
    MachineRecord,
    MachineSpec,
    SnapshotId,
)
from vmrunner.machines.local import AgentMachine, Launch, LocalProvider
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
#: Files of /etc that no job needs and that must not leak (masked with an empty file).
SECRET_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers")
#: Directories of /etc hidden behind an empty tmpfs.
SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d", "/etc/vmrunner")

BWRAP_MISSING = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"


class SandboxMachine(AgentMachine):
    """A bubblewrap sandbox; snapshots cover its writable directories."""

    _snapshots: DirectorySnapshots | None = None
    _snapshot_lock: asyncio.Lock | None = None

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
        isolation=Isolation.NAMESPACES, snapshots=True
    )
    machine_class: ClassVar[type[AgentMachine]] = SandboxMachine

    def __init__(
        self,
        home: Path | None = None,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        super().__init__(home, grace=grace)
        self._bwrap = bwrap
        self._python = python

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

    def _launch(self, state_dir: Path, record: MachineRecord, spec: MachineSpec) -> Launch:
        bwrap, python = self._tools()
        agent = self.agent_argv(python, AGENT_IN_MACHINE)
        writable = {
            "home": state_dir / "home",
            "tmp": state_dir / "tmp",
            "toolcache": state_dir / "toolcache",
        }
        for path in writable.values():
            path.mkdir(mode=0o755)
        for inner in ("work", "work/workspace", "work/_temp"):
            (writable["home"] / inner).mkdir(mode=0o755)
        options = [
            *namespace_args(spec, hostname=record.machine_id),
            *system_args(),
            "--bind", str(writable["home"]), HOME,
            "--bind", str(writable["tmp"]), "/tmp",
            "--bind", str(writable["toolcache"]), TOOL_CACHE,
            "--dir", "/var",
            # empty and read-only, as a path jobs may name (GitHub's runners have it)
            "--dir", "/root",
            "--symlink", "../tmp", "/var/tmp",
            "--ro-bind", str(self.bundle_dir(python)), AGENT_IN_MACHINE,
            "--remount-ro", "/",
            "--chdir", WORKSPACE,
            "--clearenv",
            *env_args(
                HOME=HOME,
                PATH=PATH,
                LANG="C.UTF-8",
                RUNNER_TEMP=TEMP,
                RUNNER_TOOL_CACHE=TOOL_CACHE,
                VMRUNNER_MACHINE_ID=record.machine_id,
            ),
        ]  # fmt: skip
        return Launch(
            argv=[bwrap, "--", *agent],
            piped_args=options,
            paths=MachinePaths(workspace=WORKSPACE, temp=TEMP, home=HOME, tool_cache=TOOL_CACHE),
            env={"PATH": os.environ.get("PATH", os.defpath)},
            writable=writable,
        )


def namespace_args(spec: MachineSpec, *, hostname: str) -> list[str]:
    args = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname", hostname,
        "--cap-drop", "ALL",
    ]  # fmt: skip
    if os.geteuid() != 0:
        args.append("--unshare-user")  # without privileges, namespaces need a user namespace
    if spec.network == "none":
        args.append("--unshare-net")
    return args


def system_args() -> list[str]:
    """Read-only system directories, mirroring the host's layout (links stay links)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--ro-bind", "/etc", "/etc"]
    for path in SECRET_FILES:
        if os.path.isfile(path):
            args += ["--ro-bind", "/dev/null", path]
    for path in SECRET_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--tmpfs", path, "--remount-ro", path]
    # /etc/resolv.conf often links into /run, which the sandbox does not see: bring the target.
    resolv = os.path.realpath("/etc/resolv.conf")
    if resolv != "/etc/resolv.conf" and not resolv.startswith(("/etc/", "/usr/")):
        args += ["--ro-bind-try", resolv, resolv]
    args += ["--proc", "/proc", "--dev", "/dev"]
    return args


def env_args(**env: str) -> list[str]:
    return [arg for name, value in env.items() for arg in ("--setenv", name, value)]
