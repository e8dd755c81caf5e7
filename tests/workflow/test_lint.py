"""Warnings: what GitHub accepts (the workflow runs) but is most likely a mistake.

Each warning must be located (line and column of the reference) and must never be an error;
references that can hold a value must never warn (no false positives).
"""

from __future__ import annotations

import string
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from vmrunner.errors import Diagnostic
from vmrunner.workflow.loader import load_workflow_text


def warnings_of(text: str) -> list[Diagnostic]:
    workflow = load_workflow_text(textwrap.dedent(text), "w.yml")
    assert all(d.severity == "warning" for d in workflow.warnings)
    return list(workflow.warnings)


def test_a_filter_an_event_does_not_take_is_a_warning_not_an_error() -> None:
    found = warnings_of(
        """\
        on:
          create:
            tags: ['v*']
          push:
            branchs: [main]
        jobs:
          a: {runs-on: ubuntu-latest, steps: [{run: echo}]}
        """
    )
    assert [(d.line, d.column) for d in found] == [(3, 5), (5, 5)]
    assert "unknown key 'tags' for create" in found[0].message
    assert "GitHub ignores it (create takes no filters)" in found[0].message
    assert "unknown key 'branchs' for push" in found[1].message
    assert str(found[0]).startswith("w.yml:3:5: warning: ")


def test_an_unknown_dispatch_input_type_is_a_warning_and_the_input_a_string() -> None:
    """GitHub's parser reads ``on.workflow_dispatch`` loosely (etcd runs a nightly workflow
    with ``type: int``); a reusable workflow's input types stay strict."""
    text = """\
        on:
          workflow_dispatch:
            inputs:
              hours: {type: int, required: true, default: 3}
        jobs:
          a: {runs-on: ubuntu-latest, steps: [{run: echo}]}
        """
    found = warnings_of(text)
    assert [(d.line, d.column) for d in found] == [(4, 21)]
    assert "unknown input type 'int'" in found[0].message
    assert "taken as a string" in found[0].message
    workflow = load_workflow_text(textwrap.dedent(text), "w.yml")
    dispatch = workflow.triggers.get("workflow_dispatch")
    assert dispatch is not None
    hours = dispatch.inputs["hours"]
    assert (hours.type, hours.default) == ("string", "3")


def test_needs_of_a_job_not_listed_in_needs() -> None:
    found = warnings_of(
        """\
        on: push
        jobs:
          build: {runs-on: ubuntu-latest, steps: [{run: echo}], outputs: {v: x}}
          lint: {runs-on: ubuntu-latest, steps: [{run: echo}]}
          test:
            needs: [lint]
            if: needs.build.result == 'success' && needs.LINT.result == 'success'
            runs-on: ubuntu-latest
            steps:
              - run: echo ${{ needs['build'].outputs.v }}
        """
    )
    assert [(d.line, d.column, d.message) for d in found] == [
        (7, 15, "needs.build is always empty here: job 'test' does not list 'build' in needs"),
        (10, 29, "needs.build is always empty here: job 'test' does not list 'build' in needs"),
    ]


def test_steps_that_no_earlier_step_has() -> None:
    found = warnings_of(
        """\
        on: push
        jobs:
          a:
            runs-on: ubuntu-latest
            outputs:
              first: ${{ steps.one.outputs.v }}
              late: ${{ steps.three.outputs.v }}
            steps:
              - id: one
                run: echo ${{ steps.two.outputs.v }}
              - id: two
                if: steps.one.outcome == 'success'
                run: echo ${{ steps.nowhere.outputs.v }}
              - parallel:
                  - {id: three, run: 'echo ${{ steps.four.outputs.v }}'}
                  - {id: four, run: 'echo ${{ steps.two.outputs.v }}'}
              - run: echo ${{ steps.three.outputs.v }} ${{ steps.FOUR.conclusion }}
        """
    )
    assert [(d.line, d.message.split(":")[0]) for d in found] == [
        (10, "steps.two is empty here"),
        (13, "steps.nowhere is empty here"),
        (15, "steps.four is empty here"),
    ]
    assert "(a step with that id comes later)" in found[0].message
    assert "(a step with that id does not exist)" in found[1].message


def test_inputs_that_are_not_declared() -> None:
    found = warnings_of(
        """\
        on:
          workflow_dispatch:
            inputs: {Target: {type: string}}
          workflow_call:
            inputs: {level: {type: number}}
        run-name: ${{ inputs.target }} ${{ inputs.missing }}
        jobs:
          a:
            runs-on: ubuntu-latest
            steps: [{run: 'echo ${{ inputs.level }} ${{ inputs.other }}'}]
        """
    )
    assert [(d.line, d.message.split(":")[0]) for d in found] == [
        (6, "inputs.missing is always empty"),
        (10, "inputs.other is always empty"),
    ]
    assert "(declared: level, target)" in found[0].message
    assert "declared: none" in warnings_of(
        "on: push\njobs: {a: {runs-on: x, steps: [{run: '${{ inputs.x }}'}]}}\n"
    )[0].message


def test_matrix_keys_include_only_keys_and_matrices_from_expressions() -> None:
    found = warnings_of(
        """\
        on: push
        jobs:
          a:
            strategy:
              matrix:
                os: [linux]
                include: [{os: linux, extra: 1}, {site: prod}]
                exclude: [{os: mac}]
            runs-on: ${{ matrix.OS }}
            steps: [{run: 'echo ${{ matrix.extra }} ${{ matrix.site }} ${{ matrix.node }}'}]
          b:
            strategy: {matrix: '${{ fromJSON(needs.a.outputs.m) }}'}
            needs: a
            runs-on: x
            steps: [{run: 'echo ${{ matrix.anything }}'}]
          c:
            strategy: {matrix: {os: [x], include: '${{ fromJSON(vars.more) }}'}}
            runs-on: x
            steps: [{run: 'echo ${{ matrix.anything }}'}]
          d:
            strategy: {matrix: {os: [x], include: ['${{ fromJSON(vars.one) }}']}}
            runs-on: x
            steps: [{run: 'echo ${{ matrix.anything }}'}]
          e:
            runs-on: x
            steps: [{run: 'echo ${{ matrix.os }}'}]
        """
    )
    assert [(d.line, d.message) for d in found] == [
        (
            10,
            "matrix.node is always empty: the matrix of job 'a' defines no 'node' (it defines: "
            "extra, os, site)",
        ),
        (26, "matrix.os is always empty: job 'e' has no matrix"),
    ]


_NAMES = st.text(string.ascii_lowercase, min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    vectors=st.lists(_NAMES, min_size=1, max_size=3, unique=True),
    included=st.lists(_NAMES, max_size=3, unique=True),
    other=_NAMES,
    upper=st.booleans(),
)
def test_a_matrix_key_warns_exactly_when_the_matrix_cannot_define_it(
    vectors: list[str], included: list[str], other: str, upper: bool
) -> None:
    defined = {k for k in vectors + included if k not in ("include", "exclude")}
    vectors = [v for v in vectors if v not in ("include", "exclude")]
    if not vectors:
        return
    matrix = "{" + ", ".join(f"{k}: [1]" for k in vectors)
    if included:
        matrix += ", include: [{" + ", ".join(f"{k}: 2" for k in included) + "}]"
    matrix += "}"
    used = [*sorted(defined), other]
    refs = " ".join("${{ matrix.%s }}" % (k.upper() if upper else k) for k in used)
    found = warnings_of(
        f"on: push\njobs:\n  a:\n    strategy: {{matrix: {matrix}}}\n    runs-on: x\n"
        f"    steps: [{{run: '{refs}'}}]\n"
    )
    expected = [] if other in defined else [f"matrix.{other.upper() if upper else other} is"]
    assert [d.message[: len(expected[0])] for d in found] == expected if expected else not found
