"""The guest agent as a real subprocess, driven by the real client (and by raw bytes)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmrunner.errors import AgentError, ExecError, TransferError
from vmrunner.machines import agent as agent_module
from vmrunner.machines.agent import (
    MAGIC,
    MAX_PAYLOAD,
    PREFIX_SIZE,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
    encode_raw,
)
from vmrunner.machines.client import AgentClient

AGENT = [sys.executable, "-I", "-S", agent_module.__file__, "--grace", "0.5"]


# Helpers.


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


async def wait_for(predicate, what: str, within: float = 10.0) -> None:
    """Poll a condition (the system needs a moment to finish killing); fail if it never holds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what}")
        await asyncio.sleep(0.01)


async def group_gone(pgid: int) -> None:
    await wait_for(lambda: not group_members(pgid), f"process group {pgid} to die")


def tar_of(files: dict[str, bytes | str | None], modes: dict[str, int] | None = None) -> bytes:
    """A tar: bytes are files, str are symlink targets, None are directories."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.mode = (modes or {}).get(name, 0o644)
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = (modes or {}).get(name, 0o755)
                tar.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def untar(data: bytes) -> dict[str, tuple[str, bytes | str | None, int]]:
    out: dict[str, tuple[str, bytes | str | None, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                out[member.name] = ("file", extracted.read(), member.mode & 0o7777)
            elif member.issym():
                out[member.name] = ("link", member.linkname, 0)
            elif member.isdir():
                out[member.name] = ("dir", None, member.mode & 0o7777)
    return out


class Agent:
    """A running agent process with a client attached."""

    def __init__(self, process: asyncio.subprocess.Process, client: AgentClient) -> None:
        self.process = process
        self.client = client


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    process = await asyncio.create_subprocess_exec(
        *AGENT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    assert process.stdout is not None
    assert process.stdin is not None
    async with AgentClient(process.stdout, process.stdin, grace=0.5) as client:
        yield Agent(process, client)
    if process.returncode is None:
        process.kill()
    await process.wait()


class RawAgent:
    """An agent spoken to in raw bytes, for what the client would never send."""

    def __init__(self, tmp_path: Path) -> None:
        import subprocess

        self.process = subprocess.Popen(
            AGENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path
        )
        self.decoder = FrameDecoder()
        self.events: list[Frame | FrameError] = []

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def receive(self) -> Frame:
        assert self.process.stdout is not None
        while not self.events:
            data = os.read(self.process.stdout.fileno(), 65536)
            assert data, "the agent closed its output"
            self.events.extend(self.decoder.feed(data))
        event = self.events.pop(0)
        assert isinstance(event, Frame), f"the agent sent a malformed frame: {event}"
        return event

    def ping(self, ident: int) -> None:
        self.send(encode_frame({"op": "ping", "id": ident}))
        reply = self.receive()
        assert (reply.op, reply.id) == ("pong", ident)

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=10)


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[RawAgent]:
    agent = RawAgent(tmp_path)
    yield agent
    if agent.process.poll() is None:
        agent.process.kill()
        agent.process.wait()


# Commands.


async def test_ping_reports_version_and_round_trip(agent: Agent) -> None:
    assert await agent.client.ping() > 0


async def test_exec_argv_collects_output_and_exit_code(agent: Agent) -> None:
    result = await agent.client.exec(["sh", "-c", "printf out; printf err >&2; exit 3"])
    assert (result.exit_code, result.signal, result.timed_out) == (3, None, False)
    assert (result.stdout, result.stderr) == (b"out", b"err")
    assert not result.ok


async def test_exec_shell_string_env_and_cwd(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    result = await agent.client.exec(
        'printf "%s|%s" "$GREETING" "$(pwd)"', env={"GREETING": "hi there"}, cwd="sub"
    )
    assert result.stdout == f"hi there|{tmp_path / 'sub'}".encode()
    absolute = await agent.client.exec(["pwd"], cwd="/")
    assert absolute.stdout == b"/\n"


async def test_exec_environment_is_merged_over_the_agents(agent: Agent) -> None:
    result = await agent.client.exec(["sh", "-c", 'printf "%s" "$PATH"'], env={"X": "1"})
    assert result.stdout == os.environ["PATH"].encode()


async def test_exec_of_missing_program_or_directory_is_an_exec_error(agent: Agent) -> None:
    with pytest.raises(ExecError, match="not found"):
        await agent.client.exec(["no-such-program-anywhere"])
    with pytest.raises(ExecError, match="/no/such/dir"):
        await agent.client.exec(["true"], cwd="/no/such/dir")
    assert (await agent.client.exec(["true"])).ok  # and the agent carries on


async def test_exec_large_stdin_and_stdout(agent: Agent) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    result = await agent.client.exec(["cat"], stdin=data)
    assert result.stdout == data


async def test_empty_stdin_is_closed_at_once(agent: Agent) -> None:
    result = await agent.client.exec(["cat"], stdin=b"")
    assert (result.exit_code, result.stdout) == (0, b"")


async def test_output_is_streamed_in_order_per_stream(agent: Agent) -> None:
    chunks: list[tuple[str, bytes]] = []
    script = "i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done"
    result = await agent.client.exec(script, on_output=lambda s, d: chunks.append((s, d)))
    stdout = b"".join(d for s, d in chunks if s == "stdout")
    stderr = b"".join(d for s, d in chunks if s == "stderr")
    assert stdout == b"".join(b"out%d\n" % i for i in range(300))
    assert stderr == b"".join(b"err%d\n" % i for i in range(300))
    assert result.stdout == result.stderr == b""  # streamed, not collected


async def test_output_arrives_while_the_command_runs(agent: Agent, tmp_path: Path) -> None:
    # The command only ends once the test has seen its first line: no streaming, no exit.
    flag = tmp_path / "seen"

    def on_output(stream: str, data: bytes) -> None:
        if b"ready" in data:
            flag.touch()

    script = f"echo ready; while [ ! -e {flag} ]; do sleep 0.01; done; echo done"
    result = await asyncio.wait_for(agent.client.exec(script, on_output=on_output), 30)
    assert result.ok


async def test_commands_run_concurrently(agent: Agent, tmp_path: Path) -> None:
    # Each command waits for the file the next one creates: only concurrency completes this.
    count = 6
    scripts = [
        f"touch {tmp_path}/go{i}; while [ ! -e {tmp_path}/go{(i + 1) % count} ]; do sleep 0.01; "
        f"done"
        for i in range(count)
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*(agent.client.exec(s) for s in scripts)), 30
    )
    assert all(r.ok for r in results)


async def test_exec_writes_files_before_and_collects_them_after(
    agent: Agent, tmp_path: Path
) -> None:
    script = tmp_path / "deep" / "er" / "step.sh"
    out = tmp_path / "out"
    out.write_text("left by an earlier command\n")
    result = await agent.client.exec(
        ["sh", str(script)],
        write={
            str(script): f"printf '%s\\n' caf\u00e9 >> {out}\nprintf x > {tmp_path}/new\n",
            str(out): "",
        },
        collect=[str(out), f"{tmp_path}/new", f"{tmp_path}/never-written"],
    )
    assert result.ok
    assert result.files == {
        str(out): "café\n".encode(),
        f"{tmp_path}/new": b"x",
        f"{tmp_path}/never-written": b"",
    }
    assert result.truncated == frozenset()


async def test_collected_files_come_back_when_the_command_is_killed(
    agent: Agent, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = await agent.client.exec(
        f"echo before > {out}; sleep 100", timeout=0.2, collect=[str(out)]
    )
    assert result.timed_out
    assert result.files == {str(out): b"before\n"}


async def test_collected_files_are_cut_at_the_limit(agent: Agent, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"a" * (agent_module.MAX_COLLECT + 10))
    (tmp_path / "small").write_bytes(b"b")
    result = await agent.client.exec(["true"], collect=[str(big), str(tmp_path / "small")])
    assert len(result.files[str(big)]) == agent_module.MAX_COLLECT
    assert result.files[str(tmp_path / "small")] == b"b"
    assert result.truncated == {str(big)}


async def test_an_agent_that_returns_no_files_is_reported_as_too_old(tmp_path: Path) -> None:
    # An agent of an image built before ``collect`` existed ignores it: its exit lists no files.
    older = (
        "import sys; sys.path.insert(0, sys.argv[1]); import agent; "
        "send = agent.Agent.send; "
        "agent.Agent.send = lambda self, h, p=b'': send(self, {k: v for k, v in h.items() if k != "
        "'files'}, b'' if 'files' in h else p); "
        "sys.exit(agent.main([]))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-c", older, os.path.dirname(agent_module.__file__),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        async with AgentClient(process.stdout, process.stdin, grace=0.5) as client:
            assert (await client.exec(["true"])).ok
            with pytest.raises(AgentError, match="predates this vmrunner"):
                await client.exec(["true"], collect=[str(tmp_path / "x")])
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_a_file_that_cannot_be_written_is_an_exec_error_and_nothing_runs(
    agent: Agent, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ExecError, match=r"cannot write .*file/x"):
        await agent.client.exec(
            ["touch", str(tmp_path / "ran")], write={str(tmp_path / "file" / "x"): ""}
        )
    assert not (tmp_path / "ran").exists()


async def test_exit_by_signal(agent: Agent) -> None:
    result = await agent.client.exec("kill -9 $$")
    assert (result.exit_code, result.signal) == (None, signal.SIGKILL)


async def test_timeout_kills_the_whole_process_tree(agent: Agent) -> None:
    result = await agent.client.exec("echo $$; sleep 100 & sleep 100", timeout=0.3)
    assert result.timed_out
    assert result.signal == signal.SIGTERM
    await group_gone(int(result.stdout))


async def test_timeout_escalates_to_sigkill(agent: Agent) -> None:
    script = "trap '' TERM; echo $$; sleep 100 & while :; do sleep 0.05; done"
    result = await agent.client.exec(["sh", "-c", script], timeout=0.2)
    assert result.timed_out
    assert result.signal == signal.SIGKILL
    await group_gone(int(result.stdout))


async def test_cancellation_kills_the_process_group(agent: Agent) -> None:
    pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_output(stream: str, data: bytes) -> None:
        if not pid.done():
            pid.set_result(int(data.split()[0]))

    task = asyncio.create_task(
        agent.client.exec("echo $$; sleep 100 & sleep 100", on_output=on_output)
    )
    pgid = await asyncio.wait_for(pid, 10)
    assert group_members(pgid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await group_gone(pgid)
    assert (await agent.client.exec(["true"])).ok


async def test_a_cancelled_exec_returns_once_its_group_is_gone(agent: Agent) -> None:
    """SIGTERM ignored: the cancellation waits out the grace and the SIGKILL, not a moment less."""
    pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        agent.client.exec(
            "trap '' TERM; echo $$; sleep 100 & while :; do sleep 0.05; done",
            on_output=lambda stream, data: pid.done() or pid.set_result(int(data.split()[0])),
        )
    )
    pgid = await asyncio.wait_for(pid, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not group_members(pgid)


async def test_failing_output_callback_stops_the_command(agent: Agent) -> None:
    pids: list[int] = []

    def on_output(stream: str, data: bytes) -> None:
        pids.append(int(data.split()[0]))
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        await asyncio.wait_for(agent.client.exec("echo $$; sleep 100", on_output=on_output), 30)
    await group_gone(pids[0])


async def test_background_processes_outlive_their_command_until_the_agent_stops(
    agent: Agent,
) -> None:
    result = await agent.client.exec("sleep 100 >/dev/null 2>&1 & echo $!")
    child = int(result.stdout)
    assert result.ok
    assert group_members(child) or group_members(os.getpgid(child))
    pgid = os.getpgid(child)
    await agent.client.close()  # end of stream: the agent kills every group it started
    await asyncio.wait_for(agent.process.wait(), 10)
    await group_gone(pgid)


async def test_background_output_after_exit_does_not_block(agent: Agent) -> None:
    result = await agent.client.exec("(sleep 0.2; echo late) & echo early")
    assert result.stdout == b"early\n"
    later = await agent.client.exec(["echo", "next"])
    assert later.stdout == b"next\n"  # nothing of the background output leaks into it


async def test_shutdown_kills_commands_and_exits(agent: Agent) -> None:
    task = asyncio.create_task(agent.client.exec("echo $$; sleep 100"))
    await asyncio.sleep(0.05)
    await agent.client.shutdown()
    assert await asyncio.wait_for(agent.process.wait(), 10) == 0
    result = await task  # its exit was reported before the shutdown's reply
    assert result.signal == signal.SIGTERM


async def test_dead_agent_fails_pending_and_later_requests(agent: Agent) -> None:
    task = asyncio.create_task(agent.client.exec(["sleep", "100"]))
    await asyncio.sleep(0.05)
    agent.process.kill()
    with pytest.raises(AgentError, match="closed"):
        await asyncio.wait_for(task, 10)
    assert not agent.client.alive
    with pytest.raises(AgentError):
        await agent.client.ping()


async def test_garbage_from_the_agent_is_a_protocol_error() -> None:
    # A "agent" that answers with garbage: the client must fail pending requests cleanly.
    process = await asyncio.create_subprocess_exec(
        "sh", "-c", "head -c 1 >/dev/null; printf 'this is not the protocol'; exec sleep 5",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdin is not None
    async with AgentClient(process.stdout, process.stdin) as client:
        with pytest.raises(AgentError, match="malformed"):
            await asyncio.wait_for(client.ping(), 10)
    process.kill()
    await process.wait()


# Files.


async def test_put_get_round_trip_files_modes_links_and_dirs(agent: Agent, tmp_path: Path) -> None:
    files: dict[str, bytes | str | None] = {
        "tree": None,
        "tree/run.sh": b"#!/bin/sh\necho hi\n",
        "tree/data.bin": os.urandom(5000),
        "tree/empty": None,
        "tree/nested": None,
        "tree/nested/deep.txt": b"deep",
        "tree/link": "nested/deep.txt",
        "tree/dangling": "/nowhere",
    }
    modes = {"tree/run.sh": 0o755, "tree/data.bin": 0o600, "tree/empty": 0o700}
    dest = tmp_path / "in"
    await agent.client.put(str(dest), tar_of(files, modes))
    assert (dest / "tree/nested/deep.txt").read_bytes() == b"deep"
    assert os.readlink(dest / "tree/link") == "nested/deep.txt"
    assert (await agent.client.exec([str(dest / "tree/run.sh")])).stdout == b"hi\n"
    back = untar(await agent.client.get(str(dest / "tree")))
    assert back["tree/run.sh"] == ("file", files["tree/run.sh"], 0o755)
    assert back["tree/data.bin"] == ("file", files["tree/data.bin"], 0o600)
    assert back["tree/empty"] == ("dir", None, 0o700)
    assert back["tree/link"] == ("link", "nested/deep.txt", 0)
    assert back["tree/dangling"] == ("link", "/nowhere", 0)
    assert back["tree/nested/deep.txt"][1] == b"deep"


async def test_put_and_get_larger_than_one_frame(agent: Agent, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    await agent.client.put(str(tmp_path), tar_of({"big": data}))
    assert untar(await agent.client.get(str(tmp_path / "big")))["big"][1] == data


async def test_get_missing_path_and_put_escaping_dest_are_transfer_errors(
    agent: Agent, tmp_path: Path
) -> None:
    with pytest.raises(TransferError, match="no such file"):
        await agent.client.get(str(tmp_path / "missing"))
    with pytest.raises(TransferError, match="outside"):
        await agent.client.put(str(tmp_path / "d"), tar_of({"../escape": b"x"}))
    assert not (tmp_path / "escape").exists()
    with pytest.raises(TransferError):
        await agent.client.put(str(tmp_path), b"not a tar at all")
    with pytest.raises(AgentError, match="absolute"):
        await agent.client.get("relative/path")


# Malformed input.


def test_garbage_bytes_get_an_error_and_the_agent_resynchronises(raw: RawAgent) -> None:
    raw.send(b"hello, this is not a frame\n" * 10 + MAGIC[:2])
    error = raw.receive()
    assert (error.op, error.id, error.header["kind"]) == ("error", None, "protocol")
    raw.ping(1)
    assert raw.events == []  # one error for the whole garbage region


def test_bad_json_header_gets_an_error(raw: RawAgent) -> None:
    raw.send(encode_raw(b'{"op": "ping", "id": 1'))
    error = raw.receive()
    assert (error.op, error.id) == ("error", None)
    assert "JSON" in error.header["message"]
    raw.send(encode_raw(b"[1, 2]"))
    assert raw.receive().header["message"] == "header is not a JSON object"
    raw.ping(2)


def test_unknown_op_and_bad_arguments_get_errors_with_their_id(raw: RawAgent) -> None:
    raw.send(encode_frame({"op": "format-disk", "id": 7}))
    error = raw.receive()
    assert (error.op, error.id, error.header["kind"]) == ("error", 7, "protocol")
    raw.send(encode_frame({"op": "exec", "id": 8, "argv": "not a list"}))
    assert (raw.receive().id, raw.events) == (8, [])
    raw.send(encode_frame({"op": "exec", "id": 9, "argv": ["true"], "env": {"A": 1}}))
    assert raw.receive().header["message"] == "env must map strings to strings"
    raw.send(encode_frame({"op": "exec", "id": 11, "argv": ["true"], "write": {"/tmp/x": 1}}))
    assert raw.receive().header["message"] == "write must map paths to strings"
    raw.send(encode_frame({"op": "exec", "id": 12, "argv": ["true"], "collect": "/etc/passwd"}))
    assert raw.receive().header["message"] == "collect must be a list of paths"
    raw.ping(10)


def test_oversized_length_is_refused_without_waiting_for_it(raw: RawAgent) -> None:
    header = b'{"op":"ping","id":3}'
    frame = bytearray(encode_raw(header, b""))
    frame[16 - 4 : 16] = (MAX_PAYLOAD + 1).to_bytes(4, "big")
    # Keep the checksum valid, so the length itself is what is refused.
    import binascii

    frame[16:20] = binascii.crc32(frame[:16]).to_bytes(4, "big")
    raw.send(bytes(frame))
    error = raw.receive()
    assert error.op == "error"
    assert "too large" in error.header["message"]
    raw.ping(4)


def test_wrong_version_is_refused(raw: RawAgent) -> None:
    raw.send(encode_raw(b'{"op":"ping","id":1}', version=9))
    assert "version 9" in raw.receive().header["message"]
    raw.ping(2)


def test_end_of_stream_exits_cleanly(raw: RawAgent) -> None:
    raw.ping(1)
    assert raw.close() == 0


# The unix socket transport (the same loop serves vsock and serial devices).


async def test_unix_socket_transport_serves_one_client_after_another(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    process = await asyncio.create_subprocess_exec(*AGENT, "--unix", str(path))
    try:
        await wait_for(path.exists, "the agent's socket")
        for _ in range(2):
            reader, writer = await asyncio.open_unix_connection(str(path))
            async with AgentClient(reader, writer) as client:
                assert (await client.exec(["echo", "over unix"])).stdout == b"over unix\n"
        reader, writer = await asyncio.open_unix_connection(str(path))
        async with AgentClient(reader, writer) as client:
            await client.shutdown()
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """A real agent listening on a unix socket (as on vsock), and the socket's path."""
    path = tmp_path / "agent.sock"
    process = await asyncio.create_subprocess_exec(*AGENT, "--unix", str(path))
    try:
        await wait_for(path.exists, "the agent's socket")
        yield process, path
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def connect(path: Path) -> AgentClient:
    reader, writer = await asyncio.open_unix_connection(str(path))
    return AgentClient(reader, writer)


async def test_listening_agent_keeps_processes_across_reconnects_until_shutdown(
    listening: tuple[asyncio.subprocess.Process, Path], tmp_path: Path
) -> None:
    process, path = listening
    pids: list[int] = []
    async with await connect(path) as client:
        background = await client.exec("sleep 100 >/dev/null 2>&1 & echo $!")
        service = os.getpgid(int(background.stdout))
        running = asyncio.create_task(
            client.exec("echo $$; exec sleep 100", on_output=lambda _, data: pids.append(int(data)))
        )
        await wait_for(lambda: pids, "the running command's pid")
    with pytest.raises(AgentError, match="closed"):
        await running  # its client is gone: nobody hears of its exit any more
    # Without a client, the agent still reads its commands' output (no full pipe blocks them).
    marker = tmp_path / "wrote"
    async with await connect(path) as client:
        await client.exec(f"(head -c 1000000 /dev/zero; touch {marker}) &")
    await wait_for(marker.exists, "a command writing 1 MB while no client is connected")

    async with await connect(path) as client:
        assert group_members(service), "a background service died with the connection"
        assert group_members(pids[0]), "a running command died with the connection"
        # The new client numbers its requests afresh: the old ids are forgotten, not reused.
        assert (await client.exec(["echo", "again"])).stdout == b"again\n"
        await client.shutdown()
    assert await asyncio.wait_for(process.wait(), 10) == 0
    await group_gone(service)
    await group_gone(pids[0])


async def test_listening_agent_still_enforces_the_timeout_of_a_command_whose_client_left(
    listening: tuple[asyncio.subprocess.Process, Path], tmp_path: Path
) -> None:
    process, path = listening
    pid_file = tmp_path / "pid"
    with socket.socket(socket.AF_UNIX) as client:  # asks, and leaves without waiting
        client.connect(str(path))
        script = f"echo $$ > {pid_file}.new; mv {pid_file}.new {pid_file}; exec sleep 100"
        client.sendall(encode_frame({"op": "exec", "id": 1, "shell": script, "timeout": 2}))
    await wait_for(pid_file.exists, "the command's pid")
    await group_gone(int(pid_file.read_text()))
    assert process.returncode is None


def test_listening_agent_forgets_the_ids_of_a_departed_client(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "agent.sock"
    agent = subprocess.Popen([*AGENT, "--unix", str(path)])
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.socket(socket.AF_UNIX) as first:
            first.connect(str(path))
            first.sendall(encode_frame({"op": "exec", "id": 7, "argv": ["sleep", "100"]}))
            first.sendall(encode_frame({"op": "ping", "id": 8}))
            assert frames_from(first, 1)[0].op == "pong"
        with socket.socket(socket.AF_UNIX) as second:
            second.connect(str(path))
            second.sendall(encode_frame({"op": "kill", "id": 1, "target": 7}))
            reply = frames_from(second, 1)[0]
            assert (reply.op, reply.id, reply.header["found"]) == ("ok", 1, False)
            # The id is free again: a new command may take it.
            second.sendall(encode_frame({"op": "exec", "id": 7, "argv": ["true"]}))
            done = frames_from(second, 1)[0]
            assert (done.op, done.id, done.header["code"]) == ("exit", 7, 0)
            second.sendall(encode_frame({"op": "shutdown", "id": 9}))
            assert frames_from(second, 1)[0].op == "ok"
        assert agent.wait(10) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def frames_from(sock: socket.socket, count: int) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    while len(frames) < count:
        data = sock.recv(65536)
        assert data, "the agent closed the connection"
        for event in decoder.feed(data):
            assert isinstance(event, Frame), event
            frames.append(event)
    return frames


def test_bad_options_print_usage() -> None:
    import subprocess

    result = subprocess.run([*AGENT, "--bogus"], capture_output=True, check=False)
    assert result.returncode == 2
    assert b"usage" in result.stderr


# The frame decoder, fuzzed.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
headers = st.fixed_dictionaries(
    {"op": st.text(max_size=10), "id": st.none() | st.integers(0, 2**40)},
    optional={"x": json_values},
)
frames = st.tuples(headers, st.binary(max_size=200))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 5000), max_size=10))
def test_decoder_only_yields_frames_and_errors_on_any_input(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_header=512, max_payload=512)
    for piece in split(data, cuts):
        for event in decoder.feed(piece):
            assert isinstance(event, Frame | FrameError)


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, max_size=5), st.lists(st.integers(0, 5000), max_size=10))
def test_encoded_frames_decode_to_themselves_however_split(frames_, cuts: list[int]) -> None:
    stream = b"".join(encode_frame(h, p) for h, p in frames_)
    decoder = FrameDecoder()
    events = [e for piece in split(stream, cuts) for e in decoder.feed(piece)]
    assert events == [Frame(json.loads(json.dumps(h)), p) for h, p in frames_]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), frames)
def test_decoder_recovers_the_frame_after_garbage(garbage: bytes, frame) -> None:
    decoder = FrameDecoder()
    events = decoder.feed(garbage) + decoder.feed(encode_frame(*frame))
    assert events[-1] == Frame(json.loads(json.dumps(frame[0])), frame[1])
    assert all(isinstance(e, FrameError) for e in events[:-1]) or MAGIC in garbage


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_the_agents_json_codec_agrees_with_json(value) -> None:
    header = {"op": "x", "v": value}
    frame = FrameDecoder().feed(encode_frame(header))
    assert frame == [Frame(json.loads(json.dumps(header)), b"")]
    assert frame[0].header == json.loads(json.dumps(header))
    assert len(encode_frame(header)) >= PREFIX_SIZE


# The other transports, and the agent as PID 1 (as in a VM).


async def test_fd_transport_over_a_socketpair() -> None:
    ours, theirs = socket.socketpair()
    process = await asyncio.create_subprocess_exec(
        *AGENT, "--fd", str(theirs.fileno()), pass_fds=[theirs.fileno()]
    )
    theirs.close()
    reader, writer = await asyncio.open_connection(sock=ours)
    async with AgentClient(reader, writer) as client:
        result = await client.exec("echo $$; sleep 100 >/dev/null 2>&1 &")
        assert result.ok
        # The descriptor is the agent's alone: commands must not inherit it.
        fds = await client.exec(["ls", "/proc/self/fd"])
        assert sorted(fds.stdout.split()) == [b"0", b"1", b"2", b"3"]  # 3: ls's own listing
    assert await asyncio.wait_for(process.wait(), 10) == 0


def test_device_transport_over_a_terminal(tmp_path: Path) -> None:
    import pty
    import subprocess
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)  # the agent does so too, but only once it runs: bytes sent before count
    device = os.ttyname(slave)
    agent = subprocess.Popen([*AGENT, "--device", device], cwd=tmp_path)
    try:
        decoder = FrameDecoder()
        payload = bytes(range(256))  # every byte value, through a terminal in raw mode
        os.write(
            master, encode_frame({"op": "exec", "id": 1, "argv": ["cat"], "stdin": True}, payload)
        )
        output, events = b"", []
        while not any(isinstance(e, Frame) and e.op == "exit" for e in events):
            events += decoder.feed(os.read(master, 65536))
        output = b"".join(e.payload for e in events if isinstance(e, Frame) and e.op == "stdout")
        assert output == payload
        os.write(master, encode_frame({"op": "shutdown", "id": 2}))
        assert agent.wait(timeout=10) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap for a pid namespace")
async def test_as_pid_1_the_agent_reaps_orphans(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        "bwrap", "--unshare-pid", "--as-pid-1", "--die-with-parent", "--dev-bind", "/", "/",
        "--proc", "/proc", *AGENT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdin is not None
    async with AgentClient(process.stdout, process.stdin) as client:
        assert (await client.exec(["sh", "-c", "echo $PPID"])).stdout == b"1\n"
        # The orphan's parent dies at once; it is re-parented to us (PID 1), and must be reaped.
        await client.exec(["sh", "-c", "sleep 0.1 &"])
        count_zombies = "sleep 0.5; grep -l '^[0-9]* ([^)]*) Z' /proc/[0-9]*/stat | wc -l"
        assert (await client.exec(["sh", "-c", count_zombies])).stdout == b"0\n"
    await asyncio.wait_for(process.wait(), 10)


def test_kill_of_an_unknown_command_says_so(raw: RawAgent) -> None:
    raw.send(encode_frame({"op": "kill", "id": 1, "target": 999}))
    reply = raw.receive()
    assert (reply.op, reply.id, reply.header["found"]) == ("ok", 1, False)


def test_an_id_in_use_cannot_start_another_command(raw: RawAgent) -> None:
    raw.send(encode_frame({"op": "exec", "id": 5, "argv": ["sleep", "100"]}))
    raw.send(encode_frame({"op": "exec", "id": 5, "argv": ["true"]}))
    error = raw.receive()
    assert (error.op, error.id, error.header["kind"]) == ("error", 5, "protocol")
    raw.send(encode_frame({"op": "kill", "id": 6, "target": 5, "grace": 0}))
    replies = {raw.receive().op, raw.receive().op}
    assert replies == {"ok", "exit"}
