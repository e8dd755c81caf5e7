"""The machine service against the calls the prototype makes (its ``FcctlWebProvider`` and
``VmCommandExecutor``, as fcctl-web answers them), on a real ``machines serve`` on 127.0.0.1
whose machines are real sandboxes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.machines.provider_suite import eventually, is_dir, machine_processes
from tests.server.machines_helpers import LiveService, machine_service
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.remote import RemoteProvider
from vmrunner.server import jwt

SECRET = b"jwt-secret-of-the-tests"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LiveService]:
    with machine_service(
        tmp_path / "service.db", max_vms=2, max_sessions=4, jwt_secret=SECRET
    ) as live:
        yield live


def client(service: LiveService, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=service.url, headers=headers, timeout=60)


async def allocate_like_the_prototype(http: httpx.AsyncClient, vm_type: str) -> dict[str, Any]:
    """POST /api/vms {vm_type}, then GET /api/vms/{id} until "running", as FcctlWebProvider."""
    response = await http.post("/api/vms", json={"vm_type": vm_type})
    assert response.is_success, response.text
    vm_id = response.json()["id"]
    assert response.json()["status"] in ("creating", "running")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = await http.get(f"/api/vms/{vm_id}")
        assert polled.is_success
        if polled.json()["status"] == "running":
            return dict(polled.json())
        await asyncio.sleep(0.05)
    pytest.fail("the VM never reached running")


async def execute(http: httpx.AsyncClient, vm_id: str, code: str, **extra: Any) -> dict[str, Any]:
    payload = {
        "agent_id": "workflow-executor-s1", "language": "bash", "code": code, "vm_id": vm_id,
        "timeout_seconds": 30, "working_dir": "/tmp", **extra,
    }
    response = await http.post("/api/llm/execute", json=payload)
    assert response.is_success, response.text
    return dict(response.json())


async def test_health_answers_without_a_token(service: LiveService) -> None:
    async with client(service, None) as http:
        body = (await http.get("/health")).json()
    assert body["status"] == "healthy"
    assert set(body) == {"service", "status", "timestamp"}


async def test_allocate_poll_execute_snapshot_rollback_delete(service: LiveService) -> None:
    async with client(service, service.token("runner")) as http:
        vm = await allocate_like_the_prototype(http, "default")
        vm_id = vm["id"]
        assert {"id", "name", "status", "vm_type", "created_at"} <= set(vm)
        machine_id = vm["machine"]["id"]
        assert machine_processes(machine_id)

        ran = await execute(http, vm_id, "echo out; echo err >&2; pwd; exit 3")
        assert (ran["exit_code"], ran["stdout"], ran["stderr"]) == (3, "out\n/tmp\n", "err\n")
        assert ran["vm_id"] == vm_id
        assert ran["error"] is None
        assert {"execution_id", "duration_ms", "started_at", "completed_at"} <= set(ran)

        workspace = vm["paths"]["workspace"]
        await execute(http, vm_id, f"echo before > {workspace}/state")
        snap = await http.post(
            f"/api/vms/{vm_id}/snapshots",
            json={"name": "step-1", "description": "Snapshot after step: step-1"},
        )
        assert snap.is_success, snap.text
        snapshot_id = snap.json()["snapshot_id"]
        await execute(http, vm_id, f"echo after > {workspace}/state; touch {workspace}/new")
        rolled = await http.post(f"/api/vms/{vm_id}/rollback/{snapshot_id}")
        assert rolled.is_success, rolled.text
        back = await execute(http, vm_id, f"cat {workspace}/state; ls {workspace}")
        assert back["stdout"] == "before\nstate\n"
        unknown = await http.post(f"/api/vms/{vm_id}/rollback/no-such-snapshot")
        assert unknown.status_code == 404

        listed = (await http.get("/api/vms")).json()
        assert listed["total"] == 1
        assert listed["vms"][0]["id"] == vm_id
        assert listed["usage"]["max_vms"] == 2
        assert listed["usage"]["current_vms"] == 1

        first = await http.delete(f"/api/vms/{vm_id}")
        assert first.status_code == 200
        assert machine_processes(machine_id) == []
        second = await http.delete(f"/api/vms/{vm_id}")  # the prototype accepts 404 as gone
        assert second.status_code == 404
        assert (await http.get("/api/vms")).json()["total"] == 0
        gone = await http.post("/api/llm/execute", json={
            "agent_id": "a", "language": "bash", "code": "true", "vm_id": vm_id,
            "timeout_seconds": 5, "working_dir": "/",
        })
        assert gone.status_code == 404
        assert "error" in gone.json()


async def test_limit_reached_is_an_error_and_makes_no_machine(
    service: LiveService, tmp_path: Path
) -> None:
    async with client(service, service.token("small")) as http:
        vms = [await allocate_like_the_prototype(http, "default") for _ in range(2)]
        before = sorted(p.name for p in (tmp_path / "home" / "machines").iterdir()) if (
            tmp_path / "home" / "machines"
        ).is_dir() else None
        refused = await http.post("/api/vms", json={"vm_type": "default"})
        assert refused.status_code == 429
        assert "limit reached" in refused.json()["error"]
        listed = (await http.get("/api/vms")).json()
        assert listed["total"] == 2
        assert listed["usage"]["at_capacity"] is True
        if before is not None:
            assert sorted(p.name for p in (tmp_path / "home" / "machines").iterdir()) == before
        # Another caller has a quota of its own.
        async with client(service, service.token("other")) as other:
            theirs = await allocate_like_the_prototype(other, "default")
            assert (await other.get("/api/vms")).json()["total"] == 1
            assert (await other.get(f"/api/vms/{vms[0]['id']}")).status_code == 404
            assert (await other.delete(f"/api/vms/{vms[0]['id']}")).status_code == 404
            await other.delete(f"/api/vms/{theirs['id']}")
        for vm in vms:
            assert (await http.delete(f"/api/vms/{vm['id']}")).status_code == 200
        assert all(machine_processes(vm["machine"]["id"]) == [] for vm in vms)


async def test_tokens_scopes_and_jwt(service: LiveService) -> None:
    async with client(service, None) as anonymous:
        response = await anonymous.post("/api/vms", json={"vm_type": "default"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    async with client(service, service.token("looker", "read")) as reader:
        assert (await reader.get("/api/vms")).status_code == 200
        assert (await reader.post("/api/vms", json={"vm_type": "default"})).status_code == 403
    now = int(time.time())
    claims = {"user_id": "release-builder", "github_id": 0, "username": "release-builder",
              "nbf": now, "iat": now, "exp": now + 600}
    async with client(service, jwt.sign(claims, b"another secret")) as forged:
        assert (await forged.get("/api/vms")).status_code == 401
    async with client(service, jwt.sign({**claims, "exp": now - 3600}, SECRET)) as expired:
        assert (await expired.get("/api/vms")).status_code == 401
    async with client(service, jwt.sign(claims, SECRET)) as prototype:
        vm = await allocate_like_the_prototype(prototype, "default")
        assert vm["user_id"] == "jwt:release-builder"
        assert (await execute(prototype, vm["id"], "echo hi"))["stdout"] == "hi\n"
        assert (await prototype.delete(f"/api/vms/{vm['id']}")).status_code == 200


async def test_bad_requests_are_clear_4xx(service: LiveService) -> None:
    async with client(service, service.token("careless")) as http:
        assert (await http.post("/api/vms", json={"vm_type": 3})).status_code == 422
        assert (await http.post("/api/vms", content=b"{not json")).status_code == 422
        assert (await http.get("/api/vms/vm-nope")).status_code == 404
        vm = await allocate_like_the_prototype(http, "default")
        wrong = await http.post("/api/llm/execute", json={
            "agent_id": "a", "language": "cobol", "code": "x", "vm_id": vm["id"],
        })
        assert wrong.status_code == 422
        assert "language" in wrong.json()["error"]
        missing_dir = await http.post("/api/llm/execute", json={
            "agent_id": "a", "language": "bash", "code": "true", "vm_id": vm["id"],
            "working_dir": "/no/such/dir",
        })
        assert missing_dir.status_code == 422, missing_dir.text
        await http.delete(f"/api/vms/{vm['id']}")


async def test_streamed_exec_delivers_output_while_the_command_runs(service: LiveService) -> None:
    async with client(service, service.token("streamer")) as http:
        vm = await allocate_like_the_prototype(http, "default")
        flag = f"{vm['paths']['temp']}/go"
        script = f"echo ready; while [ ! -e {flag} ]; do sleep 0.02; done; echo done"
        seen: list[dict[str, Any]] = []
        async with http.stream(
            "POST", f"/api/vms/{vm['id']}/exec", json={"command": script}
        ) as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            async for line in response.aiter_lines():
                message = json.loads(line)
                seen.append(message)
                if message.get("d") and base64.b64decode(message["d"]) == b"ready\n":
                    # the command still waits: only output seen now can make it end
                    made = await execute(http, vm["id"], f"touch {flag}")
                    assert made["exit_code"] == 0
        output = b"".join(base64.b64decode(m["d"]) for m in seen if "d" in m)
        assert output == b"ready\ndone\n"
        assert seen[-1]["result"]["exit_code"] == 0
        await http.delete(f"/api/vms/{vm['id']}")


async def test_a_vm_whose_client_vanished_is_reaped(tmp_path: Path) -> None:
    with machine_service(tmp_path / "service.db", idle_timeout=0.5, reap_interval=0.1) as live:
        async with client(live, live.token("vanishing")) as http:
            vm = await allocate_like_the_prototype(http, "default")
            machine_id = vm["machine"]["id"]
            assert machine_processes(machine_id)
            # no more calls: the reaper releases it after the idle timeout
            await eventually(lambda: not machine_processes(machine_id), "the reaper", 30)
            assert (await http.get(f"/api/vms/{vm['id']}")).status_code == 404
            assert (await http.get("/api/vms")).json()["total"] == 0


async def test_stopping_the_service_releases_its_vms(tmp_path: Path) -> None:
    with machine_service(tmp_path / "service.db") as live:
        async with client(live, live.token("left")) as http:
            vm = await allocate_like_the_prototype(http, "default")
            await execute(http, vm["id"], "sleep 1000 >/dev/null 2>&1 &")
    assert machine_processes(vm["machine"]["id"]) == []
    assert not is_dir(vm["machine"]["state_dir"])


async def test_vm_types_are_those_the_host_offers(tmp_path: Path) -> None:
    with machine_service(tmp_path / "service.db", vm_types=("default",)) as live:
        async with client(live, live.token("typed")) as http:
            offered = (await http.get("/api/vm-types")).json()
            assert offered["vm_types"] == ["default"]
            assert offered["provider"] == "sandbox"
            assert offered["capabilities"]["snapshots"] is True
            refused = await http.post("/api/vms", json={"vm_type": "focal-ci"})
            assert refused.status_code == 409
            assert "this host serves default" in refused.json()["error"]
            assert (await http.get("/api/vms")).json()["total"] == 0


async def test_many_quick_commands_in_a_row(service: LiveService) -> None:
    """Quick commands are answered in one response: each with all its output and its result."""
    provider = RemoteProvider(service.url, service.token("quick"))
    machine = await provider.allocate(MachineSpec())
    try:
        for index in range(100):
            result = await machine.exec(f"echo {index}; exit {index % 3}")
            assert (result.stdout, result.exit_code) == (f"{index}\n".encode(), index % 3)
    finally:
        await provider.release(machine)
        await provider.aclose()
