"""A minimal Linux inotify binding (ctypes on libc), with bytes paths throughout.

Our own few lines rather than a PyPI wrapper: we need bytes paths (names need not be UTF-8),
non-blocking reads, the raw event masks, and strict typing; that is all inotify is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")
PATH_MAX = 4096
_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class Event:
    """One inotify event; ``name`` is empty for events about the watched directory itself."""

    wd: int
    mask: int
    cookie: int
    name: bytes


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    lib.inotify_init1.argtypes = [ctypes.c_int]
    lib.inotify_init1.restype = ctypes.c_int
    lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    lib.inotify_add_watch.restype = ctypes.c_int
    lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.inotify_rm_watch.restype = ctypes.c_int
    return lib


_LIBC: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    return _LIBC


def _check(result: int, what: str, path: bytes = b"") -> int:
    if result < 0:
        code = ctypes.get_errno()
        if path:
            raise OSError(code, f"{what}: {os.strerror(code)}", os.fsdecode(path))
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


class Inotify:
    """One non-blocking, close-on-exec inotify instance; ``close()`` is idempotent."""

    def __init__(self) -> None:
        self.fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def add_watch(self, path: bytes, mask: int) -> int:
        """Watch ``path`` (returns the existing descriptor if its inode is already watched)."""
        return _check(_lib().inotify_add_watch(self.fd, path, mask), "inotify_add_watch", path)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; a watch the kernel already dropped is not an error."""
        if _lib().inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            _check(-1, "inotify_rm_watch")

    def read(self) -> Iterator[Event]:
        """Every event queued now (never blocks)."""
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                yield Event(wd, mask, cookie, name)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


#: What a tracked directory reports: every change to its entries, plus its own attributes.
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
_CONTENT = IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_ENTRIES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def walk(
    top: bytes, before_listing: Callable[[bytes], None] | None = None
) -> Iterator[tuple[bytes, os.stat_result]]:
    """``top`` and everything below it with its lstat, without following symlinks.

    ``before_listing(dir)`` runs before each directory is read: adding a watch there first means
    an entry created meanwhile shows up in the listing, in an event, or both (never neither).
    Entries that vanish while walking are skipped.
    """
    try:
        st = os.lstat(top)
    except OSError as exc:
        if exc.errno in _GONE:
            return
        raise
    yield top, st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [top]
    while stack:
        directory = stack.pop()
        if before_listing is not None:
            before_listing(directory)
        try:
            entries = os.scandir(directory)
        except OSError as exc:
            if exc.errno in _GONE:
                continue
            raise
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield entry.path, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)


class WatchLimit(Exception):
    """inotify cannot follow these trees (no instance or no watch left): rescan instead."""


class Tracker:
    """Which paths under some roots changed, from recursive inotify watches.

    The dirty set maps a path to whether its *content* may have changed (False: attributes only).
    It over-approximates on purpose: a path marked dirty that did not change costs one lstat.
    A background thread drains the queue while machines run, so the kernel's queue rarely
    overflows and new directories get watched (and scanned, for entries created before the
    watch) as they appear. ``overflowed`` says events were lost: the caller must rescan.
    Every method takes ``lock``, which the caller also holds around its own work on the trees.
    """

    def __init__(self, roots: list[bytes], lock: threading.RLock) -> None:
        self._roots = roots
        self._lock = lock
        self._inotify: Inotify | None = None
        self._wd_paths: dict[int, bytes] = {}
        self._path_wds: dict[bytes, int] = {}
        self._detached: list[int] = []
        self.dirty: dict[bytes, bool] = {}
        self.overflowed = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1

    @property
    def watches(self) -> int:
        return len(self._wd_paths)

    def start(self, follow: bool = True) -> None:
        """Watch every directory of the roots; raises ``WatchLimit``.

        With ``follow``, a thread drains events as they come; else only ``drain()`` does.
        """
        with self._lock:
            try:
                self._inotify = Inotify()
            except OSError as exc:
                raise WatchLimit(str(exc)) from exc
            try:
                self.rewatch()
            except WatchLimit:
                self.close()
                raise
        if not follow:
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._follow, name="snapshot-tracker", daemon=True)
        self._thread.start()

    def rewatch(self) -> None:
        """(Re)watch every directory now present, dropping watches on ones that are gone."""
        with self._lock:
            old = set(self._wd_paths)
            self._wd_paths.clear()
            self._path_wds.clear()
            for root in self._roots:
                for _ in walk(root, self._watch):
                    pass
            if self._inotify is not None:
                for wd in old - set(self._wd_paths):
                    self._inotify.rm_watch(wd)

    def watch_tree(self, top: bytes) -> None:
        """Watch a directory tree the caller created itself (its changes are not dirt)."""
        with self._lock:
            for _ in walk(top, self._watch):
                pass

    def drain(self) -> None:
        """Fold every queued event into the dirty set."""
        with self._lock:
            if self._inotify is None:
                return
            for event in self._inotify.read():
                try:
                    self._absorb(event)
                except OSError:
                    # An entry we cannot examine (a path beyond PATH_MAX...): the caller's
                    # rescan examines everything, and reports what it cannot read.
                    self.overflowed = True
            self._drop_detached()

    def discard(self) -> None:
        """Forget every queued event: the caller made those changes and knows the result."""
        with self._lock:
            if self._inotify is None:
                return
            for event in self._inotify.read():
                if event.mask & IN_IGNORED:
                    self._forget(event.wd)

    def close(self) -> None:
        """Stop following and free the inotify instance; idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            os.write(self._wake_w, b"x")
            if thread is not threading.current_thread():
                thread.join()
        with self._lock:
            if self._inotify is not None:
                self._inotify.close()
                self._inotify = None
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
            self._wd_paths.clear()
            self._path_wds.clear()

    def _follow(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        poller = select.poll()
        poller.register(inotify.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                return
            try:
                self.drain()
            except (OSError, WatchLimit):
                # Whatever went wrong, the next snapshot must not trust the events.
                with self._lock:
                    self.overflowed = True
                return

    def _watch(self, directory: bytes) -> None:
        if self._inotify is None:
            return
        try:
            wd = self._inotify.add_watch(directory, WATCH_MASK)
        except OSError as exc:
            if exc.errno in _GONE:
                return
            if exc.errno != errno.ENOSPC and exc.errno != errno.ENOMEM:
                raise
            raise WatchLimit(f"cannot watch {os.fsdecode(directory)}: {exc.strerror}") from exc
        stale = self._path_wds.get(directory)
        if stale is not None and stale != wd:
            self._wd_paths.pop(stale, None)
        previous = self._wd_paths.get(wd)
        if previous is not None and previous != directory:
            self._path_wds.pop(previous, None)
        self._wd_paths[wd] = directory
        self._path_wds[directory] = wd

    def _forget(self, wd: int) -> None:
        path = self._wd_paths.pop(wd, None)
        if path is not None and self._path_wds.get(path) == wd:
            del self._path_wds[path]

    def _mark(self, path: bytes, content: bool) -> None:
        if len(path) >= PATH_MAX:
            self.overflowed = True  # not a path we can name: let a rescan deal with it
            return
        self.dirty[path] = self.dirty.get(path, False) or content

    def _absorb(self, event: Event) -> None:
        mask = event.mask
        if mask & IN_Q_OVERFLOW:
            self.overflowed = True
            return
        if mask & IN_IGNORED:
            self._forget(event.wd)
            return
        directory = self._wd_paths.get(event.wd)
        if directory is None:
            return
        if not event.name:
            if mask & IN_ATTRIB:
                self._mark(directory, False)
            elif mask & (IN_DELETE_SELF | IN_MOVE_SELF) and directory in self._roots:
                self.overflowed = True
            return
        path = directory + b"/" + event.name
        self._mark(path, bool(mask & _CONTENT))
        if mask & _ENTRIES:
            self._mark(directory, False)
        if mask & IN_ISDIR:
            if mask & IN_MOVED_FROM:
                self._detach(path)
            elif mask & (IN_CREATE | IN_MOVED_TO):
                for child, _ in walk(path, self._watch):
                    self._mark(child, True)

    def _detach(self, top: bytes) -> None:
        """A watched tree moved away: its watches no longer name paths under ``top``."""
        prefix = top + b"/"
        for path, wd in list(self._path_wds.items()):
            if path == top or path.startswith(prefix):
                self._forget(wd)
                self._detached.append(wd)

    def _drop_detached(self) -> None:
        # A tree moved within the roots was re-watched (same descriptors) by its IN_MOVED_TO;
        # one moved out of the roots is no longer ours to follow.
        if self._inotify is not None:
            for wd in self._detached:
                if wd not in self._wd_paths:
                    self._inotify.rm_watch(wd)
        self._detached.clear()
