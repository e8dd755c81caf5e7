"""Every workflow of act's conformance corpus loads, validates and plans, and its event triggers
it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import shared_dir
from vmrunner.workflow.loader import load_workflows
from vmrunner.workflow.planner import plan

ACT = shared_dir() / "conformance" / "act"
MANIFEST = ACT / "manifest.json"
CASES = json.loads(MANIFEST.read_text())["cases"] if MANIFEST.exists() else []

pytestmark = pytest.mark.skipif(not CASES, reason=f"act conformance corpus not found at {ACT}")


def case_id(case: dict[str, object]) -> str:
    return str(case["workflows"]).removeprefix("testdata/")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_case_loads_plans_and_is_triggered(case: dict[str, object]) -> None:
    folder = ACT / str(case["workflows"])
    result = load_workflows(folder)
    assert result.errors == ()
    assert result.workflows
    for workflow in result.workflows:
        graph = plan(workflow)
        assert set(graph.order) == set(workflow.jobs)
        assert graph.ready(set())
    triggered = [w for w in result.workflows if str(case["event"]) in w.triggers.events]
    assert triggered
    for job_id in dict(case.get("jobs") or {}):  # type: ignore[call-overload]
        assert any(job_id in w.jobs for w in triggered)


def test_every_workflow_file_of_the_corpus_is_covered() -> None:
    folders = {(ACT / str(case["workflows"])).resolve() for case in CASES}
    workflow_files = [
        path for path in (ACT / "testdata").rglob("*")
        if path.suffix in {".yml", ".yaml"} and path.stem != "action"
    ]
    assert workflow_files
    uncovered = [path for path in workflow_files if path.parent.resolve() not in folders]
    for path in uncovered:
        result = load_workflows(path)
        assert result.errors == (), [str(d) for d in result.diagnostics]
        for workflow in result.workflows:
            plan(workflow)


def test_paths_are_relative_to_the_case() -> None:
    folder = ACT / "testdata" / "basic"
    (workflow,) = load_workflows(folder).workflows
    assert workflow.path == str(folder / "push.yml")
