"""Port forwards of remote machines, through a real ``machines serve`` on 127.0.0.1 whose
machines are real sandboxes: what ends a forward (its context, the machine's release, the
runner's death, a revoked token), and what it leaves behind (nothing). What a forward carries
is checked for every provider, remote included, in ``tests/machines/test_forward.py``."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from tests.machines.provider_suite import eventually
from tests.machines.test_forward import GUEST, HostService, guest, guest_ok
from tests.server.machines_helpers import LiveService, machine_service
from vmrunner.errors import AgentError
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.remote import RemoteMachine, RemoteProvider
from vmrunner.machines.remote_forward import IDLE_ACCEPTS
from vmrunner.server.machines_service import MachineService
from vmrunner.server.tokens import TokenStore
from vmrunner.store import Store

MiB = 1 << 20

#: A runner that opens a forward of an existing VM, says its port, and waits to be killed.
RUNNER = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from vmrunner.machines.base import MachineSpec
    from vmrunner.machines.remote import RemoteMachine, RemoteProvider

    async def main(url, token, vm, target):
        machine = RemoteMachine(RemoteProvider(url, token), MachineSpec(), json.loads(vm))
        async with machine.forward(Path(target)) as port:
            print(port, flush=True)
            await asyncio.sleep(600)

    asyncio.run(main(*sys.argv[1:]))
""")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveService]:
    with machine_service(tmp_path / "service.db") as service:
        yield service


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[HostService]:
    async with HostService(tmp_path / "host.sock") as service:
        yield service


def forwards_held(live: LiveService) -> int:
    """Forwards the service holds open, over all its VMs."""
    service: MachineService = live.app.state.service
    return sum(len(vm.forwards) for vm in service._vms.values())


def relay_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("vmrunner-forward-*")}


async def test_the_service_says_it_forwards_and_closing_a_forward_ends_its_connections(
    live: LiveService, host: HostService
) -> None:
    provider = RemoteProvider(live.url, live.token("runner"))
    assert provider.capabilities.forward
    machine = await provider.allocate(MachineSpec())
    folders = relay_folders()
    try:
        flag = f"{machine.paths.temp}/go"
        async with machine.forward(host.path) as port:
            assert forwards_held(live) == 1
            assert len(relay_folders() - folders) == 1
            stalled = asyncio.create_task(guest(machine, port, "download", str(64 * MiB), flag))
            await eventually(lambda: host.active == 1, "the download's connection")
        # Closed while the download is held up: both ends of the connection are cut.
        await machine.exec(["touch", flag])
        result = await stalled
        assert not result.ok or int(result.stdout.split()[0]) < 64 * MiB, result
        async with asyncio.timeout(30):
            await host.quiet.wait()
        assert await guest_ok(machine, port, "refused") == "ConnectionRefusedError\n"
        assert forwards_held(live) == 0
        assert relay_folders() == folders
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_releasing_the_machine_ends_its_forward_and_a_released_one_is_refused(
    live: LiveService, host: HostService
) -> None:
    provider = RemoteProvider(live.url, live.token("runner"))
    machine = await provider.allocate(MachineSpec())
    try:
        async with machine.forward(host.path) as port:
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
            await provider.release(machine)
            assert forwards_held(live) == 0
            assert isinstance(machine, RemoteMachine)
            assert not machine._tunnels or all(not t._tasks for t in machine._tunnels)
        with pytest.raises(AgentError, match="no VM"):
            async with machine.forward(host.path):
                pass
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_a_revoked_token_gets_no_new_connection(live: LiveService, host: HostService) -> None:
    provider = RemoteProvider(live.url, live.token("revoked-later"))
    machine = await provider.allocate(MachineSpec())
    try:
        async with machine.forward(host.path) as port:
            # Started before the token goes: connects again and again until refused.
            loop = (
                'for i in $(seq 1200); do python3 -c "$0" "$1" get /hello >/dev/null 2>&1 '
                "|| { echo refused; exit 0; }; sleep 0.05; done; echo never"
            )
            asking = asyncio.create_task(
                machine.exec(["sh", "-c", loop, GUEST, str(port)], timeout=120)
            )
            await eventually(lambda: host.connections > 2, "connections through the forward", 60)
            with Store.open(live.store_path) as store:
                TokenStore(store).revoke("revoked-later")
            served = host.connections
            assert (await asking).stdout == b"refused\n"
            assert host.connections - served <= 1  # one on its way as the token went
    finally:  # the token cannot release it any more: the service does, as it stops
        await provider.aclose()


async def test_a_killed_runner_leaves_no_forward_on_the_service(
    live: LiveService, host: HostService
) -> None:
    token = live.token("killed")
    provider = RemoteProvider(live.url, token)
    machine = await provider.allocate(MachineSpec())
    assert isinstance(machine, RemoteMachine)
    try:
        vm = json.dumps({"id": machine.vm_id, "paths": {}, "machine": {"id": machine.id}})
        runner = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RUNNER, live.url, token, vm, str(host.path),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert runner.stdout is not None
            port = int(await runner.stdout.readline())
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
        finally:
            runner.send_signal(signal.SIGKILL)
            await runner.wait()
        await eventually(lambda: forwards_held(live) == 0, "the service closing the forward")
        assert await guest_ok(machine, port, "refused") == "ConnectionRefusedError\n"
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_a_forward_whose_accept_sockets_failed_for_a_moment_still_takes_connections(
    live: LiveService, host: HostService, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = RemoteProvider(live.url, live.token("runner"))
    machine = await provider.allocate(MachineSpec())
    real, failed = provider.connect, []

    async def blip(path: str, doing: str) -> ClientConnection:
        """The service out of reach for every first accept socket of the forward."""
        if "/forward/" in path and len(failed) < IDLE_ACCEPTS:
            failed.append(path)
            raise AgentError(f"{doing}: cannot reach the service (a blip)")
        return await real(path, doing)

    monkeypatch.setattr(provider, "connect", blip)
    try:
        async with machine.forward(host.path) as port:
            assert await guest_ok(machine, port, "get", "/hello") == "hello from the host\n"
        assert len(failed) == IDLE_ACCEPTS
    finally:
        await provider.release(machine)
        await provider.aclose()
