"""The machine service's exec over a WebSocket (``/api/vms/{id}/exec``), command after command
on one socket, as ``--provider remote`` runs them; on a real ``machines serve`` on 127.0.0.1
whose machines are real sandboxes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.machines.provider_suite import eventually, machine_processes
from tests.server.machines_helpers import LiveService, machine_service
from tests.server.test_machines_api import allocate_like_the_prototype, client
from vmrunner.errors import AgentError
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.remote import RemoteProvider
from vmrunner.server.tokens import TokenStore
from vmrunner.store import Store


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LiveService]:
    with machine_service(tmp_path / "service.db", max_vms=2, max_sessions=2) as live:
        yield live


async def vm_of(service: LiveService, token: str) -> dict[str, Any]:
    async with client(service, token) as http:
        return await allocate_like_the_prototype(http, "default")


def channel(service: LiveService, vm_id: str, token: str | None) -> connect:
    url = "ws" + service.url.removeprefix("http") + f"/api/vms/{vm_id}/exec"
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(url, additional_headers=headers, compression=None)


async def run(socket: ClientConnection, body: dict[str, Any] | str) -> list[dict[str, Any]]:
    """Send one exec body; its replies, up to its result or error."""
    await socket.send(body if isinstance(body, str) else json.dumps(body))
    replies = [json.loads(await socket.recv())]
    while "o" in replies[-1]:
        replies.append(json.loads(await socket.recv()))
    return replies


def output(replies: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(r["d"]) for r in replies if "o" in r)


def sleeping(machine_id: str) -> int:
    """How many ``sleep`` processes the machine runs."""
    count = 0
    for pid in machine_processes(machine_id):
        with contextlib.suppress(OSError):  # ended meanwhile
            count += Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
    return count


async def test_one_websocket_carries_command_after_command(service: LiveService) -> None:
    token = service.token("runner")
    vm = await vm_of(service, token)
    async with channel(service, vm["id"], token) as socket:
        for index in range(3):
            replies = await run(socket, {"command": f"echo {index}; echo e >&2; exit {index}"})
            assert output(replies) == f"{index}\ne\n".encode()
            assert replies[-1]["result"]["exit_code"] == index
        assert (await run(socket, {"command": ["no-such-program"]}))[-1]["kind"] == "ExecError"
        assert (await run(socket, "{not json"))[-1]["kind"] == "ExecError"
        piped = await run(socket, {"command": "cat", "stdin": base64.b64encode(b"in").decode()})
        assert output(piped) == b"in"  # the socket still serves after refused commands


async def test_the_token_is_checked_at_the_upgrade_and_for_every_command(
    service: LiveService,
) -> None:
    token = service.token("revoked-later")
    vm = await vm_of(service, token)
    refusals = {None: 401, service.token("looker", "read"): 403, service.token("other"): 404}
    for refused_token, status in refusals.items():
        with pytest.raises(InvalidStatus) as refused:
            async with channel(service, vm["id"], refused_token):
                pass
        assert refused.value.response.status_code == status
    async with channel(service, vm["id"], token) as socket:
        assert (await run(socket, {"command": "true"}))[-1]["result"]["exit_code"] == 0
        with Store.open(service.store_path) as store:
            TokenStore(store).revoke("revoked-later")
        denied = await run(socket, {"command": "true"})
        assert denied[-1]["kind"] == "AccessDenied"
        with pytest.raises(ConnectionClosed):
            await socket.recv()
        assert socket.close_code == 1008


async def test_quotas_hold_and_a_closed_socket_kills_its_command(service: LiveService) -> None:
    token = service.token("busy")
    vm = await vm_of(service, token)
    machine_id = vm["machine"]["id"]
    wait = {"command": "echo waiting; sleep 100"}
    async with (
        channel(service, vm["id"], token) as first,
        channel(service, vm["id"], token) as second,
        channel(service, vm["id"], token) as third,
    ):
        for socket in (first, second):
            await socket.send(json.dumps(wait))
            assert base64.b64decode(json.loads(await socket.recv())["d"]) == b"waiting\n"
        assert (await run(third, {"command": "true"}))[-1]["kind"] == "CapacityError"
        await eventually(lambda: sleeping(machine_id) == 2, "both commands to sleep")
        await first.close()
        # A client speaking while its command runs loses both.
        assert (await run(second, {"command": "true"}))[-1]["kind"] == "AgentError"
        with pytest.raises(ConnectionClosed):
            await second.recv()
        assert second.close_code == 1008
        await eventually(lambda: not sleeping(machine_id), "the commands' processes to die")
        # Their sessions' quota is given back once they are gone.
        assert (await run(third, {"command": "true"}))[-1]["result"]["exit_code"] == 0


async def test_the_remote_provider_streams_output_while_the_command_runs(
    service: LiveService,
) -> None:
    provider = RemoteProvider(service.url, service.token("streaming"))
    machine = await provider.allocate(MachineSpec())
    try:
        flag = f"{machine.paths.temp}/go"
        seen: list[bytes] = []
        ready = asyncio.Event()

        def on_output(stream: str, data: bytes) -> None:
            seen.append(data)
            ready.set()

        waiting = asyncio.create_task(
            machine.exec(
                f"echo ready; while [ ! -e {flag} ]; do sleep 0.02; done; echo done",
                on_output=on_output,
            )
        )
        await asyncio.wait_for(ready.wait(), 30)
        assert b"".join(seen) == b"ready\n"  # the command still waits for the flag
        assert (await machine.exec(["touch", flag])).ok  # a second command meanwhile
        assert (await waiting).ok
        assert b"".join(seen) == b"ready\ndone\n"
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_an_idle_open_websocket_does_not_keep_its_vm(tmp_path: Path) -> None:
    with machine_service(tmp_path / "service.db", idle_timeout=0.5, reap_interval=0.1) as live:
        provider = RemoteProvider(live.url, live.token("idle"))
        machine = await provider.allocate(MachineSpec())
        try:
            assert (await machine.exec(["true"])).ok  # its socket stays open, idle
            await eventually(lambda: not machine_processes(machine.id), "the reaper", 30)
            with pytest.raises(AgentError, match="no VM"):
                await machine.exec(["true"])
        finally:
            await provider.release(machine)
            await provider.aclose()


async def test_stopping_the_service_ends_commands_on_open_websockets(tmp_path: Path) -> None:
    with machine_service(tmp_path / "service.db") as live:
        token = live.token("left")
        vm = await vm_of(live, token)
        socket = await channel(live, vm["id"], token)
        await socket.send(json.dumps({"command": "echo waiting; sleep 100"}))
        assert base64.b64decode(json.loads(await socket.recv())["d"]) == b"waiting\n"
    assert machine_processes(vm["machine"]["id"]) == []
    with pytest.raises(ConnectionClosed):
        await drain(socket)  # maybe the command's end (cancelled), then the close


async def drain(socket: ClientConnection) -> None:
    while True:
        await socket.recv()
