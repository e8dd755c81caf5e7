"""Incremental snapshots of a machine's writable host directories.

A sandbox machine's whole writable state is a few host directories (workspace, temp, home...).
``DirectorySnapshots`` keeps a linear history of *layers* over them. Layer 0 (the base) is the
state when tracking started, copied in full (normally a few empty directories). Layer N holds,
for each path that changed since layer N-1, its state at N: file content (copied with a reflink
where the filesystem can, else ``copy_file_range``), a symlink target, a directory or fifo with
its mode and mtime, or a tombstone. Which paths changed comes from recursive inotify watches
(``_inotify.Tracker``); when the kernel drops events, or cannot give more watches, a stat-based
rescan against the last manifest finds them instead. So a snapshot costs what changed, and so
does a restore: restoring K puts back only the paths that changed since K (the paths of layers
K+1..N plus those dirty now), each to the state found by looking back from layer K to 0.

History is linear: restoring K drops layers after K, and the next snapshot branches from K.
Snapshots live as long as the machine (metadata in memory, content under ``storage``); nothing
is fsync'ed, as a machine does not outlive a crash of its runner.

Precondition: nothing writes to the trees while a snapshot or restore runs (the runner takes
them between steps). Not captured: owners, xattrs/ACLs, atimes, sockets and device nodes (a
snapshot treats them as absent), and hard links (each name is restored as its own file).
inotify does not see writes through a shared ``mmap``, nor paths beyond ``PATH_MAX`` (those
make snapshots fail with a clear error until they are gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from vmrunner.errors import SnapshotError
from vmrunner.machines._inotify import Tracker, WatchLimit, walk
from vmrunner.machines.base import SnapshotId
from vmrunner.machines.identity import chown_tree

Tracking = Literal["inotify", "rescan"]

BASE_NAME = "base"
_FICLONE = 0x40049409
_CHUNK = 1 << 30
#: A file changed this recently when its stat was recorded might change again within the same
#: (coarse, a few ms) timestamp tick, unseen by a rescan; such records are always re-examined
#: ("racy git"). Only the rescan path relies on timestamps.
_RACY_NS = 20_000_000
_OWNER_RWX = 0o700


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    """One snapshot, and what taking it cost (bytes and files copied, paths recorded)."""

    id: SnapshotId
    name: str
    created: float
    bytes_stored: int
    files_copied: int
    paths: int
    #: Whether changes were found by a full rescan (inotify lost events or is unavailable).
    rescanned: bool


@dataclass(frozen=True, slots=True)
class RestoreInfo:
    """What a restore did: paths put back, and file bytes written."""

    id: SnapshotId
    paths: int
    files_written: int
    bytes_written: int
    rescanned: bool


@dataclass(frozen=True, slots=True)
class SnapshotStatistics:
    """The engine's state, for dashboards and tests."""

    tracking: Tracking
    watches: int
    pending_paths: int
    snapshots: int
    bytes_stored: int
    rescans: int


# An entry is a path's state in one layer; ``data`` is the blob path (files) or target (links).
_FILE, _DIR, _LINK, _FIFO, _ABSENT = "file", "dir", "symlink", "fifo", "absent"


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: str
    mode: int = 0
    mtime_ns: int = 0
    data: bytes = b""
    #: The owner (a machine's files belong to ids of its user namespace); -1: leave as made.
    uid: int = -1
    gid: int = -1


_GONE = _Entry(_ABSENT)


@dataclass(frozen=True, slots=True)
class _Record:
    """A path's state at the head snapshot, with the lstat seen then (for rescans)."""

    entry: _Entry
    st_mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    racy: bool

    def same(self, st: os.stat_result) -> bool:
        return not self.racy and (
            st.st_mode,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        ) == (
            self.st_mode,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.ino,
        )


def _record(entry: _Entry, st: os.stat_result) -> _Record:
    racy = st.st_ctime_ns >= time.time_ns() - _RACY_NS
    return _Record(
        entry,
        st.st_mode,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        racy,
    )


@dataclass(slots=True)
class _Layer:
    id: SnapshotId
    name: str
    created: float
    directory: bytes
    entries: dict[bytes, _Entry] = field(default_factory=dict)
    bytes_stored: int = 0
    files_copied: int = 0
    rescanned: bool = False

    def info(self) -> DirectorySnapshot:
        return DirectorySnapshot(
            self.id,
            self.name,
            self.created,
            self.bytes_stored,
            self.files_copied,
            len(self.entries),
            self.rescanned,
        )


_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError as exc:
        if exc.errno in _MISSING:
            return None
        raise


class _InTree:
    """``lstat`` of a path *in the trees*: none if one of its parents is not a directory.

    A plain lstat follows symlinks in the parents: ``a/b`` after ``a`` became a link to
    ``/elsewhere`` is not ours to record, nor to delete. Parents are checked once per instance,
    so use a fresh one after changing the trees (a restore checks a parent only once it has put
    it back: parents come first).
    """

    def __init__(self, roots: Iterable[bytes]) -> None:
        self._roots = frozenset(roots)
        self._dirs: dict[bytes, bool] = {b"/": False} | dict.fromkeys(self._roots, True)

    def lstat(self, path: bytes) -> os.stat_result | None:
        if path in self._roots or self.is_dir(_parent(path)):
            return _lstat(path)
        return None

    def is_dir(self, path: bytes) -> bool:
        unknown = []
        while path not in self._dirs:
            unknown.append(path)
            path = _parent(path)
        known = self._dirs[path]
        for path in reversed(unknown):
            if known:
                st = _lstat(path)
                known = st is not None and stat.S_ISDIR(st.st_mode)
            self._dirs[path] = known
        return known


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"/"


def _depth_key(path: bytes) -> list[bytes]:
    return path.split(b"/")


class DirectorySnapshots:
    """Snapshots of named host directories (``roots``), with content kept under ``storage``.

    Use ``async with DirectorySnapshots(roots, storage) as engine`` (or ``await start()`` and
    ``await aclose()``), starting it before anything writes to the roots: the state at start is
    the base snapshot. ``tracking="rescan"`` skips inotify and finds changes by stat-ing every
    path at each snapshot (the fallback, also used to check the inotify path in tests).
    ``follow=False`` reads inotify events only when a snapshot or restore needs them, instead
    of in a background thread as they come (cheaper while the machine runs, but a step with
    more changes than the kernel queue holds then costs a rescan).
    """

    def __init__(
        self,
        roots: Mapping[str, str | os.PathLike[str]],
        storage: str | os.PathLike[str],
        *,
        tracking: Tracking = "inotify",
        follow: bool = True,
    ) -> None:
        if not roots:
            raise SnapshotError("no directories to snapshot")
        self._roots = {name: os.fsencode(os.path.realpath(path)) for name, path in roots.items()}
        self._storage = os.fsencode(os.path.realpath(storage))
        self._check_layout()
        self._tracking: Tracking = tracking
        self._follow = follow
        self._lock = threading.RLock()
        self._tracker: Tracker | None = None
        self._manifest: dict[bytes, _Record] = {}
        self._children: dict[bytes, set[bytes]] = {}
        #: Recorded regular files by (device, inode): a write through one hard link is seen
        #: (by inotify) under that name only.
        self._inodes: dict[tuple[int, int], set[bytes]] = {}
        self._layers: list[_Layer] = []
        self._ids = itertools.count()
        self._blobs = itertools.count()
        self._rescans = 0
        self._started = False
        self._closed = False

    # Public, async: blocking work runs in a thread; the lock serialises it.

    async def __aenter__(self) -> DirectorySnapshots:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self, name: str = BASE_NAME) -> SnapshotId:
        """Begin tracking; the current state becomes the base snapshot, whose id is returned."""
        return await asyncio.to_thread(self.start_sync, name)

    async def snapshot(self, name: str = "") -> SnapshotId:
        """Record what changed since the previous snapshot as a new snapshot."""
        info = await asyncio.to_thread(self.snapshot_sync, name)
        return info.id

    async def restore(self, snapshot_id: SnapshotId) -> RestoreInfo:
        """Bring the roots back exactly to ``snapshot_id``; later snapshots are dropped."""
        return await asyncio.to_thread(self.restore_sync, snapshot_id)

    async def aclose(self) -> None:
        """Stop tracking (storage is kept); idempotent and safe to cancel."""
        await asyncio.shield(asyncio.to_thread(self.close))

    async def delete(self) -> None:
        """Stop tracking and remove every stored snapshot."""
        await asyncio.shield(asyncio.to_thread(self.delete_sync))

    # These two never wait for a snapshot or restore in progress (no lock: copies are atomic).

    def list(self) -> list[DirectorySnapshot]:
        """Every snapshot of the current history, oldest (the base) first."""
        return [layer.info() for layer in self._layers.copy()]

    def statistics(self) -> SnapshotStatistics:
        tracker = self._tracker
        layers = self._layers.copy()
        return SnapshotStatistics(
            tracking=self._tracking,
            watches=tracker.watches if tracker is not None else 0,
            pending_paths=len(tracker.dirty) if tracker is not None else 0,
            snapshots=len(layers),
            bytes_stored=sum(layer.bytes_stored for layer in layers),
            rescans=self._rescans,
        )

    # Synchronous core.

    def start_sync(self, name: str = BASE_NAME) -> SnapshotId:
        with self._lock:
            if self._started:
                raise SnapshotError("snapshot tracking is already started")
            self._started = True
            try:
                os.makedirs(self._storage, mode=_OWNER_RWX, exist_ok=True)
                if self._tracking == "inotify":
                    self._tracker = Tracker(list(self._roots.values()), self._lock)
                    try:
                        self._tracker.start(follow=self._follow)
                    except WatchLimit:
                        self._degrade()
                base = self._new_layer(name)
                for root in self._roots.values():
                    for path, st in walk(root):
                        entry = self._capture(base, path, st, content=True)
                        if entry is not None:
                            base.entries[path] = entry
                            self._set_record(path, entry, st)
                self._layers.append(base)
            except OSError as exc:
                self.close()
                raise SnapshotError(f"cannot start snapshots: {exc}") from exc
            return base.id

    def snapshot_sync(self, name: str = "") -> DirectorySnapshot:
        with self._lock:
            self._check_open()
            tree = self._tree()
            dirty, rescanned = self._collect(tree)
            layer = self._new_layer(name)
            layer.rescanned = rescanned
            seen: list[tuple[bytes, _Entry, os.stat_result | None]] = []
            try:
                for path in sorted(dirty):
                    st = tree.lstat(path)
                    entry = self._capture(layer, path, st, content=dirty[path])
                    if entry is None:
                        continue
                    previous = self._manifest.get(path)
                    if previous is None or previous.entry != entry:
                        layer.entries[path] = entry
                    seen.append((path, entry, st))
            except OSError as exc:
                # Nothing recorded: what changed stays dirty for the next attempt.
                if self._tracker is not None:
                    self._tracker.dirty.update(dirty)
                with contextlib.suppress(OSError):
                    self._remove_tree(layer.directory)
                raise SnapshotError(f"cannot take snapshot {name!r}: {exc}") from exc
            if self._tracker is not None:
                self._tracker.dirty.clear()
            self._layers.append(layer)
            for path, entry, st in seen:
                self._set_record(path, entry, st)
            return layer.info()

    def restore_sync(self, snapshot_id: SnapshotId) -> RestoreInfo:
        with self._lock:
            self._check_open()
            index = self._index(snapshot_id)
            dirty, rescanned = self._collect(self._tree())
            changed = set(dirty)
            for layer in self._layers[index + 1 :]:
                changed.update(layer.entries)
            targets = {path: self._lookup(path, index) for path in changed}
            applier = _Applier(self._tracker, self._tree())
            try:
                applier.apply(targets)
            except OSError as exc:
                # Half restored: the head is still the last snapshot, and every path we may
                # have touched is dirty (a rescan finds them by their new ctime anyway).
                if self._tracker is not None:
                    self._tracker.dirty.update(dict.fromkeys(changed, True))
                raise SnapshotError(f"cannot restore snapshot {snapshot_id}: {exc}") from exc
            finally:
                if self._tracker is not None:
                    self._tracker.discard()
            if self._tracker is not None:
                self._tracker.dirty.clear()
            dropped = self._layers[index + 1 :]
            del self._layers[index + 1 :]
            for layer in dropped:
                # Left-overs would only cost space until delete() removes all storage.
                with contextlib.suppress(OSError):
                    self._remove_tree(layer.directory)
            with _failing_as(f"cannot restore snapshot {snapshot_id}"):
                tree = self._tree()
                for path, entry in targets.items():
                    self._set_record(path, entry, tree.lstat(path))
            return RestoreInfo(
                snapshot_id, len(targets), applier.files_written, applier.bytes_written, rescanned
            )

    def export_sync(self, snapshot_id: SnapshotId, dest: str | os.PathLike[str]) -> int:
        """Write the trees as they were at ``snapshot_id`` to ``dest/<root name>/``; files written.

        ``dest`` must not exist (it is created): an export is a plain copy that outlives this
        engine, e.g. to seed another machine (``import_trees``).
        """
        with self._lock:
            self._check_open()
            index = self._index(snapshot_id)
            target = os.fsencode(os.path.abspath(dest))
            with _failing_as(f"cannot export snapshot {snapshot_id} to {os.fsdecode(target)}"):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.mkdir(target, _OWNER_RWX)
                moved: dict[bytes, _Entry] = {}
                known = set(
                    itertools.chain.from_iterable(
                        layer.entries for layer in self._layers[: index + 1]
                    )
                )
                for name, root in self._roots.items():
                    into = os.path.join(target, os.fsencode(name))
                    os.mkdir(into, _OWNER_RWX)
                    for path in known:
                        if path == root or path.startswith(root + b"/"):
                            entry = self._lookup(path, index)
                            if entry.kind != _ABSENT:
                                moved[into + path[len(root) :]] = entry
                applier = _Applier(None, _InTree([target]))
                applier.apply(moved)
                return applier.files_written

    def close(self) -> None:
        """Stop tracking and free the inotify instance and its thread; idempotent.

        Waits for a snapshot or restore still running in its thread (a cancelled one).
        """
        tracker = self._tracker
        if tracker is not None:
            tracker.close()  # joins its thread before taking the lock
        with self._lock:
            self._tracker = None
            self._closed = True

    def delete_sync(self) -> None:
        self.close()
        with self._lock:
            self._layers.clear()
            self._manifest.clear()
            self._children.clear()
            self._inodes.clear()
            try:
                self._remove_tree(self._storage)
            except OSError as exc:
                raise SnapshotError(
                    f"cannot remove snapshots in {os.fsdecode(self._storage)}: {exc}"
                ) from exc

    # Finding what changed.

    def _tree(self) -> _InTree:
        return _InTree(self._roots.values())

    def _collect(self, tree: _InTree) -> tuple[dict[bytes, bool], bool]:
        """Every path that may differ from the head snapshot (value: content may differ)."""
        with _failing_as("cannot find what changed"):
            tracker = self._tracker
            try:
                if tracker is not None:
                    tracker.drain()
                    if tracker.overflowed:
                        tracker.rewatch()
            except WatchLimit:
                self._degrade()
            tracker = self._tracker
            dirty = dict(tracker.dirty) if tracker is not None else {}
            rescanned = tracker is None or tracker.overflowed
            if rescanned:
                self._rescans += 1
                self._rescan(dirty)
            if tracker is not None:
                tracker.overflowed = False
            self._expand_vanished(dirty, tree)
            self._expand_links(dirty, tree)
            return dirty, rescanned

    def _rescan(self, dirty: dict[bytes, bool]) -> None:
        seen: set[bytes] = set()
        for root in self._roots.values():
            for path, st in walk(root):
                seen.add(path)
                record = self._manifest.get(path)
                if record is None or not record.same(st):
                    dirty[path] = True
        for path in self._manifest.keys() - seen:
            dirty[path] = True

    def _expand_vanished(self, dirty: dict[bytes, bool], tree: _InTree) -> None:
        """A directory moved away or replaced takes its recorded descendants with it."""
        stack = [path for path in dirty if self._is_replaced_dir(path, tree)]
        while stack:
            path = stack.pop()
            for name in self._children.get(path, ()):
                child = path + b"/" + name
                dirty[child] = True
                stack.append(child)

    def _expand_links(self, dirty: dict[bytes, bool], tree: _InTree) -> None:
        """A file with several names changes under all of them."""
        for path in list(dirty):
            record = self._manifest.get(path)
            keys = []
            if record is not None and record.entry.kind == _FILE and record.nlink > 1:
                keys.append((record.dev, record.ino))
            st = tree.lstat(path)
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                keys.append((st.st_dev, st.st_ino))
            for key in keys:
                for other in self._inodes.get(key, ()):
                    dirty[other] = True

    def _is_replaced_dir(self, path: bytes, tree: _InTree) -> bool:
        record = self._manifest.get(path)
        if record is None or record.entry.kind != _DIR:
            return False
        st = tree.lstat(path)
        return st is None or not stat.S_ISDIR(st.st_mode) or st.st_ino != record.ino

    def _degrade(self) -> None:
        """inotify cannot follow these trees: find changes by rescanning from now on."""
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
        self._tracking = "rescan"

    # Recording states.

    def _new_layer(self, name: str) -> _Layer:
        number = next(self._ids)
        directory = self._storage + b"/" + str(number).encode()
        try:
            os.mkdir(directory, _OWNER_RWX)
        except OSError as exc:
            raise SnapshotError(f"cannot create snapshot storage: {exc}") from exc
        return _Layer(f"snap-{number}", name, time.time(), directory)

    def _capture(
        self, layer: _Layer, path: bytes, st: os.stat_result | None, content: bool
    ) -> _Entry | None:
        """``path``'s state now (its content stored in ``layer``); None if it is no news."""
        previous = self._manifest.get(path)
        if st is None:
            return _GONE if previous is not None else None
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            data = self._keep_blob(previous, st) if not content else None
            if data is None:
                data = layer.directory + b"/" + str(next(self._blobs)).encode()
                copied = _copy_file(path, data)
                layer.bytes_stored += copied
                layer.files_copied += 1
            entry = _Entry(_FILE, mode, st.st_mtime_ns, data, st.st_uid, st.st_gid)
        elif stat.S_ISDIR(st.st_mode):
            entry = _Entry(_DIR, mode, st.st_mtime_ns, b"", st.st_uid, st.st_gid)
        elif stat.S_ISLNK(st.st_mode):
            entry = _Entry(_LINK, mode, st.st_mtime_ns, os.readlink(path), st.st_uid, st.st_gid)
        elif stat.S_ISFIFO(st.st_mode):
            entry = _Entry(_FIFO, mode, st.st_mtime_ns, b"", st.st_uid, st.st_gid)
        else:
            return _GONE if previous is not None else None
        return entry

    @staticmethod
    def _keep_blob(previous: _Record | None, st: os.stat_result) -> bytes | None:
        """The stored content, when only attributes changed (same inode, same size)."""
        if previous is None or previous.entry.kind != _FILE:
            return None
        if (previous.ino, previous.size) != (st.st_ino, st.st_size):
            return None
        return previous.entry.data

    def _set_record(self, path: bytes, entry: _Entry, st: os.stat_result | None) -> None:
        parent, _, name = path.rpartition(b"/")
        old = self._manifest.pop(path, None)
        if old is not None and old.entry.kind == _FILE:
            self._inodes[old.dev, old.ino].discard(path)
        if entry.kind == _ABSENT or st is None:
            if old is not None:
                self._children.get(parent, set()).discard(name)
            self._children.pop(path, None)
            return
        if old is None and path not in self._roots.values():
            self._children.setdefault(parent, set()).add(name)
        self._manifest[path] = _record(entry, st)
        if entry.kind == _FILE:
            self._inodes.setdefault((st.st_dev, st.st_ino), set()).add(path)

    def _lookup(self, path: bytes, index: int) -> _Entry:
        for layer in reversed(self._layers[: index + 1]):
            entry = layer.entries.get(path)
            if entry is not None:
                return entry
        return _GONE

    def _index(self, snapshot_id: SnapshotId) -> int:
        for index, layer in enumerate(self._layers):
            if layer.id == snapshot_id:
                return index
        known = ", ".join(layer.id for layer in self._layers) or "none"
        raise SnapshotError(f"unknown snapshot {snapshot_id!r} (known: {known})")

    def _check_open(self) -> None:
        if self._closed:
            raise SnapshotError("the snapshot engine is closed")
        if not self._started:
            raise SnapshotError("the snapshot engine is not started")

    def _check_layout(self) -> None:
        paths = [*self._roots.values(), self._storage]
        for path in self._roots.values():
            if not os.path.isdir(path):
                raise SnapshotError(f"cannot snapshot {os.fsdecode(path)}: not a directory")
        for a, b in itertools.permutations(paths, 2):
            if a == b or b.startswith(a + b"/"):
                raise SnapshotError(
                    f"snapshot directories must not overlap: {os.fsdecode(a)} contains "
                    f"{os.fsdecode(b)}"
                )

    @staticmethod
    def _remove_tree(path: bytes) -> None:
        _remove(path)


@contextlib.contextmanager
def _failing_as(message: str) -> Iterator[None]:
    """Map an ``OSError`` to ``SnapshotError``, at the boundary."""
    try:
        yield
    except OSError as exc:
        raise SnapshotError(f"{message}: {exc}") from exc


def _own(path: bytes, entry: _Entry) -> None:
    """Give ``path`` back its recorded owner (a runner that is not root keeps its own).

    A change of owner clears the set-user-id and set-group-id bits: the mode goes back on after.
    """
    if entry.uid < 0:
        return
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) == (entry.uid, entry.gid):
        return
    with contextlib.suppress(PermissionError):
        os.lchown(path, entry.uid, entry.gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, entry.mode)


def import_trees(
    source: str | os.PathLike[str], roots: Mapping[str, str | os.PathLike[str]]
) -> None:
    """Replace the content of each root with ``source/<name>/`` (an ``export_sync``), copying."""
    with _failing_as(f"cannot import the snapshot in {os.fspath(source)}"):
        for name, root in roots.items():
            origin = os.path.join(os.fspath(source), name)
            if not os.path.isdir(origin):
                raise SnapshotError(f"{origin}: not an exported snapshot (no {name}/)")
            with os.scandir(root) as entries:
                for entry in entries:
                    _remove(os.fsencode(entry.path))
            owner = os.lstat(root)
            shutil.copytree(
                origin, root, symlinks=True, dirs_exist_ok=True, copy_function=_copy_preserving
            )
            shutil.copystat(origin, root)
            # What the machine wrote belongs to the machine's own user again (a runner that is
            # not root cannot give it, and keeps its own).
            with contextlib.suppress(PermissionError):
                chown_tree(os.fspath(root), owner.st_uid, owner.st_gid)


def _copy_preserving(source: str, dest: str) -> None:
    _copy_file(os.fsencode(source), os.fsencode(dest))
    shutil.copystat(source, dest, follow_symlinks=False)


def _copy_file(source: bytes, dest: bytes) -> int:
    """Copy a regular file's content (reflink when possible); returns the bytes copied."""
    with (
        _opened(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK) as src,
        _opened(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) as dst,
    ):
        return _copy_fd(src, dst)


def _copy_fd(src: int, dst: int) -> int:
    """Copy from ``src``'s offset to EOF: a reflink where the filesystem shares extents."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(dst, _FICLONE, src)
        return os.fstat(src).st_size
    total = 0
    while True:
        try:
            copied = os.copy_file_range(src, dst, _CHUNK)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            return total + _copy_plain(src, dst)
        if copied == 0:
            return total
        total += copied


def _copy_plain(src: int, dst: int) -> int:
    total = 0
    while chunk := os.read(src, 1 << 20):
        os.write(dst, chunk)
        total += len(chunk)
    return total


@contextlib.contextmanager
def _opened(path: bytes, flags: int, mode: int = 0o600) -> Iterator[int]:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, mode)
    except PermissionError:
        # Not root, and the file (or a directory) has no owner permission: lend it one.
        with _owner_access(path if flags & os.O_ACCMODE == os.O_RDONLY else _parent(path)):
            fd = os.open(path, flags | os.O_CLOEXEC, mode)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _owner_access(path: bytes) -> Iterator[None]:
    st = os.lstat(path)
    os.chmod(path, stat.S_IMODE(st.st_mode) | _OWNER_RWX)
    try:
        yield
    finally:
        os.chmod(path, stat.S_IMODE(st.st_mode))


def _remove(path: bytes) -> None:
    """Remove a file or a whole tree, even through directories without write permission."""
    st = _lstat(path)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    stack = [path]
    while stack:
        directory = stack[-1]
        if stat.S_IMODE(os.lstat(directory).st_mode) & _OWNER_RWX != _OWNER_RWX:
            os.chmod(directory, _OWNER_RWX)
        subdirs = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                else:
                    os.unlink(entry.path)
        if subdirs:
            stack.extend(subdirs)
        else:
            os.rmdir(stack.pop())


class _Applier:
    """Puts paths back to recorded states: parents before children, then directory attributes.

    New directories get owner permissions while they are filled and their recorded mode at the
    end; an existing directory without write permission is lent it and given back. Directory
    mtimes are set last, since filling a directory changes its mtime; so is the mtime of a
    directory that is not restored itself but whose entries were replaced.
    """

    def __init__(self, tracker: Tracker | None, tree: _InTree) -> None:
        self._tracker = tracker
        self._tree = tree
        self._parents: dict[bytes, os.stat_result] = {}
        self._dirs: dict[bytes, _Entry] = {}
        self.files_written = 0
        self.bytes_written = 0

    def apply(self, targets: Mapping[bytes, _Entry]) -> None:
        try:
            for path in sorted(targets, key=_depth_key):
                self._put(path, targets[path])
        finally:
            self._finish_dirs()

    def _put(self, path: bytes, target: _Entry) -> None:
        st = self._tree.lstat(path)
        if target.kind == _ABSENT:
            if st is not None:
                self._writable(_parent(path), lambda: _remove(path))
            return
        if target.kind == _DIR and st is not None and stat.S_ISDIR(st.st_mode):
            self._dirs[path] = target
            return
        if st is not None:
            self._writable(_parent(path), lambda: _remove(path))
        elif not self._tree.is_dir(_parent(path)):
            # Parents come first, so this cannot happen; never create through a symlink.
            raise NotADirectoryError(errno.ENOTDIR, "parent is not a directory", path)
        self._writable(_parent(path), lambda: self._create(path, target))

    def _create(self, path: bytes, target: _Entry) -> None:
        self._make(path, target)
        _own(path, target)

    def _make(self, path: bytes, target: _Entry) -> None:
        if target.kind == _DIR:
            os.mkdir(path, _OWNER_RWX)
            self._dirs[path] = target
            if self._tracker is not None:
                self._tracker.watch_tree(path)
        elif target.kind == _FILE:
            self._create_file(path, target)
        elif target.kind == _LINK:
            os.symlink(target.data, path)
            os.utime(path, ns=(target.mtime_ns, target.mtime_ns), follow_symlinks=False)
        elif target.kind == _FIFO:
            os.mkfifo(path, 0o600)
            os.chmod(path, target.mode)
            os.utime(path, ns=(target.mtime_ns, target.mtime_ns))

    def _create_file(self, path: bytes, target: _Entry) -> None:
        with open(target.data, "rb") as blob:
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                self.bytes_written += _copy_fd(blob.fileno(), fd)
                os.fchmod(fd, target.mode)
                os.utime(fd, ns=(target.mtime_ns, target.mtime_ns))
            finally:
                os.close(fd)
        self.files_written += 1

    def _writable(self, directory: bytes, change: Callable[[], None]) -> None:
        """Change an entry of ``directory``, lending it write permission if it lacks it."""
        st = self._parents.get(directory)
        if st is None:
            st = self._parents[directory] = os.lstat(directory)
        try:
            change()
        except PermissionError:
            if stat.S_IMODE(os.lstat(directory).st_mode) & _OWNER_RWX == _OWNER_RWX:
                raise
            os.chmod(directory, stat.S_IMODE(st.st_mode) | _OWNER_RWX)
            change()

    def _finish_dirs(self) -> None:
        for path, st in self._parents.items():
            if path not in self._dirs:
                self._dirs[path] = _Entry(_DIR, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        for path in sorted(self._dirs, key=_depth_key, reverse=True):
            entry = self._dirs[path]
            with contextlib.suppress(FileNotFoundError):
                _own(path, entry)
                os.chmod(path, entry.mode)
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
