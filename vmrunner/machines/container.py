"""A sandbox whose root file system is an OCI image (a ``container:`` job's machine).

Everything but the root is the sandbox's (``sandbox.py``): the same user namespace (image root
is the machine's root, an unprivileged host id), seccomp baseline, capabilities, pid, ipc, uts
and private network namespaces, cgroup and disk. What differs:

- ``/`` is an overlay of the image's unpacked root (``oci.py``: shared, read-only, never
  written) under an upper layer of the machine's own, on its disk: a job may install packages,
  and nothing it writes reaches the cache or another machine. The overlay is mounted by the
  runner (root) before bubblewrap starts, named in the machine's record first, and unmounted
  when the machine is released or reclaimed.
- The writable directories sit where GitHub puts them in a container job: the work folder at
  ``/__w`` (workspace ``/__w/<repo>/<repo>``, ``/__w/_temp``), ``HOME`` at ``/github/home``,
  the tool cache at ``/__t``, and ``/tmp``.
- The environment is the image's (``PATH`` and the rest of its ``ENV``), and commands run as the
  image's user (root unless it names another, or ``--user`` does), as ``docker exec`` would.
- The guest agent needs Python, which an image need not have: it runs on the host's own
  interpreter, bound read-only at ``/run/vmrunner/host/usr`` and started through the host's
  dynamic loader with the host's library folder, so nothing of it is on the image's paths and
  the image's own programs (its libc, its python) are untouched. That folder is the host's
  ``/usr``, which a plain sandbox shows at ``/usr`` anyway: no more of the host is visible.
- No ``sudo`` (commands already run as the image's user, root by default).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmrunner.errors import AllocationError
from vmrunner.machines.disk import unmount_below
from vmrunner.machines.oci import ContainerImage

HOST_USR = "/run/vmrunner/host/usr"
WORK = "/__w"
TEMP = f"{WORK}/_temp"
WORKSPACE = f"{WORK}/workspace"
HOME = "/github/home"
TOOL_CACHE = "/__t"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Mount points made in a machine's root before bubblewrap binds onto them.
MOUNT_POINTS = ("proc", "dev", "tmp", "run", "etc", "__w", "__t", "github/home")
ROOT_NEEDED = (
    "container machines need root (their root file system is an overlay the runner mounts):"
    " run vmrunner as root"
)
_MS_NOSUID, _MS_NODEV = 2, 4
_libc = ctypes.CDLL(None, use_errno=True)


def plan(state_dir: Path) -> dict[str, Any]:
    """The record's entry for a machine's overlay, named before it exists."""
    if os.geteuid() != 0:
        raise AllocationError(ROOT_NEEDED)
    return {"mount": str(state_dir / "root")}


def mount_root(
    image: ContainerImage, space: Path, overlay: Mapping[str, Any], root_id: int
) -> Path:
    """Mount the machine's root: ``image`` under an upper layer in ``space`` (the machine's
    disk), with the mount points bubblewrap needs; owned by the machine's root."""
    upper, work, merged = space / "root-upper", space / "root-work", Path(overlay["mount"])
    for folder in (upper, work, merged):
        folder.mkdir(mode=0o755)
    os.chown(upper, root_id, root_id)
    options = f"lowerdir={image.rootfs},upperdir={upper},workdir={work}"
    if _libc.mount(b"overlay", bytes(merged), b"overlay", _MS_NOSUID | _MS_NODEV,
                   options.encode()) != 0:  # fmt: skip
        code = ctypes.get_errno()
        raise AllocationError(f"cannot mount the root of {image.reference}: {os.strerror(code)}")
    for name in MOUNT_POINTS:
        point = merged / name
        if not point.is_dir() or point.is_symlink():
            if point.is_symlink() or point.exists():
                point.unlink()
            point.mkdir(parents=True, mode=0o755)
            os.chown(point, root_id, root_id)
    return merged


def unmount_root(overlay: Mapping[str, Any]) -> None:
    """Unmount a machine's root (idempotent: after a crash it may be gone already)."""
    unmount_below(Path(overlay["mount"]))


def interpreter(python: str) -> list[str]:
    """The host's ``python`` started, inside a container machine, through the host's own
    dynamic loader from ``HOST_USR`` (the image may have no loader, or another libc)."""
    real = os.path.realpath(python)
    loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    for candidate in (loader, os.path.realpath("/lib/ld-linux-aarch64.so.1")):
        if candidate.startswith("/usr/") and os.path.exists(candidate):
            loader = candidate
            break
    else:
        raise AllocationError("container machines need the host's dynamic loader under /usr")
    if not real.startswith("/usr/"):
        raise AllocationError(
            f"container machines run the agent on a python under /usr, not {real}"
        )
    inside = HOST_USR + loader.removeprefix("/usr")
    library = os.path.dirname(inside)
    return [inside, "--library-path", library, HOST_USR + real.removeprefix("/usr")]


def user_ids(user: str, rootfs: Path) -> tuple[int, int]:
    """``user`` (``uid[:gid]``, ``name[:group]``, '' for root) as ids of the image."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    uid = _lookup(name, rootfs / "etc/passwd", 2)
    gid = _lookup(group, rootfs / "etc/group", 2) if group else _primary_group(name, uid, rootfs)
    if not (0 <= uid < 65536 and 0 <= gid < 65536):
        raise AllocationError(f"user {user!r}: ids must be below 65536 in a machine")
    return uid, gid


def _lookup(name: str, table: Path, column: int) -> int:
    if name.isdigit():
        return int(name)
    for fields in _entries(table):
        if fields[0] == name and len(fields) > column and fields[column].isdigit():
            return int(fields[column])
    raise AllocationError(f"user or group {name!r} is not in the image's /etc/{table.name}")


def _primary_group(name: str, uid: int, rootfs: Path) -> int:
    for fields in _entries(rootfs / "etc/passwd"):
        if len(fields) > 3 and (fields[0] == name or fields[2] == str(uid)) and fields[3].isdigit():
            return int(fields[3])
    return uid


def _entries(table: Path) -> list[list[str]]:
    try:
        text = table.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def environment(
    image: ContainerImage, machine_id: str, extra: tuple[tuple[str, str], ...] = ()
) -> dict[str, str]:
    """The machine's base environment: the image's and ``extra`` (``container.env``), with
    GitHub's container-job locations."""
    env = {**dict(image.env), **dict(extra)}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(
        HOME=HOME, RUNNER_TEMP=TEMP, RUNNER_TOOL_CACHE=TOOL_CACHE, VMRUNNER_MACHINE_ID=machine_id
    )
    return env


#: Where the roots of a machine's service containers and one-shot containers are attached.
ATTACHED = "/run/containers"
_ATTACH = Path(__file__).with_name("_attach.py")


async def attach(
    image: ContainerImage, *, pid: int, space: Path, name: str, owner: int,
    binds: Sequence[tuple[str, str, str]] = (),
) -> str:
    """Show an overlay of ``image`` (upper layer in ``space``, the machine's disk) at
    ``ATTACHED/name`` in the running machine whose process is ``pid``, with the machine's
    ``/dev``, ``/proc`` and ``binds`` (machine path, container path, file or dir) in it; the
    path inside the machine. Nothing of it is mounted on the host (see ``_attach.py``)."""
    folder = space / "containers" / name
    upper, work = folder / "upper", folder / "work"
    for path in (upper, work):
        path.mkdir(parents=True, mode=0o755)
    os.chown(upper, owner, owner)
    target = f"{ATTACHED}/{name}"
    request = {
        "pid": pid, "owner": owner, "lower": str(image.rootfs), "upper": str(upper),
        "work": str(work), "target": target, "binds": [list(b) for b in binds],
    }  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(_ATTACH), json.dumps(request),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    if process.returncode != 0:
        why = stderr.decode(errors="replace").strip() or f"exit status {process.returncode}"
        raise AllocationError(f"{image.reference}: {why}")
    return target
