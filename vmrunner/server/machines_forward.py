"""Port forwards of the machine service: connections made inside a VM reach its runner's host.

The service cannot connect to a runner, so the runner comes to it. A forward is a WebSocket
(``/api/vms/{id}/forward?port=N``) held open by the runner for as long as the forward lasts:
the service opens the machine's own forward (``Machine.forward``) to a unix socket of its own
in a private folder (0700), answers ``{"port", "forward"}``, and closes it all when the socket
closes or the VM ends. Guest connections arriving there wait for an *accept* WebSocket
(``/api/vms/{id}/forward/{forward}``) that the runner keeps open in advance: each takes one
connection, says ``open``, and then carries its bytes both ways: binary messages are data, the
text message ``eof`` ends one direction, and a close without both ``eof`` cuts the connection.
TCP under the WebSocket is the flow control: a slow side stops the reads of the other.

A VM has at most ``MAX_CONNECTIONS`` guest connections waiting or carried at once, over all
its forwards; more are closed at once. The token is checked at every upgrade and again when an
accept socket is given a connection: a revoked token gets no new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from starlette.websockets import WebSocket, WebSocketDisconnect

from vmrunner.errors import AccessDenied, ForwardError, VmrunnerError
from vmrunner.machines.agent import FORWARD_STREAMS
from vmrunner.machines.remote import error_body
from vmrunner.sessions import Session

#: Guest connections of one VM waiting or carried at once (the agent's own per-forward limit).
MAX_CONNECTIONS = FORWARD_STREAMS
#: Bytes read from a guest connection per WebSocket message.
CHUNK = 256 << 10
EOF = "eof"
#: What sending to a WebSocket whose client went raises.
GONE = (WebSocketDisconnect, RuntimeError, OSError)
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
T = TypeVar("T")


class Relay:
    """One forward of a VM: the guest connections it accepted, handed to accept sockets.
    ``siblings`` are the VM's open forwards, this one among them while it is open."""

    def __init__(self, session: Session, siblings: dict[str, Relay]) -> None:
        self.id = f"fwd-{secrets.token_hex(8)}"
        self.session = session
        self.siblings = siblings
        self.port = 0
        self.closed = asyncio.Event()
        self._waiting: deque[Streams] = deque()
        self._takers: deque[asyncio.Future[Streams]] = deque()
        self.carried = 0

    def _busy(self) -> int:
        return sum(len(r._waiting) + r.carried for r in self.siblings.values())

    def arrived(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A guest connection (through the machine's forward): to a waiting taker, else kept."""
        if self.closed.is_set() or self._busy() >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_result((reader, writer))
                return
        self._waiting.append((reader, writer))

    async def take(self) -> Streams:
        """The next guest connection; ``ForwardError`` once the forward is closed."""
        if self._waiting:
            return self._waiting.popleft()
        if self.closed.is_set():
            raise ForwardError(f"forward {self.id} is closed")
        taker: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()
        self._takers.append(taker)
        try:
            return await taker
        except asyncio.CancelledError:
            if taker.done() and not taker.cancelled():
                self._waiting.appendleft(taker.result())  # given as we were cancelled
            raise

    def close(self) -> None:
        self.closed.set()
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_exception(ForwardError(f"forward {self.id} is closed"))
                taker.exception()
        while self._waiting:
            self._waiting.popleft()[1].transport.abort()


@contextlib.asynccontextmanager
async def open_relay(
    session: Session, forwards: dict[str, Relay], port: int
) -> AsyncIterator[Relay]:
    """The session's machine forwarding ``port`` to a relay (in ``forwards`` meanwhile)."""
    relay = Relay(session, forwards)
    with tempfile.TemporaryDirectory(prefix="vmrunner-forward-") as folder:  # 0700
        path = Path(folder) / "s"
        server = await asyncio.start_unix_server(relay.arrived, str(path), limit=CHUNK)
        forwards[relay.id] = relay
        try:
            async with session.machine.forward(path, port) as relay.port:
                try:
                    yield relay
                finally:
                    relay.close()  # before the machine's forward resets what it carries
        finally:
            relay.close()
            forwards.pop(relay.id, None)
            server.close()


async def serve_forward(
    websocket: WebSocket,
    session: Session,
    forwards: dict[str, Relay],
    ended: asyncio.Event,
    port: int,
) -> None:
    """The forward's own socket (accepted): the port, then open until it closes or the VM
    ends (``ended``)."""
    try:
        async with open_relay(session, forwards, port) as relay:
            await websocket.send_json({"port": relay.port, "forward": relay.id})
            hung_up = asyncio.ensure_future(_disconnect(websocket))
            over = asyncio.ensure_future(ended.wait())
            try:
                await asyncio.wait({hung_up, over}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                hung_up.cancel()
                over.cancel()
    except VmrunnerError as exc:  # the port is taken, the machine cannot forward
        with contextlib.suppress(*GONE):
            await websocket.send_json(error_body(exc))
    await _close(websocket)


async def serve_accept(
    websocket: WebSocket, relay: Relay, check: Callable[[], Awaitable[object]]
) -> None:
    """One accept socket (accepted): waits for a guest connection, then carries it."""
    try:
        streams = await _first(relay.take(), _disconnect(websocket))
    except ForwardError:  # closed meanwhile
        streams = None
    if streams is None:
        await _close(websocket)
        return
    reader, writer = streams
    relay.carried += 1
    try:
        await check()
        relay.session.touch()
        carried = await _first(_carry(websocket, reader, writer), relay.closed.wait())
    except AccessDenied:
        writer.transport.abort()
        await _close(websocket, 1008, "access denied")
        return
    finally:
        relay.carried -= 1
    if carried:
        writer.close()
    else:
        writer.transport.abort()  # cut short: the guest sees a reset
    await _close(websocket, 1000 if carried else 1011)


async def _close(websocket: WebSocket, code: int = 1000, reason: str = "") -> None:
    with contextlib.suppress(*GONE):  # its client may be gone already
        await websocket.close(code, reason)


async def _first(main: Awaitable[T], *stops: Awaitable[object]) -> T | None:
    """``main``'s result, or None (``main`` cancelled) when one of ``stops`` ends first."""
    task = asyncio.ensure_future(main)
    others = [asyncio.ensure_future(s) for s in stops]
    try:
        await asyncio.wait({task, *others}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for other in others:
            other.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()


async def _disconnect(websocket: WebSocket) -> None:
    """Returns when the client goes (what it sends meanwhile is ignored)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _carry(
    websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Bytes both ways until both ends said eof (True); False when either failed or went."""
    try:
        await websocket.send_text("open")
        async with asyncio.TaskGroup() as group:
            group.create_task(_to_runner(websocket, reader))
            group.create_task(_to_guest(websocket, writer))
    except Exception:  # any failure cuts the connection, nothing more
        return False
    return True


async def _to_runner(websocket: WebSocket, reader: asyncio.StreamReader) -> None:
    while data := await reader.read(CHUNK):
        await websocket.send_bytes(data)
    await websocket.send_text(EOF)


async def _to_guest(websocket: WebSocket, writer: asyncio.StreamWriter) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise ConnectionResetError("the runner went before the end")
        if message.get("bytes") is not None:
            writer.write(message["bytes"])
            await writer.drain()
        elif message.get("text") == EOF:
            if writer.can_write_eof():
                writer.write_eof()
            return
