"""Loading valid workflows into models, and never failing with anything but WorkflowError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmrunner.errors import WorkflowError
from vmrunner.workflow.loader import (
    load_workflow,
    load_workflow_text,
    load_workflows,
    workflow_files,
)
from vmrunner.workflow.models import Container, RunsOn, Workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / ".github" / "workflows"

FULL = """
name: Full
run-name: Deploy by ${{ github.actor }}
on:
  push:
    branches: [main]
  workflow_dispatch:
env:
  GLOBAL: 1
  FLAG: true
defaults:
  run:
    shell: bash
    working-directory: src
permissions: read-all
concurrency:
  group: ${{ github.workflow }}-${{ github.ref }}
  cancel-in-progress: true
jobs:
  build:
    name: Build ${{ matrix.os }}
    runs-on: ${{ matrix.os }}
    timeout-minutes: 30
    continue-on-error: ${{ matrix.experimental }}
    strategy:
      fail-fast: false
      matrix:
        os: [ubuntu-latest, macos-latest]
        experimental: [false]
    env:
      TOKEN: ${{ secrets.TOKEN }}
    outputs:
      digest: ${{ steps.hash.outputs.digest }}
    container:
      image: node:20
      env:
        NODE_ENV: test
      ports: [80, "443:443"]
      credentials:
        username: me
        password: ${{ secrets.PASSWORD }}
    services:
      redis: redis:7
      db:
        image: postgres
        options: --health-cmd pg_isready
    environment:
      name: production
      url: ${{ steps.deploy.outputs.url }}
    permissions:
      contents: read
      id-token: write
    defaults:
      run:
        shell: sh
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
      - id: hash
        name: Hash
        if: ${{ hashFiles('**/*.lock') != '' }}
        run: echo "digest=x" >> "$GITHUB_OUTPUT"
        shell: python
        working-directory: ${{ env.GLOBAL }}
        env:
          STEP: ${{ steps.hash.outcome }}
        continue-on-error: true
        timeout-minutes: 5
      - run: 123
        if: failure() && steps.hash.outcome == 'failure'
  deploy:
    needs: build
    if: always() && needs.build.result == 'success'
    uses: octo/repo/.github/workflows/deploy.yml@v1
    with:
      digest: ${{ needs.build.outputs.digest }}
      dry: true
    secrets: inherit
  notify:
    needs: [build, deploy]
    runs-on: [self-hosted, linux]
    steps:
      - run: echo done
  grouped:
    runs-on:
      group: big
      labels: gpu
    steps:
      - run: echo
"""


def test_full_workflow_models() -> None:
    workflow = load_workflow_text(FULL, "full.yml")
    assert workflow.name == "Full"
    assert workflow.path == "full.yml"
    assert workflow.run_name == "Deploy by ${{ github.actor }}"
    assert workflow.triggers.names == ("push", "workflow_dispatch")
    assert dict(workflow.env) == {"GLOBAL": 1, "FLAG": True}
    assert workflow.defaults.shell == "bash"
    assert workflow.defaults.working_directory == "src"
    assert workflow.permissions == "read-all"
    assert workflow.concurrency is not None
    assert workflow.concurrency.cancel_in_progress is True
    assert list(workflow.jobs) == ["build", "deploy", "notify", "grouped"]

    build = workflow.jobs["build"]
    assert build.runs_on == RunsOn(expression="${{ matrix.os }}")
    assert build.timeout_minutes == 30
    assert build.continue_on_error == "${{ matrix.experimental }}"
    assert build.strategy is not None
    assert build.strategy.fail_fast is False
    assert dict(build.outputs) == {"digest": "${{ steps.hash.outputs.digest }}"}
    assert build.container == Container(
        image="node:20", env={"NODE_ENV": "test"}, ports=("80", "443:443"),
        credentials={"username": "me", "password": "${{ secrets.PASSWORD }}"},
    )
    assert build.services["redis"].image == "redis:7"
    assert build.services["db"].options == "--health-cmd pg_isready"
    assert build.environment is not None
    assert build.environment.name == "production"
    assert dict(build.permissions or {}) == {"contents": "read", "id-token": "write"}
    assert build.defaults.shell == "sh"
    checkout, hashing, numbered = build.steps
    assert checkout.uses == "actions/checkout@v4"
    assert dict(checkout.with_) == {"fetch-depth": 0}
    assert checkout.display_name == "Run actions/checkout@v4"
    assert (hashing.index, hashing.id, hashing.shell, hashing.timeout_minutes) == (
        1,
        "hash",
        "python",
        5,
    )
    assert hashing.continue_on_error is True
    assert hashing.if_ == "${{ hashFiles('**/*.lock') != '' }}"
    assert numbered.run == "123"
    assert numbered.if_ == "failure() && steps.hash.outcome == 'failure'"

    deploy = workflow.jobs["deploy"]
    assert deploy.calls_workflow
    assert deploy.runs_on is None
    assert deploy.needs == ("build",)
    assert deploy.secrets == "inherit"
    assert dict(deploy.with_) == {"digest": "${{ needs.build.outputs.digest }}", "dry": True}

    assert workflow.jobs["notify"].runs_on == RunsOn(labels=("self-hosted", "linux"))
    assert workflow.jobs["notify"].needs == ("build", "deploy")
    assert workflow.jobs["grouped"].runs_on == RunsOn(labels=("gpu",), group="big")


def test_models_are_immutable() -> None:
    workflow = load_workflow_text(FULL, "full.yml")
    with pytest.raises(AttributeError):
        workflow.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        workflow.jobs["x"] = workflow.jobs["build"]  # type: ignore[index]
    with pytest.raises(TypeError):
        workflow.env["X"] = "1"  # type: ignore[index]


def test_workflow_locates_values() -> None:
    workflow = load_workflow_text(FULL, "full.yml")
    line, _ = workflow.locate(("jobs", "deploy", "needs"))
    assert FULL.splitlines()[line - 1].strip() == "needs: build"


def test_examples_load() -> None:
    result = load_workflows(EXAMPLES)
    assert result.errors == ()
    assert [w.display_name for w in result.workflows] == ["Checks", "CI", "Nightly", "Release"]


def test_workflow_files_of_a_folder(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "notes.txt", "c.json"):
        (tmp_path / name).write_text("x: 1\n")
    (tmp_path / "sub.yml").mkdir()
    assert workflow_files(tmp_path) == [str(tmp_path / "a.yml"), str(tmp_path / "b.yaml")]
    with pytest.raises(WorkflowError, match="no such file"):
        workflow_files(tmp_path / "missing")


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"on: push\n\xff\xfe\n")
    with pytest.raises(WorkflowError, match="not valid UTF-8"):
        load_workflow(binary)
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow(tmp_path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("on: push\njobs: {}\n", "at least one job"),
        ("on: push\njobs: [a]\n", "jobs must be a mapping"),
        ("on: push\njobs:\n  a: 1\n", "job 'a' must be a mapping"),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [1]\n",
            "step 1 of job 'a' must be a mapping",
        ),
        (
            "on: push\njobs:\n  a:\n    runs-on: []\n    steps: [{run: x}]\n",
            "must not be an empty list",
        ),
        ("on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{uses: ''}]\n", "must not be empty"),
        ("on: push\njobs:\n  a:\n    uses: x\n    secrets: all\n", "must be one of: inherit"),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x, shell: '${{ matrix.s "
            "}}x', id: 'a b'}]\n",
            "invalid step id 'a b'",
        ),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: '${{ secrets.X }}', if: "
            "'secrets.X'}]\n",
            "Unrecognized named-value: 'secrets'",
        ),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x, timeout-minutes: '1${{ 2 "
            "}}'}]\n",
            "must be a number or an expression",
        ),
        (
            "on: push\nenv:\n  A: ${{ env.B }}\njobs:\n  a:\n    runs-on: x\n    steps: [{run: "
            "x}]\n",
            "Unrecognized named-value: 'env'",
        ),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    env:\n      ${{ github.sha }}: 1\n    "
            "steps: [{run: x}]\n",
            "keys cannot be expressions",
        ),
    ],
)
def test_specific_problems(text: str, words: str) -> None:
    with pytest.raises(WorkflowError) as info:
        load_workflow_text(text, "w.yml")
    assert any(words in d.message for d in info.value.diagnostics), info.value.diagnostics


@pytest.mark.parametrize(
    "condition",
    [
        "success()",
        "${{ always() }}",
        "github.event_name == 'push'",
        "true",
        "needs.a.result == 'failure' || cancelled()",
    ],
)
def test_job_conditions_that_are_valid(condition: str) -> None:
    text = (
        f'on: push\njobs:\n  a:\n    if: "{condition}"\n    runs-on: x\n    steps: [{{run: x}}]\n'
    )
    assert load_workflow_text(text, "w.yml").jobs["a"].if_ == condition


def test_matrix_insert_directive_is_accepted() -> None:
    text = (
        "on: push\njobs:\n  a:\n    runs-on: x\n    strategy:\n      matrix:\n        a:\n"
        "          - env:\n              ${{ insert }}: ${{ fromJSON('{}') }}\n    steps: [{run: "
        "x}]\n"
    )
    load_workflow_text(text, "w.yml")


# --- never anything but WorkflowError -------------------------------------------------------

def outcome(text: str) -> Workflow | WorkflowError:
    """The loaded workflow, or the WorkflowError (any other exception propagates and fails)."""
    try:
        return load_workflow_text(text, "fuzz.yml")
    except WorkflowError as exc:
        return exc


_ANY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_ANY
@given(st.text())
def test_arbitrary_text_raises_only_workflow_error(text: str) -> None:
    result = outcome(text)
    if isinstance(result, WorkflowError):
        assert result.diagnostics
        assert all(d.file == "fuzz.yml" for d in result.diagnostics)


_KEYS = st.sampled_from(
    [
        "on",
        "jobs",
        "name",
        "env",
        "steps",
        "runs-on",
        "run",
        "uses",
        "with",
        "needs",
        "if",
        "strategy",
        "matrix",
        "include",
        "exclude",
        "push",
        "branches",
        "paths",
        "schedule",
        "cron",
        "id",
        "timeout-minutes",
        "continue-on-error",
        "outputs",
        "services",
        "container",
        "image",
        "permissions",
        "concurrency",
        "group",
        "defaults",
        "shell",
        "workflow_dispatch",
        "inputs",
        "type",
        "default",
        "secrets",
        "environment",
        "build",
        "test",
        "a",
        "types",
        "${{ insert }}",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "${{ github.sha }}",
            "${{ matrix.os",
            "${{ x == }}",
            "always()",
            "ubuntu-latest",
            "*/5 * * * *",
            "main",
            "[z-a]",
            "inherit",
            "read",
            "${{ fromJSON('[1]') }}",
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=30,
)
_DOCUMENTS = st.one_of(_VALUES, st.dictionaries(_KEYS, _VALUES, max_size=6))


@_ANY
@given(_DOCUMENTS, st.sampled_from(["yaml", "json"]))
def test_arbitrary_structures_raise_only_workflow_error(document: object, form: str) -> None:
    text = yaml.safe_dump(document) if form == "yaml" else json.dumps(document)
    result = outcome(text)
    if isinstance(result, WorkflowError):
        assert result.diagnostics
    else:
        assert result.jobs


_STEP = st.fixed_dictionaries(
    {"run": st.sampled_from(["echo", "${{ github.sha }}", "${{ steps.x.outputs.y }}"])},
    optional={
        "if": _SCALARS,
        "id": st.sampled_from(["a", "b", "1x"]),
        "env": _VALUES,
        "with": _VALUES,
        "timeout-minutes": _SCALARS,
        "uses": st.just("actions/checkout@v4"),
    },
)
_JOB = st.fixed_dictionaries(
    {
        "runs-on": st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3)),
        "steps": st.lists(_STEP, max_size=3),
    },
    optional={
        "needs": st.one_of(
            st.sampled_from(["a", "b", "c"]),
            st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=3),
        ),
        "strategy": _VALUES,
        "if": _SCALARS,
        "env": _VALUES,
        "outputs": _VALUES,
    },
)


@_ANY
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), _JOB, min_size=1, max_size=3))
def test_nearly_valid_workflows_load_or_explain(jobs: dict[str, object]) -> None:
    text = yaml.safe_dump({"on": "push", "jobs": jobs}, sort_keys=False)
    result = outcome(text)
    if isinstance(result, WorkflowError):
        assert all(d.line >= 1 for d in result.diagnostics), result.diagnostics
    else:
        assert list(result.jobs) == list(jobs)


@pytest.mark.parametrize(
    ("value", "line", "column"),
    [
        ("echo ${{ secret.A }}", 6, 23),
        ("'echo ${{ secret.A }}'", 6, 24),
        ('"echo ${{ secret.A }}"', 6, 24),
        ("|\n          first\n          echo ${{ secret.A }}", 8, 20),
    ],
)
def test_expression_errors_point_at_the_expression(value: str, line: int, column: int) -> None:
    text = f"on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: {value}\n"
    with pytest.raises(WorkflowError) as info:
        load_workflow_text(text, "w.yml")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.line, diagnostic.column) == (line, column)
    assert text.splitlines()[line - 1][column - 1:].startswith("secret.A")
    assert "Unrecognized named-value: 'secret'" in diagnostic.message


def test_nested_keys_add_contexts_to_their_parents() -> None:
    # container.credentials may use secrets (its own) and matrix (from container); image may not
    # use secrets.
    ok = (
        "on: push\njobs:\n  a:\n    runs-on: x\n    strategy: {matrix: {u: [me]}}\n    "
        "container:\n      image: x\n"
        "      credentials: {username: '${{ matrix.u }}', password: '${{ secrets.P }}'}\n    "
        "steps: [{run: x}]\n"
    )
    assert load_workflow_text(ok, "w.yml").jobs["a"].container is not None
    with pytest.raises(
        WorkflowError, match=r"container\.image: Unrecognized named-value: 'secrets'"
    ):
        load_workflow_text(ok.replace("image: x", "image: '${{ secrets.P }}'"), "w.yml")


_BASES = [path.read_text() for path in sorted(EXAMPLES.glob("*.yml"))] + [FULL]
_EDITS = st.lists(
    st.tuples(
        st.integers(0, 5000),
        st.integers(0, 5),
        st.sampled_from(
            [
                "",
                " ",
                "\n",
                ":",
                "-",
                "${{",
                "}}",
                "'",
                '"',
                "[",
                "{",
                "&a",
                "*a",
                "<<",
                "#",
                "\t",
                "!",
                "|",
                "?",
            ]
        ),
    ),
    max_size=6,
)


@_ANY
@given(st.sampled_from(_BASES), _EDITS)
def test_damaged_workflows_raise_only_workflow_error(
    text: str, edits: list[tuple[int, int, str]]
) -> None:
    for position, cut, insert in edits:
        position %= len(text) + 1
        text = text[:position] + insert + text[position + cut:]
    result = outcome(text)
    if isinstance(result, WorkflowError):
        assert result.diagnostics
