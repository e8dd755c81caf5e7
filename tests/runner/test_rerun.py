"""``vmrunner rerun``: a failed job continues from step N in a fresh machine, from its snapshot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.cli.helpers import vmrunner
from tests.runner.engine import run
from vmrunner.reports.events import Progress
from vmrunner.runner import checkpoints

# Steps 1 and 2 append to trail.txt; step 3 fails unless vars.READY is yes; step 4 checks that
# the trail shows each earlier step once and sees step 1's output, GITHUB_ENV and GITHUB_PATH.
WORKFLOW = """
on: push
jobs:
  fine:
    runs-on: ubuntu-latest
    steps:
      - run: echo fine
  build:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        flavour: [plain]
    steps:
      - id: one
        run: |
          echo step1 >> trail.txt
          echo "greeting=hi" >> "$GITHUB_OUTPUT"
          echo "FROM_ENV=e1" >> "$GITHUB_ENV"
          mkdir -p "$HOME/bin"
          printf '#!/bin/sh\\necho tool-ok\\n' > "$HOME/bin/mytool"
          chmod +x "$HOME/bin/mytool"
          echo "$HOME/bin" >> "$GITHUB_PATH"
      - run: echo step2 >> trail.txt
      - run: |
          echo step3 >> trail.txt
          test "${{ vars.READY }}" = yes
      - run: |
          echo "step4 ${{ steps.one.outputs.greeting }} $FROM_ENV $(mytool) ${{ matrix.flavour }}" >> trail.txt
          echo "trail: $(tr '\\n' , < trail.txt)"
          test "$(tr '\\n' , < trail.txt)" = "step1,step2,step3,step4 hi e1 tool-ok plain,"
"""  # noqa: E501
JOB = "build (plain)"


def project(tmp_path: Path) -> Path:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.yml").write_text(WORKFLOW)
    return tmp_path


def failed_run(root: Path, *extra: str) -> str:
    result = vmrunner("run", "--json", *extra, cwd=root)
    assert result.returncode == 1, result.stdout + result.stderr
    run = json.loads(result.stdout)["runs"][0]
    assert run["jobs"][1]["conclusion"] == "failure"
    return str(run["run_id"])


def test_rerun_continues_from_the_snapshot_before_the_step(tmp_path: Path) -> None:
    root = project(tmp_path)
    original = failed_run(root, "--snapshot")
    assert checkpoints.kept_jobs(original) == [JOB]  # the job that succeeded kept nothing

    result = vmrunner(
        "rerun", original, "--from-step", "3", "--var", "READY=yes", "--json", cwd=root
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(result.stdout)["runs"][0]
    assert run["run_id"] != original
    assert (run["rerun_of"], run["from_step"], run["conclusion"]) == (original, 3, "success")
    [job] = run["jobs"]
    steps = [s for s in job["steps"] if s["kind"] == "step"]
    assert [s["conclusion"] for s in steps] == ["success", "success"]  # only steps 3 and 4 ran
    shown = json.loads(vmrunner("runs", "show", original, "--json", cwd=root).stdout)
    assert job["machine_id"]
    assert job["machine_id"] not in {j["machine_id"] for j in shown["jobs"]}

    logs = vmrunner("runs", "show", run["run_id"], "--logs", cwd=root)
    assert "trail: step1,step2,step3,step4 hi e1 tool-ok plain," in logs.stdout, logs.stdout

    # The re-run failed again? No: it succeeded, so it kept nothing; the original still can.
    assert checkpoints.kept_jobs(run["run_id"]) == []
    again = vmrunner("rerun", original, "--from-step", "1", "--var", "READY=yes", cwd=root)
    assert again.returncode == 0, again.stdout + again.stderr


def test_runs_rm_frees_the_snapshots(tmp_path: Path) -> None:
    root = project(tmp_path)
    original = failed_run(root, "--snapshot")
    assert checkpoints.job_folder(original, JOB).is_dir()
    freed = vmrunner("runs", "rm", "--snapshots-only", original, cwd=root)
    assert freed.returncode == 0, freed.stderr
    assert not checkpoints.job_folder(original, JOB).parent.exists()
    assert vmrunner("runs", "show", original, cwd=root).returncode == 0
    result = vmrunner("rerun", original, "--from-step", "3", cwd=root)
    assert "kept no snapshots" in result.stderr
    assert vmrunner("runs", "rm", original, cwd=root).returncode == 0
    assert "no run" in vmrunner("runs", "show", original, cwd=root).stderr


def test_a_failed_rerun_can_itself_be_rerun(tmp_path: Path) -> None:
    root = project(tmp_path)
    original = failed_run(root, "--snapshot", "--pool", "1")  # a pool machine, restored for reuse
    second = vmrunner("rerun", original, "--from-step", "2", "--json", cwd=root)
    assert second.returncode == 1, second.stdout + second.stderr
    rerun_id = json.loads(second.stdout)["runs"][0]["run_id"]
    third = vmrunner("rerun", rerun_id, "--from-step", "3", "--var", "READY=yes", cwd=root)
    assert third.returncode == 0, third.stdout + third.stderr


def test_rerun_errors_are_messages(tmp_path: Path) -> None:
    root = project(tmp_path)
    missing = vmrunner("rerun", "424242", "--from-step", "1", cwd=root)
    assert missing.returncode == 1
    assert "no run '424242'" in missing.stderr

    plain = failed_run(root)
    result = vmrunner("rerun", plain, "--from-step", "3", cwd=root)
    assert result.returncode == 1
    assert "kept no snapshots" in result.stderr
    assert "--snapshot" in result.stderr

    original = failed_run(root, "--snapshot")
    cases = {
        ("--from-step", "9"): "has steps 1 to 4",
        ("--from-step", "0"): "has steps 1 to 4",
        ("--from-step", "4"): "it can re-run from step 1, 2, 3",
        ("--from-step", "1", "--job", "fine"): "it did not fail",
        ("--from-step", "1", "--job", "nope"): "has no job 'nope'",
    }
    for args, message in cases.items():
        result = vmrunner("rerun", original, *args, cwd=root)
        assert result.returncode == 1, (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_checkpoints_are_private_and_keep_no_secret(tmp_path: Path) -> None:
    root = project(tmp_path)
    original = failed_run(root, "--snapshot", "-s", "TOKEN=s3cr3t-value")
    folder = checkpoints.job_folder(original, JOB)
    state = (folder / checkpoints.STATE_FILE).read_text()
    assert "s3cr3t-value" not in state
    assert os.stat(folder / checkpoints.STATE_FILE).st_mode & 0o077 == 0
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2"]


async def test_exporting_the_snapshots_of_a_failed_job_reports_progress(tmp_path: Path) -> None:
    failing = """
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo one > one.txt
      - run: echo two > two.txt
      - run: exit 3
"""
    ran = await run(failing, repo_root=tmp_path, snapshot=True)
    assert ran.outcome.job("build").result == "failure"
    *moving, last = ran.of(Progress)
    job = checkpoints.load(ran.outcome.run_id, "build")
    assert job is not None
    kept = len(job.checkpoints)
    assert kept >= 2  # one before each step that succeeded, at least
    assert [(p.task, p.done, p.total) for p in moving] == [
        ("exporting snapshots", done, kept) for done in range(kept + 1)
    ]
    assert not any(p.finished for p in moving)
    assert (last.task, last.finished, last.job_key) == ("exporting snapshots", True, "build")
