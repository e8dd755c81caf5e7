"""``parallel`` groups and the background-step keywords, as GitHub's workflow syntax has them."""

from __future__ import annotations

import textwrap

import pytest

from vmrunner.errors import WorkflowError
from vmrunner.workflow.loader import load_workflow_text

# As vuejs/core's size-report workflow writes it (ids inside the group, read after it).
VUE = """\
on: push
jobs:
  report:
    runs-on: ubuntu-latest
    steps:
      - parallel:
          - name: Read PR Number
            id: pr-number
            uses: juliangruber/read-file-action@271ff311a4947af354c6abcd696a306553b9ec18
            with: {path: temp/size/number.txt}
          - name: Read base branch
            id: pr-base
            run: echo hi
      - run: echo ${{ steps.pr-base.outputs.content }}
      - {id: server, run: npm start, background: true}
      - wait: [server]
      - wait-all:
      - {cancel: server, name: Stop}
"""


def test_a_parallel_group_loads_with_its_steps() -> None:
    workflow = load_workflow_text(VUE)
    assert not workflow.warnings
    group, _, server, wait, wait_all, cancel = workflow.jobs["report"].steps
    assert group.display_name == "Parallel group"
    assert group.is_control
    assert [(s.id, s.index, s.group, s.position) for s in group.parallel] == [
        ("pr-number", 0, 0, "0_0"), ("pr-base", 1, 0, "0_1"),
    ]
    assert group.parallel[0].with_["path"] == "temp/size/number.txt"
    assert server.background
    assert wait.wait == ("server",)
    assert wait_all.wait_all
    assert cancel.cancel == "server"
    assert cancel.display_name == "Stop"
    assert (wait.display_name, wait_all.display_name) == ("Wait", "Wait for all")
    assert len(workflow.jobs["report"].every_step) == 8


@pytest.mark.parametrize(
    ("steps", "line", "fragment"),
    [
        ("- parallel:\n    - {run: a, background: true}", 7, "'background' is not allowed inside"),
        ("- parallel:\n    - parallel: [{run: a}]", 7, "'parallel' is not allowed inside"),
        ("- parallel:\n    - wait: x", 7, "'wait' is not allowed inside a parallel block"),
        ("- {parallel: [{run: a}], name: n}", 6, "unknown key 'name'"),
        ("- {parallel: [{run: a}], run: b}", 6, "has both 'run' and 'parallel'"),
        ("- parallel: [{run: a}, {bogus: 1}]", 6, "step 1.2 of job 'a' has neither 'run'"),
        ("- {id: x, run: a}\n- {wait: [x, y]}", 7, "wait: 'y' is not the id of an earlier step"),
        ("- {wait: z}\n- {id: z, run: a}", 6, "wait: 'z' is not the id of an earlier step"),
        ("- {id: w, wait: w}", 6, "cannot wait for itself"),
        ("- {wait-all: false}", 6, "wait-all must be true or empty"),
        ("- {cancel: x, if: always()}", 6, "unknown key 'if'"),
        ("- {run: a, background: yes please}", 6, "must be a boolean"),
        ("- parallel:\n    - {id: a, run: a}\n- {id: a, run: b}", 8, "duplicate step id 'a'"),
    ],
)
def test_what_github_refuses(steps: str, line: int, fragment: str) -> None:
    text = "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n" + textwrap.indent(steps, "      ")
    with pytest.raises(WorkflowError) as info:
        load_workflow_text(text + "\n")
    found = [(d.line, d.message) for d in info.value.diagnostics]
    assert any(at == line and fragment in message for at, message in found), found
