"""A matrix list item that is an expression giving a list is spliced into the list (GitHub's
reading, which act's held-out case ``evalmatrix-merge-array`` checks)."""

from __future__ import annotations

from pathlib import Path

from tests.runner.engine import run
from vmrunner.workflow.evaluation import render

FIXTURE = Path(__file__).parent / "fixtures" / "act" / "evalmatrix-merge-array" / "push.yml"


def test_only_expressions_giving_lists_are_spliced() -> None:
    contexts = {"vars": {"more": "[3, 4]"}}
    value = {"a": [1, "${{ fromJSON(vars.more) }}", [5, 6], "${{ 7 }}"]}
    assert render(value, contexts, splice=True) == {"a": [1, 3, 4, [5, 6], 7]}
    assert render(value, contexts) == {"a": [1, [3, 4], [5, 6], 7]}


async def test_act_evalmatrix_merge_array() -> None:
    ran = await run(FIXTURE)
    results = {e.job_key: e.result for e in ran.outcome.jobs}
    assert len(results) == 3, results
    assert set(results.values()) == {"success"}
    assert not ran.outcome.failed
