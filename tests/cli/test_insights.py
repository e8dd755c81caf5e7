"""The README demo through the real CLI: a flaky step run several times, then ``vmrunner
insights``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.helpers import EXAMPLES, vmrunner


def demo(tmp_path: Path) -> Path:
    """``examples/flaky`` as a repository of its own, with one commit."""
    root = tmp_path / "demo"
    shutil.copytree(EXAMPLES / "flaky", root)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "demo"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True)
    return root


def test_the_flaky_demo_teaches_a_lesson_and_finds_the_flaky_step(tmp_path: Path) -> None:
    root = demo(tmp_path)
    for _ in range(3):
        assert vmrunner("run", "--var", "FLAKY=1", "-q", cwd=root).returncode == 1
    lessons = json.loads(vmrunner("insights", "lessons", "--json", cwd=root).stdout)["lessons"]
    # no origin remote: the repository is named local/<folder>
    assert [(lesson["occurrences"], lesson["repository"]) for lesson in lessons] == [
        (3, "local/demo")
    ]
    assert "connection reset by peer after <n> ms" not in lessons[0]["excerpt"], (
        "the excerpt is the real output"
    )
    assert "connection reset by peer" in lessons[0]["excerpt"]

    passed = vmrunner("run", "--var", "FLAKY=0", "--json", cwd=root)
    assert passed.returncode == 0, passed.stderr
    insights = json.loads(passed.stdout)["runs"][0]["insights"]
    assert {s["kind"] for s in insights["suggestions"]} == {"avoid", "flaky"}

    shown = vmrunner("insights", "--repo", "local/demo", cwd=root)
    assert shown.returncode == 0, shown.stderr
    assert "lesson 1 [local/demo]" in shown.stdout
    assert "flaky 50% [job test]" in shown.stdout
    assert "succeeded 1 and failed 3 times" in shown.stdout
    assert vmrunner("insights", "--repo", "other", cwd=root).stdout.strip() == "nothing learned yet"

    odds = json.loads(
        vmrunner(
            "insights", "predict", "--repo", "local/demo", "--json", lessons[0]["command"], cwd=root
        ).stdout
    )
    assert (odds["successes"], odds["failures"]) == (1, 3)
    assert odds["probability"] < 0.5

    assert vmrunner("insights", "dismiss", str(lessons[0]["id"]), cwd=root).returncode == 0
    again = vmrunner("insights", "dismiss", str(lessons[0]["id"]), cwd=root)
    assert again.returncode == 1
    assert "no active lesson" in again.stderr
    assert json.loads(vmrunner("insights", "lessons", "--json", cwd=root).stdout)["lessons"] == []
    assert (
        len(
            json.loads(vmrunner("insights", "lessons", "--all", "--json", cwd=root).stdout)[
                "lessons"
            ]
        )
        == 1
    )


def test_the_lesson_threshold_comes_from_the_environment_or_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = demo(tmp_path)
    monkeypatch.setenv("VMRUNNER_LESSON_THRESHOLD", "2")
    for _ in range(2):
        vmrunner("run", "--var", "FLAKY=1", "-q", cwd=root)
    assert (
        len(json.loads(vmrunner("insights", "lessons", "--json", cwd=root).stdout)["lessons"]) == 1
    )
    bad = vmrunner("run", "--lesson-threshold", "0", cwd=root)
    assert bad.returncode == 2
    assert "--lesson-threshold" in bad.stderr
