"""The act conformance cases (``shared/conformance/act``), each run through the sandbox.

Every case must end as its manifest says (``tests.runner.conformance.check_case``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.machines.oci_fixtures import docker_hub_images, registry
from tests.runner.conformance import (
    ACT,
    CASES,
    CONTAINERS,
    REPO_ROOT,
    case_name,
    case_options,
    case_workflows,
    check_case,
    with_containers,
)
from tests.runner.engine import run
from vmrunner.machines.oci import REGISTRY_MIRROR

__all__ = ["registry"]


@pytest.mark.skipif(not CASES, reason="no act conformance manifest in the shared folder")
@pytest.mark.parametrize("case", CASES, ids=[case_name(c) for c in CASES])
async def test_act_case(
    case: dict[str, Any], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case["workflows"] in CONTAINERS:
        registry = request.getfixturevalue("registry")
        docker_hub_images(registry, request.getfixturevalue("tmp_path_factory").mktemp("hub"))
        monkeypatch.setenv(REGISTRY_MIRROR, registry.host)
        case = with_containers(case)
    runs = [
        await run(workflow, repo_root=REPO_ROOT, **case_options(case))
        for workflow in case_workflows(case)
    ]
    check_case(case, runs, "sandbox")


def test_every_case_has_its_files() -> None:
    for case in CASES:
        assert (ACT / case["workflows"]).is_dir() or Path(ACT / case["workflows"]).is_file()
