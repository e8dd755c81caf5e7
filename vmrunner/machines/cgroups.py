"""Memory, process and CPU limits for a machine, from cgroups (v2 where delegated, else v1).

One small interface over both versions:

- ``Cgroups.detect()`` finds where this process may make cgroups: the unified (v2) hierarchy
  when its memory and pids controllers are there, else the v1 hierarchies of ``memory``,
  ``pids`` and ``cpu``; always below this process's own cgroup, never at a root it was not
  given.
- ``Cgroups.plan(name, limits)`` names a machine's cgroup without creating anything, so the
  machine's record can hold it before anything exists that could leak;
  ``MachineCgroup.create()`` makes it and writes the limits; ``attach(pid)`` puts a process in
  it (its later children inherit it); ``limits_hit()`` turns the kernel's counters into plain
  reasons; ``remove()`` kills what is left in it and removes it, idempotently, also from a
  record after a crash (``MachineCgroup.from_data``).

Choices: memory limits cover swap too (v1 ``memory.memsw``, v2 ``memory.swap.max = 0``) so a
machine cannot page the host to a halt; an OOM kills only the offending process (no
``memory.oom.group``) so the agent survives to report it; v1 has no ``cgroup.kill``, so removal
kills the listed processes until none is left (a fork bomb is bounded by ``pids.max``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmrunner.errors import AllocationError, ReleaseError
from vmrunner.machines.limits import Limits, format_mib

#: The v1 controllers a machine uses, each in its own hierarchy (or shared ones).
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
#: How long ``remove`` keeps killing and retrying before it says what is left.
REMOVE_TIMEOUT = 10.0
#: The leaf this process moves into on v2 when its own cgroup must hand controllers down.
V2_RUNNER_LEAF = "vmrunner-runner"

DELEGATE_HINT = (
    "run vmrunner as root, or in a cgroup v2 subtree delegated to it with the memory, pids and"
    " cpu controllers (e.g. `systemd-run --user --scope -p Delegate=yes vmrunner ...`, or"
    " Delegate=yes in its systemd service); or pass --memory 0 --pids 0 --cpus 0 for no limits"
)


@dataclass(frozen=True, slots=True)
class Cgroups:
    """Where this host lets vmrunner make machine cgroups.

    ``parents`` maps a controller to the directory machine cgroups are made in; on v2 every
    controller maps to the same directory.
    """

    version: int
    parents: Mapping[str, Path]

    @classmethod
    def detect(cls) -> Cgroups:
        """The cgroups this process can use; ``AllocationError`` (with how to fix it) if none."""
        own = _own_cgroups()
        mounts = list(_cgroup_mounts())
        for root, point, fstype, _ in mounts:
            if fstype == "cgroup2" and "" in own:
                directory = _below(point, root, own[""])
                if directory is not None and directory.name == V2_RUNNER_LEAF:
                    directory = directory.parent  # moved there by an earlier machine's set-up
                if directory is not None and {"memory", "pids"} <= _controllers(directory):
                    return cls(
                        2, {c: directory for c in _controllers(directory) & {*V1_CONTROLLERS}}
                    )
        parents: dict[str, Path] = {}
        for root, point, fstype, options in mounts:
            if fstype != "cgroup":
                continue
            for controller in V1_CONTROLLERS:
                if controller in options and controller in own and controller not in parents:
                    directory = _below(point, root, own[controller])
                    if directory is not None:
                        parents[controller] = directory
        if not parents:
            raise AllocationError(
                f"this host has no usable memory, pids or cpu cgroup controller: {DELEGATE_HINT}"
            )
        return cls(1, parents)

    def plan(self, name: str, limits: Limits) -> MachineCgroup:
        """The cgroup ``name`` would be, for ``limits`` (nothing is created).

        ``AllocationError`` when a limit is asked whose controller the host does not have.
        """
        wanted = [
            c
            for c, value in (
                ("memory", limits.memory_mib),
                ("pids", limits.pids),
                ("cpu", limits.cpus),
            )
            if value
        ]
        missing = [c for c in wanted if c not in self.parents]
        if missing:
            version = "v2 (unified)" if self.version == 2 else "v1"
            raise AllocationError(
                f"cannot limit a machine's {', '.join(missing)}: this host's cgroup {version}"
                f" hierarchy has no {'/'.join(missing)} controller ({DELEGATE_HINT})"
            )
        unwritable = [
            str(self.parents[c]) for c in wanted if not os.access(self.parents[c], os.W_OK)
        ]
        if unwritable:
            raise AllocationError(
                f"cannot make a machine's cgroup in {unwritable[0]}: not writable by this user "
                f"({DELEGATE_HINT})"
            )
        directories = {c: str(self.parents[c] / name) for c in wanted}
        return MachineCgroup(self.version, directories, limits.memory_mib, limits.pids, limits.cpus)


@dataclass(frozen=True, slots=True)
class MachineCgroup:
    """One machine's cgroup: a directory per controller (one shared directory on v2)."""

    version: int
    directories: Mapping[str, str]
    memory_mib: int = 0
    pids: int = 0
    cpus: int = 0
    #: Counters at creation (or at the last ``restore`` of the machine): what is new is "hit".
    baseline: Mapping[str, int] = field(default_factory=dict)

    # Persisting.

    def to_data(self) -> dict[str, Any]:
        return {
            "version": self.version, "directories": dict(self.directories),
            "memory_mib": self.memory_mib, "pids": self.pids, "cpus": self.cpus,
        }  # fmt: skip

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> MachineCgroup:
        return cls(
            int(data["version"]), {str(k): str(v) for k, v in data["directories"].items()},
            int(data.get("memory_mib", 0)), int(data.get("pids", 0)), int(data.get("cpus", 0)),
        )  # fmt: skip

    @property
    def paths(self) -> list[str]:
        """Each distinct directory once (v2: one; v1: one per hierarchy)."""
        return list(dict.fromkeys(self.directories.values()))

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to join the machine."""
        return [f"{path}/cgroup.procs" for path in self.paths]

    # Life.

    def create(self) -> None:
        """Make the cgroup and write its limits; ``AllocationError`` says why not."""
        try:
            if self.version == 2:
                self._enable_v2_controllers()
            for path in self.paths:
                os.mkdir(path, 0o755)
            if self.version == 2:
                self._write_v2_limits()
            else:
                self._write_v1_limits()
        except OSError as exc:
            with contextlib.suppress(ReleaseError):
                self.remove()
            where = exc.filename or self.paths[0]
            raise AllocationError(
                f"cannot make the machine's cgroup ({where}: {exc.strerror}): {DELEGATE_HINT}"
            ) from exc

    def _write_v1_limits(self) -> None:
        if self.memory_mib:
            memory = Path(self.directories["memory"])
            _write(memory / "memory.limit_in_bytes", self.memory_mib << 20)
            if (memory / "memory.memsw.limit_in_bytes").exists():  # swap accounting is on
                _write(memory / "memory.memsw.limit_in_bytes", self.memory_mib << 20)
        if self.pids:
            _write(Path(self.directories["pids"]) / "pids.max", self.pids)
        if self.cpus:
            cpu = Path(self.directories["cpu"])
            _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", self.cpus * CPU_PERIOD_US)

    def _write_v2_limits(self) -> None:
        path = Path(self.paths[0])
        if self.memory_mib:
            _write(path / "memory.max", self.memory_mib << 20)
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", 0)
        if self.pids:
            _write(path / "pids.max", self.pids)
        if self.cpus:
            _write(path / "cpu.max", f"{self.cpus * CPU_PERIOD_US} {CPU_PERIOD_US}")

    def _enable_v2_controllers(self) -> None:
        """Hand the controllers down from the parent; on v2 a cgroup holding processes cannot,
        so when this process is alone in it, it moves into a leaf of its own first."""
        parent = Path(self.paths[0]).parent
        wanted = set(self.directories)
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        if wanted <= enabled:
            return
        change = " ".join(f"+{c}" for c in sorted(wanted - enabled))
        try:
            _write(parent / "cgroup.subtree_control", change)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
        others = [
            int(p) for p in (parent / "cgroup.procs").read_text().split() if int(p) != os.getpid()
        ]
        if others:
            raise AllocationError(
                f"cannot hand cgroup controllers down from {parent}: processes {others[:5]} other"
                f" than vmrunner are in it ({DELEGATE_HINT})"
            )
        leaf = parent / V2_RUNNER_LEAF
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", os.getpid())
        _write(parent / "cgroup.subtree_control", change)

    def attach(self, pid: int) -> None:
        """Put process ``pid`` in the machine's cgroup (the children it makes later follow)."""
        try:
            for procs in self.procs_files:
                _write(Path(procs), pid)
        except OSError as exc:
            raise AllocationError(
                f"cannot put process {pid} in the machine's cgroup ({exc.filename}: {exc.strerror})"
            ) from exc

    # What happened.

    def counters(self) -> dict[str, int]:
        """The kernel's counts of limits hit: OOM kills and refused forks."""
        counts: dict[str, int] = {}
        if self.memory_mib:
            name = "memory.events" if self.version == 2 else "memory.oom_control"
            counts["oom_kill"] = _field(Path(self.directories["memory"]) / name, "oom_kill")
        if self.pids:
            counts["pids_max"] = _field(Path(self.directories["pids"]) / "pids.events", "max")
        return counts

    def rebased(self) -> MachineCgroup:
        """This cgroup, counting limits hit from now on (a machine restored for a new job)."""
        return MachineCgroup(
            self.version, self.directories, self.memory_mib, self.pids, self.cpus, self.counters()
        )

    def limits_hit(self) -> list[str]:
        """Plain reasons for the limits hit since creation (or ``rebased``)."""
        reasons = []
        counts = self.counters()
        if counts.get("oom_kill", 0) > self.baseline.get("oom_kill", 0):
            reasons.append(f"out of memory: the machine's limit is {format_mib(self.memory_mib)}")
        if counts.get("pids_max", 0) > self.baseline.get("pids_max", 0):
            reasons.append(f"too many processes: the machine's limit is {self.pids}")
        return reasons

    def read(self, controller: str, name: str) -> str:
        """One of the cgroup's files, e.g. ``read("cpu", "cpu.max")`` (for checks and tests)."""
        return (Path(self.directories[controller]) / name).read_text().strip()

    # The end.

    def remove(self) -> None:
        """Kill every process left in the cgroup, then remove it; nothing to do if it is gone.

        ``ReleaseError`` names what is still there after ``REMOVE_TIMEOUT``.
        """
        deadline = time.monotonic() + REMOVE_TIMEOUT
        for path in self.paths:
            if self.version == 2 and os.path.exists(f"{path}/cgroup.kill"):
                with contextlib.suppress(OSError):
                    _write(Path(path) / "cgroup.kill", 1)
            delay = 0.001
            while True:
                left = _kill_members(path)
                if not left:
                    try:
                        os.rmdir(path)
                        break
                    except FileNotFoundError:
                        break
                    except OSError as exc:
                        if exc.errno != errno.EBUSY:
                            raise ReleaseError(
                                f"cannot remove the machine's cgroup {path}: {exc.strerror}"
                            ) from exc
                if time.monotonic() > deadline:
                    raise ReleaseError(
                        f"the machine's cgroup {path} still holds processes {left[:5]} after "
                        "SIGKILL"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def exists(self) -> bool:
        return any(os.path.isdir(path) for path in self.paths)


def _kill_members(path: str) -> list[int]:
    """SIGKILL every process listed in the cgroup at ``path`` (pidfds: never a reused pid)."""
    try:
        with open(f"{path}/cgroup.procs", encoding="ascii") as procs:
            members = [int(line) for line in procs if line.strip()]
    except FileNotFoundError:
        return []
    for pid in members:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            if _in_cgroup(pid, path):  # still the member, not a new process with its pid
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)
    return members


def _in_cgroup(pid: int, path: str) -> bool:
    name = os.path.basename(path)
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as cgroups:
            return any(line.rstrip("\n").endswith(f"/{name}") for line in cgroups)
    except OSError:
        return False


def _write(path: Path, value: object) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(str(value))


def _field(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``oom_kill 3``); 0 if absent."""
    try:
        with open(path, encoding="ascii") as file:
            for line in file:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per v1 controller, and ``""`` -> its v2 cgroup."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _cgroup_mounts() -> Iterator[tuple[str, Path, str, set[str]]]:
    """(root within the hierarchy, mount point, fstype, super options) of each cgroup mount."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            fields, rest = before.split(), after.split()
            if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
                continue
            point = Path(_unescape(fields[4]))
            yield _unescape(fields[3]), point, rest[0], set(rest[2].split(","))


def _below(point: Path, root: str, path: str) -> Path | None:
    """The directory of cgroup ``path`` in a hierarchy mounted at ``point`` from ``root``."""
    if root != "/":
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None
        path = path[len(root) :]
    directory = point / path.lstrip("/")
    return directory if directory.is_dir() else None


def _controllers(directory: Path) -> set[str]:
    try:
        return set((directory / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _unescape(text: str) -> str:
    """A path from ``/proc/self/mountinfo`` (spaces and such are octal escapes there)."""
    if "\\" not in text:
        return text
    return (
        text.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
    )
