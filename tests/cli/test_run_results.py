"""``vmrunner run``: what --json and --summary give, and runs of dead runners marked interrupted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.helpers import vmrunner
from vmrunner.reports.results import RunResult
from vmrunner.sessions import Owner
from vmrunner.store import RunRow, Store

WORKFLOW = """
on: push
jobs:
  check:
    runs-on: ubuntu-latest
    steps:
      - run: echo one
      - run: exit 3
"""


def project(tmp_path: Path) -> Path:
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "ci.yml").write_text(WORKFLOW)
    return tmp_path


def dead_owner() -> Owner:
    """A runner process that has exited (its pid, with a start time no process has)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return Owner(child.pid, -1)


def test_json_has_every_job_and_step_field_and_summary_is_written(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = vmrunner("run", "--json", "--snapshot", "--summary", "summary.md", cwd=root)
    assert result.returncode == 1, result.stderr
    run = json.loads(result.stdout)["runs"][0]
    assert (run["status"], run["conclusion"]) == ("completed", "failure")
    [job] = run["jobs"]
    assert job["session_id"]
    assert job["machine_id"]
    assert job["duration"] is not None
    steps = [s for s in job["steps"] if s["kind"] == "step"]
    assert [(s["status"], s["outcome"], s["conclusion"], s["exit_code"]) for s in steps] == [
        ("completed", "success", "success", 0),
        ("completed", "failure", "failure", 3),
    ]
    assert all(s["duration"] is not None for s in steps)
    assert steps[0]["snapshot_id"]
    assert not steps[1]["snapshot_id"]
    summary = (root / "summary.md").read_text()
    assert "check" in summary
    assert "fail" in summary.lower()


def unfinished(run_id: str) -> RunResult:
    return RunResult(run_id, "ci", "ci.yml", "push", "in_progress", 1.0)


def test_runs_of_dead_runners_are_marked_interrupted(tmp_path: Path) -> None:
    root = project(tmp_path)
    owner = dead_owner()
    with Store.open() as store:
        for run_id in ("111", "222"):
            store.put_run(RunRow(unfinished(run_id), owner.pid, owner.start))
    reclaim = vmrunner("sessions", "reclaim", "--json", cwd=root)
    assert reclaim.returncode == 0, reclaim.stderr
    assert sorted(json.loads(reclaim.stdout)["interrupted_runs"]) == ["111", "222"]
    with Store.open() as store:
        row = store.run("111", RunResult)
        assert row is not None
        assert (row.run.status, row.run.conclusion) == ("completed", "interrupted")
        store.put_run(RunRow(unfinished("333"), owner.pid, owner.start))
    vmrunner("run", cwd=root)
    with Store.open() as store:
        row = store.run("333", RunResult)
        assert row is not None
        assert (row.run.status, row.run.conclusion) == ("completed", "interrupted")
