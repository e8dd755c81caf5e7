"""What a sandbox machine cannot see or touch, checked from inside real sandboxes."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.machines.provider_suite import (
    assert_nothing_left,
    eventually,
    machine_processes,
)
from vmrunner.machines.base import Machine, MachineSpec
from vmrunner.machines.local import process_start
from vmrunner.machines.sandbox import SandboxProvider


@pytest.fixture
async def provider() -> AsyncIterator[SandboxProvider]:
    provider = SandboxProvider(grace=0.5)
    yield provider
    await provider.aclose()


@pytest.fixture
async def machine(provider: SandboxProvider) -> AsyncIterator[Machine]:
    machine = await provider.allocate(MachineSpec())
    yield machine
    await provider.release(machine)


async def sh(machine: Machine, script: str) -> tuple[int | None, str]:
    result = await machine.exec(["sh", "-c", script])
    return result.exit_code, (result.stdout + result.stderr).decode()


CANARY = f"canary-{secrets.token_hex(8)}"


@pytest.fixture
def home_canary() -> Iterator[Path]:
    path = Path.home() / f".vmrunner-canary-{secrets.token_hex(4)}"
    path.write_text(CANARY)
    yield path
    path.unlink()


async def test_host_home_and_runner_state_are_invisible(
    machine: Machine, provider: SandboxProvider, home_canary: Path
) -> None:
    state_canary = provider.home / "secret.txt"
    state_canary.write_text(CANARY)
    for path in (home_canary, state_canary, Path(__file__), provider.home, Path("/run/user")):
        code, output = await sh(machine, f"cat {path} || ls {path}")
        assert code != 0, f"{path} is visible: {output}"
        assert CANARY not in output


async def test_secret_system_files_are_masked(machine: Machine) -> None:
    code, output = await sh(machine, "cat /etc/shadow")
    assert code != 0 or output == ""
    assert "root:" not in output


async def test_host_processes_are_invisible(machine: Machine) -> None:
    code, output = await sh(machine, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert code == 0
    assert "pytest" not in output
    assert "python3 -I -S -c" in output  # the agent itself is there


async def test_no_capabilities_inside(machine: Machine) -> None:
    _, output = await sh(machine, "grep CapEff /proc/self/status")
    assert output.split() == ["CapEff:", "0000000000000000"]


async def test_only_the_machine_directories_are_writable(machine: Machine) -> None:
    for path in ("/usr/x", "/etc/x", "/x", "/work/x", "/opt/x", "/run/vmrunner/x", "/proc/x"):
        code, output = await sh(machine, f"touch {path}")
        assert code != 0, f"{path} is writable"
    paths = machine.paths
    for path in (paths.workspace, paths.temp, paths.home, paths.tool_cache, "/tmp", "/var/tmp"):
        code, output = await sh(machine, f"touch {path}/x && test -f {path}/x")
        assert code == 0, f"{path}: {output}"


async def test_github_like_paths_and_environment(machine: Machine) -> None:
    assert machine.paths.home == "/home/runner"
    assert machine.paths.workspace.startswith("/home/runner/work/")
    _, output = await sh(machine, 'echo "$HOME|$RUNNER_TEMP|$RUNNER_TOOL_CACHE|$(pwd)"')
    assert output.strip() == "|".join(
        ("/home/runner", machine.paths.temp, machine.paths.tool_cache, machine.paths.workspace)
    )


async def test_the_tools_the_runner_needs_are_there(machine: Machine) -> None:
    for tool in ("bash", "git", "python3", "tar"):
        code, _ = await sh(machine, f"command -v {tool}")
        assert code == 0, f"{tool} is missing"


async def _listening() -> tuple[asyncio.Server, int, list[bytes]]:
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


CONNECT = (
    "import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5);"
    " s.sendall(b'hello from the machine'); s.close()"
)


async def test_network_none_cannot_reach_the_host(provider: SandboxProvider) -> None:
    server, port, received = await _listening()
    async with server:
        machine = await provider.allocate(MachineSpec(network="none"))
        try:
            result = await machine.exec(["python3", "-c", CONNECT, str(port)])
            assert result.exit_code != 0
            assert b"refused" in result.stderr or b"unreachable" in result.stderr
        finally:
            await provider.release(machine)
    assert received == []


async def test_network_host_reaches_the_host(machine: Machine) -> None:
    server, port, received = await _listening()
    async with server:
        result = await machine.exec(["python3", "-c", CONNECT, str(port)])
        assert result.ok, result.stderr
        await eventually(lambda: bool(received), "the connection")
    assert received == [b"hello from the machine"]


async def test_every_process_dies_on_release_even_daemons(provider: SandboxProvider) -> None:
    machine = await provider.allocate(MachineSpec())
    # setsid leaves the command's process group: only the pid namespace catches it.
    await machine.exec("setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
    await eventually(lambda: len(machine_processes(machine.id)) >= 2, "the daemon to start")
    # Identified by pid and start time: under load, a pid may be reused quickly.
    daemons = {pid: process_start(pid) for pid in machine_processes(machine.id)}
    await provider.release(machine)
    assert_nothing_left(machine)
    assert not [pid for pid, start in daemons.items() if process_start(pid) == start]


async def test_missing_bwrap_is_a_clear_allocation_error(tmp_path: Path) -> None:
    from vmrunner.errors import AllocationError

    provider = SandboxProvider(bwrap=str(tmp_path / "no-bwrap"))
    with pytest.raises(AllocationError, match="apt-get install bubblewrap"):
        await provider.allocate(MachineSpec())
    assert provider.leftovers() == []
    assert list((provider.home / "machines").iterdir()) == []


@pytest.fixture
def hidden_python(tmp_path: Path) -> Path:
    hidden = tmp_path / "python3"  # under the host's /tmp: the sandbox has its own
    hidden.symlink_to(os.path.realpath(sys.executable))
    return hidden


async def test_an_interpreter_the_sandbox_cannot_see_is_an_allocation_error(
    hidden_python: Path,
) -> None:
    from vmrunner.errors import AllocationError

    provider = SandboxProvider(python=str(hidden_python))
    with pytest.raises(AllocationError, match=r"did not answer.*python3"):
        await provider.allocate(MachineSpec())
    assert provider.leftovers() == []
