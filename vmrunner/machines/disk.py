"""A machine's disk budget: its writable space on a file system of its own.

A machine's home, temp and tool cache live on an ext4 file system in a sparse image file
(``<state_dir>/disk.img``), loop-mounted at ``<state_dir>/disk``. Filling it gives the machine
ENOSPC at its budget; the host's file system, where the state database is, never fills
because of a machine: an image only grows to its size, and ``reserve`` admits a machine only
when the host has room for every live machine's image to grow to its full size, plus a
reserve for the host (``limits.DISK_RESERVE_MIB``).

Fast because nothing runs a program: the image is a sparse copy of a template made once per
``VMRUNNER_HOME`` and size (``mkfs.ext4`` without journal, inode tables initialised lazily and
never by the kernel: ``noinit_itable``), attached with ``LOOP_CONFIGURE`` and
``LO_FLAGS_AUTOCLEAR`` (the loop device goes away with the mount, or with this process if it
dies before mounting) and mounted with ``mount(2)``.

Needs root (``CAP_SYS_ADMIN``): without it there is no budget to give, and allocation says so
(``--disk 0`` runs without one). The snapshot store stays outside the budget, on the host:
restoring a machine that filled its disk must still work.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmrunner.errors import AllocationError, ReleaseError
from vmrunner.machines.limits import (
    DEFAULT_DISK_MIB,
    DISK_RESERVE_MIB,
    MIN_DEFAULT_DISK_MIB,
    format_mib,
)

IMAGE_NAME = "disk.img"
MOUNT_NAME = "disk"
#: Changing how templates are made changes their names: old ones are never reused.
TEMPLATE_VERSION = 1
MKFS = (
    "mkfs.ext4",
    "-q",
    "-F",
    "-O",
    "^has_journal",
    "-E",
    "lazy_itable_init=1,nodiscard",
    "-m",
    "0",
)
#: nosuid, nodev, noatime: a machine's files never grant privileges on the host.
MOUNT_FLAGS = 0x2 | 0x4 | 0x400
MOUNT_OPTIONS = b"noinit_itable"
#: A machine's disk counts as full when less than this much is left (what ENOSPC leaves).
FULL_SLACK_MIB = 1
NO_ROOT = (
    "a machine's disk budget needs root (its writable space is a loop-mounted file system):"
    " run vmrunner as root, or pass --disk 0 to run without a disk budget"
)

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
#: struct loop_config: fd, block_size, struct loop_info64 (232 bytes), 64 reserved bytes;
#: lo_flags is at offset 52 of loop_info64.
_LOOP_CONFIG_SIZE = 8 + 232 + 64
_LO_FLAGS_OFFSET = 8 + 52
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class MachineDisk:
    """A machine's disk: its image file, where it is mounted, its size."""

    image: str
    mount: str
    size_mib: int

    @classmethod
    def plan(cls, state_dir: Path, size_mib: int) -> MachineDisk:
        """The disk a machine in ``state_dir`` would have (nothing is created)."""
        return cls(str(state_dir / IMAGE_NAME), str(state_dir / MOUNT_NAME), size_mib)

    def to_data(self) -> dict[str, Any]:
        return {"image": self.image, "mount": self.mount, "size_mib": self.size_mib}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> MachineDisk:
        return cls(str(data["image"]), str(data["mount"]), int(data["size_mib"]))

    def create(self, cache_dir: Path) -> None:
        """Make the image from the template and mount it; ``AllocationError`` says why not."""
        if os.geteuid() != 0:
            raise AllocationError(NO_ROOT)
        template = ensure_template(cache_dir, self.size_mib)
        try:
            _copy_sparse(template, self.image)
            os.mkdir(self.mount, 0o755)
            device, name = _attach_loop(self.image)
            try:
                _mount(name, self.mount)
            finally:
                os.close(device)  # with AUTOCLEAR the mount now keeps the loop device alive
        except OSError as exc:
            with contextlib.suppress(ReleaseError):
                self.release()
            raise AllocationError(
                f"cannot set up the machine's disk ({exc.filename or self.image}: {exc.strerror})"
            ) from exc

    def full(self) -> bool:
        """Whether the machine's file system is (nearly) out of space or inodes."""
        try:
            stat = os.statvfs(self.mount)
        except OSError:
            return False
        if stat.f_blocks == 0:
            return False
        return stat.f_bavail * stat.f_frsize < FULL_SLACK_MIB << 20 or (
            stat.f_files > 0 and stat.f_favail == 0
        )

    def reason(self) -> str:
        return f"disk full: the machine's limit is {format_mib(self.size_mib)}"

    def mounted(self) -> bool:
        return self.mount in set(_mount_points())

    def release(self) -> None:
        """Unmount (the loop device goes with it) and remove the image; idempotent.

        Call it when the machine's processes are gone: a mount still used is detached lazily
        rather than left behind, and the kernel frees it with its last user.
        """
        try:
            unmount_below(Path(self.mount))
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(self.mount)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.image)
        except OSError as exc:
            raise ReleaseError(
                f"cannot release the machine's disk {self.mount}: {exc.strerror}"
            ) from exc


#: A machine's default budget is at most this fraction of the room left, so that several
#: machines (a warm pool, concurrent jobs) still fit when the host is small: their budgets
#: shrink as the room does, instead of the last ones being refused.
DEFAULT_DISK_SHARE = 4


def resolve_disk(size_mib: int | None, machines_dir: Path) -> int:
    """The disk budget (MiB) of a new machine: ``size_mib``, or the default scaled to the host."""
    if size_mib == 0:
        return 0
    if size_mib is None:
        return default_share(_room_mib(machines_dir), machines_dir)
    return size_mib


def default_share(room_mib: int, machines_dir: Path) -> int:
    """A default budget out of ``room_mib``: its share, in whole GiB (each size has an empty
    file system of its own to copy: a size per GiB, not per free MiB), at most the default."""
    share = room_mib // DEFAULT_DISK_SHARE // 1024 * 1024
    if share < MIN_DEFAULT_DISK_MIB:
        raise AllocationError(_no_room(machines_dir, MIN_DEFAULT_DISK_MIB, share))
    return min(DEFAULT_DISK_MIB, share)


@contextlib.contextmanager
def reserve(machines_dir: Path, size_mib: int, *, default: bool = False) -> Iterator[int]:
    """Admit a new disk of ``size_mib`` if the host has room for it; held while it is made.
    Yields the size admitted: a ``default`` budget planned when there was more room (machines
    planned at once, admitted one by one) shrinks to its share of the room left instead of
    failing; a budget the user asked for is admitted whole or not at all.

    Machines of this ``VMRUNNER_HOME`` are admitted one at a time (a lock on the machines
    directory itself: no file to leave behind), so two cannot both take the last room.
    """
    machines_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(machines_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        room = _room_mib(machines_dir)
        if size_mib > room:
            if not default:
                raise AllocationError(_no_room(machines_dir, size_mib, room))
            size_mib = default_share(room, machines_dir)
        yield size_mib
    finally:
        os.close(lock)


def _room_mib(machines_dir: Path) -> int:
    """Free space on the host's file system beyond the reserve and what live images may still
    take."""
    existing = next(p for p in (machines_dir, *machines_dir.parents) if p.exists())
    stat = os.statvfs(existing)
    free = stat.f_bavail * stat.f_frsize
    reserve = max(DISK_RESERVE_MIB << 20, stat.f_blocks * stat.f_frsize // 50)
    promised = 0
    for image in machines_dir.glob(f"*/{IMAGE_NAME}"):
        with contextlib.suppress(OSError):
            info = image.stat()
            promised += max(0, info.st_size - info.st_blocks * 512)
    return max(0, (free - reserve - promised) >> 20)


def _no_room(machines_dir: Path, wanted: int, room: int) -> str:
    return (
        f"not enough disk for a machine's {format_mib(wanted)} budget: the file system of "
        f"{machines_dir} has room for {format_mib(room)} (after a reserve for the host and the "
        "other machines' budgets);"
        " free some space or ask less with --disk SIZE"
    )


# The template.


def ensure_template(cache_dir: Path, size_mib: int) -> Path:
    """The empty ext4 image of ``size_mib`` that machines' disks are copied from, made once."""
    template = cache_dir / f"disk-v{TEMPLATE_VERSION}-{size_mib}M.img"
    if template.exists():
        return template
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
    if mkfs is None:
        raise AllocationError("mkfs.ext4 is needed for machines' disks: apt-get install e2fsprogs")
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, staging = tempfile.mkstemp(prefix=".disk-", suffix=".img", dir=cache_dir)
    try:
        os.ftruncate(fd, size_mib << 20)
        os.close(fd)
        made = subprocess.run([mkfs, *MKFS[1:], staging], capture_output=True, check=False)
        if made.returncode != 0:
            raise AllocationError(
                f"mkfs.ext4 failed: {made.stderr.decode(errors='replace').strip()[-300:]}"
            )
        os.rename(staging, template)
    except OSError as exc:
        raise AllocationError(f"cannot make the disk template {template}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staging)
    return template


def _copy_sparse(source: Path, dest: str) -> None:
    """Copy only the data of a sparse file (a few MiB of an empty file system)."""
    with open(source, "rb") as src, open(dest, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        os.ftruncate(dst.fileno(), size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                copied = os.copy_file_range(
                    src.fileno(), dst.fileno(), end - position, position, position
                )
                if copied == 0:
                    break
                position += copied
            offset = end


# Loop devices and mounts.


def _attach_loop(image: str) -> tuple[int, str]:
    """A free loop device bound to ``image`` (auto-clearing): its open descriptor and path."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    config = bytearray(_LOOP_CONFIG_SIZE)
    struct.pack_into("=II", config, 0, backing, 0)
    struct.pack_into("=I", config, _LO_FLAGS_OFFSET, _LO_FLAGS_AUTOCLEAR)
    try:
        for _ in range(64):  # another process may take the free device first
            number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
            name = f"/dev/loop{number}"
            device = os.open(name, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(device, _LOOP_CONFIGURE, bytes(config))
                return device, name
            except OSError as exc:
                os.close(device)
                if exc.errno != errno.EBUSY:
                    raise
        raise OSError(errno.EBUSY, "no free loop device", "/dev/loop-control")
    finally:
        os.close(control)
        os.close(backing)


def _mount(device: str, target: str) -> None:
    if _libc.mount(device.encode(), target.encode(), b"ext4", MOUNT_FLAGS, MOUNT_OPTIONS) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def unmount_below(path: Path) -> None:
    """Unmount every mount at or below ``path``, deepest first (a crashed runner's leftovers).

    A mount still busy (a process of the machine not yet reaped) is detached lazily.
    """
    root = str(path)
    points = [p for p in _mount_points() if p == root or p.startswith(root.rstrip("/") + "/")]
    for point in sorted(points, key=len, reverse=True):
        if _libc.umount2(point.encode(), 0) == 0:
            continue
        code = ctypes.get_errno()
        if code == errno.EBUSY and _libc.umount2(point.encode(), _MNT_DETACH) == 0:
            continue
        if code not in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point
            raise OSError(code, os.strerror(code), point)


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                points.append(_unescape(fields[4]))
    return points


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return (
        text.encode("utf-8", "surrogateescape")
        .decode("unicode_escape")
        .encode("latin-1")
        .decode("utf-8", "surrogateescape")
    )
