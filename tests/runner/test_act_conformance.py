"""The act conformance cases (``shared/conformance/act``), each run through the sandbox.

Every case must end as its manifest says: the run's overall expectation and, where listed,
each job's result (``unsupported``: failed at once with a reason saying so, naming the job).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import shared_dir
from tests.runner.engine import run
from vmrunner.runner.dotenv import read_dotenv
from vmrunner.runner.events import JobFinished, JobStarted
from vmrunner.workflow.loader import load_workflows
from vmrunner.workflow.triggers import match_event

ACT = shared_dir() / "conformance" / "act"
MANIFEST = ACT / "manifest.json"
CASES: list[dict[str, Any]] = json.loads(MANIFEST.read_text())["cases"] if MANIFEST.exists() else []
REPO_ROOT = ACT / (json.loads(MANIFEST.read_text())["repo_root"] if MANIFEST.exists() else "testdata")


@pytest.mark.skipif(not CASES, reason="no act conformance manifest in the shared folder")
@pytest.mark.parametrize("case", CASES, ids=[c["workflows"].removeprefix("testdata/") for c in CASES])
async def test_act_case(case: dict[str, Any]) -> None:
    payload = json.loads((ACT / case["event_path"]).read_text()) if "event_path" in case else {}
    options: dict[str, Any] = {
        "event_name": case["event"],
        "payload": payload,
        "secrets": read_dotenv(str(ACT / case["secret_file"])) if "secret_file" in case else {},
        "env": read_dotenv(str(ACT / case["env_file"])) if "env_file" in case else {},
        "inputs": case.get("inputs", {}),
        # act's own test harness runs as actor and repository nektos/act; cases assert on it.
        "actor": "nektos/act",
        "repository": "nektos/act",
    }
    loaded = load_workflows(ACT / case["workflows"])
    assert not loaded.errors
    workflows = [w for w in loaded.workflows if match_event(w.triggers, case["event"], payload)]
    assert workflows, "the event triggers no workflow of the case"
    results: dict[str, list[tuple[str, str]]] = {}
    any_failed = False
    for workflow in workflows:
        ran = await run(workflow, repo_root=REPO_ROOT, **options)
        any_failed |= ran.outcome.failed
        started = {e.job_key for e in ran.of(JobStarted)}
        for report in ran.outcome.jobs:
            results.setdefault(report.job_id, []).append((report.result, report.reason))
            if case.get("jobs", {}).get(report.job_id) == "unsupported":
                assert report.job_key not in started, "an unsupported job must fail before allocating"
        assert len(ran.of(JobFinished)) == len(ran.outcome.jobs)
        assert ran.provider.allocations == ran.provider.releases
        assert not ran.provider.alive
    assert any_failed == (case["expect"] == "failure"), results
    for job_id, expected in case.get("jobs", {}).items():
        got = results.get(job_id)
        assert got, f"job {job_id} did not report"
        for result, reason in got:
            if expected == "unsupported":
                assert result == "failure"
                assert "not supported by the sandbox provider" in reason
                assert f"'{job_id}'" in reason
            else:
                assert result == expected, (job_id, reason)


def test_every_case_has_its_files() -> None:
    for case in CASES:
        assert (ACT / case["workflows"]).is_dir() or Path(ACT / case["workflows"]).is_file()
