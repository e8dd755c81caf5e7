"""Commands of the machine service: the streamed exec over HTTP, and over a WebSocket.

Both carry the same messages: the exec body in, then ``{"o": stream, "d": base64}`` per chunk
of output while the command runs, then ``{"result": ...}`` or ``{"error", "kind"}``. The HTTP
exec (``POST``) answers one command with NDJSON lines; the WebSocket (``GET`` with an upgrade,
same path) carries command after command, one message per line, which spares a command the
HTTP request, its routing and its parsing on both sides: what ``--provider remote`` uses. Either
way the command dies with its connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import aclosing, suppress
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from vmrunner.errors import AccessDenied, AgentError, ExecError, VmrunnerError
from vmrunner.machines.base import ExecResult
from vmrunner.machines.remote import error_body

#: A command that ends this soon, silent, is answered in one plain response (no stream).
QUICK = 0.05
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ExecOptions(BaseModel):
    """What every exec takes (a command's, a container's)."""

    env: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    write: dict[str, str] = Field(default_factory=dict)
    collect: list[str] = Field(default_factory=list)

    def options(self) -> dict[str, Any]:
        """Keyword arguments of the exec: only what was asked (empty ones still cost the
        agent)."""
        asked = {"env": self.env, "write": self.write, "collect": self.collect}
        return {"timeout": self.timeout, **{k: v for k, v in asked.items() if v}}


class ExecBody(ExecOptions):
    command: str | list[str]
    cwd: str | None = None
    stdin: str | None = None

    def call(self) -> dict[str, Any]:
        """``Machine.exec``'s arguments but ``on_output``."""
        stdin = None if self.stdin is None else base64.b64decode(self.stdin)
        return {"command": self.command, "cwd": self.cwd, "stdin": stdin, **self.options()}


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def result_json(result: ExecResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "duration": result.duration,
        "files": {k: base64.b64encode(v).decode() for k, v in result.files.items()},
        "truncated": sorted(result.truncated),
    }


class CommandStream:
    """One streamed command: its output lines as they come, then its result; the command dies
    with the connection (or when the stream is closed early)."""

    def __init__(
        self,
        receive: Receive,
        run: Callable[..., Awaitable[ExecResult]],
        done: Callable[[], None],
    ) -> None:
        """``run(on_output=...)`` runs the command (its other arguments bound)."""
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._done = done
        self._output = asyncio.Event()
        self._task = asyncio.ensure_future(run(on_output=self._relay))
        self._task.add_done_callback(lambda _: self._queue.put_nowait(None))
        self._watcher = asyncio.ensure_future(_cancel_on_message(receive, self._task))

    @property
    def cancelled(self) -> bool:
        """Whether the command was cancelled (its client went away or spoke out of turn)."""
        return self._task.cancelled()

    def _relay(self, stream: str, data: bytes) -> None:
        self._queue.put_nowait(line({"o": stream, "d": base64.b64encode(data).decode()}))
        self._output.set()

    async def finished_quickly(self) -> bool:
        """Whether the command ended within ``QUICK`` seconds, before any output came."""
        output = asyncio.ensure_future(self._output.wait())
        try:
            await asyncio.wait(
                {self._task, output}, timeout=QUICK, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            output.cancel()
        return self._task.done()

    def _final(self) -> bytes:
        if self._task.cancelled():  # its client went away
            return line(error_body(AgentError("the command was cancelled")))
        try:
            return line({"result": result_json(self._task.result())})
        except VmrunnerError as exc:
            return line(error_body(exc))

    def whole(self) -> bytes:
        """Everything, once the command has ended."""
        self._watcher.cancel()
        self._done()
        parts = []
        while not self._queue.empty():  # the end marker may not be queued yet: not awaited
            item = self._queue.get_nowait()
            if item is not None:
                parts.append(item)
        return b"".join([*parts, self._final()])

    async def lines(self) -> AsyncGenerator[bytes]:
        try:
            while (item := await self._queue.get()) is not None:
                yield item
            self._watcher.cancel()  # before the last line: its client may speak once it has it
            yield self._final()
        finally:
            self._watcher.cancel()
            if not self._task.done():
                self._task.cancel()
            with suppress(BaseException):
                await asyncio.shield(self._task)
            self._done()


async def _cancel_on_message(receive: Receive, task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` at its client's disconnect, or (a WebSocket) at any message from it."""
    while not task.done():
        if (await receive())["type"] != "http.request":
            task.cancel()
            return


async def serve_channel(
    websocket: WebSocket, start: Callable[[ExecBody], Awaitable[CommandStream]]
) -> None:
    """Commands over an accepted WebSocket, one at a time: each message from the client an exec
    body, answered by binary messages, one line each, the last its result or error. ``start``
    checks the caller again for every command. A client speaking while its command runs loses
    the command and the socket (close code 1008)."""
    with suppress(WebSocketDisconnect):
        while websocket.client_state is WebSocketState.CONNECTED:
            message = await websocket.receive()
            if message["type"] != "websocket.receive":
                return
            try:
                raw = message.get("text") or message.get("bytes") or b""
                body = ExecBody.model_validate_json(raw)
                command = await start(body)
            except ValidationError as exc:
                await websocket.send_bytes(line(error_body(ExecError(f"bad exec body: {exc}"))))
                continue
            except AccessDenied as exc:  # a revoked or expired token: no more commands
                await websocket.send_bytes(line(error_body(exc)))
                await websocket.close(1008, "access denied")
                return
            except VmrunnerError as exc:
                await websocket.send_bytes(line(error_body(exc)))
                continue
            async with aclosing(command.lines()) as lines:
                async for item in lines:
                    await websocket.send_bytes(item)
            if command.cancelled and websocket.client_state is WebSocketState.CONNECTED:
                await websocket.close(1008, "one command at a time")
                return
