#!/usr/bin/env python3
"""The guest agent: one small stdlib-only program that runs commands inside a machine.

It runs inside every machine (sandbox, host, later QEMU and Firecracker guests, as PID 1 or as a
service) and serves one host client over one byte stream: stdin/stdout pipes (default),
``--fd N`` (one bidirectional descriptor), ``--device PATH`` (a virtio-serial port),
``--unix PATH`` or ``--vsock PORT`` (listen, serve one connection at a time). It imports only
C-level stdlib modules at start so that a cold start costs little more than the interpreter.

Wire format (version 1). Every message is one frame::

    prefix  20 bytes, big endian:
            magic   4s  b"VMRA"
            version B   1
            flags   B   0 (reserved)
            _       H   0 (reserved)
            hlen    I   length of the JSON header (at most MAX_HEADER)
            plen    I   length of the raw payload (at most MAX_PAYLOAD)
            crc     I   CRC-32 of the 16 bytes above
    header  hlen bytes: a UTF-8 JSON object with at least "op" (str) and "id" (int, or null
            for messages about the stream itself)
    payload plen bytes of raw data (output chunks, stdin, tar data), never base64

The CRC lets a reader that lost its place (garbage on the stream) find the next real frame:
it skips ahead to the next magic whose prefix checks out, and reports the skipped region once.

Requests (client -> agent); each gets exactly one terminal reply with the same id:

    ping      {}                                   -> pong {version, pid}
    exec      {argv: [..]} or {shell: "..."},      -> stdout/stderr chunks (payload), then
              env {..} (merged over the agent's       exit {code, signal, duration, timed_out,
              environment), cwd, timeout (s),         files} or error {kind: "exec"} if it
              stdin: bool, more: bool,                could not start; payload = first stdin
              write {path: text}, collect [path],     bytes
              root (a folder to chroot to: a
              container's), user [uid, gid]
    stdin     {more: bool}, payload = stdin bytes  -> (no reply; feeds a running exec)
    kill      {target: exec id, grace (s)}         -> ok {found}; the target's exit follows
    put       {dest, more: bool}, payload = tar    -> ok once the last chunk is unpacked
    get       {path}                               -> data chunks (payload), then done
    forward   {port, window}                       -> listening {port, window}, then the
                                                      streams below, then done once closed;
                                                      error {kind: "forward"} if it cannot
                                                      listen
    unforward {target: forward id}                 -> ok {found}; the target's done comes first
    shutdown  {}                                   -> ok, after every command was killed

Port forwards. ``forward`` listens on TCP ``127.0.0.1:port`` inside the machine (0: a free
port, reported in ``listening``); every connection accepted there is a *stream* of that
forward, numbered by the agent from 1, and its frames carry the forward's id and ``stream``.
The host side connects each stream to a host socket of its own choosing; the agent never
learns where. Stream frames, both ways, never answered:

    accept  {stream}            agent -> client: a new connection
    chunk   {stream}, payload   bytes of the connection, at most ``window`` unacknowledged
    credit  {stream, bytes}     that many bytes of the other side's were delivered: it may
                                send that many more
    eof     {stream}            the sender's side of the connection ended (a half-close)
    reset   {stream, message}   the connection is gone, both ways, at once

Each side may send at most the other's ``window`` (per stream, given in ``forward`` and
``listening``) beyond what was credited back, so neither buffers more than its own window per
stream, whatever the speed of the programs at either end, and a slow connection never holds up
other frames on the stream; a side that sends more is reset. A stream ends when both sides
sent ``eof`` (and the data before it was delivered), or at a ``reset``; frames for a stream that
ended are dropped. At most ``FORWARD_STREAMS`` connections of a forward are open at once, the
next ones wait in the listener's backlog. ``unforward``, ``shutdown`` and the end of the
client's connection close the listener and reset every stream of the forward.

A relative ``cwd`` is taken from the directory the agent started in (the workspace); ``dest``
and ``path`` must be absolute. ``write`` files are written (UTF-8, parents created) before the
command starts; ``collect`` files are read when it has exited, however it ended, and come back
in the exit's payload, listed in its header as ``files: [[path, size, truncated], ..]`` (a
missing file is empty; each is cut at MAX_COLLECT bytes, all together below MAX_PAYLOAD). A step of
a job needs both (its
script, and the file commands it wrote), so one request does without a shell wrapper. Errors are
replies ``error {kind, message}``; kind is one of
protocol, exec, transfer, forward, internal. A frame that cannot be decoded gets an error with
``id: null`` (or the id when it could be read) and the agent carries on with the next frame.

When the stream ends on pipes, ``--fd`` or ``--device``, the agent kills everything it
started; then, on pipes or ``--fd``, it exits; on ``--device`` it opens the port again.
Listening (``--unix``, ``--vsock``), a closed connection kills nothing: Firecracker resets every
vsock connection when it snapshots a guest, and a snapshot between two steps must not take the
job's background services with it. The agent keeps serving its processes while it waits for the
next client (reaping them, enforcing their timeouts, reading their pipes); commands that were
still running lose their client: their ids are forgotten (a new client numbers its requests
afresh, so an old id could name the wrong command), their output and exit are dropped (nobody is
left who asked for them; buffering would grow without bound), and they end as they would, or on
``shutdown``, SIGTERM or the machine's end, which kill every process group the agent started.
``shutdown`` and SIGTERM end the agent for good.

Identity (a sandbox's agent): with ``--user UID:GID`` every command runs as that user (fork,
switch ids, exec; nothing inheritable or ambient, ``no_new_privs``) while the agent keeps its
own real and saved ids, so the user's processes can neither signal nor trace it; the files it
writes belong to the user. ``--sudo PATH`` listens there for the machine's ``sudo`` (see
``sudo.py``): one message with argv, env, cwd and the caller's three descriptors; the command
runs as root inside without the capabilities that reach the agent (``ROOT_DROPS``), its exit
status is the answer, and a caller that goes away takes its command with it. ``--own PATHS``
gives the user the directories a host that is not root could not chown to it.

Every command runs in its own session and process group (``setsid``), so a timeout or a kill
reaches its children: SIGTERM to the group, a short grace period, then SIGKILL. When the main
process exits, its remaining output is drained and ``exit`` is sent; background processes it
left keep running (as on GitHub's runners) until the machine is shut down, and their later
output is discarded. On ``shutdown`` (and when a non-listening stream closes), every process
group the agent ever started is killed.
"""

from __future__ import annotations

import _thread
import binascii
import errno
import os
import select
import struct
import sys
import time

# typing, contextlib and the signal wrapper (which builds enums) would cost more to import than
# the rest of the agent: the C modules serve at run time, the full ones the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping
    from typing import Any, ClassVar
else:
    import _signal as signal

MAGIC = b"VMRA"
VERSION = 1
PREFIX_SIZE = 20
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 16 << 20
#: Payload size the agent and client cut large data into.
CHUNK = 1 << 20
#: What ``collect`` returns of one file at most.
MAX_COLLECT = 4 << 20
#: Capabilities a command run as root inside a machine loses for good (CAP_KILL, CAP_SETGID,
#: CAP_SETUID, CAP_SETPCAP): with them it could reach the agent, which runs as a user of its own.
ROOT_DROPS = (5, 6, 7, 8)
#: Where a program is looked for in a container's root when its environment names no PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Default time between SIGTERM and SIGKILL when killing a process group.
DEFAULT_GRACE = 1.0
#: What one side of a forwarded connection may send beyond what the other acknowledged.
FORWARD_WINDOW = 1 << 20
#: The largest chunk of a forwarded connection in one frame.
FORWARD_CHUNK = 256 << 10
#: Connections of one forward open at once; more wait in the listener's backlog.
FORWARD_STREAMS = 64

_FIRST = struct.Struct(">4sBBHII")
_CRC = struct.Struct(">I")
_READ_SIZE = 1 << 16


class ProtocolError(Exception):
    """A frame could not be encoded or decoded."""


# JSON through the C accelerator alone: importing the json package pulls in re and enum,
# which would double the agent's start time.
try:
    import _json

    class _ScanContext:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int

        @staticmethod
        def parse_constant(name: str) -> float:
            return float(name.replace("Infinity", "inf"))

    def _unencodable(value: object) -> object:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    _encode = _json.make_encoder(
        None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def _dumps(value: Mapping[str, Any]) -> bytes:
        return "".join(_encode(value, 0)).encode("ascii")

    def _loads(data: bytes) -> Any:
        text = data.decode("utf-8")
        try:
            value, end = _scan(text, len(text) - len(text.lstrip(" \t\n\r")))
            if not text[end:].strip(" \t\n\r"):
                return value
        except Exception:  # the json package explains the error below
            pass
        # Invalid JSON (rare): let the json package say what is wrong, at its import cost.
        import json

        return json.loads(text)

except (ImportError, AttributeError):  # pragma: no cover - other interpreters
    import json

    def _dumps(value: Mapping[str, Any]) -> bytes:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")

    def _loads(data: bytes) -> Any:
        return json.loads(data)


def encode_raw(head: bytes, payload: bytes = b"", *, version: int = VERSION) -> bytes:
    """One frame around an already encoded header (tests use it to send bad JSON)."""
    first = _FIRST.pack(MAGIC, version, 0, 0, len(head), len(payload))
    return first + _CRC.pack(binascii.crc32(first)) + head + payload


def encode_frame(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """One frame; raises ProtocolError when the header or payload is too large."""
    try:
        head = _dumps(header)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from exc
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return encode_raw(head, payload)


class Frame:
    """A decoded frame: its JSON header and raw payload."""

    __slots__ = ("header", "payload")

    def __init__(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.header = header
        self.payload = payload

    @property
    def op(self) -> str:
        op: str = self.header["op"]
        return op

    @property
    def id(self) -> int | None:
        value: int | None = self.header.get("id")
        return value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Frame)
            and self.header == other.header
            and self.payload == other.payload
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Frame({self.header!r}, <{len(self.payload)} bytes>)"


class FrameError:
    """A stretch of the stream that was not a valid frame; ``id`` when it could be read."""

    __slots__ = ("id", "message")

    def __init__(self, message: str, id: int | None = None) -> None:
        self.message = message
        self.id = id

    def __repr__(self) -> str:
        return f"FrameError({self.message!r}, id={self.id!r})"


class FrameDecoder:
    """Incremental decoder: feed bytes, get frames and errors; never raises on bad input."""

    def __init__(self, max_header: int = MAX_HEADER, max_payload: int = MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max_header = max_header
        self._max_payload = max_payload
        #: True while skipping a corrupt region (reported once, when it starts).
        self._lost = False

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        self._buffer += data
        events: list[Frame | FrameError] = []
        buffer = self._buffer
        while True:
            start = buffer.find(MAGIC)
            if start < 0:
                keep = _partial_magic(buffer)
                if len(buffer) > keep:
                    self._lose(events, "bytes outside any frame")
                    del buffer[: len(buffer) - keep]
                return events
            if start > 0:
                self._lose(events, "bytes outside any frame")
                del buffer[:start]
            if len(buffer) < PREFIX_SIZE:
                return events
            _, version, _, _, hlen, plen = _FIRST.unpack_from(buffer)
            (crc,) = _CRC.unpack_from(buffer, 16)
            problem = ""
            if binascii.crc32(buffer[:16]) != crc:
                problem = "frame prefix checksum mismatch"
            elif version != VERSION:
                problem = f"unsupported protocol version {version}"
            elif hlen > self._max_header or plen > self._max_payload:
                problem = f"frame too large (header {hlen}, payload {plen} bytes)"
            if problem:
                self._lose(events, problem)
                del buffer[:1]
                continue
            end = PREFIX_SIZE + hlen + plen
            if len(buffer) < end:
                return events
            head = bytes(buffer[PREFIX_SIZE : PREFIX_SIZE + hlen])
            payload = bytes(buffer[PREFIX_SIZE + hlen : end])
            del buffer[:end]
            self._lost = False
            events.append(_parse(head, payload))

    def _lose(self, events: list[Frame | FrameError], why: str) -> None:
        if not self._lost:
            self._lost = True
            events.append(FrameError(why))


def _partial_magic(buffer: bytearray) -> int:
    """How many trailing bytes could be the start of a magic still to come."""
    for size in range(min(len(MAGIC) - 1, len(buffer)), 0, -1):
        if buffer.endswith(MAGIC[:size]):
            return size
    return 0


def _parse(head: bytes, payload: bytes) -> Frame | FrameError:
    try:
        header = _loads(head)
    except (ValueError, StopIteration, RecursionError) as exc:
        return FrameError(f"header is not valid JSON: {exc or 'no value'}")
    if not isinstance(header, dict):
        return FrameError("header is not a JSON object")
    ident = header.get("id")
    if ident is not None and (not isinstance(ident, int) or isinstance(ident, bool)):
        return FrameError("id must be an integer")
    if not isinstance(header.get("op"), str):
        return FrameError("op must be a string", ident)
    return Frame(header, payload)


# The agent proper.


def _status_of(status: int) -> tuple[int | None, int | None]:
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def _root_of(header: Mapping[str, Any]) -> tuple[str, tuple[int, int] | None]:
    """An exec's ``root`` ('' for the machine's own) and ``user`` (None for the agent's)."""
    root, user = header.get("root") or "", header.get("user")
    if not isinstance(root, str) or (root and not root.startswith("/")):
        raise Refusal("protocol", "root must be an absolute path")
    if user is None:
        return root, None
    if (
        not isinstance(user, list) or len(user) != 2
        or not all(isinstance(n, int) and 0 <= n < 65536 for n in user)
    ):
        raise Refusal("protocol", "user must be [uid, gid]")
    return root, (user[0], user[1])


def _which(name: str, path: str) -> str | None:
    if "/" in name:
        return name
    for folder in path.split(":"):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class _Exec:
    __slots__ = (
        "collect",
        "deadline",
        "id",
        "kill_at",
        "open_fds",
        "orphan",
        "pid",
        "started",
        "status",
        "stdin_buf",
        "stdin_fd",
        "stdin_more",
        "timed_out",
    )

    def __init__(self, ident: int, pid: int) -> None:
        self.id = ident
        self.pid = pid
        self.started = time.monotonic()
        self.deadline: float | None = None
        self.kill_at: float | None = None
        self.status: int | None = None
        self.timed_out = False
        self.open_fds: set[int] = set()
        self.stdin_fd: int | None = None
        self.stdin_buf = bytearray()
        self.stdin_more = False
        #: Its client went away (listening agent): it runs on, unreported.
        self.orphan = False
        #: Files to read and send back with the exit.
        self.collect: list[str] = []


class _Forward:
    """A listener inside the machine and the connections it accepted (its streams)."""

    __slots__ = ("id", "next", "paused", "server", "streams", "window")

    def __init__(self, ident: int, server: Any, window: int) -> None:
        self.id = ident
        self.server = server
        #: What the client accepts per stream beyond what it credited back.
        self.window = window
        self.streams: dict[int, _Stream] = {}
        self.next = 1
        #: Not accepting: FORWARD_STREAMS are open (or the agent is out of descriptors).
        self.paused = False


class _Stream:
    """One accepted connection of a forward."""

    __slots__ = ("acked", "credit", "eof_in", "handler", "id", "out", "read_done", "sock",
                 "write_done")

    def __init__(self, ident: int, sock: Any, credit: int) -> None:
        self.id = ident
        self.sock = sock
        #: Bytes we may still send to the client.
        self.credit = credit
        #: From the client, not yet written to the connection (at most FORWARD_WINDOW).
        self.out = bytearray()
        #: Written to the connection, not yet credited back to the client.
        self.acked = 0
        self.eof_in = False
        self.read_done = False
        self.write_done = False
        self.handler: Callable[[int], None] | None = None


class Refusal(Exception):
    """A request the agent refuses; becomes an error reply of that ``kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Agent:
    """Serves one connection at a time over a pair of descriptors."""

    def __init__(
        self,
        grace: float = DEFAULT_GRACE,
        *,
        user: tuple[int, int] | None = None,
    ) -> None:
        self.grace = grace
        #: The unprivileged user commands run as (a sandbox's ``runner``); None: commands run
        #: as the agent does.
        self._user = user
        #: sudo requests: the root command's pid -> the connection that asked for it.
        self._sudo: dict[int, int] = {}
        self._sudo_conns: dict[int, int] = {}
        self._libc: Any = None
        #: Set by ``shutdown`` or SIGTERM: a listening agent then stops accepting clients.
        self.stopped = False
        self._cwd = os.getcwd()
        self._poll = select.poll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._execs: dict[int, _Exec] = {}
        #: Commands whose client went away (listening agent), until they end.
        self._orphans: set[_Exec] = set()
        self._by_pid: dict[int, _Exec] = {}
        #: fd -> exec for pipes still open; detached ones (exec ended) are read and dropped.
        self._pipes: dict[int, tuple[_Exec, str]] = {}
        self._groups: set[int] = set()
        self._puts: dict[int, list[bytes]] = {}
        self._forwards: dict[int, _Forward] = {}
        self._write_lock = _thread.allocate_lock()
        self._out = -1
        self._in = -1
        self._decoder = FrameDecoder()
        self._closing = False
        self._devnull = os.open(os.devnull, os.O_RDWR)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._register(self._wake_r, self._on_wake)

    # Event loop.

    def serve(self, in_fd: int, out_fd: int, *, keep: bool = False) -> None:
        """Serve one connection until it closes or asks to shut down; ``keep``: a closed
        connection leaves the processes running (for the next client, see ``listen``)."""
        self._in, self._out = in_fd, out_fd
        self._decoder = FrameDecoder()
        self._puts.clear()
        self._closing = False
        os.set_blocking(in_fd, False)
        self._register(in_fd, self._on_input)
        while not self._closing:
            self._step()
        self._unregister(in_fd)
        for forward in list(self._forwards.values()):  # nobody is left to serve them
            self._close_forward(forward, notify=False)
        if keep and not self.stopped:
            self._out = -1
            self._orphan_all()
        else:
            self._terminate_all()

    def listen(self, server: int) -> None:
        """Serve the clients of a listening socket one after another, until ``shutdown`` or
        SIGTERM; the commands' processes live on between clients."""
        accepted: list[int] = []
        while not self.stopped:
            self._register(server, lambda fd: accepted.append(_accept(fd)))
            while not accepted and not self.stopped:
                self._step()
            self._unregister(server)
            if accepted:
                conn = accepted.pop()
                self.serve(conn, conn, keep=True)
                os.close(conn)
        self._terminate_all()

    def _orphan_all(self) -> None:
        for ex in self._execs.values():
            ex.orphan = True
            self._orphans.add(ex)
            if ex.stdin_fd is not None:  # nobody is left to write it: end of input
                self._unregister(ex.stdin_fd)
                os.close(ex.stdin_fd)
                ex.stdin_fd = None
        self._execs.clear()

    def _step(self) -> None:
        timeout = self._next_timer()
        try:
            ready = self._poll.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            ready = []
        for fd, _ in ready:
            handler = self._handlers.get(fd)
            if handler is not None:
                try:
                    handler(fd)
                except Exception as exc:  # a bug must not take every command down with it
                    sys.stderr.write(f"agent: handling fd {fd} failed: {exc!r}\n")
        self._run_timers()

    def _register(self, fd: int, handler: Callable[[int], None], write: bool = False) -> None:
        self._handlers[fd] = handler
        self._poll.register(fd, select.POLLOUT if write else select.POLLIN)

    def _watch(self, fd: int, handler: Callable[[int], None], events: int) -> None:
        """Poll ``fd`` for ``events`` (both ways at once, unlike ``_register``); 0: not at all."""
        if not events:
            self._unregister(fd)
        elif fd in self._handlers:
            self._handlers[fd] = handler
            self._poll.modify(fd, events)
        else:
            self._handlers[fd] = handler
            self._poll.register(fd, events)

    def _unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def _next_timer(self) -> float | None:
        moments = [
            moment
            for ex in (*self._execs.values(), *self._orphans)
            for moment in (ex.deadline, ex.kill_at)
            if moment is not None
        ]
        return min(moments) - time.monotonic() if moments else None

    def _run_timers(self) -> None:
        now = time.monotonic()
        for ex in (*self._execs.values(), *self._orphans):
            if ex.deadline is not None and now >= ex.deadline:
                ex.deadline = None
                ex.timed_out = True
                self._terminate(ex, self.grace)
            if ex.kill_at is not None and now >= ex.kill_at:
                ex.kill_at = None
                _killpg(ex.pid, signal.SIGKILL)

    # Output to the client.

    def send(self, header: Mapping[str, Any], payload: bytes = b"") -> None:
        data = memoryview(encode_frame(header, payload))
        with self._write_lock:
            while data and self._out >= 0:
                try:
                    written = os.write(self._out, data)
                except BlockingIOError:
                    select.select([], [self._out], [])
                    continue
                except OSError:  # the client went away
                    self._closing = True
                    return
                data = data[written:]

    def _error(self, ident: int | None, kind: str, message: str) -> None:
        self.send({"op": "error", "id": ident, "kind": kind, "message": message})

    # Input from the client.

    def _on_input(self, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closing = True
            return
        for event in self._decoder.feed(data):
            if isinstance(event, FrameError):
                self._error(event.id, "protocol", event.message)
                continue
            try:
                self._dispatch(event)
            except Refusal as exc:
                self._error(event.id, exc.kind, str(exc))
            except Exception as exc:  # never let one request take the agent down
                self._error(event.id, "internal", f"{type(exc).__name__}: {exc}")

    def _dispatch(self, frame: Frame) -> None:
        handler = self._ops.get(frame.op)
        if handler is None:
            raise Refusal("protocol", f"unknown op {frame.op!r}")
        handler(self, frame)

    def _op_ping(self, frame: Frame) -> None:
        self.send({"op": "pong", "id": frame.id, "version": VERSION, "pid": os.getpid()})

    def _op_shutdown(self, frame: Frame) -> None:
        self.stopped = self._closing = True
        self._unregister(self._in)
        self._terminate_all()
        self.send({"op": "ok", "id": frame.id})

    def _op_kill(self, frame: Frame) -> None:
        ident = frame.header.get("target")
        target = self._execs.get(ident) if isinstance(ident, int) else None
        if target is not None:
            grace = frame.header.get("grace")
            self._terminate(target, self.grace if not isinstance(grace, int | float) else grace)
        self.send({"op": "ok", "id": frame.id, "found": target is not None})

    # Commands.

    def _op_exec(self, frame: Frame) -> None:
        header = frame.header
        ident = frame.id
        if ident is None or ident in self._execs:
            raise Refusal("protocol", "exec needs an id that is not in use")
        argv = _argv_of(header)
        env = dict(os.environ)
        extra = header.get("env") or {}
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise Refusal("protocol", "env must map strings to strings")
        env.update(extra)
        root, user = _root_of(header)
        # In a container's root the program is looked up there, by the child (see _fork_exec).
        program = argv[0] if root else _which(argv[0], env.get("PATH", os.defpath))
        if program is None:
            raise Refusal("exec", f"{argv[0]}: command not found")
        cwd = header.get("cwd")
        timeout = header.get("timeout")
        wants_stdin = bool(header.get("stdin"))
        collect = _paths_of(header.get("collect") or [], "collect")
        # In a container's root, as its user: the files are that user's (a step appends to them).
        self._write_files(header.get("write") or {}, user if root else None)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if wants_stdin else (self._devnull, -1)
        try:
            pid = self._spawn(program, argv, env, cwd, in_r, out_w, err_w, root, user)
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r if wants_stdin else -1):
                if fd >= 0:
                    os.close(fd)
        ex = _Exec(ident, pid)
        ex.collect = collect
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            ex.deadline = ex.started + max(0.0, float(timeout))
        self._execs[ident] = ex
        self._by_pid[pid] = ex
        self._groups.add(pid)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            ex.open_fds.add(fd)
            self._pipes[fd] = (ex, stream)
            self._register(fd, self._on_output)
        if wants_stdin:
            os.set_blocking(in_w, False)
            ex.stdin_fd = in_w
            ex.stdin_more = bool(header.get("more"))
            self._feed_stdin(ex, frame.payload)
        self._reap()

    def _write_files(self, files: object, owner: tuple[int, int] | None = None) -> None:
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise Refusal("protocol", "write must map paths to strings")
        for name, text in files.items():
            path = os.path.join(self._cwd, name)
            try:
                folder, made = os.path.dirname(path), []
                while folder and not os.path.lexists(folder):
                    made.append(folder)
                    folder = os.path.dirname(folder)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                if owner is not None:
                    for item in made:
                        os.lchown(item, *owner)
                    os.fchown(fd, *owner)
                try:
                    data = memoryview(text.encode("utf-8", "surrogateescape"))
                    while data:
                        data = data[os.write(fd, data) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise Refusal("exec", f"cannot write {name}: {exc.strerror}") from None

    def _collected(self, ex: _Exec) -> tuple[list[list[object]], bytes]:
        listing: list[list[object]] = []
        chunks: list[bytes] = []
        budget = MAX_PAYLOAD - CHUNK  # one exit frame carries them all
        for name in ex.collect:
            limit = min(MAX_COLLECT, budget)
            data = b""
            try:
                fd = os.open(os.path.join(self._cwd, name), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
            else:
                try:
                    while len(data) <= limit:
                        more = os.read(fd, _READ_SIZE)
                        if not more:
                            break
                        data += more
                except OSError:
                    pass
                finally:
                    os.close(fd)
            truncated = len(data) > limit
            data = data[:limit]
            budget -= len(data)
            listing.append([name, len(data), truncated])
            chunks.append(data)
        return listing, b"".join(chunks)

    def _spawn(
        self,
        program: str,
        argv: list[str],
        env: dict[str, str],
        cwd: object,
        stdin: int,
        stdout: int,
        stderr: int,
        root: str = "",
        user: tuple[int, int] | None = None,
    ) -> int:
        actions = [
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ]
        # posix_spawn has no chdir action before Python 3.13: the child inherits our cwd, and
        # only this thread spawns, so switching around the call is safe.
        if root:
            if cwd is not None and not isinstance(cwd, str):
                raise Refusal("protocol", "cwd must be a string")
            try:
                return self._fork_exec(
                    program, argv, env, actions, user or (0, 0), root=root, cwd=cwd or "/"
                )
            except OSError as exc:
                raise Refusal("exec", f"cannot run {argv[0]} in {root}: {exc.strerror}") from exc
        return self._spawn_as(program, argv, env, cwd, actions, user or self._user)

    def _spawn_as(
        self, program: str, argv: list[str], env: dict[str, str], cwd: object,
        actions: list[tuple[int, int, int]], user: tuple[int, int] | None = None,
    ) -> int:
        try:
            if cwd is not None:
                if not isinstance(cwd, str):
                    raise Refusal("protocol", "cwd must be a string")
                os.chdir(os.path.join(self._cwd, cwd))
            if user is not None:
                return self._fork_exec(program, argv, env, actions, user)
            return os.posix_spawn(
                program,
                argv,
                env,
                file_actions=actions,
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM),
                setsigmask=(),
            )
        except OSError as exc:
            where = f" in {cwd}" if cwd is not None else ""
            raise Refusal("exec", f"cannot run {argv[0]}{where}: {exc.strerror}") from exc
        finally:
            if cwd is not None:
                os.chdir(self._cwd)

    def _fork_exec(
        self, program: str, argv: list[str], env: dict[str, str],
        actions: list[tuple[int, int, int]], user: tuple[int, int], *, root: str = "",
        cwd: str = "/",
    ) -> int:
        """posix_spawn cannot change users: fork, become ``user`` (all its ids, no groups),
        exec. Without ambient capabilities (dropped once, below) the program starts with none:
        the agent's stay with the agent. With ``root`` the child first chroots there (a
        container's file system in the machine), and finds ``program`` and ``cwd`` inside."""
        if self._libc is None:
            import ctypes  # only in machines whose agent switches users

            self._libc = ctypes.CDLL(None, use_errno=True)
            self._libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
        libc = self._libc
        uid, gid = user
        report_r, report_w = os.pipe()  # close-on-exec: silent when the exec succeeded
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, until exec
            try:
                os.setsid()
                if root:
                    os.chroot(root)
                    os.chdir(cwd)
                for _, fd, target in actions:
                    os.dup2(fd, target)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())
                # Nothing inheritable (root would inherit it all through exec); root keeps
                # what acts on files, nothing that reaches the agent.
                header, sets = self._capability_sets()
                libc.capget(header, sets)
                sets[2] = sets[5] = 0
                if libc.capset(header, sets) != 0:
                    raise OSError(1, "capset")
                if uid == 0:
                    for cap in ROOT_DROPS:
                        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                            raise OSError(1, "PR_CAPBSET_DROP")
                elif libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: none to gain
                    raise OSError(1, "PR_SET_NO_NEW_PRIVS")
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                if root:
                    program = _which(program, env.get("PATH", DEFAULT_PATH)) or program
                os.execve(program, argv, env)
            except OSError as exc:
                os.write(report_w, str(exc.errno or 0).encode())
            finally:
                os._exit(127)
        os.close(report_w)
        try:
            failed = os.read(report_r, 32)
        finally:
            os.close(report_r)
        if failed:
            os.waitpid(pid, 0)
            code = int(failed)
            raise OSError(code, os.strerror(code))
        return pid

    @staticmethod
    def _capability_sets() -> tuple[Any, Any]:
        """capget/capset's header (version 3, this process) and its two 32-bit halves of the
        effective, permitted and inheritable sets."""
        import ctypes

        return (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()

    def _op_stdin(self, frame: Frame) -> None:
        ex = self._execs.get(frame.id)  # type: ignore[arg-type]
        if ex is None or ex.stdin_fd is None:
            return  # the command ended or closed its input: drop the data, as a pipe would
        ex.stdin_more = bool(frame.header.get("more"))
        self._feed_stdin(ex, frame.payload)

    def _feed_stdin(self, ex: _Exec, data: bytes) -> None:
        ex.stdin_buf += data
        self._write_stdin(ex)

    def _write_stdin(self, ex: _Exec) -> None:
        fd = ex.stdin_fd
        if fd is None:
            return
        try:
            while ex.stdin_buf:
                written = os.write(fd, ex.stdin_buf[:_READ_SIZE])
                del ex.stdin_buf[:written]
        except BlockingIOError:
            if fd not in self._handlers:
                self._register(fd, lambda _fd: self._write_stdin(ex), write=True)
            return
        except OSError:  # the command closed its input
            ex.stdin_buf.clear()
            ex.stdin_more = False
        if not ex.stdin_more:
            self._unregister(fd)
            os.close(fd)
            ex.stdin_fd = None
        elif fd in self._handlers:
            self._unregister(fd)

    def _on_output(self, fd: int) -> None:
        ex, stream = self._pipes[fd]
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(fd)
        elif ex.status is None and not ex.orphan:
            self.send({"op": stream, "id": ex.id}, data)

    def _close_pipe(self, fd: int) -> None:
        ex, _ = self._pipes.pop(fd)
        ex.open_fds.discard(fd)
        self._unregister(fd)
        os.close(fd)

    def _on_wake(self, fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass
        self._reap()

    def _reap(self) -> None:
        # Our only children are the commands (and, as PID 1, orphans we adopted): reaping any
        # child is safe, and unknown ones are simply forgotten.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, status)

    def _exited(self, pid: int, status: int) -> None:
        if pid in self._sudo:
            self._sudo_exited(pid, status)
            return
        ex = self._by_pid.pop(pid, None)
        if ex is None:
            return
        ex.status = status
        if ex.timed_out or ex.kill_at is not None:
            _killpg(pid, signal.SIGKILL)  # finish off whatever of the group survived SIGTERM
        # Everything the main process wrote is in the pipes now: forward it, then report.
        for fd in sorted(ex.open_fds):
            self._drain(fd)
        if ex.stdin_fd is not None:
            self._unregister(ex.stdin_fd)
            os.close(ex.stdin_fd)
            ex.stdin_fd = None
        if not _group_alive(pid):
            self._groups.discard(pid)  # nothing of it left to kill at shutdown
        if ex.orphan:
            self._orphans.discard(ex)
            return
        code, sig = _status_of(status)
        del self._execs[ex.id]
        reply: dict[str, object] = {
            "op": "exit",
            "id": ex.id,
            "code": code,
            "signal": sig,
            "duration": time.monotonic() - ex.started,
            "timed_out": ex.timed_out,
        }
        payload = b""
        if ex.collect:
            reply["files"], payload = self._collected(ex)
        self.send(reply, payload)

    def _drain(self, fd: int) -> None:
        while fd in self._pipes:
            ex, stream = self._pipes[fd]
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return  # a background process holds the pipe: keep reading, but drop it
            except OSError:
                data = b""
            if not data:
                self._close_pipe(fd)
                return
            if not ex.orphan:
                self.send({"op": stream, "id": ex.id}, data)

    # Killing.

    def _terminate(self, ex: _Exec, grace: float) -> None:
        if ex.status is not None:
            return
        _killpg(ex.pid, signal.SIGTERM)
        _killpg(ex.pid, signal.SIGCONT)
        deadline = time.monotonic() + max(0.0, grace)
        ex.kill_at = deadline if ex.kill_at is None else min(ex.kill_at, deadline)

    def _terminate_all(self) -> None:
        """Kill every command and every group ever started, waiting at most the grace period."""
        for ex in (*self._execs.values(), *self._orphans):
            self._terminate(ex, self.grace)
        deadline = time.monotonic() + self.grace
        while (self._execs or self._orphans) and time.monotonic() < deadline:
            self._step()
        for pgid in self._groups:
            _killpg(pgid, signal.SIGKILL)
        self._groups.clear()
        while (self._execs or self._orphans) and time.monotonic() < deadline + 1:
            self._step()

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stopped = self._closing = True

    # sudo: root inside the machine, asked for over a socket by the machine's sudo command.

    def listen_sudo(self, path: str) -> None:
        """Take sudo requests on a unix socket at ``path``: one message (JSON with argv, env,
        cwd and user, plus the caller's stdin, stdout and stderr), answered with the exit."""
        import _socket

        server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        server.bind(path)
        os.chmod(path, 0o666)
        server.listen(16)
        server.setblocking(False)
        self._sudo_server = server
        self._register(server.fileno(), self._on_sudo_connect)

    def _on_sudo_connect(self, fd: int) -> None:
        try:
            conn, _ = self._sudo_server._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        os.set_blocking(conn, False)
        self._sudo_conns[conn] = 0
        self._register(conn, self._on_sudo_message)

    def _on_sudo_message(self, conn: int) -> None:
        import _socket

        pid = self._sudo_conns.get(conn, 0)
        if pid:  # the caller went away (or spoke again) while its command runs: end it
            _killpg(pid, signal.SIGKILL)
            self._sudo_close(conn)
            return
        sock = _socket.socket(fileno=os.dup(conn))
        fds: list[int] = []
        try:
            data, ancillary, _, _ = sock.recvmsg(1 << 20, _socket.CMSG_SPACE(3 * 4))
            for level, kind, raw in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds += [
                        int.from_bytes(raw[i : i + 4], sys.byteorder)
                        for i in range(0, len(raw) - len(raw) % 4, 4)
                    ]
            if not data or len(fds) != 3:
                raise Refusal("protocol", "sudo: a request is JSON and three descriptors")
            request = _loads(data)
            pid = self._sudo_spawn(request, fds)
        except Exception as exc:
            message = str(exc) if isinstance(exc, Refusal) else f"sudo: {exc}"
            try:  # noqa: SIM105
                os.write(conn, _dumps({"error": message}))
            except OSError:
                pass
            self._sudo_close(conn)
            return
        finally:
            sock.close()
            for fd in fds:
                os.close(fd)
        self._sudo[pid] = conn
        self._sudo_conns[conn] = pid
        self._groups.add(pid)

    def _sudo_spawn(self, request: object, fds: list[int]) -> int:
        if not isinstance(request, dict):
            raise Refusal("protocol", "sudo: the request must be an object")
        argv = _argv_of(request)
        env = request.get("env")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise Refusal("protocol", "sudo: env must map strings to strings")
        program = _which(argv[0], env.get("PATH", os.defpath))
        if program is None:
            raise Refusal("exec", f"sudo: {argv[0]}: command not found")
        user = (0, 0) if request.get("user", "root") == "root" else self._user
        if user is None:
            raise Refusal("exec", f"sudo: unknown user {request.get('user')!r}")
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        cwd = request.get("cwd")
        cwd = cwd if isinstance(cwd, str) and os.path.isdir(cwd) else None
        return self._spawn_as(program, argv, env, cwd, actions, user)

    def _sudo_exited(self, pid: int, status: int) -> None:
        conn = self._sudo.pop(pid)
        code, sig = _status_of(status)
        try:  # noqa: SIM105
            os.write(conn, _dumps({"code": code, "signal": sig}))
        except OSError:
            pass
        self._sudo_close(conn)

    def _sudo_close(self, conn: int) -> None:
        pid = self._sudo_conns.pop(conn, 0)
        self._sudo.pop(pid, None)
        self._unregister(conn)
        os.close(conn)

    # Files.

    def _op_put(self, frame: Frame) -> None:
        dest = frame.header.get("dest")
        if not isinstance(dest, str) or not dest.startswith("/"):
            raise Refusal("protocol", "put needs an absolute dest directory")
        ident = frame.id
        if ident is None:
            raise Refusal("protocol", "put needs an id")
        chunks = self._puts.setdefault(ident, [])
        chunks.append(frame.payload)
        if not frame.header.get("more"):
            del self._puts[ident]
            _thread.start_new_thread(self._put, (ident, dest, b"".join(chunks)))

    def _put(self, ident: int, dest: str, data: bytes) -> None:
        try:
            _unpack(dest, data)
        except Exception as exc:
            self._error(ident, "transfer", f"cannot unpack into {dest}: {exc}")
        else:
            self.send({"op": "ok", "id": ident})

    def _op_get(self, frame: Frame) -> None:
        path = frame.header.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise Refusal("protocol", "get needs an absolute path")
        _thread.start_new_thread(self._get, (frame.id, path))

    def _get(self, ident: int | None, path: str) -> None:
        try:
            data = _pack(path)
        except Exception as exc:
            self._error(ident, "transfer", f"cannot read {path}: {exc}")
            return
        for offset in range(0, len(data), CHUNK):
            self.send({"op": "data", "id": ident}, data[offset : offset + CHUNK])
        self.send({"op": "done", "id": ident, "size": len(data)})

    # Port forwards: a listener inside the machine whose connections become streams.

    def _op_forward(self, frame: Frame) -> None:
        import _socket

        ident = frame.id
        if ident is None or ident in self._forwards or ident in self._execs:
            raise Refusal("protocol", "forward needs an id that is not in use")
        port = frame.header.get("port", 0)
        window = frame.header.get("window", FORWARD_WINDOW)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise Refusal("protocol", "forward needs a port from 0 to 65535")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise Refusal("protocol", "window must be a positive integer")
        server = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            server.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen(FORWARD_STREAMS)
        except OSError as exc:
            server.close()
            raise Refusal("forward", f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
        server.setblocking(False)
        forward = _Forward(ident, server, window)
        self._forwards[ident] = forward
        self._register(server.fileno(), lambda fd: self._accept_streams(forward))
        port = server.getsockname()[1]
        self.send({"op": "listening", "id": ident, "port": port, "window": FORWARD_WINDOW})

    def _op_unforward(self, frame: Frame) -> None:
        target = frame.header.get("target")
        forward = self._forwards.get(target) if isinstance(target, int) else None
        if forward is not None:
            self._close_forward(forward, notify=True)
        self.send({"op": "ok", "id": frame.id, "found": forward is not None})

    def _close_forward(self, forward: _Forward, *, notify: bool) -> None:
        del self._forwards[forward.id]
        self._unregister(forward.server.fileno())
        forward.server.close()
        for stream in list(forward.streams.values()):
            self._end_stream(forward, stream, abort=True)
        if notify:
            self.send({"op": "done", "id": forward.id})

    def _accept_streams(self, forward: _Forward) -> None:
        import _socket

        while len(forward.streams) < FORWARD_STREAMS:
            try:
                fd, _ = forward.server._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: take the rest once a stream ended
                if exc.errno == errno.ECONNABORTED:
                    continue
                break
            sock = _socket.socket(fileno=fd)
            sock.setblocking(False)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            stream = _Stream(forward.next, sock, forward.window)
            forward.next += 1
            forward.streams[stream.id] = stream
            stream.handler = lambda fd, s=stream: self._on_stream(forward, s)
            self.send({"op": "accept", "id": forward.id, "stream": stream.id})
            self._watch_stream(stream)
        self._unregister(forward.server.fileno())
        forward.paused = True

    def _watch_stream(self, stream: _Stream) -> None:
        events = 0
        if not stream.read_done and stream.credit > 0:
            events |= select.POLLIN
        if stream.out:
            events |= select.POLLOUT
        assert stream.handler is not None
        self._watch(stream.sock.fileno(), stream.handler, events)

    def _on_stream(self, forward: _Forward, stream: _Stream) -> None:
        if stream.out or (stream.eof_in and not stream.write_done):
            self._flush_stream(forward, stream)
        if stream.id in forward.streams and not stream.read_done and stream.credit > 0:
            self._read_stream(forward, stream)
        if stream.id in forward.streams:
            self._watch_stream(stream)

    def _read_stream(self, forward: _Forward, stream: _Stream) -> None:
        try:
            data = stream.sock.recv(min(stream.credit, FORWARD_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._reset_stream(forward, stream, exc.strerror or str(exc))
            return
        header = {"op": "chunk" if data else "eof", "id": forward.id, "stream": stream.id}
        self.send(header, data)
        stream.credit -= len(data)
        if not data:
            stream.read_done = True
            self._stream_ended(forward, stream)

    def _flush_stream(self, forward: _Forward, stream: _Stream) -> None:
        try:
            while stream.out:
                written = stream.sock.send(stream.out)
                del stream.out[:written]
                stream.acked += written
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._reset_stream(forward, stream, exc.strerror or str(exc))
            return
        if stream.acked and (not stream.out or stream.acked >= FORWARD_WINDOW // 4):
            self.send({"op": "credit", "id": forward.id, "stream": stream.id,
                       "bytes": stream.acked})
            stream.acked = 0
        if stream.eof_in and not stream.out and not stream.write_done:
            stream.write_done = True
            try:  # noqa: SIM105
                stream.sock.shutdown(1)  # SHUT_WR: the client's side ended
            except OSError:
                pass
            self._stream_ended(forward, stream)

    def _stream_ended(self, forward: _Forward, stream: _Stream) -> None:
        if stream.read_done and stream.write_done:
            self._end_stream(forward, stream, abort=False)

    def _reset_stream(self, forward: _Forward, stream: _Stream, message: str) -> None:
        self.send({"op": "reset", "id": forward.id, "stream": stream.id, "message": message})
        self._end_stream(forward, stream, abort=True)

    def _end_stream(self, forward: _Forward, stream: _Stream, *, abort: bool) -> None:
        """Forget a stream and close its connection (``abort``: with a reset, as a program
        whose peer vanished would see)."""
        import _socket

        del forward.streams[stream.id]
        self._unregister(stream.sock.fileno())
        if abort:
            try:  # noqa: SIM105
                stream.sock.setsockopt(
                    _socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            except OSError:
                pass
        stream.sock.close()
        if forward.paused and forward.id in self._forwards:
            forward.paused = False
            self._register(forward.server.fileno(), lambda fd: self._accept_streams(forward))

    def _stream_of(self, frame: Frame) -> tuple[_Forward, _Stream] | None:
        """The live stream a frame is about; frames for ended streams are dropped."""
        forward = self._forwards.get(frame.id) if frame.id is not None else None
        ident = frame.header.get("stream")
        if forward is None or not isinstance(ident, int):
            return None
        stream = forward.streams.get(ident)
        return None if stream is None else (forward, stream)

    def _op_chunk(self, frame: Frame) -> None:
        found = self._stream_of(frame)
        if found is None:
            return
        forward, stream = found
        if stream.eof_in or len(stream.out) + len(frame.payload) > FORWARD_WINDOW:
            self._reset_stream(forward, stream, "the host sent past its window or its end")
            return
        stream.out += frame.payload
        self._on_stream(forward, stream)

    def _op_credit(self, frame: Frame) -> None:
        found = self._stream_of(frame)
        amount = frame.header.get("bytes")
        if found is not None and isinstance(amount, int) and amount > 0:
            forward, stream = found
            stream.credit = min(stream.credit + amount, forward.window)
            self._watch_stream(stream)

    def _op_eof(self, frame: Frame) -> None:
        found = self._stream_of(frame)
        if found is not None:
            forward, stream = found
            stream.eof_in = True
            self._on_stream(forward, stream)

    def _op_reset(self, frame: Frame) -> None:
        found = self._stream_of(frame)
        if found is not None:
            self._end_stream(*found, abort=True)

    _ops: ClassVar[dict[str, Callable[[Agent, Frame], None]]] = {
        "ping": _op_ping,
        "exec": _op_exec,
        "stdin": _op_stdin,
        "kill": _op_kill,
        "put": _op_put,
        "get": _op_get,
        "forward": _op_forward,
        "unforward": _op_unforward,
        "chunk": _op_chunk,
        "credit": _op_credit,
        "eof": _op_eof,
        "reset": _op_reset,
        "shutdown": _op_shutdown,
    }


def _argv_of(header: Mapping[str, Any]) -> list[str]:
    shell = header.get("shell")
    if isinstance(shell, str):
        return ["/bin/sh", "-c", shell]
    argv = header.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return argv
    raise Refusal("protocol", "exec needs argv (a non-empty list of strings) or shell")


def _paths_of(value: object, name: str) -> list[str]:
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return value
    raise Refusal("protocol", f"{name} must be a list of paths")


def _killpg(pgid: int, sig: int) -> None:
    try:  # noqa: SIM105 - contextlib is not worth its import time here
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _unpack(dest: str, data: bytes) -> None:
    import io
    import tarfile

    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            target = os.path.realpath(os.path.join(root, member.name))
            if member.name.startswith("/") or os.path.commonpath([root, target]) != root:
                raise ValueError(f"{member.name!r} would land outside {dest}")
        tar.extractall(root, members)  # every member was checked above


def _pack(path: str) -> bytes:
    import io
    import tarfile

    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip("/")) or ".")
    return buffer.getvalue()


# Transports.


def _listen(family: int, address: str | tuple[int, int]) -> int:
    import socket

    server = socket.socket(family, socket.SOCK_STREAM)
    if isinstance(address, str):
        # Bind under a temporary name and rename once listening, so that a client that sees
        # the path never connects to a socket that is not accepting yet (ECONNREFUSED).
        pending = f"{address}.{os.getpid()}"
        try:
            server.bind(pending)
        except OSError:  # the longer name does not fit a socket address: bind in place
            server.bind(address)
            server.listen(1)
            return server.detach()
        server.listen(1)
        os.rename(pending, address)
    else:
        server.bind(address)
        server.listen(1)
    return server.detach()


def _accept(server: int) -> int:
    import socket

    with socket.socket(fileno=server) as listener:
        conn, _ = listener.accept()
        listener.detach()
    return conn.detach()


def main(argv: list[str]) -> int:
    """Parse the transport options and serve until the stream says goodbye."""
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    unknown = set(options) - {
        "--fd",
        "--device",
        "--unix",
        "--vsock",
        "--grace",
        "--user",
        "--sudo",
        "--own",
    }
    if unknown or len(argv) % 2:
        sys.stderr.write(
            "usage: agent.py [--fd N | --device PATH | --unix PATH | --vsock PORT]"
            " [--grace SECONDS] [--user UID:GID [--sudo SOCKET] [--own PATH:PATH...]]\n"
        )
        return 2
    user = None
    if "--user" in options:
        uid, _, gid = options["--user"].partition(":")
        user = (int(uid), int(gid or uid))
    agent = Agent(grace=float(options.get("--grace", DEFAULT_GRACE)), user=user)
    if "--sudo" in options:
        agent.listen_sudo(options["--sudo"])
    if user is not None and "--own" in options:
        # Directories the host made for the user but could not give it (an unprivileged host
        # cannot chown to the machine's ids): the agent can.
        for root in options["--own"].split(":"):
            for folder, _, files in os.walk(root):
                os.lchown(folder, *user)
                for name in files:
                    os.lchown(os.path.join(folder, name), *user)
    if user is not None:
        # Files the agent writes (checkouts, scripts, uploads) belong to the user; the agent
        # keeps its own real and saved ids, so the user's processes cannot signal or trace it.
        os.setgroups([])
        os.setresgid(os.getgid(), user[1], os.getgid())
        os.setresuid(os.getuid(), user[0], os.getuid())
    # Commands get /dev/null, never our stream, as inherited stdin/stdout.
    if "--fd" in options:
        fd = int(options["--fd"])
        os.set_inheritable(fd, False)
        agent.serve(fd, fd)
    elif "--device" in options:
        while not agent.stopped:  # a port outlives its host side: serve it again on return
            try:
                fd = os.open(options["--device"], os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
            except OSError as exc:
                sys.stderr.write(f"agent: cannot open {options['--device']}: {exc.strerror}\n")
                return 1
            if os.isatty(fd):  # a console port: no echo, no line editing, bytes as they are
                import termios
                import tty

                tty.setraw(fd, termios.TCSANOW)  # keeping what the host sent already
            agent.serve(fd, fd)
            os.close(fd)
            if not agent.stopped:
                time.sleep(0.1)  # the host side is away: do not spin on its absence
    elif "--unix" in options or "--vsock" in options:
        import socket

        if "--unix" in options:
            server = _listen(socket.AF_UNIX, options["--unix"])
        else:
            server = _listen(socket.AF_VSOCK, (socket.VMADDR_CID_ANY, int(options["--vsock"])))
        agent.listen(server)  # a listening agent outlives its clients: serves the next
    else:
        in_fd, out_fd = os.dup(0), os.dup(1)
        os.dup2(agent._devnull, 0)
        os.dup2(agent._devnull, 1)
        agent.serve(in_fd, out_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
