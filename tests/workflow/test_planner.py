"""The job graph: order, readiness as a true DAG, selection, cycles and unknown needs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmrunner.errors import PlanError
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.models import Job, Workflow
from vmrunner.workflow.planner import graph_problems, plan


def workflow(needs: dict[str, list[str]]) -> Workflow:
    lines = ["on: push", "jobs:"]
    for job_id, needed in needs.items():
        lines += [
            f"  {job_id}:",
            "    runs-on: x",
            f"    needs: {needed}",
            "    steps: [{run: echo}]",
        ]
    return load_workflow_text("\n".join(lines) + "\n", "graph.yml")


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "slow": [], "after_slow": ["slow"]}


def test_order_is_topological_and_stable() -> None:
    graph = plan(workflow(DIAMOND))
    assert graph.order == ("a", "slow", "b", "c", "after_slow", "d")
    assert graph.dependencies("d") == ("b", "c")
    assert graph.dependents("a") == ("b", "c")
    assert graph.dependents("d") == ()


def test_a_job_is_ready_when_its_own_needs_are_done() -> None:
    graph = plan(workflow(DIAMOND))
    assert graph.ready(set()) == ["a", "slow"]
    # b does not wait for "slow", which is in the same display stage as a.
    assert graph.ready({"a"}) == ["slow", "b", "c"]
    assert graph.ready({"a", "b"}) == ["slow", "c"]
    assert graph.ready({"a", "b", "c"}) == ["slow", "d"]
    assert graph.ready(set(DIAMOND)) == []


def test_stages_are_longest_paths() -> None:
    assert plan(workflow(DIAMOND)).stages() == [["a", "slow"], ["b", "c", "after_slow"], ["d"]]


def test_selecting_a_job_brings_what_it_needs() -> None:
    graph = plan(workflow(DIAMOND), jobs=["d"])
    assert graph.order == ("a", "b", "c", "d")
    assert plan(workflow(DIAMOND), jobs=["after_slow", "b"]).order == (
        "a",
        "slow",
        "b",
        "after_slow",
    )


def test_selecting_an_unknown_job() -> None:
    with pytest.raises(PlanError, match="no job 'zzz'"):
        plan(workflow(DIAMOND), jobs=["zzz"])


def test_cycles_and_unknown_needs_name_the_jobs_and_lines() -> None:
    built = workflow({"a": []})
    jobs = {
        "a": Job(id="a", needs=("c",)),
        "b": Job(id="b", needs=("a", "ghost")),
        "c": Job(id="c", needs=("b",)),
    }
    broken = Workflow(path="broken.yml", jobs=jobs, source=built.source)
    messages = [p.message for p in graph_problems(broken)]
    assert messages == [
        "job 'b' needs unknown job 'ghost' (jobs in this workflow: a, b, c)",
        "jobs depend on each other in a cycle: a -> c -> b -> a",
    ]
    with pytest.raises(PlanError) as info:
        plan(broken)
    assert all(d.file == "broken.yml" for d in info.value.diagnostics)


def test_plan_error_positions_point_at_needs() -> None:
    text = (
        "on: push\njobs:\n  a:\n    runs-on: x\n    needs: [b]\n    steps: [{run: x}]\n  b:\n  "
        "  runs-on: x\n    needs: a\n    steps: [{run: x}]\n"
    )
    with pytest.raises(PlanError) as info:
        load_workflow_text(text, "c.yml")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.line, diagnostic.column) == (5, 13)
    assert diagnostic.message.endswith("a -> b -> a")


def test_static_matrix_for_display() -> None:
    text = (
        "on: push\njobs:\n  m:\n    runs-on: x\n    strategy:\n      matrix:\n        os: [l, "
        "w]\n        v: [1, 2]\n"
        "    steps: [{run: x}]\n  dyn:\n    runs-on: x\n    strategy:\n      matrix: ${{ "
        "fromJSON(needs.m.outputs.m) }}\n"
        "    needs: m\n    steps: [{run: x}]\n  plain:\n    runs-on: x\n    steps: [{run: x}]\n"
    )
    graph = plan(load_workflow_text(text, "m.yml"))
    assert graph.static_matrix("m") == [
        {"os": "l", "v": 1},
        {"os": "l", "v": 2},
        {"os": "w", "v": 1},
        {"os": "w", "v": 2},
    ]
    assert graph.static_matrix("dyn") is None
    assert graph.static_matrix("plain") is None


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=1, max_value=12).flatmap(
        lambda n: st.lists(
            st.lists(st.integers(min_value=0, max_value=n - 1), max_size=3), min_size=n, max_size=n
        )
    )
)
def test_random_dags_run_every_job_after_its_needs(edges: list[list[int]]) -> None:
    # Only edges to earlier jobs: always acyclic.
    needs = {
        f"j{i}": sorted({f"j{k}" for k in targets if k < i}) for i, targets in enumerate(edges)
    }
    graph = plan(workflow(needs))
    position = {job: index for index, job in enumerate(graph.order)}
    assert set(graph.order) == set(needs)
    for job, needed in needs.items():
        assert all(position[n] < position[job] for n in needed)
    done: set[str] = set()
    while len(done) < len(needs):
        ready = graph.ready(done)
        assert ready
        for job in ready:
            assert set(needs[job]) <= done
        done.update(ready)
