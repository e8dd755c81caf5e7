"""``python -m bench coverage``: the classification of files and jobs, on a hand-written corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import coverage
from vmrunner.actions.blockers import (
    DOCKER_ACTION,
    OTHER_SYSTEM,
)

CI = """\
on: push
jobs:
  plain:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/upload-artifact@v4
        with: {name: a, path: .}
      - run: echo
  windows:
    runs-on: windows-latest
    steps: [{run: echo}]
  matrix:
    strategy: {matrix: {os: [ubuntu-latest, macos-14]}}
    runs-on: ${{ matrix.os }}
    steps: [{run: echo}]
  containers:
    runs-on: ubuntu-latest
    container: node:20
    services: {db: {image: postgres}}
    steps: [{run: echo}]
  local-docker:
    runs-on: ubuntu-latest
    steps: [{uses: ./.github/actions/dock}]
  remote-docker:
    runs-on: ubuntu-latest
    steps: [{uses: octo/tools/dock@v1}]
  known-docker:
    runs-on: ubuntu-latest
    steps: [{uses: pypa/gh-action-pypi-publish@release/v1}]
  composite:
    runs-on: ubuntu-latest
    steps: [{uses: octo/tools/wrap@v1}]
  pwsh:
    runs-on: ubuntu-latest
    defaults: {run: {shell: pwsh}}
    steps:
      - run: Write-Output hi
      - run: Write-Output guarded
        shell: cmd
        if: runner.os == 'Windows'
  unknown:
    runs-on: ubuntu-latest
    steps: [{uses: someone/thing@v1}, {uses: someone/thing@v2}]
  background:
    runs-on: ubuntu-latest
    steps:
      - {id: server, run: npm start, background: true}
      - run: npm test
      - cancel: server
  call:
    uses: ./.github/workflows/called.yml
  remote-call:
    uses: octo/tools/.github/workflows/shared.yml@main
"""

CALLED = """\
on: workflow_call
jobs:
  inside:
    runs-on: ubuntu-latest
    container: alpine
    steps: [{run: echo}]
"""

SHARED = """\
on: workflow_call
jobs:
  fine: {runs-on: ubuntu-latest, steps: [{run: echo}]}
  mac: {runs-on: macos-latest, steps: [{run: echo}]}
"""

BROKEN = """\
on: push
jobs:
  one: {runs-on: ubuntu-latest, steps: [{run: echo, frobnicate: 1}]}
  two: {runs-on: ubuntu-latest, steps: [{run: echo}]}
"""

DOCKER = "runs: {using: docker, image: Dockerfile}\n"
WRAP = "runs:\n  using: composite\n  steps:\n    - uses: docker://alpine:3\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(autouse=True)
def without_buildah(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dockerfile action is a blocker only where the host has no buildah: these figures are
    those of such a host, whatever this one has."""
    (tmp_path / "no-tools").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write(
        tmp_path / "corpus",
        {
            "octo+app/.github/workflows/ci.yml": CI,
            "octo+app/.github/workflows/called.yml": CALLED,
            "octo+app/.github/workflows/broken.yaml": BROKEN,
            "octo+app/.github/actions/dock/action.yml": DOCKER,
            # an action repository: no workflows, only actions (names match without case)
            "Octo+Tools/dock/action.yml": DOCKER,
            "Octo+Tools/wrap/action.yml": WRAP,
            "Octo+Tools/.github/workflows/shared.yml": SHARED,
        },
    )


def judged(corpus: Path) -> dict[str, list[str]]:
    return {
        job.job: job.kinds
        for report in coverage.measure(corpus)
        for job in report.jobs
        if report.file.endswith("ci.yml")
    }


def test_every_job_gets_each_of_its_reasons(corpus: Path) -> None:
    assert judged(corpus) == {
        "plain": [],
        "windows": [OTHER_SYSTEM],
        "matrix": [OTHER_SYSTEM],
        "containers": [],  # container: jobs and services run on the sandbox
        "local-docker": [DOCKER_ACTION],
        "remote-docker": [DOCKER_ACTION],
        "known-docker": [DOCKER_ACTION],
        "composite": [],  # a docker:// step runs in the sandbox
        "pwsh": [coverage.SHELL],
        "unknown": [],
        "background": [],  # background steps run
        "call": [],
        "remote-call": [OTHER_SYSTEM],
    }


def test_the_figures(corpus: Path) -> None:
    reports = coverage.measure(corpus)
    figures = coverage.summary(reports)
    assert figures["repositories"] == 2
    assert figures["files"] == 4  # ci, called, broken, and Octo+Tools' shared
    [rejected] = figures["rejected"]
    assert rejected["file"] == "octo+app/.github/workflows/broken.yaml"
    assert rejected["error"].startswith("octo+app/.github/workflows/broken.yaml:3:")
    assert "unknown key 'frobnicate'" in rejected["error"]
    # ci 13, called 1, broken 2 (counted from its YAML), shared 2
    # runnable: plain, unknown, fine, call, called, containers, composite, background
    assert (figures["jobs"], figures["runnable"]) == (18, 8)
    assert figures["runnable_percent"] == 44.4
    by_kind = {b["kind"]: (b["jobs"], b["alone"]) for b in figures["blockers"]}
    assert by_kind == {
        OTHER_SYSTEM: (4, 4),
        DOCKER_ACTION: (3, 3),
        coverage.REJECTED: (2, 2),
        coverage.SHELL: (1, 1),
    }
    assert [b["jobs"] for b in figures["blockers"]] == sorted(
        (b["jobs"] for b in figures["blockers"]), reverse=True
    )
    assert figures["unknown_actions"]["distinct"] == 1
    assert figures["unknown_actions"]["most_used"] == [{"uses": "someone/thing", "jobs": 1}]


def test_unknown_actions_can_count_as_a_blocker(corpus: Path) -> None:
    figures = coverage.summary(coverage.measure(corpus), unknown_blocks=True)
    by_kind = {b["kind"]: (b["jobs"], b["alone"]) for b in figures["blockers"]}
    assert by_kind[coverage.UNKNOWN] == (1, 1)
    assert figures["runnable"] == 7


def test_a_remote_call_out_of_the_corpus_is_taken_to_run(corpus: Path) -> None:
    (corpus / "Octo+Tools" / ".github" / "workflows" / "shared.yml").unlink()
    assert judged(corpus)["remote-call"] == []
    unknown = coverage.summary(coverage.measure(corpus))["unknown_actions"]
    assert unknown["distinct"] == 2
    assert {"uses": "octo/tools/.github/workflows/shared.yml", "jobs": 1} in unknown["most_used"]


def test_the_command(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert coverage.main([str(corpus)]) == 0
    text = capsys.readouterr().out
    assert "files rejected: 1" in text
    assert "runnable: 8 (44.4 %)" in text
    assert "Windows or macOS runner" in text
    assert coverage.main([str(corpus), "--json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert data["jobs"] == len(data["jobs_judged"]) == 18
    assert coverage.main([str(corpus / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
