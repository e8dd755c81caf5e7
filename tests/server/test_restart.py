"""A real ``vmrunner serve`` process killed with SIGKILL during a run, then started again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import (
    SECRET,
    api_token,
    deliver,
    finished,
    fixture,
    git,
    make_repo,
    settled,
)
from vmrunner.server.testing import FakeGitHub

WORKFLOW = """
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: if [ -f slow ]; then sleep 300; fi
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token(f'restart-{os.urandom(4).hex()}', 'read')}"}


def start_server(
    repo: Path, port: int, log: Path, drain: float = 1, *extra: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VMRUNNER_WEBHOOK_SECRET": SECRET.decode()}
    command = [
        sys.executable,
        "-m",
        "vmrunner",
        "serve",
        "--port",
        str(port),
        "--repo",
        f"acme/widgets={repo}",
        "--concurrent-runs",
        "1",
        "--drain-seconds",
        str(drain),
        "--log-level",
        "warning",
        *extra,
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


async def wait_healthy(
    client: httpx.AsyncClient, process: subprocess.Popen[bytes], log: Path
) -> None:
    async with asyncio.timeout(60):
        while True:
            assert process.poll() is None, log_text(log)
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


async def until(check, patience: float = 60):
    """Poll ``check`` (sync or async) until it returns something truthy; that value."""
    async with asyncio.timeout(patience):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.05)


def exists(path: str) -> bool:
    return Path(path).exists()


def log_text(log: Path) -> str:
    return log.read_text()


def live_machines() -> list[tuple[str, int, str]]:
    with contextlib.closing(sqlite3.connect(Path(os.environ["VMRUNNER_HOME"]) / "state.db")) as db:
        return db.execute(
            "SELECT machine_id, pid, state_dir FROM machines WHERE released_at IS NULL"
        ).fetchall()


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def push(sha: str) -> dict:
    payload = fixture("push", "04-event.json")
    payload["after"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    return payload


@pytest.mark.slow
async def test_sigkill_during_a_run_then_restart_interrupts_it_reclaims_its_machine_and_resumes_the_queue(  # noqa: E501
    tmp_path,
):
    repo = tmp_path / "widgets"
    slow = make_repo(repo, {".github/workflows/ci.yml": WORKFLOW, "slow": "1\n"})
    git(repo, "rm", "-q", "slow")
    git(repo, "commit", "-q", "-m", "fast again")
    quick = git(repo, "rev-parse", "HEAD")
    port, log = free_port(), tmp_path / "server.log"
    first = start_server(repo, port, log)
    second = None
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers=_auth()
        ) as client:
            await wait_healthy(client, first, log)
            a, b = str(uuid.uuid4()), str(uuid.uuid4())
            await deliver(client, "push", push(slow), a)
            run_a = (await settled(client, a))["runs"][0]["run_id"]
            await deliver(client, "push", push(quick), b)
            run_b = (await settled(client, b))["runs"][0]["run_id"]
            # the slow run holds its machine; the other waits for a slot
            machines = await until(
                lambda: (found := live_machines()) and running(found[0][1] or 0) and found
            )
            ((machine_id, pid, state_dir),) = machines
            assert (await client.get(f"/api/runs/{run_b}")).json()["server"]["state"] == "queued"

            first.send_signal(signal.SIGKILL)
            first.wait()
            # the sandbox dies with its parent (bubblewrap --die-with-parent); its files and
            # record stay
            assert exists(state_dir)
            assert machine_id in [m[0] for m in live_machines()]

            second = start_server(repo, port, log)
            await wait_healthy(client, second, log)
            interrupted = (await client.get(f"/api/runs/{run_a}")).json()
            assert interrupted["server"]["state"] == "interrupted"
            assert interrupted["result"]["conclusion"] == "interrupted"
            resumed = await finished(client, run_b)
            assert resumed["server"]["state"] == "completed"
            assert resumed["result"]["conclusion"] == "success"
            assert not running(pid)
            assert not exists(state_dir)
            assert machine_id not in [m[0] for m in live_machines()]

        second.send_signal(signal.SIGTERM)  # drains (nothing runs) and exits cleanly
        assert second.wait(timeout=30) == 0, log_text(log)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.slow
async def test_sigterm_refuses_new_webhooks_gives_a_grace_period_then_cancels_and_releases(
    tmp_path,
):
    async with contextlib.AsyncExitStack() as stack:
        await _sigterm_scenario(tmp_path, stack)


async def _sigterm_scenario(tmp_path, stack):
    repo = tmp_path / "widgets"
    slow = make_repo(repo, {".github/workflows/ci.yml": WORKFLOW, "slow": "1\n"})
    port, log = free_port(), tmp_path / "server.log"
    github = FakeGitHub()
    await stack.enter_async_context(github.running())
    (tmp_path / "token").write_text(github.token)
    server = start_server(
        repo,
        port,
        log,
        3,
        "--github-api-url",
        github.url,
        "--github-token-file",
        str(tmp_path / "token"),
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers=_auth()
        ) as client:
            await wait_healthy(client, server, log)
            a = str(uuid.uuid4())
            await deliver(client, "push", push(slow), a)
            run_a = (await settled(client, a))["runs"][0]["run_id"]
            ((machine_id, _, state_dir),) = await until(live_machines)
            server.send_signal(signal.SIGTERM)
            await until(lambda: _refusing(client))
            refused = await deliver(client, "push", push(slow))
            assert refused.status_code == 503
            assert (await client.get(f"/api/runs/{run_a}")).json()["server"]["state"] == "running"
        await until(lambda: server.poll() is not None)
        assert server.returncode == 0, log_text(log)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    states = [
        status["state"] for status in github.statuses() if status["context"] == "vmrunner/ci/build"
    ]
    assert states[0] == "pending"
    assert states[-1] == "error"
    assert "success" not in states
    assert github.rejected == []
    assert not exists(state_dir)
    assert machine_id not in [m[0] for m in live_machines()]
    with contextlib.closing(sqlite3.connect(Path(os.environ["VMRUNNER_HOME"]) / "state.db")) as db:
        ((state, conclusion),) = db.execute(
            "SELECT state, conclusion FROM server_runs WHERE run_id = ?", (run_a,)
        ).fetchall()
    assert (state, conclusion) == ("interrupted", "cancelled")


async def _refusing(client: httpx.AsyncClient) -> bool:
    return (await client.get("/healthz")).status_code == 503
