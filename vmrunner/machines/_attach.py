"""Attach a container's root file system to a running machine (a stdlib-only helper).

Run as root by the sandbox provider (``python3 -I -S _attach.py REQUEST``; REQUEST is JSON), in
a process of its own: joining another mount namespace needs a process with one thread.

1. An overlay of the image (``lower``, the shared read-only cache) under ``upper``/``work`` (on
   the machine's disk) is made as a *detached* mount (``fsopen``/``fsmount``): it never appears
   in the host's mount table, so nothing of it can outlive the machine.
2. The mount points the container needs are made in it, owned by the machine's root.
3. The helper joins the mount namespace of the machine's process ``pid`` and moves the overlay
   to ``target`` there; then clones the machine's own ``/dev``, ``/proc`` and each of ``binds``
   (``[machine path, place in the container, "file" or "dir"]``: the workspace...) onto
   their places in the container; those of kind "copy" (``/etc/hosts``...) are copied into
   the container's upper layer instead (bubblewrap's data files cannot be mounted again).

The mounts live in the machine's namespace only: when its last process is gone, the kernel
drops them all. Exit status 0, or 1 with the reason on stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

_NR = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432}
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x2, 0x4
_OPEN_TREE_CLONE, _AT_RECURSIVE, _AT_FDCWD = 1, 0x8000, -100
_MOVE_MOUNT_F_EMPTY_PATH, _CLONE_NEWNS = 0x4, 0x20000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _call(what: str, *args: object) -> int:
    result = int(_libc.syscall(_NR[what], *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _overlay(lower: str, upper: str, work: str) -> int:
    fs = _call("fsopen", b"overlay", 1)
    try:
        for key, value in (("lowerdir", lower), ("upperdir", upper), ("workdir", work)):
            _call("fsconfig", fs, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
        _call("fsconfig", fs, _FSCONFIG_CMD_CREATE, None, None, 0)
        return _call("fsmount", fs, 1, _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV)
    finally:
        os.close(fs)


def _point(path: str, owner: int, *, is_file: bool) -> None:
    """A mount point at ``path`` (a link there is replaced: it must not lead out)."""
    if os.path.islink(path) or (os.path.exists(path) and os.path.isdir(path) == is_file):
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if is_file and not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    elif not is_file:
        os.makedirs(path, mode=0o755, exist_ok=True)
    os.lchown(path, owner, owner)


def _move(fd: int, target: str) -> None:
    try:
        _call("move_mount", fd, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (to {target})") from None


def attach(request: dict[str, object]) -> None:
    owner = int(str(request["owner"]))
    wanted = [(str(a), str(b), str(c)) for a, b, c in request.get("binds", [])]  # type: ignore[attr-defined]
    binds = [("/dev", "/dev", "dir"), ("/proc", "/proc", "dir")]
    binds += [bind for bind in wanted if bind[2] != "copy"]
    copies = [(source, place) for source, place, kind in wanted if kind == "copy"]
    mount = _overlay(str(request["lower"]), str(request["upper"]), str(request["work"]))
    inside = f"/proc/self/fd/{mount}"
    os.lchown(inside, owner, owner)
    for _, place, kind in binds:
        _point(inside + place, owner, is_file=kind == "file")
    for _, place in copies:
        _point(inside + place, owner, is_file=True)
    namespace = os.open(f"/proc/{int(str(request['pid']))}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if _libc.setns(namespace, _CLONE_NEWNS) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")
    os.chdir("/")
    for source, place in copies:  # the machine's file, as the container's own
        with open(source, "rb") as file:
            data = file.read()
        fd = os.open(place.lstrip("/"), os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, dir_fd=mount)
        with open(fd, "wb") as file:
            file.write(data)
    target = str(request["target"])
    # The machine's file systems know only its ids: make its folders as the owner of the one
    # that holds them (its /run).
    parent = os.stat(os.path.dirname(os.path.dirname(target)))
    _libc.setfsgid(parent.st_gid)
    _libc.setfsuid(parent.st_uid)
    os.makedirs(target, mode=0o755, exist_ok=True)
    _move(mount, target)
    for source, place, _ in binds:
        tree = _call(
            "open_tree", _AT_FDCWD, source.encode(),
            _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC,
        )  # fmt: skip
        _move(tree, target + place)
        os.close(tree)


def main(argv: list[str]) -> int:
    try:
        attach(json.loads(argv[0]))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"cannot attach the container's root: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
