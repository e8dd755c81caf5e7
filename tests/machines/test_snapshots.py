"""Snapshots of real directories: exactness against an independent tree listing, and cost."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vmrunner.config import ensure_home
from vmrunner.errors import SnapshotError
from vmrunner.machines.snapshots import DirectorySnapshots

Listing = dict[bytes, tuple]


def listing(roots: dict[str, Path]) -> Listing:
    """Everything under the roots: type, mode, mtime and content hash or link target."""
    tree: Listing = {}
    for name, root in roots.items():
        top = os.fsencode(root)
        for dirpath, dirnames, filenames in os.walk(top):
            for entry in [b"", *dirnames, *filenames]:
                path = os.path.join(dirpath, entry) if entry else dirpath
                info = os.lstat(path)
                key = name.encode() + b":" + os.path.relpath(path, top)
                if stat.S_ISREG(info.st_mode):
                    with open(path, "rb") as file:
                        what: object = hashlib.sha256(file.read()).hexdigest()
                elif stat.S_ISLNK(info.st_mode):
                    what = os.readlink(path)
                else:
                    what = None
                tree[key] = (
                    stat.S_IFMT(info.st_mode),
                    stat.S_IMODE(info.st_mode),
                    info.st_mtime_ns,
                    what,
                )
    return tree


def make_roots(base: Path) -> dict[str, Path]:
    roots = {"workspace": base / "workspace", "tmp": base / "tmp"}
    for path in roots.values():
        path.mkdir()
    return roots


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# The state machine works on a tiny namespace so operations collide: replace, rename over, etc.
NAMES = [b"a", b"b", b"\xff-not-utf8"]
ROOTS = ["workspace", "tmp"]
rel_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(b"/".join)
contents = st.binary(max_size=64)
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o4755])
dir_modes = st.sampled_from([0o755, 0o700, 0o555, 0o1777])


class SnapshotMachine(RuleBasedStateMachine):
    """Random changes, snapshots and restores; a restore must give back the listing taken."""

    tracking = "inotify"
    follow = True

    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(dir=ensure_home()))
        self.roots = make_roots(self.base)
        # A directory beside the roots that symlinks point to: nothing may ever change it.
        self.outside = self.base / "outside"
        (self.outside / "a").mkdir(parents=True)
        (self.outside / "a" / "b").write_bytes(b"not ours")
        self.outside_listing = listing({"outside": self.outside})
        self.engine = DirectorySnapshots(
            self.roots, self.base / "store", tracking=self.tracking, follow=self.follow
        )
        self.expected: dict[str, Listing] = {}
        self.history: list[str] = []

    def path(self, root: str, rel: bytes) -> bytes:
        """``rel`` in ``root``; a path that does not exist when a parent is a symlink."""
        top = os.fsencode(self.roots[root])
        path = top + b"/" + rel
        parent = os.path.realpath(os.path.dirname(path))
        if parent != top and not parent.startswith(top + b"/"):
            return os.fsencode(self.base) + b"/no-such-dir/" + rel
        return path

    @initialize(target=snapshots)
    def start(self) -> str:
        os.mkdir(self.path("tmp", b"a"))
        self.write_file(self.path("tmp", b"a/b"), b"present before tracking", 0o640)
        base = self.engine.start_sync()
        self.expected[base] = listing(self.roots)
        self.history = [base]
        return base

    def write_file(self, path: bytes, data: bytes, mode: int) -> None:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, mode
        )
        with os.fdopen(fd, "wb") as file:
            file.write(data)

    def attempt(self, action, *args) -> None:
        """Operations that the current tree forbids (missing parent...) just do nothing."""
        with contextlib.suppress(OSError):
            action(*args)

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths, data=contents, mode=file_modes)
    def write(self, root: str, rel: bytes, data: bytes, mode: int) -> None:
        self.attempt(self.write_file, self.path(root, rel), data, mode)

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths, data=contents)
    def append(self, root: str, rel: bytes, data: bytes) -> None:
        def append_to(path: bytes) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "ab") as file:
                file.write(data)

        self.attempt(append_to, self.path(root, rel))

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths, fmode=file_modes, dmode=dir_modes)
    def chmod(self, root: str, rel: bytes, fmode: int, dmode: int) -> None:
        path = self.path(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            self.attempt(os.chmod, path, dmode)
        elif os.path.isfile(path) and not os.path.islink(path):
            self.attempt(os.chmod, path, fmode)

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths, when=st.integers(0, 2**34))
    def touch(self, root: str, rel: bytes, when: int) -> None:
        self.attempt(
            lambda p: os.utime(p, ns=(when, when), follow_symlinks=False), self.path(root, rel)
        )

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths)
    def delete(self, root: str, rel: bytes) -> None:
        path = self.path(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            self.attempt(shutil.rmtree, path)
        else:
            self.attempt(os.unlink, path)

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths, mode=dir_modes)
    def mkdir(self, root: str, rel: bytes, mode: int) -> None:
        self.attempt(os.mkdir, self.path(root, rel), mode)

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths)
    def rmdir(self, root: str, rel: bytes) -> None:
        self.attempt(os.rmdir, self.path(root, rel))

    @rule(
        root=st.sampled_from(ROOTS),
        rel=rel_paths,
        dest=st.sampled_from([b"a", b"../b", b"/nowhere", b"../../outside/a", b"../outside"]),
    )
    def symlink(self, root: str, rel: bytes, dest: bytes) -> None:
        self.attempt(os.symlink, dest, self.path(root, rel))

    @rule(
        src_root=st.sampled_from(ROOTS),
        src=rel_paths,
        dst_root=st.sampled_from(ROOTS),
        dst=rel_paths,
    )
    def rename(self, src_root: str, src: bytes, dst_root: str, dst: bytes) -> None:
        self.attempt(os.rename, self.path(src_root, src), self.path(dst_root, dst))

    @rule(data=st.data(), dst_root=st.sampled_from(ROOTS), dst=rel_paths)
    def rename_existing(self, data: st.DataObject, dst_root: str, dst: bytes) -> None:
        """Moves of whole trees, which inotify reports as one event for the top only."""
        existing = [
            os.fsencode(os.path.join(dirpath, name))
            for root in self.roots.values()
            for dirpath, dirnames, filenames in os.walk(os.fsencode(root))
            for name in dirnames + filenames
        ]
        if existing:
            src = data.draw(st.sampled_from(sorted(existing)))
            tree = os.path.isdir(src) and not os.path.islink(src) and bool(os.listdir(src))
            with contextlib.suppress(OSError):
                os.rename(src, self.path(dst_root, dst))
                if tree:
                    event("moved a tree")

    @rule(root=st.sampled_from(ROOTS), src=rel_paths, dst=rel_paths)
    def hard_link(self, root: str, src: bytes, dst: bytes) -> None:
        self.attempt(
            lambda a, b: os.link(a, b, follow_symlinks=False),
            self.path(root, src),
            self.path(root, dst),
        )

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths)
    def fifo(self, root: str, rel: bytes) -> None:
        self.attempt(os.mkfifo, self.path(root, rel), 0o640)

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths, data=contents)
    def replace_dir_with_file(self, root: str, rel: bytes, data: bytes) -> None:
        path = self.path(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
            self.write_file(path, data, 0o644)

    @rule(root=st.sampled_from(ROOTS), rel=rel_paths, data=contents)
    def replace_file_with_dir(self, root: str, rel: bytes, data: bytes) -> None:
        path = self.path(root, rel)
        if os.path.lexists(path) and not os.path.isdir(path):
            os.unlink(path)
            os.mkdir(path)
            self.write_file(path + b"/a", data, 0o644)

    @rule(target=snapshots, name=st.text(max_size=5))
    def snapshot(self, name: str) -> str:
        info = self.engine.snapshot_sync(name)
        self.expected[info.id] = listing(self.roots)
        self.history.append(info.id)
        return info.id

    @rule(snapshot_id=snapshots)
    def restore(self, snapshot_id: str) -> None:
        if snapshot_id not in self.history:
            with pytest.raises(SnapshotError, match="unknown snapshot"):
                self.engine.restore_sync(snapshot_id)
            return
        before = listing(self.roots)
        self.engine.restore_sync(snapshot_id)
        event(
            "restore changed the tree" if before != self.expected[snapshot_id] else "no-op restore"
        )
        assert listing(self.roots) == self.expected[snapshot_id]
        del self.history[self.history.index(snapshot_id) + 1 :]

    @invariant()
    def outside_is_untouched(self) -> None:
        assert listing({"outside": self.outside}) == self.outside_listing

    @precondition(lambda self: len(self.history) > 0)
    @invariant()
    def history_is_listed(self) -> None:
        assert [info.id for info in self.engine.list()] == self.history

    def teardown(self) -> None:
        self.engine.delete_sync()
        assert not (self.base / "store").exists()
        for root in self.roots.values():
            for dirpath, _, _ in os.walk(root):
                os.chmod(dirpath, 0o755)
        shutil.rmtree(self.base)


class RescanSnapshotMachine(SnapshotMachine):
    tracking = "rescan"


class LazySnapshotMachine(SnapshotMachine):
    follow = False


_settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestInotifySnapshots = SnapshotMachine.TestCase
TestInotifySnapshots.settings = _settings
TestRescanSnapshots = RescanSnapshotMachine.TestCase
TestRescanSnapshots.settings = _settings
TestLazySnapshots = LazySnapshotMachine.TestCase
TestLazySnapshots.settings = _settings


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    return make_roots(tmp_path)


@pytest.mark.parametrize("tracking", ["inotify", "rescan"])
async def test_moving_a_tree_away_and_back(
    roots: dict[str, Path], tmp_path: Path, tracking
) -> None:
    workspace = roots["workspace"]
    async with DirectorySnapshots(roots, tmp_path / "store", tracking=tracking) as engine:
        (workspace / "src" / "deep").mkdir(parents=True)
        (workspace / "src" / "deep" / "file").write_bytes(b"content")
        before = await engine.snapshot("before")
        expected = listing(roots)
        (workspace / "src").rename(roots["tmp"] / "moved")
        (workspace / "src").mkdir()
        await engine.snapshot("after")
        await engine.restore(before)
        assert listing(roots) == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other owners needs root")
@pytest.mark.parametrize("tracking", ["inotify", "rescan"])
async def test_owners_and_set_id_bits_come_back(
    roots: dict[str, Path], tmp_path: Path, tracking
) -> None:
    """A machine's files belong to its ids; a restore gives them back, set-id bits included
    (changing a file's owner clears them)."""
    workspace = roots["workspace"]
    async with DirectorySnapshots(roots, tmp_path / "store", tracking=tracking) as engine:
        program = workspace / "program"
        program.write_bytes(b"#!/bin/sh\n")
        os.chown(program, 101001, 101001)
        program.chmod(0o6755)
        (workspace / "folder").mkdir()
        os.chown(workspace / "folder", 101001, 101001)
        before = await engine.snapshot("before")
        expected = {
            name: (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            for name in ("program", "folder")
            for st in [os.lstat(workspace / name)]
        }
        program.unlink()
        (workspace / "folder").rmdir()
        await engine.snapshot("after")
        await engine.restore(before)
        restored = {
            name: (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            for name in ("program", "folder")
            for st in [os.lstat(workspace / name)]
        }
        assert restored == expected


def build_workspace(workspace: Path, files: int, size: int) -> None:
    for index in range(files):
        directory = workspace / f"dir{index % 10}"
        directory.mkdir(exist_ok=True)
        (directory / f"file{index}").write_bytes(os.urandom(size))


@pytest.mark.parametrize("tracking", ["inotify", "rescan"])
async def test_cost_follows_what_changed(roots: dict[str, Path], tmp_path: Path, tracking) -> None:
    workspace = roots["workspace"]
    build_workspace(workspace, files=300, size=16 * 1024)
    # A rescan re-reads files recorded within a timestamp tick of their last change.
    await asyncio.sleep(0.05)
    async with DirectorySnapshots(roots, tmp_path / "store", tracking=tracking) as engine:
        base = engine.list()[0]
        assert base.files_copied == 300
        assert base.bytes_stored == 300 * 16 * 1024
        changed = workspace / "dir3" / "file3"
        with changed.open("ab") as file:
            file.write(b"tiny")
        (workspace / "new").write_bytes(b"x" * 100)
        expected = listing(roots)
        snapshot_id = await engine.snapshot("tiny change")
        info = engine.list()[-1]
        assert (info.id, info.files_copied) == (snapshot_id, 2)
        assert info.bytes_stored == 16 * 1024 + len(b"tiny") + 100
        # The two files, and the one directory that got a new entry.
        assert info.paths == 3
        assert info.rescanned == (tracking == "rescan")

        os.chmod(changed, 0o600)  # attributes only: the stored content is reused
        (workspace / "new").unlink()
        second = engine.snapshot_sync("chmod")
        # A rescan cannot tell a chmod from a rewrite of the same size; inotify can.
        assert second.files_copied == (1 if tracking == "rescan" else 0)

        restored = await engine.restore(base.id)
        assert restored.files_written == 1
        assert restored.bytes_written == 16 * 1024
        await engine.restore(base.id)
        assert (workspace / "dir3" / "file3").stat().st_size == 16 * 1024
        assert expected != listing(roots)


def queue_limit() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


async def test_lost_events_fall_back_to_a_rescan(roots: dict[str, Path], tmp_path: Path) -> None:
    workspace = roots["workspace"]
    (workspace / "kept").mkdir()
    (workspace / "kept" / "old").write_bytes(b"old")
    # Events are read only when a snapshot needs them, so the kernel queue really overflows.
    async with DirectorySnapshots(roots, tmp_path / "store", follow=False) as engine:
        first = await engine.snapshot("first")
        expected = listing(roots)
        noisy = [os.open(workspace / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in ("x", "y")]
        try:
            for _ in range(queue_limit() // 2 + 10):
                for fd in noisy:  # alternating names: the kernel cannot merge the events
                    os.write(fd, b".")
        finally:
            for fd in noisy:
                os.close(fd)
        # Changes after the overflow reach no queue: only the rescan can find them.
        (workspace / "kept" / "old").unlink()
        (workspace / "kept" / "fresh").mkdir()
        (workspace / "kept" / "fresh" / "file").write_bytes(b"new")
        second = engine.snapshot_sync("after overflow")
        assert second.rescanned
        assert engine.statistics().rescans == 1
        after_overflow = listing(roots)

        await engine.restore(first)
        assert listing(roots) == expected
        # Tracking works again after the rescan (watches were re-established).
        (workspace / "kept" / "again").mkdir()
        (workspace / "kept" / "again" / "file").write_bytes(b"again")
        third = engine.snapshot_sync("third")
        assert not third.rescanned
        await engine.restore(first)
        assert listing(roots) == expected
    assert after_overflow != expected


async def test_unknown_and_dropped_snapshots_are_errors(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    async with DirectorySnapshots(roots, tmp_path / "store") as engine:
        base = engine.list()[0].id
        later = await engine.snapshot("later")
        await engine.restore(base)
        for snapshot_id in (later, "nope"):
            with pytest.raises(SnapshotError, match="unknown snapshot"):
                await engine.restore(snapshot_id)
        assert [info.name for info in engine.list()] == ["base"]


async def test_overlapping_or_missing_directories_are_refused(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(SnapshotError, match="must not overlap"):
        DirectorySnapshots(roots, roots["workspace"] / "store")
    with pytest.raises(SnapshotError, match="must not overlap"):
        DirectorySnapshots({**roots, "inner": roots["tmp"]}, tmp_path / "store")
    with pytest.raises(SnapshotError, match="not a directory"):
        DirectorySnapshots({"workspace": tmp_path / "missing"}, tmp_path / "store")


async def test_delete_leaves_nothing_and_no_descriptor(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    before = open_fds()
    engine = DirectorySnapshots(roots, tmp_path / "store")
    await engine.start()
    (roots["workspace"] / "file").write_bytes(b"data")
    await engine.snapshot()
    assert open_fds() > before  # the inotify instance and the wake-up pipe
    await engine.delete()
    await engine.delete()
    await engine.aclose()
    assert not (tmp_path / "store").exists()
    assert open_fds() == before
    with pytest.raises(SnapshotError, match="closed"):
        await engine.snapshot()


def test_read_only_directories_restore_as_a_user() -> None:
    """Without root, restoring into and out of read-only directories still works."""
    # Under the world-traversable temp dir: pytest's own is private to root.
    scratch = Path(tempfile.mkdtemp())
    try:
        run_as_user(scratch)
    finally:
        for dirpath, _, _ in os.walk(scratch):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(scratch)


def run_as_user(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "sys.path[:0] = [sys.argv[2], sys.argv[3]]\n"
        "from tests.machines.test_snapshots import listing, make_roots\n"
        "from vmrunner.machines.snapshots import DirectorySnapshots\n"
        "base = Path(sys.argv[1])\n"
        "roots = make_roots(base)\n"
        "ws = roots['workspace']\n"
        "(ws / 'ro').mkdir(); (ws / 'ro' / 'f').write_bytes(b'1'); (ws / 'ro' / 'f').chmod(0o400)\n"
        "(ws / 'ro').chmod(0o555)\n"
        "engine = DirectorySnapshots(roots, base / 'store')\n"
        "first = engine.start_sync()\n"
        "expected = listing(roots)\n"
        "(ws / 'ro').chmod(0o755); (ws / 'ro' / 'f').unlink(); (ws / 'ro' / "
        "'g').write_bytes(b'2')\n"
        "(ws / 'ro' / 'sub').mkdir(); (ws / 'ro' / 'sub' / 'h').write_bytes(b'3')\n"
        "(ws / 'ro' / 'sub').chmod(0o500); (ws / 'ro').chmod(0o500)\n"
        "engine.snapshot_sync('second')\n"
        "engine.restore_sync(first)\n"
        "assert listing(roots) == expected, (listing(roots), expected)\n"
        "engine.delete_sync()\n"
        "print('ok')\n"
    )
    base = tmp_path / "user"
    base.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(script, 0o644)
    if os.geteuid() == 0:
        os.chown(base, 65534, 65534)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        command = []
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [*command, sys.executable, str(script), str(base), str(repo), str(repo)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.fixture
def file_size_limit():
    """Writes past ``limit`` bytes fail with EFBIG, as they would on a full disk."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, previous[1]))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, previous_handler)


@pytest.mark.parametrize("tracking", ["inotify", "rescan"])
async def test_storage_failures_are_snapshot_errors_and_leave_history_usable(
    roots: dict[str, Path], tmp_path: Path, tracking, file_size_limit
) -> None:
    workspace = roots["workspace"]
    async with DirectorySnapshots(roots, tmp_path / "store", tracking=tracking) as engine:
        (workspace / "small").write_bytes(b"small")
        first = await engine.snapshot("first")
        expected = listing(roots)
        (workspace / "big").write_bytes(b"b" * 200_000)
        (workspace / "small").write_bytes(b"changed")
        file_size_limit(100_000)
        with pytest.raises(SnapshotError, match="cannot take snapshot") as caught:
            await engine.snapshot("too big")
        assert isinstance(caught.value.__cause__, OSError)
        file_size_limit(resource.RLIM_INFINITY)
        assert [info.id for info in engine.list()] == [engine.list()[0].id, first]
        second = engine.snapshot_sync("retried")
        assert second.files_copied == 2  # the failed attempt's changes were kept
        await engine.restore(first)
        assert listing(roots) == expected


@pytest.mark.parametrize("tracking", ["inotify", "rescan"])
async def test_a_failed_restore_can_be_retried(
    roots: dict[str, Path], tmp_path: Path, tracking, file_size_limit
) -> None:
    workspace = roots["workspace"]
    async with DirectorySnapshots(roots, tmp_path / "store", tracking=tracking) as engine:
        (workspace / "big").write_bytes(b"b" * 200_000)
        (workspace / "dir").mkdir()
        good = await engine.snapshot("good")
        expected = listing(roots)
        (workspace / "big").unlink()
        (workspace / "dir").rename(workspace / "moved")
        file_size_limit(100_000)
        with pytest.raises(SnapshotError, match="cannot restore"):
            await engine.restore(good)
        file_size_limit(resource.RLIM_INFINITY)
        await engine.restore(good)
        assert listing(roots) == expected
        # The half-done restore left no trace in later snapshots either.
        (workspace / "late").write_bytes(b"late")
        await engine.snapshot("late")
        await engine.restore(good)
        assert listing(roots) == expected


async def test_paths_beyond_path_max_are_a_clear_error(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    """A known limit: trees deeper than PATH_MAX fail with a SnapshotError, then recover."""
    workspace = roots["workspace"]
    async with DirectorySnapshots(roots, tmp_path / "store") as engine:
        first = await engine.snapshot("first")
        expected = listing(roots)
        fd = os.open(workspace, os.O_RDONLY)
        for _ in range(25):
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(fd)
        with pytest.raises(SnapshotError, match="too long"):
            await engine.snapshot("deep")
        shutil.rmtree(workspace / ("d" * 200))
        await engine.snapshot("after")
        await engine.restore(first)
        assert listing(roots) == expected


async def test_a_cancelled_snapshot_leaves_the_engine_consistent(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    workspace = roots["workspace"]
    async with DirectorySnapshots(roots, tmp_path / "store") as engine:
        first = await engine.snapshot("first")
        expected = listing(roots)
        for index in range(50):
            (workspace / f"file{index}").write_bytes(os.urandom(4096))
        task = asyncio.create_task(engine.snapshot("cancelled"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Whether or not the cancelled one got recorded, the history is usable.
        await engine.restore(first)
        assert listing(roots) == expected
        assert [info.id for info in engine.list()][-1] == first


@pytest.mark.parametrize("tracking", ["inotify", "rescan"])
async def test_symlinked_parents_are_never_followed(
    roots: dict[str, Path], tmp_path: Path, tracking
) -> None:
    workspace, outside = roots["workspace"], tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"not ours")
    untouched = (outside / "f").stat()
    async with DirectorySnapshots(roots, tmp_path / "store", tracking=tracking) as engine:
        (workspace / "a").mkdir()
        (workspace / "a" / "f").write_bytes(b"ours")
        first = await engine.snapshot("dir")
        (workspace / "a" / "f").unlink()
        (workspace / "a").rmdir()
        (workspace / "a").symlink_to(outside)
        linked = await engine.snapshot("link")
        expected = listing(roots)
        (workspace / "a").unlink()
        (workspace / "a").mkdir()
        (workspace / "a" / "f").write_bytes(b"ours again")
        await engine.snapshot("dir again")
        await engine.restore(linked)
        assert listing(roots) == expected
        assert (outside / "f").stat() == untouched
        await engine.restore(first)
        assert (workspace / "a" / "f").read_bytes() == b"ours"
        assert (outside / "f").stat() == untouched
