"""``vmrunner run`` as a real process: output, --json, exit codes, secrets, dry runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.cli.helpers import vmrunner

WORKFLOW = """
on: [push, workflow_dispatch]
jobs:
  ok:
    runs-on: ubuntu-latest
    steps:
      - run: echo "hello ${{ secrets.TOKEN }} ${{ vars.COLOR }} ${{ inputs.who }} $FROM_ENV_FILE"
  bad:
    needs: ok
    runs-on: ubuntu-latest
    strategy:
      matrix:
        n: [1, 2]
    steps:
      - run: test "${{ matrix.n }}" = 1
"""


def project(tmp_path: Path) -> Path:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.yml").write_text(WORKFLOW)
    (tmp_path / "env").write_text("FROM_ENV_FILE=from-file\n")
    return tmp_path


def test_run_prints_masked_output_and_fails_when_a_job_fails(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = vmrunner(
        "run",
        "-s",
        "TOKEN=abc123",
        "--var",
        "COLOR=red",
        "--env-file",
        "env",
        "--matrix",
        "n:1",
        cwd=root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello *** red  from-file" in result.stdout
    assert "abc123" not in result.stdout
    result = vmrunner("run", "workflow_dispatch", "--input", "who=mona", "-j", "ok", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello  mona from-file" not in result.stdout
    assert "hello   mona" in result.stdout


def test_run_json_and_exit_code(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = vmrunner("run", "--json", cwd=root)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    run = data["runs"][0]
    assert run["conclusion"] == "failure"
    assert "bad (2)" in json.dumps(run)


def test_dry_run_starts_nothing(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = vmrunner("run", "-n", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    jobs = json.loads(result.stdout)["jobs"]
    assert [j["job"] for j in jobs] == ["ok", "bad"]
    machines = Path(os.environ["VMRUNNER_HOME"]) / "machines"
    assert not machines.exists() or not any(machines.iterdir())


def test_bad_options_are_messages(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = vmrunner("run", "-s", "NOT_IN_ENV_XYZ", cwd=root)
    assert result.returncode != 0
    assert "NOT_IN_ENV_XYZ is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_workflows_run_together_share_their_concurrency_groups(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    for name in ("one", "two"):
        (workflows / f"{name}.yml").write_text(
            f"on: push\nconcurrency: deploy\njobs:\n  {name}:\n    runs-on: ubuntu-latest\n    "
            f"steps:\n      - run: echo {name}\n"
        )
    result = vmrunner("run", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = sorted(
        (job for run in json.loads(result.stdout)["runs"] for job in run["jobs"] if job["job_key"]),
        key=lambda job: job["started_at"],
    )
    assert [job["conclusion"] for job in jobs] == ["success", "success"]
    assert (
        jobs[0]["finished_at"] <= jobs[1]["started_at"]
    )  # one after the other, never both at once
    assert "waiting for concurrency group 'deploy'" in result.stdout


def test_dry_run_marks_jobs_that_cannot_run_and_fails_on_invalid_workflows(
    tmp_path: Path,
) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.yml").write_text(
        "on:\n  push:\n  create:\n    tags: [v1]\njobs:\n"
        "  linux: {runs-on: ubuntu-latest, steps: [{run: echo}]}\n"
        "  boxed: {runs-on: ubuntu-latest, steps: [{uses: ./.github/actions/dock}]}\n"
        "  os:\n    strategy: {matrix: {os: [ubuntu-latest, macos-latest]}}\n"
        "    runs-on: ${{ matrix.os }}\n    steps: [{run: echo}]\n"
    )
    dock = tmp_path / ".github" / "actions" / "dock"
    dock.mkdir(parents=True)
    (dock / "action.yml").write_text("runs: {using: docker, image: Dockerfile}\n")
    result = vmrunner("run", "-n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ".github/workflows/ci.yml: linux"
    if shutil.which("buildah") is None:
        assert lines[1] == (
            ".github/workflows/ci.yml: boxed  [cannot run: job 'boxed' uses a Docker action "
            "built from a Dockerfile (./.github/actions/dock): building its image needs buildah"
            " on the host (apt-get install buildah)]"
        )
    else:  # built with buildah (tests/runner/test_docker_actions.py)
        assert lines[1] == ".github/workflows/ci.yml: boxed"
    assert lines[2].startswith(
        ".github/workflows/ci.yml: os × 2 combinations  [cannot run: job 'os' needs macOS "
        "(runs-on: macos-latest); this runner runs Linux machines"
    )
    assert "warning: .github/workflows/ci.yml:4:5: unknown key 'tags' for create" in " ".join(
        result.stderr.split()
    )
    data = json.loads(vmrunner("run", "-n", "--json", cwd=tmp_path).stdout)
    blocked = shutil.which("buildah") is None
    assert [bool(j["cannot_run"]) for j in data["jobs"]] == [False, blocked, True]
    mapped = vmrunner("run", "-n", "--machine-type", "macos-latest=default", cwd=tmp_path)
    assert "needs macOS" not in mapped.stdout

    nothing = vmrunner("run", "-n", "pull_request", cwd=tmp_path)
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.strip() == (
        "nothing to run: event pull_request triggers none of the 1 workflow found"
    )

    (workflows / "broken.yml").write_text("on: push\njobs:\n  a: {runs-on: x, steps: [{rn: x}]}\n")
    broken = vmrunner("run", "-n", cwd=tmp_path)
    assert broken.returncode == 1
    assert "broken.yml:3:" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_without_origin_the_repository_is_local_and_the_folder_unless_chosen(
    tmp_path: Path,
) -> None:
    """act takes ``github.repository`` from ``origin``; actions such as upload-artifact need an
    owner and a name, so a repository without one is ``local/<folder name>``."""
    root = tmp_path / "widgets"
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(
        "on: push\njobs:\n  show:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "is $GITHUB_REPOSITORY of ${{ github.repository_owner }}"\n'
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)  # no remote at all
    result = vmrunner("run", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is local/widgets of local" in result.stdout
    result = vmrunner("run", "--repository", "acme/gadgets", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is acme/gadgets of acme" in result.stdout
    (root / ".vmrunner.toml").write_text('[run]\nrepository = "acme/tools"\n')
    result = vmrunner("run", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is acme/tools of acme" in result.stdout
    result = vmrunner("run", "--repository", "gadgets", cwd=root)
    assert result.returncode == 2
    assert "--repository': expected OWNER/NAME, got 'gadgets'" in result.stderr
