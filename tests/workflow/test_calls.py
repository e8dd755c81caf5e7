"""Reusable workflow calls on the language side: references, typed inputs, secrets, and the
checks ``load_workflow`` makes of local calls (each at the caller's file and line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmrunner.errors import ConfigError, WorkflowError
from vmrunner.workflow.calls import (
    MAX_WORKFLOWS,
    CallInterface,
    call_inputs,
    call_interface,
    call_secrets,
    parse_target,
    typed_input,
)
from vmrunner.workflow.loader import load_workflow, load_workflow_text
from vmrunner.workflow.triggers import DispatchInput

NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)
FILE = st.from_regex(r"[a-z][a-z0-9_-]{0,10}\.ya?ml", fullmatch=True)
REF = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,20}", fullmatch=True).filter(
    lambda s: ".." not in s
)


@given(NAME, NAME, FILE, REF)
def test_remote_references_round_trip(owner: str, repo: str, file: str, ref: str) -> None:
    uses = f"{owner}/{repo}/.github/workflows/{file}@{ref}"
    target = parse_target(uses)
    assert (target.owner, target.repo, target.path, target.ref) == (
        owner, repo, f".github/workflows/{file}", ref,
    )
    assert target.remote
    assert str(target) == uses


@given(FILE, st.sampled_from(["./", "$/"]))
def test_local_and_self_references_name_the_same_file(file: str, prefix: str) -> None:
    target = parse_target(f"{prefix}.github/workflows/{file}")
    assert not target.remote
    assert str(target) == f"./.github/workflows/{file}"


@given(st.text(max_size=60))
def test_any_text_is_a_reference_or_a_config_error(text: str) -> None:
    try:
        target = parse_target(text)
    except ConfigError as exc:
        message = str(exc)
        target = None
    if target is None:
        assert "names no reusable workflow" in message
    else:
        assert target.path.startswith(".github/workflows/")
        assert ".." not in target.path.split("/")


@pytest.mark.parametrize(
    "uses",
    [
        "./.github/workflows/../secrets.yml",
        "./other/x.yml",
        "octo/repo/.github/workflows/x.yml",
        "octo/.github/workflows/x.yml@v1",
        "$/.github/workflows/x.txt",
    ],
)
def test_bad_references(uses: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(uses)


SCALARS = st.one_of(
    st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(),
    st.none(),
)


@given(SCALARS)
def test_input_types_are_strict_except_that_strings_take_scalars(value: object) -> None:
    boolean, number, text = (
        DispatchInput("x", type=kind) for kind in ("boolean", "number", "string")
    )
    if isinstance(value, bool):
        assert typed_input(boolean, value, "w") is value
    else:
        with pytest.raises(ConfigError, match="input 'x' of w is a boolean"):
            typed_input(boolean, value, "w")
    if isinstance(value, int | float) and not isinstance(value, bool):
        assert typed_input(number, value, "w") == float(value)
    else:
        with pytest.raises(ConfigError, match="is a number"):
            typed_input(number, value, "w")
    assert isinstance(typed_input(text, value, "w"), str)


def test_string_inputs_read_scalars_as_github_writes_them() -> None:
    text = DispatchInput("x", type="string")
    assert [typed_input(text, v, "w") for v in (True, 1, 1.0, 1.5, None, "a")] == [
        "true", "1", "1", "1.5", "", "a",
    ]
    with pytest.raises(ConfigError, match="got a list"):
        typed_input(text, [1], "w")


INTERFACE = CallInterface(
    {
        "name": DispatchInput("name", required=True, type="string"),
        "count": DispatchInput("count", type="number", default="${{ 1 + 1 }}"),
        "flag": DispatchInput("flag", type="boolean", default=True),
        "plain": DispatchInput("plain", type="string"),
        "off": DispatchInput("off", type="boolean"),
    },
    {"token": True, "extra": False},
    {"out": "${{ jobs.a.outputs.x }}"},
)


def test_call_inputs_apply_defaults_and_evaluate_expression_defaults() -> None:
    seen: list[str] = []

    def evaluate(text: str) -> object:
        seen.append(text)
        return 2

    assert call_inputs(INTERFACE, {"name": "n"}, "w", evaluate) == {
        "name": "n", "count": 2.0, "flag": True, "plain": "", "off": False,
    }
    assert seen == ["${{ 1 + 1 }}"]
    assert call_inputs(INTERFACE, {"name": 3, "flag": False}, "w", evaluate)["flag"] is False


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "input 'name' is required by w"),
        ({"name": "n", "nope": 1}, "input 'nope' is not declared by w (its inputs: name, "),
        ({"name": "n", "flag": "false"}, "is a boolean; got the string 'false'"),
        ({"name": "n", "count": "1"}, "is a number; got the string '1'"),
    ],
)
def test_call_inputs_refuse_what_github_refuses(given: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call_inputs(INTERFACE, given, "w", lambda _text: 2)


def test_call_secrets() -> None:
    caller = {"GITHUB_TOKEN": "gh", "TOP": "t"}
    assert call_secrets(INTERFACE, "inherit", caller, "w") == caller
    assert call_secrets(INTERFACE, {"token": "x"}, caller, "w") == {
        "GITHUB_TOKEN": "gh", "token": "x",
    }
    with pytest.raises(ConfigError, match="secret 'token' is required by w"):
        call_secrets(INTERFACE, {"extra": "x"}, caller, "w")
    with pytest.raises(ConfigError, match="secret 'TOP' is not declared by w"):
        call_secrets(INTERFACE, {"token": "x", "TOP": "t"}, caller, "w")


def test_the_interface_comes_from_workflow_call_in_any_notation() -> None:
    for on in ("workflow_call", "[push, workflow_call]", "{workflow_call: }"):
        workflow = load_workflow_text(
            f"on: {on}\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo\n"
        )
        assert call_interface(workflow) == CallInterface()
    plain = load_workflow_text("on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: a}]\n")
    assert call_interface(plain) is None


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / ".github/workflows/ci.yml"


CALLED = """
on:
  workflow_call:
    inputs:
      name: {type: string, required: true}
      flag: {type: boolean, default: false}
    secrets:
      token: {required: true}
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo
"""


def errors(path: Path) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert all(d.file == str(path) for d in info.value.diagnostics)
    return [f"{d.line}: {d.message}" for d in info.value.diagnostics]


def test_a_valid_call_loads(tmp_path: Path) -> None:
    ci = write(
        tmp_path,
        {
            ".github/workflows/lib.yml": CALLED,
            ".github/actions/x/action.yml": "runs: {using: composite, steps: []}\n",
            ".github/workflows/ci.yml": """
on: push
jobs:
  call:
    uses: $/.github/workflows/lib.yml
    with: {name: "${{ github.sha }}", flag: true}
    secrets: inherit
  remote:
    uses: octo/repo/.github/workflows/never-read.yml@v1
  steps:
    runs-on: ubuntu-latest
    steps:
      - uses: $/.github/actions/x
""",
        },
    )
    assert set(load_workflow(ci).jobs) == {"call", "remote", "steps"}


def test_call_problems_are_reported_at_the_callers_lines(tmp_path: Path) -> None:
    ci = write(
        tmp_path,
        {
            ".github/workflows/lib.yml": CALLED,
            ".github/workflows/plain.yml": "on: push\njobs:\n  a:\n    runs-on: x\n"
            "    steps: [{run: a}]\n",
            ".github/workflows/broken.yml": "on: workflow_call\njobs: {}\n",
            ".github/workflows/ci.yml": """on: push
jobs:
  call:
    uses: ./.github/workflows/lib.yml
    with:
      flag: "yes"
      other: 1
    secrets:
      nope: x
  missing:
    uses: ./.github/workflows/gone.yml
  plain:
    uses: ./.github/workflows/plain.yml
  broken:
    uses: ./.github/workflows/broken.yml
  steps:
    runs-on: ubuntu-latest
    steps:
      - uses: $/.github/actions/absent
""",
        },
    )
    assert errors(ci) == [
        "4: input 'name' is required by ./.github/workflows/lib.yml",
        "4: secret 'token' is required by ./.github/workflows/lib.yml",
        "6: input 'flag' of ./.github/workflows/lib.yml is a boolean; got the string 'yes'",
        "7: input 'other' is not declared by ./.github/workflows/lib.yml (its inputs: name, "
        "flag)",
        "9: secret 'nope' is not declared by ./.github/workflows/lib.yml (its secrets: token)",
        "11: the called workflow ./.github/workflows/gone.yml: no such file in the repository",
        "13: the called workflow ./.github/workflows/plain.yml cannot be called: its 'on' has "
        "no workflow_call",
        "15: the called workflow ./.github/workflows/broken.yml: it is invalid ("
        f"{tmp_path}/.github/workflows/broken.yml:2:7: 'jobs' must define at least one job)",
        "19: $/.github/actions/absent: no action.yml or action.yaml under "
        "'.github/actions/absent' in the repository",
    ]


def test_a_cycle_is_reported_with_the_file_and_line_that_closes_it(tmp_path: Path) -> None:
    ci = write(
        tmp_path,
        {
            ".github/workflows/a.yml": "on: workflow_call\njobs:\n  to-b:\n"
            "    uses: ./.github/workflows/b.yml\n",
            ".github/workflows/b.yml": "on: workflow_call\njobs:\n  to-a:\n"
            "    uses: ./.github/workflows/a.yml\n",
            ".github/workflows/ci.yml": "on: push\njobs:\n  start:\n"
            "    uses: ./.github/workflows/a.yml\n",
        },
    )
    assert errors(ci) == [
        f"4: a cycle of reusable workflow calls: a.yml → b.yml → a.yml (at {tmp_path}/"
        ".github/workflows/b.yml:4, reached through this call)"
    ]
    assert errors(ci.parent / "a.yml") == [
        f"4: a cycle of reusable workflow calls: a.yml → b.yml → a.yml (at {tmp_path}/"
        ".github/workflows/b.yml:4, reached through this call)"
    ]


def chain(count: int) -> dict[str, str]:
    files = {}
    for level in range(1, count + 1):
        name = "ci" if level == 1 else f"w{level}"
        on = "push" if level == 1 else "workflow_call"
        body = (
            f"  next:\n    uses: ./.github/workflows/w{level + 1}.yml\n"
            if level < count
            else "  last:\n    runs-on: x\n    steps: [{run: a}]\n"
        )
        files[f".github/workflows/{name}.yml"] = f"on: {on}\njobs:\n{body}"
    return files


def test_ten_levels_load_and_eleven_do_not(tmp_path: Path) -> None:
    assert load_workflow(write(tmp_path / "ten", chain(10))).jobs
    [message] = errors(write(tmp_path / "eleven", chain(11)))
    assert message.startswith("4: ./.github/workflows/w11.yml: more than 10 levels of workflows")
    assert "w10.yml:4, reached through this call" in message


def test_more_than_fifty_unique_reusable_workflows(tmp_path: Path) -> None:
    files = {
        f".github/workflows/r{i}.yml": "on: workflow_call\njobs:\n  a:\n    runs-on: x\n"
        "    steps: [{run: a}]\n"
        for i in range(MAX_WORKFLOWS + 1)
    }
    jobs = "".join(
        f"  j{i}:\n    uses: ./.github/workflows/r{i}.yml\n" for i in range(MAX_WORKFLOWS)
    )
    ci = write(
        tmp_path / "fifty", {**files, ".github/workflows/ci.yml": f"on: push\njobs:\n{jobs}"}
    )
    assert len(load_workflow(ci).jobs) == MAX_WORKFLOWS
    more = jobs + f"  j{MAX_WORKFLOWS}:\n    uses: octo/r/.github/workflows/x.yml@v1\n"
    ci = write(tmp_path / "more", {**files, ".github/workflows/ci.yml": f"on: push\njobs:\n{more}"})
    [message] = errors(ci)
    assert f"more than {MAX_WORKFLOWS} unique reusable workflows" in message
    assert message.startswith(f"{3 + 2 * MAX_WORKFLOWS + 1}: octo/r/")


def test_keys_a_calling_job_may_not_have(tmp_path: Path) -> None:
    ci = write(
        tmp_path,
        {
            ".github/workflows/lib.yml": "on: workflow_call\njobs:\n  a:\n    runs-on: x\n"
            "    steps: [{run: a}]\n",
            ".github/workflows/ci.yml": "on: push\njobs:\n  call:\n"
            "    uses: ./.github/workflows/lib.yml\n    env: {A: b}\n    timeout-minutes: 3\n",
        },
    )
    found = errors(ci)
    assert len(found) == 2
    assert found[0].startswith("5: unknown key 'env' in job 'call' ('env' is not allowed in a job")
    assert found[1].startswith("6: unknown key 'timeout-minutes' in job 'call'")
