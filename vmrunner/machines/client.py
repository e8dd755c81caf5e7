"""The host side of the guest agent protocol (described in ``vmrunner.machines.agent``).

One ``AgentClient`` owns one byte stream to one agent. A reader task routes every incoming
frame to the request with its id, so any number of commands and transfers run at once. When the
stream breaks or the agent says something that is not the protocol, every pending request fails
with ``AgentError`` and the client is dead: the machine is to be released. Port forwards keep
their request id open while they last; ``forward.py`` carries their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vmrunner.errors import AgentError, ExecError, ForwardError, TransferError
from vmrunner.machines.agent import (
    CHUNK,
    DEFAULT_GRACE,
    FORWARD_WINDOW,
    Frame,
    FrameDecoder,
    FrameError,
    ProtocolError,
    encode_frame,
)
from vmrunner.machines.base import ExecResult, OutputCallback
from vmrunner.machines.forward import Forward

#: How long a cancelled command may take to report its exit after the kill's grace period.
KILL_SLACK = 5.0
#: How long past its own timeout the agent may take to report a command's end.
TIMEOUT_SLACK = 10.0
#: The longest path a unix socket address holds (``sun_path`` less its final NUL).
MAX_SOCKET_PATH = 107

_ERRORS: dict[str, type[AgentError | ExecError | TransferError | ForwardError]] = {
    "exec": ExecError,
    "transfer": TransferError,
    "forward": ForwardError,
}


class _Request:
    """One request waiting for its terminal reply."""

    def __init__(self) -> None:
        self.done: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()

    def handle(self, frame: Frame) -> None:
        if frame.op == "error":
            kind = str(frame.header.get("kind", ""))
            error = _ERRORS.get(kind, AgentError)
            self.fail(error(str(frame.header.get("message", "the agent reported an error"))))
        elif not self.done.done():
            self.done.set_result(frame)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved here: nobody may be waiting any more


class _ExecRequest(_Request):
    def __init__(self, on_output: OutputCallback | None, client: AgentClient, ident: int) -> None:
        super().__init__()
        self.on_output = on_output
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.callback_error: BaseException | None = None
        self._client = client
        self._ident = ident

    def handle(self, frame: Frame) -> None:
        if frame.op not in ("stdout", "stderr"):
            super().handle(frame)
        elif self.on_output is None:
            (self.stdout if frame.op == "stdout" else self.stderr).extend(frame.payload)
        elif self.callback_error is None:
            try:
                self.on_output(frame.op, frame.payload)  # type: ignore[arg-type]
            except Exception as exc:  # the caller's callback failed: stop the command
                self.callback_error = exc
                self._client._kill_nowait(self._ident)


class _GetRequest(_Request):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def handle(self, frame: Frame) -> None:
        if frame.op == "data":
            self.data.extend(frame.payload)
        else:
            super().handle(frame)


class _ForwardRequest(_Request):
    """A forward: open until the agent says ``done`` (after ``unforward``) or fails."""

    def __init__(self, forward: Forward) -> None:
        super().__init__()
        self.forward = forward

    def handle(self, frame: Frame) -> None:
        if frame.op == "error":
            super().handle(frame)
        elif frame.op == "done":
            super().handle(frame)
            self.forward.fail(ForwardError(f"{self.forward.name}: the forward was closed"))
        else:
            self.forward.handle(frame)

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        self.forward.fail(exc)


class AgentClient:
    """Talks to one agent over a reader/writer pair; an ``async with`` resource."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str = "agent",
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.name = name
        self.grace = grace
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._failure: AgentError | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start routing replies; ``async with`` does this for you."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._read_loop(), name=f"{self.name} reader"
            )

    @property
    def alive(self) -> bool:
        return self._failure is None

    # Requests.

    async def ping(self) -> float:
        """Round-trip time to the agent, in seconds."""
        started = time.perf_counter()
        await self._call({"op": "ping"})
        return time.perf_counter() - started

    async def exec(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced by the agent
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        write: Mapping[str, str] | None = None,
        collect: Sequence[str] = (),
        root: str = "",
        user: tuple[int, int] | None = None,
    ) -> ExecResult:
        """Run a command (argv, or a string for ``sh -c``) and wait for its exit; ``root`` and
        ``user``: in a container's root inside the machine, as that user.

        If the calling task is cancelled, or ``on_output`` raises, the command's process group
        is killed and its exit awaited (shielded, bounded) before the exception propagates.
        """
        header: dict[str, Any] = {"op": "exec"}
        if isinstance(command, str):
            header["shell"] = command
        else:
            header["argv"] = list(command)
        if env:
            header["env"] = dict(env)
        if cwd is not None:
            header["cwd"] = cwd
        if timeout is not None:
            header["timeout"] = timeout
        if write:
            header["write"] = dict(write)
        if collect:
            header["collect"] = list(collect)
        if root:
            header["root"] = root
        if user is not None:
            header["user"] = list(user)
        data = b""
        if stdin is not None:
            header["stdin"] = True
            data = stdin
        ident = next(self._ids)
        request = _ExecRequest(on_output, self, ident)
        self._start(ident, request, header, data[:CHUNK], more=len(data) > CHUNK)
        for offset in range(CHUNK, len(data), CHUNK):
            more = offset + CHUNK < len(data)
            self._send({"op": "stdin", "id": ident, "more": more}, data[offset : offset + CHUNK])
        try:  # shielded: a cancellation must leave ``done`` to await the command's exit
            if timeout is None:
                frame = await asyncio.shield(request.done)
            else:
                async with asyncio.timeout(timeout + self.grace + TIMEOUT_SLACK):
                    frame = await asyncio.shield(request.done)
        except TimeoutError:
            await self._stop(ident, request)
            raise AgentError(f"{self.name} did not end a command after its timeout") from None
        except asyncio.CancelledError:
            await self._stop(ident, request)
            raise
        if request.callback_error is not None:
            raise request.callback_error
        header = frame.header
        files, truncated = (
            _collected(self.name, header, frame.payload) if collect else ({}, frozenset[str]())
        )
        return ExecResult(
            exit_code=header.get("code"),
            duration=float(header.get("duration") or 0.0),
            signal=header.get("signal"),
            timed_out=bool(header.get("timed_out")),
            stdout=bytes(request.stdout),
            stderr=bytes(request.stderr),
            files=files,
            truncated=truncated,
        )

    async def put(self, dest_dir: str, tar_data: bytes) -> None:
        """Unpack a tar stream into ``dest_dir`` (absolute) inside the machine."""
        ident = next(self._ids)
        request = _Request()
        chunks = [tar_data[i : i + CHUNK] for i in range(0, len(tar_data), CHUNK)] or [b""]
        header = {"op": "put", "dest": dest_dir}
        self._start(ident, request, header, chunks[0], more=len(chunks) > 1)
        for index, chunk in enumerate(chunks[1:], start=2):
            self._send({**header, "id": ident, "more": index < len(chunks)}, chunk)
        await self._wait(ident, request)

    async def get(self, path: str) -> bytes:
        """A tar stream of ``path`` (absolute) inside the machine."""
        ident = next(self._ids)
        request = _GetRequest()
        self._start(ident, request, {"op": "get", "path": path})
        await self._wait(ident, request)
        return bytes(request.data)

    @contextlib.asynccontextmanager
    async def forward(self, target: Path, port: int = 0) -> AsyncIterator[int]:
        """Listen on ``127.0.0.1:port`` in the machine (0: any free port) and carry each
        connection made there to a new connection to the host unix socket ``target``; yields
        the port. On exit the listener and every connection are closed (shielded, bounded).

        ``ForwardError`` when the agent cannot listen there (the port is taken).
        """
        if len(os.fsencode(target)) > MAX_SOCKET_PATH:
            raise ForwardError(
                f"cannot forward to {target}: a unix socket's path is at most "
                f"{MAX_SOCKET_PATH} bytes"
            )
        ident = next(self._ids)
        forward = Forward(target, ident, self._send, name=self.name)
        request = _ForwardRequest(forward)
        try:
            self._start(ident, request, {"op": "forward", "port": port, "window": FORWARD_WINDOW})
            yield await forward.port
        finally:
            await _through_cancellation(self._unforward(ident, request, forward))

    async def _unforward(self, ident: int, request: _ForwardRequest, forward: Forward) -> None:
        if self._failure is None and not request.done.done():
            with contextlib.suppress(AgentError, ForwardError, TimeoutError):
                self._send({"op": "unforward", "id": next(self._ids), "target": ident})
                async with asyncio.timeout(self.grace + KILL_SLACK):
                    await asyncio.shield(request.done)  # the agent's done, sent before its ok
        self._pending.pop(ident, None)
        await forward.aclose()

    async def shutdown(self) -> None:
        """Ask the agent to kill every command and exit; returns once it confirmed."""
        await self._call({"op": "shutdown"})

    async def close(self) -> None:
        """Close the stream and fail whatever is pending; idempotent."""
        self._fail(AgentError(f"{self.name}: connection closed"))
        if not self._writer.is_closing():
            self._writer.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # Plumbing.

    async def _call(self, header: dict[str, Any]) -> Frame:
        ident = next(self._ids)
        request = _Request()
        self._start(ident, request, header)
        return await self._wait(ident, request)

    def _start(
        self,
        ident: int,
        request: _Request,
        header: dict[str, Any],
        payload: bytes = b"",
        *,
        more: bool = False,
    ) -> None:
        if self._failure is not None:
            raise self._failure
        self._pending[ident] = request
        message = {**header, "id": ident}
        if more:
            message["more"] = True
        self._send(message, payload)

    async def _wait(self, ident: int, request: _Request) -> Frame:
        try:
            return await request.done
        finally:
            self._pending.pop(ident, None)

    def _send(self, header: Mapping[str, Any], payload: bytes = b"") -> None:
        if self._failure is not None:
            raise self._failure
        try:
            data = encode_frame(header, payload)
        except ProtocolError as exc:
            raise AgentError(f"{self.name}: {exc}") from exc
        try:
            self._writer.write(data)
        except (OSError, RuntimeError) as exc:
            self._fail(AgentError(f"{self.name}: cannot write to the agent: {exc}"))
            raise self._failure from exc  # type: ignore[misc]

    def _kill_nowait(self, target: int) -> None:
        if self._failure is None:
            self._send({"op": "kill", "id": next(self._ids), "target": target, "grace": self.grace})

    async def _stop(self, ident: int, request: _Request) -> None:
        """Kill a command and wait for its exit, whatever cancellations come meanwhile."""
        with contextlib.suppress(AgentError):
            self._kill_nowait(ident)
        waiter = asyncio.ensure_future(self._await_exit(request))
        while not waiter.done():
            try:
                await asyncio.shield(waiter)
            except asyncio.CancelledError:
                continue  # the caller re-raises its own cancellation once the command is gone
        self._pending.pop(ident, None)

    async def _await_exit(self, request: _Request) -> None:
        try:
            async with asyncio.timeout(self.grace + KILL_SLACK):
                await asyncio.shield(request.done)
        except (TimeoutError, AgentError, ExecError):
            pass

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                data = await self._reader.read(CHUNK)
                if not data:
                    raise AgentError(f"{self.name} closed the connection")
                for event in decoder.feed(data):
                    self._route(event)
        except AgentError as exc:
            self._fail(exc)
        except (OSError, ValueError) as exc:
            self._fail(AgentError(f"{self.name}: connection failed: {exc}"))

    def _route(self, event: Frame | FrameError) -> None:
        if isinstance(event, FrameError):
            raise AgentError(f"{self.name} sent a malformed frame: {event.message}")
        ident = event.id
        if ident is None:
            message = event.header.get("message", event.op)
            raise AgentError(f"{self.name} reported a broken stream: {message}")
        request = self._pending.get(ident)
        if request is not None:
            request.handle(event)
            if request.done.done():
                del self._pending[ident]

    def _fail(self, exc: AgentError) -> None:
        if self._failure is None:
            self._failure = exc
        pending, self._pending = self._pending, {}
        for request in pending.values():
            request.fail(exc)


async def wait_through_cancellation(task: asyncio.Future[Any]) -> bool:
    """Wait for ``task`` whatever happens; whether the caller was cancelled meanwhile."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # the caller looks at the task's result
            break
    return cancelled


async def _through_cancellation(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even when the caller is cancelled meanwhile; the
    cancellation is raised once it is done."""
    task = asyncio.ensure_future(cleanup)
    cancelled = await wait_through_cancellation(task)
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def _collected(
    name: str, header: Mapping[str, Any], payload: bytes
) -> tuple[dict[str, bytes], frozenset[str]]:
    """The ``collect`` files of an exit frame: ``files`` lists path, size, truncated."""
    listing = header.get("files")
    if not isinstance(listing, list):
        raise AgentError(
            f"{name}: its agent did not return the files asked for; it predates this vmrunner "
            f"(rebuild the machine's image)"
        )
    files: dict[str, bytes] = {}
    truncated: set[str] = set()
    offset = 0
    for entry in listing:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
        ):
            raise AgentError(f"{name}: malformed file listing in an exit: {entry!r}")
        path, size, cut = entry
        files[path] = payload[offset : offset + size]
        offset += size
        if cut:
            truncated.add(path)
    return files, frozenset(truncated)
