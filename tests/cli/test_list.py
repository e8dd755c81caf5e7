"""``vmrunner list`` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.helpers import vmrunner

BROKEN = "on: push\njobs:\n  a:\n    runs-on: x\n    step: []\n"


def test_lists_every_job_of_the_examples() -> None:
    done = vmrunner("list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "Stage",
        "Job",
        "ID",
        "Job",
        "name",
        "Workflow",
        "name",
        "Workflow",
        "file",
        "Events",
    ]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("0", "lint"),
        ("0", "build"),
        ("0", "checks"),
        ("1", "test"),
        ("2", "report"),
        ("0", "prepare"),
        ("1", "cleanup"),
        ("0", "package"),
    ]
    assert rows[0][3:] == ["Checks", ".github/workflows/checks.yml", "workflow_call"]
    assert rows[1][3:] == ["CI", ".github/workflows/ci.yml", "push,pull_request,workflow_dispatch"]


def test_event_filters_workflows() -> None:
    done = vmrunner("list", "schedule", "--json")
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)["jobs"]
    assert [(j["workflow_name"], j["job_id"], j["needs"]) for j in jobs] == [
        ("Nightly", "prepare", []),
        ("Nightly", "cleanup", ["prepare"]),
    ]


def test_event_payload_applies_filters(tmp_path: Path) -> None:
    payload = tmp_path / "event.json"
    payload.write_text(json.dumps({"ref": "refs/tags/v1.2.3"}))
    done = vmrunner("list", "push", "-e", str(payload), "--json")
    assert done.returncode == 0, done.stderr
    assert {j["workflow_name"] for j in json.loads(done.stdout)["jobs"]} == {"Release"}
    payload.write_text(json.dumps({"ref": "refs/heads/main"}))
    done = vmrunner("list", "push", "-e", str(payload), "--json")
    assert {j["workflow_name"] for j in json.loads(done.stdout)["jobs"]} == {"CI"}


def test_job_selection_brings_needs_and_static_matrix() -> None:
    done = vmrunner("list", "-j", "test", "--json")
    jobs = json.loads(done.stdout)["jobs"]
    assert [j["job_id"] for j in jobs] == ["build", "test"]
    assert len(jobs[1]["matrix"]) == 3  # 2 x 2, one excluded


def test_broken_files_are_reported_and_valid_ones_listed(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text(BROKEN)
    (tmp_path / "good.yml").write_text(
        "name: Good\non: push\njobs:\n  g:\n    runs-on: x\n    steps: [{run: x}]\n"
    )
    done = vmrunner("list", "-W", str(tmp_path))
    assert done.returncode == 1
    assert "Good" in done.stdout
    assert f"{tmp_path / 'bad.yml'}:5:5: unknown key 'step'" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_options_are_messages_not_tracebacks(tmp_path: Path) -> None:
    done = vmrunner("list", "-W", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert "no such file or folder" in done.stderr
    (tmp_path / "event.json").write_text("[1]")
    done = vmrunner("list", "push", "-e", str(tmp_path / "event.json"))
    assert done.returncode == 1
    assert "must be a JSON object" in done.stderr
    done = vmrunner("list", "-j", "nope")
    assert done.returncode == 1
    assert "no workflow has a job named 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
