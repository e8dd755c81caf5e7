"""Exported snapshots as tar streams: how a snapshot folder crosses the machine service.

A folder ``Machine.export_snapshot`` wrote travels as one plain tar, written or read by a
thread while the event loop sends or receives its chunks: memory stays at a few chunks
whatever the snapshot's size, and neither side waits for the whole folder.

Unpacking takes the tar as coming from someone else (the service from a runner, a runner from
the service). Refused: a name that is absolute or holds ``..``, a name met twice, a device, a
hard link to anything but a file unpacked before, any entry below a symbolic link (so nothing
is ever written through one), and, at the top of the folder (where a provider's import opens
entries by name), anything but a directory or a file. Symbolic links inside are kept as the
machine made them, whatever they point to: their targets are paths of the machine
(``/home/runner/...``), and an import copies links as links, never following them.
Set-user and set-group bits are dropped and owners are not restored.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import stat
import tarfile
import threading
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import PurePosixPath
from typing import Any

from vmrunner.errors import ArchiveRejected, TransferError

#: Bytes per chunk on the wire, and chunks buffered between the thread and the event loop.
CHUNK = 1 << 18
SLOTS = 8
#: Unpacked entries keep the unpacking user as owner, even when it is root.
_NO_OWNER: dict[str, Any] = {"uid": None, "gid": None, "uname": None, "gname": None}


class _Stopped(Exception):
    """The other side of the stream gave up: the thread ends."""


async def tar_chunks(folder: str) -> AsyncGenerator[bytes, None]:
    """The entries of ``folder`` as one tar stream, written by a thread as the chunks are taken."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    slots = threading.Semaphore(SLOTS)
    stopped = threading.Event()

    class Sink:
        def write(self, data: bytes) -> int:
            while not slots.acquire(timeout=0.1):
                if stopped.is_set():
                    raise _Stopped
            loop.call_soon_threadsafe(chunks.put_nowait, bytes(data))
            return len(data)

    def produce() -> None:
        end: BaseException | None = None
        try:
            with tarfile.open(
                fileobj=Sink(), mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT
            ) as tar:  # type: ignore[call-overload]
                for name in sorted(os.listdir(folder)):
                    tar.add(os.path.join(folder, name), arcname=name)
        except _Stopped:
            return
        except (OSError, tarfile.TarError) as exc:
            end = TransferError(f"cannot pack the snapshot in {folder}: {exc}")
        except BaseException as exc:  # the consumer raises it: it must not wait forever
            end = exc
        if not stopped.is_set():
            loop.call_soon_threadsafe(chunks.put_nowait, end)

    worker = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while (item := await chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            slots.release()
            yield item
    finally:
        stopped.set()
        await asyncio.shield(worker)


async def untar_chunks(chunks: AsyncIterable[bytes], dest: str) -> None:
    """Unpack a tar stream into the new folder ``dest`` (by the module's rules); a refused or
    broken tar is ``ArchiveRejected``. What was unpacked stays: the caller removes ``dest``."""
    loop = asyncio.get_running_loop()
    pending: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    room = asyncio.Semaphore(SLOTS)
    stopped = threading.Event()

    class Source:
        buffer, ended = b"", False

        def read(self, size: int = -1) -> bytes:
            while not self.buffer and not self.ended:
                try:
                    item = pending.get(timeout=0.1)
                except queue.Empty:
                    if stopped.is_set():
                        raise _Stopped from None
                    continue
                loop.call_soon_threadsafe(room.release)
                self.buffer, self.ended = item or b"", item is None
            size = len(self.buffer) if size < 0 else size
            data, self.buffer = self.buffer[:size], self.buffer[size:]
            return data

    worker = asyncio.ensure_future(asyncio.to_thread(_unpack, Source(), dest))
    worker.add_done_callback(lambda _: room.release())  # wakes a sender waiting for room
    try:
        async for chunk in chunks:
            if not worker.done():
                await room.acquire()
            if worker.done():
                break  # refused (or ended) before the stream did
            pending.put(chunk)
        pending.put(None)
        await asyncio.shield(worker)  # raises what refused the tar
    finally:
        stopped.set()
        if not worker.done():
            await asyncio.wait([worker])
        if not worker.cancelled():
            worker.exception()  # retrieved: the stream's own error (or a cancel) goes up


def _unpack(source: Any, dest: str) -> None:
    try:
        os.mkdir(dest, 0o700)
        with tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK) as tar:
            tar.extractall(dest, filter=_Rules())
    except tarfile.TarError as exc:
        raise ArchiveRejected(f"not a snapshot's tar: {exc}") from exc
    except OSError as exc:
        raise TransferError(f"cannot unpack the snapshot into {dest}: {exc}") from exc


class _Rules:
    """The extraction filter: each member checked against those before it."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.files: set[str] = set()
        self.links: set[str] = set()

    def __call__(self, member: tarfile.TarInfo, _dest: str) -> tarfile.TarInfo:
        name = self.checked(member.name, member)
        parts = name.split("/")
        if any("/".join(parts[:i]) in self.links for i in range(1, len(parts))):
            raise ArchiveRejected(f"{member.name!r} is below a symbolic link")
        if member.ischr() or member.isblk():
            raise ArchiveRejected(f"{member.name!r} is a device")
        if len(parts) == 1 and not (member.isdir() or member.isfile()):
            raise ArchiveRejected(f"{member.name!r}: only folders and files at the top")
        if member.islnk() and self.checked(member.linkname, member, link=True) not in self.files:
            raise ArchiveRejected(f"{member.name!r} links to {member.linkname!r}, not a file in it")
        self.seen.add(name)
        if member.issym():
            self.links.add(name)
        elif member.isfile():
            self.files.add(name)
        mode = member.mode & ~(stat.S_ISUID | stat.S_ISGID)
        return member.replace(name=name, mode=mode, deep=False, **_NO_OWNER)

    def checked(self, name: str, member: tarfile.TarInfo, *, link: bool = False) -> str:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ArchiveRejected(f"{member.name!r} leaves the folder")
        clean = "/".join(path.parts)
        if not link and clean in self.seen:
            raise ArchiveRejected(f"{member.name!r} comes twice")
        return clean


def remove_tree(path: str | os.PathLike[str]) -> None:
    """``rm -rf``, also through directories a job made read-only (snapshots keep modes)."""

    def lend_write(function: Any, failed: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
        function(failed)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=lend_write)
