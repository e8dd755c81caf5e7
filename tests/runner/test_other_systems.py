"""Jobs for Windows or macOS are not run on Linux: they fail at once, saying why, without a
machine, unless one of their labels is mapped to a machine type (``--machine-type``)."""

from __future__ import annotations

from tests.runner.engine import run
from vmrunner.reports.events import Annotation, JobStarted, RunFinished
from vmrunner.runner.options import DEFAULT_VM_TYPE
from vmrunner.workflow.models import operating_system

WORKFLOW = """\
on: push
jobs:
  linux:
    runs-on: ubuntu-latest
    steps: [{run: echo hi}]
  win:
    runs-on: windows-latest
    steps: [{run: echo hi}]
  mac:
    runs-on: [self-hosted, macOS, ARM64]
    steps: [{run: echo hi}]
"""


def test_labels_that_ask_for_another_system() -> None:
    assert operating_system(["windows-latest"]) == "Windows"
    assert operating_system(["self-hosted", "Windows", "X64"]) == "Windows"
    assert operating_system(["windows-11-arm"]) == "Windows"
    assert operating_system(["macos-14-xlarge"]) == "macOS"
    assert operating_system(["self-hosted", "macOS"]) == "macOS"
    for linux in (["ubuntu-latest"], ["self-hosted", "linux"], ["windowsish"], ["my-macos"], []):
        assert operating_system(linux) == ""


async def test_windows_and_macos_jobs_fail_without_a_machine() -> None:
    ran = await run(WORKFLOW)
    assert {e.job_key: e.result for e in ran.outcome.jobs} == {
        "linux": "success", "win": "failure", "mac": "failure",
    }
    assert {e.job_key for e in ran.of(JobStarted)} == {"linux"}
    assert sum(ran.provider.allocations.values()) == 1
    assert ran.finished("win").reason == (
        "job 'win' needs Windows (runs-on: windows-latest); this runner runs Linux machines: map "
        "the label with --machine-type windows-latest=TYPE to run it anyway"
    )
    assert "needs macOS (runs-on: self-hosted, macOS, ARM64)" in ran.finished("mac").reason
    assert "--machine-type macOS=TYPE" in ran.finished("mac").reason
    errors = [a for a in ran.of(Annotation) if a.level == "error"]
    assert {a.job_key for a in errors} == {"win", "mac"}
    assert ran.of(RunFinished)[0].conclusion == "failure"


async def test_a_mapped_label_runs_the_job() -> None:
    ran = await run(WORKFLOW, machine_types={"windows-latest": DEFAULT_VM_TYPE})
    assert ran.result("win") == "success"
    assert ran.result("mac") == "failure"
