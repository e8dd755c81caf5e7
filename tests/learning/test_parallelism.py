"""Advice on jobs a workflow serialises without need, read from real workflow YAML."""

from __future__ import annotations

from vmrunner.learning.parallelism import parallel_suggestions
from vmrunner.workflow.loader import load_workflow_text

WORKFLOW = """
on: push
jobs:
  lint:
    runs-on: ubuntu-latest
    steps: [{run: make lint}]
  build:
    runs-on: ubuntu-latest
    outputs: {version: "${{ steps.v.outputs.version }}"}
    steps: [{id: v, run: echo version=1 >> "$GITHUB_OUTPUT"}]
  docs:
    needs: lint
    runs-on: ubuntu-latest
    steps: [{run: make docs}]
  package:
    needs: [build, lint]
    runs-on: ubuntu-latest
    steps: [{run: "echo ${{ needs.build.outputs.version }}"}]
  report:
    needs: lint
    if: always()
    runs-on: ubuntu-latest
    steps: [{run: make report}]
  publish:
    needs: build
    runs-on: ubuntu-latest
    steps: [{uses: actions/download-artifact@v4}]
  matrix:
    runs-on: ubuntu-latest
    strategy:
      max-parallel: 1
      matrix: {n: [1, 2, 3]}
    steps: [{run: "echo ${{ matrix.n }}"}]
"""


def test_needs_without_outputs_artifacts_or_conditions_and_serial_matrices_are_reported() -> None:
    found = {
        (s.job, s.message.split(":")[0]) for s in parallel_suggestions(load_workflow_text(WORKFLOW))
    }
    assert found == {
        ("docs", "job `docs` needs `lint` but uses none of its outputs"),
        ("package", "job `package` needs `lint` but uses none of its outputs"),
        ("matrix", "job `matrix` runs its matrix one combination at a time"),
    }


def test_a_workflow_without_needs_or_limits_gets_no_advice() -> None:
    text = (
        "on: push\njobs:\n  a: {runs-on: x, steps: [{run: a}]}\n  b: {runs-on: x, steps: "
        "[{run: b}]}\n"
    )
    assert parallel_suggestions(load_workflow_text(text)) == []
