"""The host side of a port forward: connections made inside a machine reach one host socket.

The agent listens on ``127.0.0.1:PORT`` inside the machine and announces every connection it
accepts as a stream of the forward (the frames are described in ``agent.py``). A ``Forward``
connects each stream to the host unix socket chosen when the forward opened, and moves bytes
both ways under the agent's credit windows: it holds at most ``FORWARD_WINDOW`` bytes of a
stream that the host program has not taken yet, reads from the host socket only what the agent
has room for, and ends each connection as its ends did (a half-close, or a reset when one side
vanished). A stream never waits for another, nor for a command's output: they share the agent's
byte stream frame by frame, and no side blocks on a slow connection.

The machine only ever reaches ``target``: it names no host address, and an agent that breaks
the rules (more data than its window, more streams than ``FORWARD_STREAMS``) gets its stream
reset, never more of the host's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmrunner.errors import AgentError, ForwardError
from vmrunner.machines.agent import FORWARD_CHUNK, FORWARD_STREAMS, FORWARD_WINDOW, Frame

#: Sends one frame to the agent (the client's writer); raises ``AgentError`` once it is gone.
SendFrame = Callable[[Mapping[str, Any], bytes], None]
#: How long a closing connection may take to hand its last bytes to the host program.
CLOSE_TIMEOUT = 5.0


class _Stream:
    """One connection of the forward: a machine's program at one end, ``target`` at the other."""

    def __init__(self, ident: int, credit: int) -> None:
        self.id = ident
        #: Bytes we may still send to the agent.
        self.credit = credit
        self.credited = asyncio.Event()
        #: From the agent, not yet written to the host socket; None: its end (eof).
        self.inbox: deque[bytes | None] = deque()
        self.queued = 0
        self.ended = False
        self.arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Forward:
    """Carries the streams of one forward (id ``ident``) to connections to ``target``.

    Fed by the client's reader with the forward's frames (``handle``), told when the agent
    is gone (``fail``); ``aclose`` ends every connection and waits for their tasks.
    """

    def __init__(self, target: Path, ident: int, send: SendFrame, *, name: str) -> None:
        self.target = target
        self.ident = ident
        self.name = name
        self._send = send
        #: The port inside the machine, once the agent listens.
        self.port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        #: What the agent accepts per stream beyond what it credited back.
        self._window = FORWARD_WINDOW
        self._streams: dict[int, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def handle(self, frame: Frame) -> None:
        header = frame.header
        if frame.op == "listening":
            self._listening(header)
            return
        ident = header.get("stream")
        if not isinstance(ident, int) or isinstance(ident, bool):
            return
        if frame.op == "accept":
            self._accept(ident)
            return
        stream = self._streams.get(ident)
        if stream is None:
            return  # a stream that ended: its last frames are dropped
        if frame.op == "chunk":
            if stream.ended or stream.queued + len(frame.payload) > FORWARD_WINDOW:
                self._abort(stream, "the machine sent past its window or its end")
                return
            stream.inbox.append(frame.payload)
            stream.queued += len(frame.payload)
            stream.arrived.set()
        elif frame.op == "eof":
            stream.ended = True
            stream.inbox.append(None)
            stream.arrived.set()
        elif frame.op == "credit":
            amount = header.get("bytes")
            if isinstance(amount, int) and amount > 0:
                stream.credit = min(stream.credit + amount, self._window)
                stream.credited.set()
        elif frame.op == "reset":
            self._abort(stream)

    def fail(self, exc: BaseException) -> None:
        """The forward is over (closed, refused, or the agent is gone): drop every stream."""
        if not self.port.done():
            self.port.set_exception(exc)
            self.port.exception()  # retrieved: the opener may be gone already
        for stream in list(self._streams.values()):
            self._abort(stream)

    async def aclose(self) -> None:
        """End every connection (resetting those still open) and wait for their tasks."""
        self._closed = True
        self.fail(ForwardError(f"{self.name}: the forward was closed"))
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # Frames from the agent.

    def _listening(self, header: Mapping[str, Any]) -> None:
        port, window = header.get("port"), header.get("window")
        if isinstance(window, int) and window > 0:
            self._window = window
        if not self.port.done():
            if isinstance(port, int) and 0 < port < 65536:
                self.port.set_result(port)
            else:
                self.port.set_exception(AgentError(f"{self.name} listens on no port: {port!r}"))

    def _accept(self, ident: int) -> None:
        old = self._streams.get(ident)
        if old is not None:  # a restored machine numbers its streams afresh
            self._abort(old)
        if self._closed:
            return
        if len(self._streams) >= FORWARD_STREAMS:
            self._reset(ident, "too many connections at once")
            return
        stream = _Stream(ident, self._window)
        self._streams[ident] = stream
        task = asyncio.get_running_loop().create_task(
            self._carry(stream), name=f"{self.name} forward {self.ident} stream {ident}"
        )
        stream.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reset(self, ident: int, message: str) -> None:
        with contextlib.suppress(AgentError):
            self._send({"op": "reset", "id": self.ident, "stream": ident, "message": message}, b"")

    def _abort(self, stream: _Stream, message: str = "") -> None:
        """Forget a stream and cut its host connection; with a ``message``, reset it in the
        machine too (without: the agent reset it, or is gone)."""
        if self._streams.get(stream.id) is not stream:
            return
        del self._streams[stream.id]
        if message:
            self._reset(stream.id, message)
        if stream.task is not None:
            stream.task.cancel()

    # One connection.

    async def _carry(self, stream: _Stream) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(
                str(self.target), limit=FORWARD_CHUNK
            )
        except OSError as exc:
            self._abort(stream, f"cannot connect to the host's socket: {exc.strerror or exc}")
            return
        clean = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._upstream(stream, reader))
                group.create_task(self._downstream(stream, writer))
            clean = True
        except* OSError as failure:
            why = failure.exceptions[0]
            self._abort(stream, f"the host's socket failed: {getattr(why, 'strerror', why)}")
        except* AgentError:
            pass  # the agent is gone: ``fail`` drops every stream
        finally:
            if clean:
                if self._streams.get(stream.id) is stream:
                    del self._streams[stream.id]
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await writer.wait_closed()
            else:
                writer.transport.abort()

    async def _upstream(self, stream: _Stream, reader: asyncio.StreamReader) -> None:
        """Host socket -> agent, never more than the agent has room for."""
        while True:
            while stream.credit <= 0:
                stream.credited.clear()
                await stream.credited.wait()
            data = await reader.read(min(stream.credit, FORWARD_CHUNK))
            header = {"op": "chunk" if data else "eof", "id": self.ident, "stream": stream.id}
            self._send(header, data)
            if not data:
                return
            stream.credit -= len(data)

    async def _downstream(self, stream: _Stream, writer: asyncio.StreamWriter) -> None:
        """Agent -> host socket, crediting the agent with what the host program took."""
        delivered = 0
        while True:
            if not stream.inbox:
                if delivered:
                    self._credit(stream, delivered)
                    delivered = 0
                stream.arrived.clear()
                await stream.arrived.wait()
                continue
            data = stream.inbox.popleft()
            if data is None:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            stream.queued -= len(data)
            delivered += len(data)
            if delivered >= FORWARD_WINDOW // 4:
                self._credit(stream, delivered)
                delivered = 0

    def _credit(self, stream: _Stream, amount: int) -> None:
        self._send({"op": "credit", "id": self.ident, "stream": stream.id, "bytes": amount}, b"")
