"""What a job uses that vmrunner cannot run: every reason, the engine's first one unchanged."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vmrunner.actions.blockers import (
    CONTAINER,
    DOCKER_ACTION,
    DOCKER_IMAGE,
    SERVICES,
    job_blockers,
    local_actions,
    unsupported_reason,
)
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.models import Job


def job(steps_and_keys: str) -> Job:
    text = "on: push\njobs:\n  j:\n    runs-on: ubuntu-latest\n" + textwrap.indent(
        textwrap.dedent(steps_and_keys), "    "
    )
    return load_workflow_text(text, "w.yml").jobs["j"]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_every_reason_is_found_and_the_engine_gives_the_first(tmp_path: Path) -> None:
    repo = write(tmp_path, {"dock/action.yml": "runs: {using: docker, image: Dockerfile}\n"})
    found = job_blockers(
        job(
            """\
            container: node:20
            services: {db: {image: postgres}}
            steps:
              - uses: docker://alpine:3
              - uses: ./dock
              - run: echo
            """
        ),
        "sandbox",
        local_actions(str(repo)),
    )
    assert [b.kind for b in found] == [CONTAINER, SERVICES, DOCKER_IMAGE, DOCKER_ACTION]
    assert found[3].reason == (
        "job 'j' uses a Docker action (./dock): not supported by the sandbox provider"
    )
    reason = unsupported_reason(job("container: node:20\nsteps: [{run: echo}]"), str(repo), "qemu")
    assert reason == "job 'j' uses a container (node:20): not supported by the qemu provider"
    assert unsupported_reason(job("steps: [{run: echo}, {uses: ./dock}]"), str(repo), "x") != ""
    assert unsupported_reason(job("steps: [{run: echo}]"), str(repo), "sandbox") == ""


def test_background_steps_are_no_blocker() -> None:
    found = job_blockers(
        job("container: node:20\nsteps: [{id: s, run: sleep 1, background: true}, {wait: s}]"),
        "sandbox", lambda uses: None,
    )
    assert [b.kind for b in found] == [CONTAINER]


def test_composite_actions_are_looked_into_only_when_deep(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "outer/action.yml": "runs:\n  using: composite\n  steps:\n    - uses: ./inner\n",
            "inner/action.yml": (
                "runs:\n  using: composite\n  steps:\n    - uses: docker://alpine\n"
                "    - uses: ./inner\n"  # itself: walked once
            ),
        },
    )
    steps = job("steps: [{uses: ./outer}]")
    resolve = local_actions(str(repo))
    assert job_blockers(steps, "sandbox", resolve) == []
    found = job_blockers(steps, "sandbox", resolve, deep=True)
    assert [b.kind for b in found] == [DOCKER_IMAGE]
    assert "(docker://alpine, inside ./outer → ./inner)" in found[0].reason


def test_steps_of_parallel_groups_count(tmp_path: Path) -> None:
    found = job_blockers(
        job("steps:\n  - parallel:\n      - run: echo\n      - uses: docker://alpine\n"),
        "sandbox", lambda uses: None,
    )
    assert [b.kind for b in found] == [DOCKER_IMAGE]


def test_a_dockerfile_action_needs_buildah_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write(tmp_path, {"dock/action.yml": "runs: {using: docker, image: Dockerfile}\n"})
    steps = job("steps: [{uses: ./dock}]")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    found = job_blockers(steps, "sandbox", local_actions(str(repo)), containers=True)
    assert [b.reason for b in found] == [
        "job 'j' uses a Docker action built from a Dockerfile (./dock): building its image"
        " needs buildah on the host (apt-get install buildah)"
    ]
    (bin_dir / "buildah").write_text("#!/bin/sh\n")
    (bin_dir / "buildah").chmod(0o755)
    assert job_blockers(steps, "sandbox", local_actions(str(repo)), containers=True) == []
