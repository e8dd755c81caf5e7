"""``vmrunner run --store`` and ``vmrunner runs show --store [--follow]`` as real processes, with a
real agent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.fleet.harness import agents, finished
from tests.server.helpers import make_repo
from vmrunner.fleet.store import FleetStore
from vmrunner.runner.options import RunOptions

OK = """
name: ok
on: push
jobs:
  hello:
    runs-on: linux
    steps:
      - run: echo "hello from the fleet"
"""
BROKEN = """
name: broken
on: push
jobs:
  fails:
    runs-on: linux
    steps:
      - run: exit 3
"""
#: Waits until the test listens on a port (on an agent started with ``--network host`` the
#: machine shares the host's network, not its files), so the follower is seen following a run
#: that is still going.
WAITS = """
on: push
jobs:
  slow:
    runs-on: linux
    steps:
      - run: echo "before"
      - run: until (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; do sleep 0.1; done; echo "after"
"""
UNREACHABLE = "postgresql://vmrunner@127.0.0.1:1/nothing"


def _vmrunner(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "VMRUNNER_WEBHOOK_SECRET": "s3cret"}
    return subprocess.run(
        [sys.executable, "-m", "vmrunner", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


async def test_run_submits_the_triggered_workflows_and_follows_them(database: str) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        repo = next(iter(started.values())).home.parent / "repo"
        make_repo(repo, {".github/workflows/ok.yml": OK, ".github/workflows/broken.yml": BROKEN})
        both = _vmrunner("run", "--store", database, cwd=repo)
        assert both.returncode == 1, both.stderr
        assert "[ok] hello#1 | hello from the fleet" in both.stdout.splitlines()
        assert "Traceback" not in both.stderr

        env_run = subprocess.run(  # noqa: ASYNC221 - the agent is another process
            [sys.executable, "-m", "vmrunner", "run", "-W", ".github/workflows/ok.yml", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=repo,
            env={**os.environ, "VMRUNNER_STORE": database},
        )
        assert env_run.returncode == 0, env_run.stderr
        (run,) = json.loads(env_run.stdout)["runs"]
        assert (run["conclusion"], run["jobs"][0]["host"], run["jobs"][0]["status"]) == (
            "success",
            "h1",
            "success",
        )
        assert (await store.run(run["run_id"])).conclusion == "success"


async def test_interrupting_run_cancels_its_fleet_runs(database: str) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        repo = next(iter(started.values())).home.parent / "repo"
        never = socket.socket()
        never.bind(("127.0.0.1", 0))  # never listens: the job waits until it is cancelled
        make_repo(repo, {"ci/waits.yml": WAITS.replace("{port}", str(never.getsockname()[1]))})
        runner = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the test, which reads its output
            [sys.executable, "-m", "vmrunner", "run", "-W", "ci/waits.yml", "--store", database],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
        )
        try:
            assert runner.stdout is not None
            queued = runner.stdout.readline()
            assert queued.startswith("ci/waits.yml: run "), queued
            assert runner.stdout.readline() == "[ci/waits.yml] slow#1 | before\n"
            runner.send_signal(signal.SIGINT)
            _, err = runner.communicate(timeout=60)
        finally:
            never.close()
            if runner.poll() is None:
                runner.kill()
                runner.communicate(timeout=30)
        assert runner.returncode == 130, err
        run = await store.run(queued.split()[2])
        assert (run.conclusion, run.job("slow").status) == ("cancelled", "cancelled")


async def test_runs_show_follows_a_fleet_run_from_any_host(database: str) -> None:
    async with (
        agents(database, ("h1", "linux"), extra=("--network", "host")) as started,
        FleetStore(database) as store,
    ):
        repo = next(iter(started.values())).home.parent / "repo"
        repo.mkdir()
        go = socket.socket()
        go.bind(("127.0.0.1", 0))
        run_id = await store.submit(
            WAITS.replace("{port}", str(go.getsockname()[1])),
            "waits.yml",
            RunOptions(repo_root=str(repo)),
        )
        follower = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the test, which reads its output
            [sys.executable, "-m", "vmrunner", "runs", "show", run_id, "--follow", "--json"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "VMRUNNER_STORE": database},
        )
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == "slow#1 | before\n"  # while the job waits for us
            assert (await store.run(run_id)).status == "running"
            go.listen()
            out, _ = follower.communicate(timeout=60)
        finally:
            go.close()
            if follower.poll() is None:
                follower.kill()
                follower.communicate(timeout=30)
        assert follower.returncode == 0
        lines = out.splitlines()
        assert lines[0] == "slow#1 | after"
        shown = json.loads("\n".join(lines[1:]))
        assert (shown["conclusion"], shown["jobs"][0]["host"]) == ("success", "h1")
        assert shown["attempts"] == [
            {"job_id": "slow", "attempt": 1, "host": "h1", "result": "success"}
        ]
        await finished(store, run_id)
        logs = _vmrunner("runs", "show", run_id, "--store", database, "--logs")
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.splitlines()[:2] == ["slow#1 | before", "slow#1 | after"]
        assert (
            "fleet runs"
            in _vmrunner("runs", "show", run_id, "--store", database, "--timeline").stderr
        )


def test_an_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {".github/workflows/ok.yml": OK})
    commands = (
        ("run", "--store", UNREACHABLE),
        ("runs", "show", "1", "--store", UNREACHABLE),
        ("fleet", "show", "1", "--store", UNREACHABLE),
        (
            "serve",
            "--store",
            UNREACHABLE,
            "--repo",
            f"acme/widgets={tmp_path / 'repo'}",
            "--port",
            "0",
        ),
    )
    for args in commands:
        result = _vmrunner(*args, cwd=tmp_path / "repo")
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: cannot reach the fleet store: "), result.stderr
        assert "Traceback" not in result.stderr
