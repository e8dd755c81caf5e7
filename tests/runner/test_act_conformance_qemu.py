"""The act conformance cases CI holds the qemu provider to, each run in real QEMU machines.

The cases run through ``run_workflow`` on a qemu provider sharing the test image (and its
ready state: after the first boot of the image every machine starts from the saved state in
about a second, so even the twelve-job ``matrix`` case takes seconds under TCG), and one of
them through the real ``vmrunner run --provider qemu`` command line as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.cli.helpers import vmrunner
from tests.machines.oci_fixtures import docker_hub_images, registry
from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.runner.conformance import (
    ACT,
    CONTAINERS,
    REPO_ROOT,
    case_name,
    case_options,
    case_workflows,
    cases,
    check_case,
    check_results,
    with_containers,
)
from tests.runner.engine import run
from vmrunner.machines.images import ENV_IMAGES
from vmrunner.machines.oci import REGISTRY_MIRROR
from vmrunner.machines.qemu import QemuProvider

__all__ = ["registry"]
QEMU_CASES = cases(
    "basic", "commands", "outputs", "matrix", "fail", "environment-files", "shells/sh"
)


@pytest.fixture
async def provider() -> AsyncIterator[QemuProvider]:
    qemu_image()
    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    try:
        yield provider
    finally:
        await provider.aclose()
    assert provider.leftovers() == [], "a case left a machine behind"


@pytest.mark.skipif(not QEMU_CASES, reason="no act conformance manifest in the shared folder")
@pytest.mark.parametrize("case", QEMU_CASES, ids=[case_name(c) for c in QEMU_CASES])
async def test_act_case_in_qemu(
    case: dict[str, Any], provider: QemuProvider, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case["workflows"] in CONTAINERS:  # qemu runs container images too (in the guest)
        registry = request.getfixturevalue("registry")
        docker_hub_images(registry, request.getfixturevalue("tmp_path_factory").mktemp("hub"))
        monkeypatch.setenv(REGISTRY_MIRROR, registry.host)
        case = with_containers(case)
    runs = [
        await run(workflow, repo_root=REPO_ROOT, provider=provider, **case_options(case))
        for workflow in case_workflows(case)
    ]
    check_case(case, runs, "qemu")


@pytest.mark.skipif(not QEMU_CASES, reason="no act conformance manifest in the shared folder")
@pytest.mark.parametrize("name", ["outputs"])
def test_vmrunner_run_with_the_qemu_provider(name: str) -> None:
    qemu_image()
    case = cases(name)[0]
    result = vmrunner(
        "run", case["event"], "--provider", "qemu", "-W", str(ACT / case["workflows"]),
        "--repo-root", str(REPO_ROOT), "--actor", "nektos/act", "--json",
        env={**os.environ, ENV_IMAGES: str(test_images_dir())}, timeout=300,
    )  # fmt: skip
    assert result.returncode == (1 if case["expect"] == "failure" else 0), (
        result.stdout + result.stderr
    )
    runs = json.loads(result.stdout)["runs"]
    jobs = [job for ran in runs for job in ran["jobs"]]
    assert jobs
    assert {job["provider"] for job in jobs if job["started_at"] is not None} == {"qemu"}
    results: dict[str, list[tuple[str, str]]] = {}
    for job in jobs:
        results.setdefault(job["job_id"], []).append((job["conclusion"], job["reason"]))
    check_results(case, any(ran["conclusion"] == "failure" for ran in runs), results, "qemu")
