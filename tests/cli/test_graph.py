"""``vmrunner graph`` through the real command line."""

from __future__ import annotations

import json

from tests.cli.helpers import vmrunner


def test_text_graph_shows_stages_and_needs() -> None:
    done = vmrunner("graph", "-W", ".github/workflows/ci.yml")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "CI" in text
    assert ".github/workflows/ci.yml" in text
    assert text.index("[ build ]") < text.index("[ test ]") < text.index("[ report ]")
    assert "build, test, checks ──▶ report" in text


def test_json_graph() -> None:
    done = vmrunner("graph", "--json")
    assert done.returncode == 0, done.stderr
    (checks, ci, nightly, release) = json.loads(done.stdout)["workflows"]
    assert checks["order"] == ["lint"]
    assert ci["stages"] == [["build", "checks"], ["test"], ["report"]]
    assert ci["edges"] == [
        ["build", "test"], ["build", "report"], ["test", "report"], ["checks", "report"]
    ]
    assert nightly["order"] == ["prepare", "cleanup"]
    assert release["edges"] == []


def test_dot_graph_of_selected_jobs() -> None:
    done = vmrunner("graph", "--dot", "-j", "test")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('digraph "CI" {')
    assert '"build" -> "test";' in done.stdout
    assert "report" not in done.stdout
