"""The runner's end of a remote machine's port forward (the service's end:
``server/machines_forward.py``).

The service cannot reach the runner, so the runner keeps ``IDLE_ACCEPTS`` accept WebSockets
open to the service, each waiting for the next connection made inside the machine. When one
gets a connection (the service says ``open``) a fresh one is opened in its place, and the
socket then carries that connection to a new connection to the runner's unix socket
``target``: binary messages are data, the text ``eof`` ends one direction, a close without
both ends' ``eof`` cuts the connection (a reset on both sides). Flow control is TCP's: a slow
reader stops the writes of the other side, through the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

from vmrunner.errors import MachineError

log = logging.getLogger(__name__)
#: Accept sockets kept waiting for the next connection: a burst of more waits (in the service)
#: for the sockets opened as each one is taken.
IDLE_ACCEPTS = 4
CHUNK = 256 << 10
#: Seconds before an accept socket that could not be opened is asked again (doubling).
RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 5.0
EOF = "eof"
Connect = Callable[[str, str], Awaitable[ClientConnection]]


class Tunnel:
    """The accept sockets of one forward (at service path ``path``) and what they carry."""

    def __init__(self, connect: Connect, path: str, target: Path, *, name: str) -> None:
        self._connect = connect
        self.path = path
        self.target = target
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        for _ in range(IDLE_ACCEPTS):
            self._spawn()

    def _spawn(self) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(
            self._serve_one(), name=f"{self.name} forward accept"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cut every connection and close every socket of the forward; idempotent."""
        self._closed = True
        while self._tasks:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve_one(self) -> None:
        delay = RETRY_DELAY
        while True:
            try:
                socket = await self._connect(self.path, f"{self.name}: accepting a connection")
                break
            except MachineError as exc:
                # The service out of reach for a moment, or for good (the forward or the machine
                # gone, the token revoked): asked again, less and less often, until the forward
                # is closed, so that a blip does not leave it without accept sockets.
                log.debug("%s: no accept socket (%s), again in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        clean = False
        try:
            if await socket.recv() != "open":
                return
            self._spawn()  # the next connection gets a socket of its own
            clean = await self._carry(socket)
        except WebSocketException:
            pass  # the service closed it: the forward ended
        finally:
            with contextlib.suppress(WebSocketException, OSError):
                await socket.close(1000 if clean else 1011)

    async def _carry(self, socket: ClientConnection) -> bool:
        """One connection: True when both ends ended it, False when it was cut."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.target), limit=CHUNK)
        except OSError as exc:
            log.warning("%s: cannot connect to %s: %s", self.name, self.target, exc)
            return False
        clean = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_to_service(socket, reader))
                group.create_task(_to_target(socket, writer))
            clean = True
        except* (OSError, WebSocketException):
            pass  # one end went: the other is cut
        finally:
            if clean:
                writer.close()
            else:
                writer.transport.abort()
        return clean


async def _to_service(socket: ClientConnection, reader: asyncio.StreamReader) -> None:
    while data := await reader.read(CHUNK):
        await socket.send(data)
    await socket.send(EOF)


async def _to_target(socket: ClientConnection, writer: asyncio.StreamWriter) -> None:
    while True:
        message = await socket.recv()
        if isinstance(message, str):
            if message == EOF:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            continue
        writer.write(message)
        await writer.drain()
