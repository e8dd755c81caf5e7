"""``vmrunner fleet`` and ``vmrunner agent`` from the command line, as separate processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fleet.harness import agents, finished, until
from vmrunner.fleet.store import FleetStore

WORKFLOW = """
on: push
jobs:
  hello:
    runs-on: linux
    steps:
      - run: echo "hello from $VMRUNNER_ATTEMPT"
      - run: echo "second line"
  wait:
    runs-on: linux
    needs: hello
    steps:
      - run: sleep 120
"""


def _vmrunner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrunner", *args], capture_output=True, text=True, timeout=120
    )


async def test_submit_follow_and_cancel_from_the_command_line(database: str) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        folder = next(iter(started.values())).home.parent
        (folder / "repo").mkdir()
        workflow = folder / "ci.yml"
        workflow.write_text(WORKFLOW)
        submitted = _vmrunner(
            "fleet",
            "submit",
            str(workflow),
            "--store",
            database,
            "-C",
            str(folder / "repo"),
            "--json",
        )
        assert submitted.returncode == 0, submitted.stderr
        run_id = json.loads(submitted.stdout)["run_id"]

        async def waiting() -> bool:
            return (await store.run(run_id)).job("wait").status == "running"

        await until(waiting, within=60, what="the second job running")
        cancelled = _vmrunner("runs", "cancel", run_id, "--store", database)
        assert cancelled.returncode == 0, cancelled.stderr
        run = await finished(store, run_id)
        assert run.conclusion == "cancelled"
        shown = _vmrunner("fleet", "show", run_id, "--store", database, "--follow", "--json")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[:2] == ["hello#1 | hello from 1", "hello#1 | second line"]
        hello = json.loads("\n".join(lines[2:]))["jobs"][0]
        assert [
            (step["name"], step["status"]) for step in hello.pop("steps") if step["kind"] == "step"
        ] == [
            ('Run echo "hello from $VMRUNNER_ATTEMPT"', "success"),
            ('Run echo "second line"', "success"),
        ]
        assert isinstance(hello.pop("annotations"), list)
        assert hello | {"outputs": {}} == {
            "job_id": "hello",
            "status": "success",
            "attempt": 1,
            "host": "h1",
            "labels": ["linux"],
            "outputs": {},
            "reason": "",
        }
        listed = _vmrunner("fleet", "agents", "--store", database, "--json")
        assert [agent["name"] for agent in json.loads(listed.stdout)] == ["h1"]


def test_a_missing_workflow_file_is_a_clear_error(tmp_path: Path) -> None:
    result = _vmrunner("fleet", "submit", str(tmp_path / "nope.yml"), "--store", "postgresql://127.0.0.1:1/x")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
