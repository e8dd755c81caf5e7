"""Port forwards: programs inside real machines reach an HTTP server on a host unix socket.

The server (``HostService``) is what the runner's artifact and cache services will be: HTTP on
a unix socket of the host. Inside the machine ``GUEST`` (python3, standard library) talks to it
through the forward's port, as a job's step would. The frames themselves are checked against a
real agent spoken to in raw frames, and the host side against a scripted agent that breaks the
rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import socket
import textwrap
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.machines.test_agent import RawAgent
from tests.machines.test_network import probe
from tests.server.machines_helpers import machine_service
from vmrunner.errors import ForwardError, ForwardUnsupported
from vmrunner.machines.agent import (
    FORWARD_STREAMS,
    FORWARD_WINDOW,
    Frame,
    FrameDecoder,
    encode_frame,
)
from vmrunner.machines.base import ExecResult, Machine, MachineSpec
from vmrunner.machines.client import AgentClient
from vmrunner.machines.local import PIPE_SIZE, AgentMachine
from vmrunner.machines.providers import get_provider
from vmrunner.machines.testing import CountingProvider

MiB = 1 << 20
PRIVATE_NETWORK = os.geteuid() == 0 and os.path.exists("/usr/bin/slirp4netns")

#: What a job's step would run: ``python3 -c GUEST PORT COMMAND ARGS...``.
GUEST = textwrap.dedent("""
    import hashlib, http.client, json, os, socket, sys, threading, time
    port, command, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def connect(buffer=0):
        s = socket.socket()
        if buffer:  # a small kernel buffer, so what piles up is vmrunner's, not the kernel's
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        s.connect(("127.0.0.1", port))
        return s

    def wait_for(path):
        while path and not os.path.exists(path):
            time.sleep(0.02)

    if command == "get":
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", args[0])
        print(c.getresponse().read().decode(), end="")
    elif command == "download":  # SIZE [GO_FILE]: read nothing until GO_FILE exists
        s = connect(64 << 10)
        s.sendall(f"GET /blob?size={args[0]} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
        wait_for(args[1] if len(args) > 1 else "")
        reply = s.makefile("rb")
        while reply.readline() not in (b"\\r\\n", b""):
            pass
        digest, size = hashlib.sha256(), 0
        while size < int(args[0]) and (chunk := reply.read1(1 << 20)):
            digest.update(chunk)
            size += len(chunk)
        print(size, digest.hexdigest())
    elif command == "upload":  # SIZE [PROGRESS_FILE]
        size, digest, sent = int(args[0]), hashlib.sha256(), 0
        s = connect(64 << 10)
        head = f"POST /upload HTTP/1.1\\r\\nContent-Length: {size}\\r\\nConnection: close\\r\\n"
        s.sendall(head.encode() + b"\\r\\n")
        while sent < size:
            block = os.urandom(min(1 << 20, size - sent))
            digest.update(block)
            s.sendall(block)
            sent += len(block)
            if len(args) > 1:
                with open(args[1] + ".new", "w") as f:
                    f.write(str(sent))
                os.rename(args[1] + ".new", args[1])
        reply = s.makefile("rb").read().split(b"\\r\\n\\r\\n", 1)[1].decode()
        print(reply.strip(), "|", size, digest.hexdigest())
    elif command == "many":  # COUNT DELAY: COUNT requests at once, each answered after DELAY
        count, answers = int(args[0]), {}
        def ask(n):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("GET", f"/slow?n={n}&delay={args[1]}")
                answers[n] = c.getresponse().read().decode()
            except Exception as exc:
                answers[n] = repr(exc)
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps([answers[n] for n in range(count)]))
    elif command == "refused":
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            print("connected")
        except OSError as exc:
            print(type(exc).__name__)
""")


class HostService:
    """A small HTTP/1.1 server on a host unix socket, counting what it sent and received.

    ``GET /hello``; ``GET /slow?n=N&delay=S``; ``GET /blob?size=N`` (random bytes, digest kept
    in ``digests``); ``POST /upload`` (answers ``size sha256``; not read while ``reading`` is
    clear); ``GET /abort`` (half a body, then the connection dropped).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent = 0
        self.received = 0
        self.active = 0
        self.most_active = 0
        self.broken = 0
        #: Connections it was given, in all.
        self.connections = 0
        self.digests: list[str] = []
        self.reading = asyncio.Event()
        self.reading.set()
        #: Set while no connection is open.
        self.quiet = asyncio.Event()
        self.quiet.set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HostService:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.connections += 1
        self.most_active = max(self.most_active, self.active)
        self.quiet.clear()
        try:
            while await self._answer(reader, writer):
                pass
            writer.close()  # once what was written is sent
            await writer.wait_closed()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.broken += 1
            writer.transport.abort()
        finally:
            self.active -= 1
            if not self.active:
                self.quiet.set()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.read(1)
        if not head:
            return False  # the client ended between requests
        head += await reader.readuntil(b"\r\n\r\n")
        line, *fields = head.decode().split("\r\n")
        _, target, _ = line.split(" ")
        headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields if f)}
        path, _, query = target.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        if path == "/hello":
            body = b"hello from the host\n"
        elif path == "/slow":
            await asyncio.sleep(float(params["delay"]))
            body = f"answer {params['n']}".encode()
        elif path == "/upload":
            await self.reading.wait()
            size, digest = int(headers["content-length"]), hashlib.sha256()
            left = size
            while left:
                chunk = await reader.readexactly(min(MiB, left))
                digest.update(chunk)
                self.received += len(chunk)
                left -= len(chunk)
            body = f"{size} {digest.hexdigest()}".encode()
        elif path in ("/blob", "/abort"):
            size = int(params.get("size", 8 * MiB))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            await self._send_blob(writer, size if path == "/blob" else size // 2)
            if path == "/abort":
                writer.transport.abort()
                return False
            return True
        else:
            body = b"not found"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        return headers.get("connection") != "close"

    async def _send_blob(self, writer: asyncio.StreamWriter, size: int) -> None:
        digest, left = hashlib.sha256(), size
        while left:
            chunk = os.urandom(min(MiB, left))
            digest.update(chunk)
            writer.write(chunk)
            await writer.drain()
            self.sent += len(chunk)
            left -= len(chunk)
        self.digests.append(digest.hexdigest())


async def guest(machine: Machine, port: int, *args: str, timeout: float = 120) -> ExecResult:  # noqa: ASYNC109
    return await machine.exec(["python3", "-c", GUEST, str(port), *args], timeout=timeout)


async def guest_ok(machine: Machine, port: int, *args: str) -> str:
    result = await guest(machine, port, *args)
    assert result.ok, result.stderr.decode()
    return result.stdout.decode()


async def settled(read: Callable[[], int | Awaitable[int]], what: str) -> int:
    """Wait until a counter is positive and has stopped moving (for half a second); its value."""
    last, still = -1, 0
    try:
        async with asyncio.timeout(30):
            while still < 10:
                await asyncio.sleep(0.05)
                value = read()
                value = await value if inspect.isawaitable(value) else value
                still = still + 1 if value == last and value > 0 else 0
                last = value
    except TimeoutError:
        pytest.fail(f"{what} never settled (last seen: {last})")
    return last


async def no_connection_left(service: HostService) -> None:
    async with asyncio.timeout(30):
        await service.quiet.wait()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[HostService]:
    async with HostService(tmp_path / "service.sock") as service:
        yield service


@pytest.fixture(params=["sandbox-private", "sandbox-host", "host", "remote"])
async def machine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Machine]:
    name, _, network = str(request.param).partition("-")
    if network == "private" and not PRIVATE_NETWORK:
        pytest.skip("a private network needs root and slirp4netns")
    with contextlib.ExitStack() as stack:
        options: dict[str, Any] = {"grace": 0.5}
        if name == "remote":  # a real machine service (sandboxes) on 127.0.0.1
            live = stack.enter_context(machine_service(tmp_path / "service.db"))
            options = {"url": live.url, "token": live.token("forward")}
        provider = get_provider(name, **options)
        assert provider.capabilities.forward
        machine = await provider.allocate(MachineSpec(network=network or "host"))  # type: ignore[arg-type]
        try:
            yield machine
        finally:
            await provider.release(machine)
            await provider.aclose()


# Real machines.


async def test_a_command_in_the_machine_reaches_the_host_socket(
    machine: Machine, service: HostService
) -> None:
    async with machine.forward(service.path) as port:
        assert 0 < port < 65536
        assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
        assert await guest_ok(machine, port, "get", "/slow?n=7&delay=0") == "answer 7"


async def test_the_forward_holds_across_snapshots_and_restores(service: HostService) -> None:
    """The listener lives in the agent, which a sandbox restore (a file system restore) leaves
    running: a job rolled back, or seeded from a snapshot, still reaches its services."""
    provider = get_provider("sandbox", grace=0.5)
    machine = await provider.allocate(MachineSpec(network="private" if PRIVATE_NETWORK else "host"))
    try:
        async with machine.forward(service.path) as port:
            first = await machine.snapshot("before")
            await machine.exec(["sh", "-c", "echo later > later.txt"])
            assert (await machine.exec(["test", "-e", "later.txt"])).ok
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
            await machine.snapshot("after")
            await machine.restore(first)
            assert (await machine.exec(["test", "-e", "later.txt"])).exit_code == 1
            assert await guest_ok(machine, port, "get", "/slow?n=3&delay=0") == "answer 3"
            answers = json.loads(await guest_ok(machine, port, "many", "8", "0.1"))
            assert answers == [f"answer {n}" for n in range(8)]
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_many_connections_at_once(machine: Machine, service: HostService) -> None:
    count = FORWARD_STREAMS + 32
    async with machine.forward(service.path) as port:
        answers = json.loads(await guest_ok(machine, port, "many", str(count), "0.3"))
    assert answers == [f"answer {n}" for n in range(count)]
    # The agent holds at most FORWARD_STREAMS connections open; the rest waited their turn.
    assert 8 < service.most_active <= FORWARD_STREAMS


async def test_large_upload_and_download_arrive_intact(
    machine: Machine, service: HostService
) -> None:
    size = 64 * MiB
    async with machine.forward(service.path) as port:
        uploaded = await guest_ok(machine, port, "upload", str(size))
        downloaded = await guest_ok(machine, port, "download", str(size))
    answer, sent = uploaded.strip().split(" | ")
    assert answer == sent  # the server received the size and digest the machine sent
    assert downloaded.split() == [str(size), service.digests[-1]]
    assert service.broken == 0


@pytest.mark.parametrize("direction", ["download", "upload"])
async def test_a_stalled_connection_holds_up_neither_memory_nor_other_traffic(
    machine: Machine, service: HostService, direction: str
) -> None:
    """One end stops reading mid-transfer: the other end is held back by the windows (what
    moved stays far below the size), while commands and other connections carry on."""
    size = 128 * MiB
    flag = f"{machine.paths.temp}/go-{direction}"
    async with machine.forward(service.path) as port:
        if direction == "download":
            transfer = asyncio.create_task(guest(machine, port, "download", str(size), flag))
            moved = await settled(lambda: service.sent, "the server's sending")
        else:
            service.reading.clear()
            transfer = asyncio.create_task(guest(machine, port, "upload", str(size), flag))

            async def progress() -> int:
                result = await machine.exec(["cat", flag])
                return int(result.stdout or 0)

            moved = await settled(progress, "the machine's sending")
        assert moved < size * 3 // 8, f"{moved} bytes moved while one end was not reading"
        for _ in range(5):  # the agent's stream is not held up by the stalled connection
            async with asyncio.timeout(10):
                assert (await machine.exec(["echo", "alive"])).stdout == b"alive\n"
        async with asyncio.timeout(30):
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
        if direction == "download":
            await machine.exec(["touch", flag])
        else:
            service.reading.set()
        result = await transfer
    assert result.ok, result.stderr.decode()
    if direction == "download":
        assert result.stdout.decode().split() == [str(size), service.digests[-1]]
    else:
        answer, sent = result.stdout.decode().strip().split(" | ")
        assert answer == sent


async def test_connections_dropped_mid_transfer_leave_the_forward_working(
    machine: Machine, service: HostService
) -> None:
    async with machine.forward(service.path) as port:
        # A step killed (by its timeout) while it downloads, reading nothing...
        killed = await guest(machine, port, "download", str(64 * MiB), "/nonexistent", timeout=1)
        assert killed.timed_out
        # ... and while it uploads to a server that does not read.
        service.reading.clear()
        killed = await guest(machine, port, "upload", str(64 * MiB), timeout=1)
        assert killed.timed_out
        service.reading.set()
        # The server drops a connection halfway through a body.
        dropped = await guest(machine, port, "get", "/abort?size=8388608", timeout=60)
        assert not dropped.ok
        assert b"IncompleteRead" in dropped.stderr or b"Connection" in dropped.stderr
        await no_connection_left(service)  # every end saw its connection go
        assert service.broken >= 2
        assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
        assert (await machine.exec(["echo", "alive"])).stdout == b"alive\n"


async def test_closing_the_forward_frees_its_port(machine: Machine, service: HostService) -> None:
    async with machine.forward(service.path) as port:
        with pytest.raises(ForwardError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with machine.forward(service.path, port):
                pass
        assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
    assert await guest_ok(machine, port, "refused") == "ConnectionRefusedError\n"
    async with machine.forward(service.path, port) as again:
        assert again == port
        assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"


async def test_a_missing_host_socket_resets_the_connection(
    machine: Machine, tmp_path: Path
) -> None:
    async with machine.forward(tmp_path / "nobody.sock") as port:
        result = await guest(machine, port, "get", "/hello")
    assert not result.ok
    assert b"ConnectionResetError" in result.stderr or b"RemoteDisconnected" in result.stderr


@pytest.mark.skipif(not PRIVATE_NETWORK, reason="a private network needs root and slirp4netns")
async def test_a_private_machine_still_reaches_no_host_service_but_its_forward(
    service: HostService,
) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"host service\n")
        writer.close()

    loopback = await asyncio.start_server(greet, "127.0.0.1", 0)
    host_port = loopback.sockets[0].getsockname()[1]
    provider = get_provider("sandbox", grace=0.5)
    machine = await provider.allocate(MachineSpec(network="private"))
    try:
        async with machine.forward(service.path) as port:
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
            seen = await probe(machine, f"tcp 10.0.2.2 {host_port}", f"tcp 127.0.0.1 {host_port}")
            assert not any(outcome.startswith("ok") for outcome in seen.values()), seen
    finally:
        await provider.release(machine)
        await provider.aclose()
        loopback.close()


async def test_a_machine_without_the_capability_says_so(tmp_path: Path) -> None:
    class Bare(Machine):
        provider_name = "bare"  # type: ignore[assignment]
        record = None  # type: ignore[assignment]

        async def exec(self, *args: object, **kwargs: object) -> ExecResult:  # type: ignore[override]
            raise NotImplementedError

        async def put(self, dest_dir: str, tar_data: bytes) -> None:
            raise NotImplementedError

        async def get(self, path: str) -> bytes:
            raise NotImplementedError

    with pytest.raises(ForwardUnsupported, match="the bare provider cannot forward ports"):
        async with Bare().forward(tmp_path / "service.sock"):
            pass


async def test_a_socket_path_longer_than_an_address_holds_is_refused(
    tmp_path: Path, service: HostService
) -> None:
    provider = CountingProvider(get_provider("host", grace=0.5))  # the double passes it on
    machine = await provider.allocate(MachineSpec())
    try:
        with pytest.raises(ForwardError, match="at most 107 bytes"):
            async with machine.forward(tmp_path / ("x" * 120)):
                pass
        async with machine.forward(service.path) as port:  # the client carries on
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_the_agents_pipes_hold_whole_frames() -> None:
    """A forward's throughput rests on it: 64 KiB pipes halve it (``python -m bench forward``)."""
    provider = get_provider("host", grace=0.5)
    machine = await provider.allocate(MachineSpec())
    try:
        assert isinstance(machine, AgentMachine)
        process: Any = machine.process
        pipes = [
            process.stdin.transport.get_extra_info("pipe"),
            process.stdout._transport.get_extra_info("pipe"),
        ]
        sizes = [fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) for pipe in pipes]
        assert sizes == [PIPE_SIZE, PIPE_SIZE]
    finally:
        await provider.release(machine)
        await provider.aclose()


# The frames, against a real agent spoken to in raw bytes.


class Raw(RawAgent):
    def frames(self, op: str, within: int = 1000) -> Iterator[Frame]:
        """Frames up to (and with) the first of ``op``."""
        for _ in range(within):
            frame = self.receive()
            yield frame
            if frame.op == op:
                return
        pytest.fail(f"no {op} from the agent")

    def listen(self, ident: int, window: int = FORWARD_WINDOW, port: int = 0) -> int:
        self.send(encode_frame({"op": "forward", "id": ident, "port": port, "window": window}))
        reply = self.receive()
        assert (reply.op, reply.id) == ("listening", ident), reply
        assert reply.header["window"] == FORWARD_WINDOW
        port = reply.header["port"]
        assert isinstance(port, int)
        return port


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Raw]:
    agent = Raw(tmp_path)
    yield agent
    if agent.process.poll() is None:
        agent.process.kill()
        agent.process.wait()


def fill(program: socket.socket) -> None:
    while True:
        program.send(b"x" * MiB)


def test_the_agent_sends_no_more_than_the_window_until_credited(raw: Raw) -> None:
    port = raw.listen(1, window=64 * 1024)
    program = socket.create_connection(("127.0.0.1", port))
    program.setblocking(False)
    with program:
        with pytest.raises(BlockingIOError):  # the kernel's buffers fill: nobody reads them
            fill(program)
        accept = raw.receive()
        assert (accept.op, accept.id, accept.header["stream"]) == ("accept", 1, 1)
        got = 0
        while got < 64 * 1024:
            frame = raw.receive()
            assert (frame.op, frame.header["stream"]) == ("chunk", 1)
            got += len(frame.payload)
        assert got == 64 * 1024
        raw.ping(2)  # no chunk came before the pong: the window is spent
        raw.send(encode_frame({"op": "credit", "id": 1, "stream": 1, "bytes": 1000}))
        frame = raw.receive()
        assert (frame.op, len(frame.payload)) == ("chunk", 1000)
        raw.ping(3)


def test_the_agent_resets_a_stream_sent_past_its_window(raw: Raw) -> None:
    port = raw.listen(1)
    with socket.create_connection(("127.0.0.1", port)) as program:
        assert raw.receive().op == "accept"
        raw.send(encode_frame({"op": "chunk", "id": 1, "stream": 1}, b"a" * (FORWARD_WINDOW + 1)))
        frames = list(raw.frames("reset"))
        assert "past its window" in frames[-1].header["message"]
        with pytest.raises(ConnectionResetError):
            program.recv(MiB)
    raw.ping(2)


def test_half_closes_travel_both_ways_and_end_the_stream(raw: Raw) -> None:
    port = raw.listen(1)
    with socket.create_connection(("127.0.0.1", port)) as program:
        assert raw.receive().op == "accept"
        program.sendall(b"request")
        program.shutdown(socket.SHUT_WR)
        frames = list(raw.frames("eof"))
        assert b"".join(f.payload for f in frames if f.op == "chunk") == b"request"
        raw.send(encode_frame({"op": "chunk", "id": 1, "stream": 1}, b"answer"))
        raw.send(encode_frame({"op": "eof", "id": 1, "stream": 1}))
        assert program.recv(100) == b"answer"
        assert program.recv(100) == b""  # the host's side ended
        credit = raw.receive()
        assert (credit.op, credit.header["bytes"]) == ("credit", 6)
    # The stream is over: its frames are dropped without a word.
    raw.send(encode_frame({"op": "chunk", "id": 1, "stream": 1}, b"late"))
    raw.ping(2)


def test_a_taken_port_and_bad_arguments_are_refused(raw: Raw) -> None:
    port = raw.listen(1)
    raw.send(encode_frame({"op": "forward", "id": 2, "port": port}))
    reply = raw.receive()
    assert (reply.op, reply.header["kind"]) == ("error", "forward")
    assert f"cannot listen on 127.0.0.1:{port}" in reply.header["message"]
    for ident, bad in enumerate(({"port": -1}, {"port": "80"}, {"window": 0}), start=3):
        raw.send(encode_frame({"op": "forward", "id": ident, **bad}))
        reply = raw.receive()
        assert (reply.op, reply.id, reply.header["kind"]) == ("error", ident, "protocol")


def test_unforward_closes_the_listener_and_resets_every_connection(raw: Raw) -> None:
    port = raw.listen(1)
    with socket.create_connection(("127.0.0.1", port)) as program:
        assert raw.receive().op == "accept"
        raw.send(encode_frame({"op": "unforward", "id": 2, "target": 1}))
        done, ok = raw.receive(), raw.receive()
        assert (done.op, done.id) == ("done", 1)
        assert (ok.op, ok.id, ok.header["found"]) == ("ok", 2, True)
        with pytest.raises(ConnectionResetError):
            program.recv(100)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port)).close()
    raw.send(encode_frame({"op": "unforward", "id": 3, "target": 1}))
    assert raw.receive().header["found"] is False


# The host side, against a scripted agent that breaks the rules.


class ScriptedAgent:
    """The far end of a client's stream, written frame by frame by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def send(self, header: dict[str, object], payload: bytes = b"") -> None:
        self.writer.write(encode_frame(header, payload))

    async def expect(self, op: str, **fields: object) -> Frame:
        async with asyncio.timeout(10):
            while True:
                while self.frames:
                    frame = self.frames.pop(0)
                    if frame.op == op and all(frame.header.get(k) == v for k, v in fields.items()):
                        return frame
                data = await self.reader.read(MiB)
                assert data, "the client closed its stream"
                self.frames += [e for e in self.decoder.feed(data) if isinstance(e, Frame)]


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[AgentClient, ScriptedAgent]]:
    ours, theirs = socket.socketpair()
    client = AgentClient(*await asyncio.open_connection(sock=ours), name="scripted")
    agent = ScriptedAgent(*await asyncio.open_connection(sock=theirs))
    async with client:
        yield client, agent
    agent.writer.close()


async def open_forward(
    client: AgentClient, agent: ScriptedAgent, target: Path, stack: list[object]
) -> int:
    """Enter ``client.forward`` with the scripted agent answering; the forward's id."""
    manager = client.forward(target)
    entering = asyncio.create_task(manager.__aenter__())
    request = await agent.expect("forward")
    agent.send({"op": "listening", "id": request.id, "port": 4000, "window": FORWARD_WINDOW})
    assert await entering == 4000
    stack.append(manager)
    assert isinstance(request.id, int)
    return request.id


async def close_forwards(agent: ScriptedAgent, stack: Sequence[object]) -> None:
    for manager in stack:
        closing = asyncio.create_task(manager.__aexit__(None, None, None))  # type: ignore[attr-defined]
        request = await agent.expect("unforward")
        agent.send({"op": "done", "id": request.header["target"]})
        await closing


async def test_the_client_resets_a_stream_sent_past_its_window(
    scripted: tuple[AgentClient, ScriptedAgent], service: HostService
) -> None:
    client, agent = scripted
    stack: list[object] = []
    ident = await open_forward(client, agent, service.path, stack)
    agent.send({"op": "accept", "id": ident, "stream": 1})
    service.reading.clear()  # the host program does not read: nothing is credited back
    agent.send({"op": "chunk", "id": ident, "stream": 1},
               b"POST /upload HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
    for _ in range(FORWARD_WINDOW // MiB + 2):
        agent.send({"op": "chunk", "id": ident, "stream": 1}, b"x" * MiB)
    reset = await agent.expect("reset", stream=1)
    assert "past its window" in reset.header["message"]
    service.reading.set()
    await no_connection_left(service)  # and the host program's connection was cut
    assert service.broken == 1
    assert service.received < 2 * MiB
    await close_forwards(agent, stack)


async def test_the_client_reads_no_more_than_the_agent_has_room_for(
    scripted: tuple[AgentClient, ScriptedAgent], service: HostService
) -> None:
    client, agent = scripted
    stack: list[object] = []
    ident = await open_forward(client, agent, service.path, stack)
    agent.send({"op": "accept", "id": ident, "stream": 1})
    agent.send({"op": "chunk", "id": ident, "stream": 1},
               b"GET /blob?size=33554432 HTTP/1.1\r\n\r\n")
    got = 0
    while got < FORWARD_WINDOW:
        got += len((await agent.expect("chunk", stream=1)).payload)
    assert got == FORWARD_WINDOW
    moved = await settled(lambda: service.sent, "the server's sending")
    assert moved < 16 * MiB  # held back: the client has no credit left to read more
    agent.send({"op": "credit", "id": ident, "stream": 1, "bytes": 4096})
    assert len((await agent.expect("chunk", stream=1)).payload) <= 4096
    await close_forwards(agent, stack)


async def test_the_client_refuses_more_streams_than_the_agent_may_open(
    scripted: tuple[AgentClient, ScriptedAgent], service: HostService
) -> None:
    client, agent = scripted
    stack: list[object] = []
    ident = await open_forward(client, agent, service.path, stack)
    for stream in range(1, FORWARD_STREAMS + 2):
        agent.send({"op": "accept", "id": ident, "stream": stream})
    reset = await agent.expect("reset", stream=FORWARD_STREAMS + 1)
    assert "too many connections" in reset.header["message"]
    await close_forwards(agent, stack)
    await no_connection_left(service)


async def test_a_dead_agent_ends_the_forward_without_hanging(
    scripted: tuple[AgentClient, ScriptedAgent], service: HostService
) -> None:
    client, agent = scripted
    manager = client.forward(service.path)
    entering = asyncio.create_task(manager.__aenter__())
    request = await agent.expect("forward")
    agent.send({"op": "listening", "id": request.id, "port": 4000, "window": FORWARD_WINDOW})
    await entering
    agent.send({"op": "accept", "id": request.id, "stream": 1})
    agent.send({"op": "chunk", "id": request.id, "stream": 1}, b"GET /hello HTTP/1.1\r\n\r\n")
    await agent.expect("chunk", stream=1)
    agent.writer.close()  # the agent goes away mid-stream
    async with asyncio.timeout(10):
        await manager.__aexit__(None, None, None)
    assert not client.alive


# Other providers.


async def test_a_firecracker_guest_forwards_over_vsock(
    tmp_path: Path, service: HostService
) -> None:
    from tests.machines.test_firecracker import emulated

    kernel, rootfs = tmp_path / "vmlinux", tmp_path / "rootfs.ext4"
    kernel.write_bytes(b"\x7fELF not really a kernel")
    rootfs.write_bytes(b"")
    provider = emulated(tmp_path, (kernel, rootfs))
    assert provider.capabilities.forward
    machine = await provider.allocate(MachineSpec(network="none"))
    try:
        async with machine.forward(service.path) as port:
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
            downloaded = await guest_ok(machine, port, "download", str(16 * MiB))
            assert downloaded.split() == [str(16 * MiB), service.digests[-1]]
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_a_qemu_guest_reaches_the_host_socket_and_nothing_else(
    service: HostService,
) -> None:
    from tests.machines.qemu_fixtures import qemu_image, test_images_dir

    qemu_image()
    network = "private" if PRIVATE_NETWORK else "none"
    loopback = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    host_port = loopback.sockets[0].getsockname()[1]
    provider = get_provider("qemu", grace=0.5, images=test_images_dir())
    assert provider.capabilities.forward
    machine = await provider.allocate(MachineSpec(network=network))
    size = 16 * MiB
    try:
        async with machine.forward(service.path) as port:
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
            answers = json.loads(await guest_ok(machine, port, "many", "24", "0.2"))
            assert answers == [f"answer {n}" for n in range(24)]
            answer, sent = (await guest_ok(machine, port, "upload", str(size))).split(" | ")
            assert answer.strip() == sent.strip()
            service.reading.clear()
            stalled = asyncio.create_task(guest(machine, port, "upload", str(size)))
            async with asyncio.timeout(30):  # commands go on beside a stalled transfer
                assert (await machine.exec(["echo", "alive"])).stdout == b"alive\n"
            service.reading.set()
            assert (await stalled).ok
            downloaded = await guest_ok(machine, port, "download", str(size))
            assert downloaded.split() == [str(size), service.digests[-1]]
            seen = await probe(machine, f"tcp 10.0.2.2 {host_port}", f"tcp 127.0.0.1 {host_port}")
            assert not any(outcome.startswith("ok") for outcome in seen.values()), seen
        assert await guest_ok(machine, port, "refused") == "ConnectionRefusedError\n"
    finally:
        await provider.release(machine)
        await provider.aclose()
        loopback.close()
    assert provider.leftovers() == []

