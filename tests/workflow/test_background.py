"""Background steps: which running steps a control step names, and what it says of them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmrunner.workflow.background import IMPLICIT_WAIT, announce, command, step_key, targets
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.models import Step

ids = st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True), unique=True, max_size=6)


@given(running=ids, named=ids)
def test_a_wait_names_the_running_steps_it_lists_and_reports_the_others(
    running: list[str], named: list[str]
) -> None:
    found, missing = targets(Step(index=3, wait=tuple(named)), running)
    assert found + missing == [key for key in named if key in running] + [
        key for key in named if key not in running
    ]
    assert set(found) <= set(running)
    assert not set(missing) & set(running)


@given(running=ids)
def test_wait_all_names_every_running_step_in_start_order(running: list[str]) -> None:
    assert targets(IMPLICIT_WAIT, running) == (running, [])
    assert targets(Step(index=0, cancel="gone"), running)[1] == (
        [] if "gone" in running else ["gone"]
    )


def test_control_steps_from_a_workflow() -> None:
    job = load_workflow_text(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n"
        "      - {id: s, run: a, background: true}\n      - run: b\n"
        "      - {background: true, run: c}\n"
        "      - wait: [s]\n      - wait-all:\n      - cancel: s\n",
        "w.yml",
    ).jobs["a"]
    steps = job.steps
    assert [step_key(s) for s in steps[:3]] == ["s", "__1", "__2"]
    assert [command(s) for s in steps[3:]] == ["wait: s", "wait-all", "cancel: s"]
    assert [s.display_name for s in steps[3:]] == ["Wait", "Wait for all", "Cancel"]
    assert announce(steps[3], ["server"], ["x"]) == [
        "Waiting for background steps: server", "'x' is not a running background step",
    ]
    assert announce(steps[5], [], []) == ["No background step to cancel"]
