"""The act conformance cases with ``--provider remote``: every job's machine is a sandbox of a
real machine service on 127.0.0.1, reached over HTTP. The cases that need images are left to
the local suite (their Docker Hub stand-ins); container jobs, services and Docker steps through
the service are ``tests/server/test_machines_containers.py``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.runner.conformance import (
    CASES,
    CONTAINERS,
    REPO_ROOT,
    case_name,
    case_options,
    case_workflows,
    check_case,
)
from tests.runner.engine import run
from tests.server.machines_helpers import machine_service
from vmrunner.machines.remote import RemoteProvider

REMOTE_CASES = [c for c in CASES if c["workflows"] not in CONTAINERS]


@pytest.mark.skipif(not REMOTE_CASES, reason="no act conformance manifest in the shared folder")
@pytest.mark.parametrize("case", REMOTE_CASES, ids=[case_name(c) for c in REMOTE_CASES])
async def test_act_case_on_remote_machines(case: dict[str, Any], tmp_path: Path) -> None:
    with machine_service(tmp_path / "service.db", limit=8, max_vms=8) as service:
        provider = RemoteProvider(service.url, service.token("conformance"))
        try:
            runs = [
                await run(workflow, repo_root=REPO_ROOT, provider=provider, **case_options(case))
                for workflow in case_workflows(case)
            ]
        finally:
            await provider.aclose()
        assert provider.leftovers() == []
    check_case(case, runs, "remote")
