"""The act conformance cases (``shared/conformance/act``): loading them, and judging a run.

Shared by the per-provider conformance tests: each runs a case's workflows its own way and
hands the runs to ``check_case``, which holds every case to its manifest: the run's overall
expectation and, where listed, each job's result (``unsupported``: failed at once with a
reason saying so, naming the job and the provider).
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import shared_dir
from tests.runner.engine import Ran
from vmrunner.cli.dotenv import read_dotenv
from vmrunner.reports.events import JobFinished, JobStarted
from vmrunner.workflow.loader import load_workflows
from vmrunner.workflow.models import Workflow
from vmrunner.workflow.triggers import match_event

ACT = shared_dir() / "conformance" / "act"
MANIFEST = ACT / "manifest.json"
_MANIFEST: dict[str, Any] = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
CASES: list[dict[str, Any]] = _MANIFEST.get("cases", [])
#: Where GitHub's behaviour differs from the manifest (which follows act's own harness), by case:
#: - matrix: its `build` job runs on [ubuntu-18.04, macos-latest]. act runs a macos-latest job on
#:   its Linux image; GitHub runs it on macOS, and vmrunner (which runs Linux machines only)
#:   fails such a job at once, without a machine, saying so (`other-os`); so the run fails, and
#:   fail-fast cancels the combinations that had not started.
OVERRIDES: dict[str, dict[str, Any]] = {
    "testdata/matrix": {"expect": "failure", "jobs": {"build": "other-os", "test": "success"}},
}
CASES = [{**case, **OVERRIDES.get(case["workflows"], {})} for case in CASES]
#: What the cases whose jobs use a container become on a provider that runs container images
#: (their images come from the test registry, see ``docker_hub_images``): `fail` fails by design.
CONTAINERS: dict[str, dict[str, Any]] = {
    "testdata/shells/defaults": {"expect": "success", "jobs": {"check-container": "success"}},
    "testdata/shells/sh": {"expect": "success", "jobs": {"check-container": "success"}},
    "testdata/shells/bash": {"expect": "success", "jobs": {"check-container": "success"}},
    "testdata/shells/python": {"expect": "success", "jobs": {"check-container": "success"}},
    "testdata/fail": {"expect": "failure", "jobs": {"build": "failure"}},
    # Its docker:// step runs now; check still fails at its last step, which greps for
    # GITHUB_SHA, empty here (the harness runs no commit; act's sets one), so build and test
    # are skipped. Given a commit, all three run, build's Dockerfile action built with buildah
    # (tests/runner/test_act_container_cases.py).
    "testdata/basic": {
        "expect": "failure", "jobs": {"check": "failure", "build": "skipped", "test": "skipped"}
    },
}


def with_containers(case: dict[str, Any]) -> dict[str, Any]:
    """``case`` as it runs on a provider whose machines can be container images."""
    change = CONTAINERS.get(case["workflows"])
    if change is None:
        return case
    return {**case, "expect": change["expect"], "jobs": {**case["jobs"], **change["jobs"]}}
REPO_ROOT = ACT / _MANIFEST.get("repo_root", "testdata")


def case_name(case: dict[str, Any]) -> str:
    return str(case["workflows"]).removeprefix("testdata/")


def cases(*names: str) -> list[dict[str, Any]]:
    """The named cases, in the order given (all of them without names)."""
    by_name = {case_name(case): case for case in CASES}
    return [by_name[name] for name in names if name in by_name] if names else CASES


def case_options(case: dict[str, Any]) -> dict[str, Any]:
    """The ``RunOptions`` fields a case asks for (event, payload, secrets, env, inputs)."""
    return {
        "event_name": case["event"],
        "payload": case_payload(case),
        "secrets": read_dotenv(str(ACT / case["secret_file"])) if "secret_file" in case else {},
        "env": read_dotenv(str(ACT / case["env_file"])) if "env_file" in case else {},
        "inputs": case.get("inputs", {}),
        # act's own test harness runs as actor and repository nektos/act; cases assert on it.
        "actor": "nektos/act",
        "repository": "nektos/act",
    }


def case_payload(case: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = (
        json.loads((ACT / case["event_path"]).read_text()) if "event_path" in case else {}
    )
    return payload


def case_workflows(case: dict[str, Any]) -> list[Workflow]:
    """The case's workflows that its event triggers (at least one)."""
    loaded = load_workflows(ACT / case["workflows"])
    assert not loaded.errors
    workflows = [
        w for w in loaded.workflows if match_event(w.triggers, case["event"], case_payload(case))
    ]
    assert workflows, "the event triggers no workflow of the case"
    return workflows


def check_case(case: dict[str, Any], runs: list[Ran], provider: str) -> None:
    """Every run of the case kept the event contract, and the case ended as its manifest says."""
    results: dict[str, list[tuple[str, str]]] = {}
    any_failed = False
    for ran in runs:
        any_failed |= ran.outcome.failed
        started = {e.job_key for e in ran.of(JobStarted)}
        for report in ran.outcome.jobs:
            results.setdefault(report.job_id, []).append((report.result, report.reason))
            expected = case.get("jobs", {}).get(report.job_id)
            if expected == "unsupported" or (expected == "other-os" and "macOS" in report.reason):
                assert report.job_key not in started, (
                    "an unsupported job must fail before allocating"
                )
        assert len(ran.of(JobFinished)) == len(ran.outcome.jobs)
        assert ran.provider.allocations == ran.provider.releases
        assert not ran.provider.alive
    check_results(case, any_failed, results, provider)


def check_results(
    case: dict[str, Any], any_failed: bool, results: dict[str, list[tuple[str, str]]], provider: str
) -> None:
    """``results``: job id -> (result, reason) of each of its runs (matrix jobs have several)."""
    assert any_failed == (case["expect"] == "failure"), results
    for job_id, expected in case.get("jobs", {}).items():
        got = results.get(job_id)
        assert got, f"job {job_id} did not report"
        if expected == "other-os":  # the macOS combinations fail saying why (and fail-fast
            # cancels the combinations still waiting, as GitHub would after a failure)
            failed = [(result, reason) for result, reason in got if result == "failure"]
            assert failed, got
            assert all("this runner runs Linux machines" in reason for _, reason in failed), got
            assert all(result in ("success", "failure", "cancelled") for result, _ in got), got
            continue
        for result, reason in got:
            if expected == "unsupported":
                assert result == "failure"
                assert f"not supported by the {provider} provider" in reason
                assert f"'{job_id}'" in reason
            else:
                assert result == expected, (job_id, reason)
