"""SIGKILL of either side of the machine service leaves no machine behind: a killed runner's VMs
are reaped after the idle timeout or released by its ``sessions reclaim``; a killed service's
machines are released by ``sessions reclaim`` on its host."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.cli.helpers import ROOT, vmrunner
from tests.machines.provider_suite import eventually, is_dir, machine_processes
from tests.server.machines_helpers import LiveService, machine_service

WORKFLOW = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo started; sleep 1000
"""


def project(root: Path) -> Path:
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(WORKFLOW)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def killed_runner(service: LiveService, token: str, root: Path, home: Path) -> int:
    """Start ``vmrunner run --provider remote`` on ``root``, SIGKILL it once its step runs; its
    pid."""
    home.mkdir(mode=0o711, exist_ok=True)
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "VMRUNNER_HOME": str(home),
        "VMRUNNER_REMOTE_TOKEN": token,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "vmrunner", "run", "--provider", "remote", "--remote-url",
         service.url, "--network", "host"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if "started" in line:
                break
        else:
            raise AssertionError("the run ended before its step started")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return child.pid


async def remote_vms(service: LiveService, token: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        return list((await http.get("/api/vms")).json()["vms"])


async def test_a_killed_runner_s_machine_is_reaped_after_the_idle_timeout(tmp_path: Path) -> None:
    with machine_service(tmp_path / "service.db", idle_timeout=1.0, reap_interval=0.1) as live:
        token = live.token("runner")
        killed_runner(live, token, project(tmp_path / "repo"), tmp_path / "runner-home")
        (vm,) = await remote_vms(live, token)
        machine = vm["machine"]
        assert isinstance(machine, dict)
        await eventually(lambda: not machine_processes(machine["id"]), "the reaper", 30)
        assert await remote_vms(live, token) == []


async def test_a_killed_runner_s_machine_is_released_by_its_sessions_reclaim(
    tmp_path: Path,
) -> None:
    with machine_service(tmp_path / "service.db", idle_timeout=3600) as live:
        token = live.token("runner")
        home = tmp_path / "runner-home"
        pid = killed_runner(live, token, project(tmp_path / "repo"), home)
        (vm,) = await remote_vms(live, token)
        machine = vm["machine"]
        assert isinstance(machine, dict)
        assert machine_processes(machine["id"])
        env = {**os.environ, "VMRUNNER_HOME": str(home), "VMRUNNER_REMOTE_TOKEN": token}
        reclaim = await asyncio.to_thread(vmrunner, "sessions", "reclaim", env=env)
        assert reclaim.returncode == 0, reclaim.stderr
        assert f"runner pid {pid}" in reclaim.stdout + reclaim.stderr
        assert machine_processes(machine["id"]) == []
        assert await remote_vms(live, token) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_killed_service_s_machines_are_released_by_sessions_reclaim(
    tmp_path: Path,
) -> None:
    home = tmp_path / "service-home"
    home.mkdir(mode=0o711)
    env = {**os.environ, "VMRUNNER_HOME": str(home)}
    created = vmrunner("tokens", "create", "runner", "--scope", "operate", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - killed, not awaited
        [sys.executable, "-m", "vmrunner", "machines", "serve", "--port", str(port),
         "--network", "host"],
        env={**env, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as http:
            for _ in range(600):
                try:
                    if (await http.get("/health")).is_success:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            vm = (await http.post("/api/vms", json={"vm_type": "default", "wait": True})).json()
            await http.post("/api/llm/execute", json={
                "agent_id": "a", "language": "bash", "code": "sleep 1000 >/dev/null 2>&1 &",
                "vm_id": vm["id"], "timeout_seconds": 10, "working_dir": "/",
            })
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    machine_id = vm["machine"]["id"]
    # A sandbox's processes die with their parent; its folder and records stay behind.
    assert is_dir(vm["machine"]["state_dir"])
    reclaim = await asyncio.to_thread(
        vmrunner, "sessions", "reclaim", "--provider", "sandbox", env=env
    )
    assert reclaim.returncode == 0, reclaim.stderr
    assert machine_id in reclaim.stdout + reclaim.stderr
    await eventually(lambda: not machine_processes(machine_id), "the reclaim")
    assert not is_dir(vm["machine"]["state_dir"])
    again = await asyncio.to_thread(vmrunner, "sessions", "reclaim", "--json", env=env)
    assert machine_id not in again.stdout


def test_machines_serve_refuses_open_access_beyond_loopback() -> None:
    result = vmrunner("machines", "serve", "--host", "0.0.0.0", "--allow-no-tokens")
    assert result.returncode == 1
    assert "--allow-no-tokens serves only loopback" in result.stderr
    bad = vmrunner("machines", "serve", "--quota", "ci=two")
    assert bad.returncode == 1
    assert "expected NAME=VMS,SESSIONS" in bad.stderr
