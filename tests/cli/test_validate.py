"""``vmrunner validate`` through the real command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.cli.helpers import ROOT, vmrunner

INVALID = ROOT / "tests" / "workflow" / "invalid"


def test_examples_are_valid() -> None:
    done = vmrunner("validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "4 workflows OK"


def test_every_error_of_every_file(tmp_path: Path) -> None:
    for name in ("several-errors.yml", "needs-cycle.yml", "malformed-yaml.yml"):
        shutil.copy(INVALID / name, tmp_path / name)
    shutil.copy(ROOT / "examples" / ".github" / "workflows" / "ci.yml", tmp_path / "ci.yml")
    done = vmrunner("validate", "-W", str(tmp_path))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 6 + 1 + 1
    assert (
        f"{tmp_path / 'several-errors.yml'}:10:5: unknown key 'runs_on' in job 'build'"
        in done.stdout
    )
    assert (
        f"{tmp_path / 'needs-cycle.yml'}:6:13: jobs depend on each other in a cycle: a -> c -> b "
        f"-> a" in lines
    )
    assert any(
        line.startswith(f"{tmp_path / 'malformed-yaml.yml'}:7:7: invalid YAML") for line in lines
    )
    assert "8 errors in 3 of 4 workflow files" in done.stderr


def test_json_output(tmp_path: Path) -> None:
    shutil.copy(INVALID / "bad-job-id.yml", tmp_path / "bad-job-id.yml")
    done = vmrunner("validate", "-W", str(tmp_path), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["checked"] == 1
    (diagnostic,) = report["diagnostics"]
    assert (diagnostic["line"], diagnostic["column"]) == (4, 3)
    assert diagnostic["message"].startswith("invalid job id '1build'")
    done = vmrunner("validate", "--json")
    assert json.loads(done.stdout) == {
        "ok": True,
        "files": [
            ".github/workflows/checks.yml",
            ".github/workflows/ci.yml",
            ".github/workflows/nightly.yml",
            ".github/workflows/release.yml",
        ],
        "checked": 4,
        "diagnostics": [],
        "warnings": [],
    }


def test_warnings_are_shown_and_do_not_fail(tmp_path: Path) -> None:
    (tmp_path / "tags.yml").write_text(
        "on:\n  create:\n    tags: ['v*']\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ needs.b.outputs.x }}\n"
    )
    done = vmrunner("validate", "-W", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'tags.yml'}:3:5: warning: unknown key 'tags'")
    assert lines[1] == (
        f"{tmp_path / 'tags.yml'}:8:29: warning: needs.b is always empty here: job 'a' does not "
        f"list 'b' in needs"
    )
    assert lines[2] == "1 workflow OK (2 warnings)"
    report = json.loads(vmrunner("validate", "-W", str(tmp_path), "--json").stdout)
    assert report["ok"] is True
    assert [(w["line"], w["column"]) for w in report["warnings"]] == [(3, 5), (8, 29)]
