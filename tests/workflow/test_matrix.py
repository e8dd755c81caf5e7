"""Matrix expansion: GitHub's documented examples, properties, and errors; strategy parsing."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vmrunner.errors import MatrixError
from vmrunner.workflow.matrix import (
    MAX_COMBINATIONS,
    Strategy,
    expand_matrix,
    json_equal,
    parse_strategy,
)


def expand(text: str) -> list[dict[str, Any]]:
    return expand_matrix(yaml.safe_load(text))


# --- GitHub's documented examples, with the combinations the docs list -----------------------


def test_docs_order_of_combinations() -> None:
    # "Using a matrix strategy": the first variable varies slowest
    assert expand("{version: [10, 12, 14], os: [ubuntu-latest, windows-latest]}") == [
        {"version": 10, "os": "ubuntu-latest"},
        {"version": 10, "os": "windows-latest"},
        {"version": 12, "os": "ubuntu-latest"},
        {"version": 12, "os": "windows-latest"},
        {"version": 14, "os": "ubuntu-latest"},
        {"version": 14, "os": "windows-latest"},
    ]


def test_docs_array_of_objects() -> None:
    assert expand(
        """
        os: [ubuntu-latest, macos-latest]
        node:
          - version: 14
          - version: 20
            env: NODE_OPTIONS=--openssl-legacy-provider
        """
    ) == [
        {"os": "ubuntu-latest", "node": {"version": 14}},
        {
            "os": "ubuntu-latest",
            "node": {"version": 20, "env": "NODE_OPTIONS=--openssl-legacy-provider"},
        },
        {"os": "macos-latest", "node": {"version": 14}},
        {
            "os": "macos-latest",
            "node": {"version": 20, "env": "NODE_OPTIONS=--openssl-legacy-provider"},
        },
    ]


def test_docs_expanding_with_include() -> None:
    # the fruit/animal example and its six combinations, in the documented order
    assert expand(
        """
        fruit: [apple, pear]
        animal: [cat, dog]
        include:
          - color: green
          - color: pink
            animal: cat
          - fruit: apple
            shape: circle
          - fruit: banana
          - fruit: banana
            animal: cat
        """
    ) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_docs_perl_example_has_seven_jobs() -> None:
    combinations = expand(
        """
        os: [ubuntu-latest]
        perl: ['5.16', '5.20', '5.26', '5.30', latest]
        include:
          - {os: macos-latest, perl: '5.26'}
          - {os: macos-latest, perl: latest}
        """
    )
    assert combinations == [
        *(
            {"os": "ubuntu-latest", "perl": perl}
            for perl in ("5.16", "5.20", "5.26", "5.30", "latest")
        ),
        {"os": "macos-latest", "perl": "5.26"},
        {"os": "macos-latest", "perl": "latest"},
    ]


def test_docs_include_adds_a_variable_to_one_combination() -> None:
    combinations = expand(
        """
        os: [windows-latest, ubuntu-latest]
        node: [12, 14, 16]
        include:
          - {os: windows-latest, node: 16, npm: 6}
        """
    )
    assert len(combinations) == 6
    assert [c for c in combinations if "npm" in c] == [
        {"os": "windows-latest", "node": 16, "npm": 6}
    ]


def test_docs_include_adds_a_combination() -> None:
    combinations = expand(
        """
        os: [macos-latest, windows-latest, ubuntu-latest]
        version: [12, 14, 16]
        include:
          - {os: windows-latest, version: 17}
        """
    )
    assert len(combinations) == 10
    assert combinations[-1] == {"os": "windows-latest", "version": 17}


def test_docs_include_only() -> None:
    assert expand(
        """
        include:
          - {site: production, datacenter: site-a}
          - {site: staging, datacenter: site-b}
        """
    ) == [
        {"site": "production", "datacenter": "site-a"},
        {"site": "staging", "datacenter": "site-b"},
    ]


def test_docs_exclude_partial_match() -> None:
    combinations = expand(
        """
        os: [macos-latest, windows-latest]
        version: [12, 14, 16]
        environment: [staging, production]
        exclude:
          - {os: macos-latest, version: 12, environment: production}
          - {os: windows-latest, version: 16}
        """
    )
    assert combinations == [
        {"os": "macos-latest", "version": 12, "environment": "staging"},
        {"os": "macos-latest", "version": 14, "environment": "staging"},
        {"os": "macos-latest", "version": 14, "environment": "production"},
        {"os": "macos-latest", "version": 16, "environment": "staging"},
        {"os": "macos-latest", "version": 16, "environment": "production"},
        {"os": "windows-latest", "version": 12, "environment": "staging"},
        {"os": "windows-latest", "version": 12, "environment": "production"},
        {"os": "windows-latest", "version": 14, "environment": "staging"},
        {"os": "windows-latest", "version": 14, "environment": "production"},
    ]


def test_docs_fail_fast_example() -> None:
    assert expand(
        "{version: [6, 7, 8], experimental: [false], include: [{version: 9, experimental: true}]}"
    ) == [
        {"version": 6, "experimental": False},
        {"version": 7, "experimental": False},
        {"version": 8, "experimental": False},
        {"version": 9, "experimental": True},
    ]


def test_include_puts_back_an_excluded_combination() -> None:
    assert expand("{os: [a, b], exclude: [{os: b}], include: [{os: b}]}") == [
        {"os": "a"},
        {"os": "b"},
    ]


# --- semantics the docs imply ---------------------------------------------------------------


def test_variable_names_are_case_insensitive() -> None:
    assert expand("{os: [linux, mac], include: [{OS: mac, arch: arm}]}") == [
        {"os": "linux"},
        {"os": "mac", "arch": "arm"},
    ]
    assert expand("{os: [linux, mac], exclude: [{OS: mac}]}") == [{"os": "linux"}]
    assert expand("{os: [linux], include: [{flag: a}, {FLAG: b}]}") == [
        {"os": "linux", "flag": "b"}
    ]


def test_values_compare_as_json() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal("1", 1)
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})
    assert not json_equal([1, 2], [2, 1])
    # true is not 1: the include cannot merge, so it becomes its own combination
    assert expand("{flag: [1], include: [{flag: true, x: y}]}") == [
        {"flag": 1},
        {"flag": True, "x": "y"},
    ]
    assert expand(
        "{node: [{v: 14}], exclude: [{node: {v: 14.0}}], include: [{node: {v: 20}}]}"
    ) == [{"node": {"v": 20}}]


# --- properties ------------------------------------------------------------------------------

_VALUE = st.one_of(st.integers(0, 3), st.sampled_from(["a", "b", "c"]), st.booleans())
_NAMES = st.sampled_from(["os", "node", "arch", "env"])


@st.composite
def matrices(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(_NAMES, min_size=1, max_size=3, unique=True))
    vectors = {key: draw(st.lists(_VALUE, min_size=1, max_size=3)) for key in keys}
    entry = st.dictionaries(st.sampled_from([*keys, "extra", "more"]), _VALUE, max_size=3)
    matrix: dict[str, Any] = dict(vectors)
    matrix["exclude"] = draw(
        st.lists(st.dictionaries(st.sampled_from(keys), _VALUE, min_size=1, max_size=2), max_size=3)
    )
    matrix["include"] = draw(st.lists(entry, max_size=3))
    return matrix


def _holds(combination: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(
        key in combination and json_equal(combination[key], value) for key, value in entry.items()
    )


@settings(max_examples=200)
@given(matrices())
def test_expansion_properties(matrix: dict[str, Any]) -> None:
    vectors = {key: value for key, value in matrix.items() if key not in ("include", "exclude")}
    product = [
        dict(zip(vectors, values, strict=True)) for values in itertools.product(*vectors.values())
    ]
    kept = [c for c in product if not any(_holds(c, entry) for entry in matrix["exclude"])]
    if not kept and not matrix["include"]:
        with pytest.raises(MatrixError, match="no combination"):
            expand_matrix(matrix)
        return
    result = expand_matrix(matrix)
    # size of the product minus the excluded ones, plus includes that matched no combination
    originals = result[: len(kept)]
    assert len(result) == len(kept) + sum(
        not any(_fits(entry, c, vectors) for c in kept) for entry in matrix["include"]
    )
    for original, expanded in zip(kept, originals, strict=True):
        # order is stable and includes never overwrite an original value
        assert {key: expanded[key] for key in vectors} == original
        assert all(json_equal(expanded[key], original[key]) for key in vectors)
    for entry in matrix["include"]:
        assert any(_holds(c, entry) for c in result) or any(_fits(entry, c, vectors) for c in kept)


def _fits(entry: dict[str, Any], combination: dict[str, Any], vectors: dict[str, Any]) -> bool:
    return all(
        json_equal(combination[key], value) for key, value in entry.items() if key in vectors
    )


@given(matrices())
def test_expansion_is_deterministic_and_leaves_input_untouched(matrix: dict[str, Any]) -> None:
    snapshot = yaml.safe_dump(matrix)
    try:
        first = expand_matrix(matrix)
    except MatrixError:
        return
    assert expand_matrix(matrix) == first
    assert yaml.safe_dump(matrix) == snapshot


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matrix", "fragment"),
    [
        ({}, "at least one variable or an include"),
        ({"exclude": [{"os": "a"}]}, "at least one variable"),
        ({"os": "linux"}, "matrix.os: matrix variable 'os' must be a list"),
        ({"os": []}, "'os' has no values"),
        ({"os": ["a"], "OS": ["b"]}, "repeats 'os'"),
        ({"os": "${{ fromJSON(needs.a.outputs.m) }}"}, "still holds an expression"),
        ({"os": ["a"], "include": "${{ x }}"}, "matrix.include: still holds an expression"),
        ({"os": ["a"], "include": [1]}, "matrix.include[0]: include entries must be maps"),
        ({"os": ["a"], "exclude": {"os": "a"}}, "exclude must be a list of maps"),
        ({"os": ["a"], "exclude": [{"arch": "x"}]}, "exclude key 'arch' is not a matrix variable"),
        (
            {"os": ["a", "b"], "exclude": [{"os": "a"}, {"os": "b"}]},
            "every combination is excluded",
        ),
        (
            {"a": list(range(20)), "b": list(range(13))},
            "more than 256 combinations (260 before exclude)",
        ),
        ({"a": list(range(1000)), "b": list(range(1001))}, "1001000 combinations before exclude"),
        ({"a": ["x"], "include": [{"a": f"y{i}"} for i in range(256)]}, "257 combinations"),
    ],
)
def test_errors(matrix: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MatrixError) as raised:
        expand_matrix(matrix)
    assert fragment in str(raised.value)
    assert all(d.file == "" and d.line == 0 for d in raised.value.diagnostics)


def test_exactly_the_limit_is_allowed() -> None:
    assert len(expand_matrix({"a": list(range(16)), "b": list(range(16))})) == MAX_COMBINATIONS
    assert (
        len(
            expand_matrix(
                {"a": list(range(20)), "b": list(range(13)), "exclude": [{"b": 0}, {"b": 1}]}
            )
        )
        == 220
    )


# --- strategy --------------------------------------------------------------------------------

PATH = ("jobs", "test", "strategy")


def test_strategy_defaults_and_values() -> None:
    assert parse_strategy({}, PATH) == (Strategy(), [])
    strategy, problems = parse_strategy(
        {"matrix": {"os": ["a"]}, "fail-fast": False, "max-parallel": 2}, PATH
    )
    assert problems == []
    assert strategy == Strategy({"os": ["a"]}, False, 2)


def test_strategy_keeps_expressions_for_the_runner() -> None:
    raw = {
        "matrix": "${{ fromJSON(needs.a.outputs.m) }}",
        "fail-fast": "${{ github.event_name == 'push' }}",
        "max-parallel": "${{ inputs.parallel }}",
    }
    strategy, problems = parse_strategy(raw, PATH)
    assert problems == []
    assert strategy == Strategy(raw["matrix"], raw["fail-fast"], raw["max-parallel"])
    _, problems = parse_strategy(
        {"matrix": {"color": "${{ fromJSON(needs.define-matrix.outputs.colors) }}"}}, PATH
    )
    assert problems == []


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ("${{ fromJSON(x) }}", PATH, "use expressions inside it"),
        ([1], PATH, "strategy must be a map"),
        ({"parallel": 2}, (*PATH, "parallel"), "unknown key 'parallel'"),
        ({"fail-fast": "no"}, (*PATH, "fail-fast"), "true, false or an expression"),
        ({"max-parallel": 0}, (*PATH, "max-parallel"), "at least 1"),
        ({"max-parallel": 1.5}, (*PATH, "max-parallel"), "whole number"),
        ({"max-parallel": True}, (*PATH, "max-parallel"), "whole number"),
        ({"matrix": [1, 2]}, (*PATH, "matrix"), "map of variables to lists"),
        ({"matrix": {}}, (*PATH, "matrix"), "at least one variable"),
        ({"matrix": {"os": "linux"}}, (*PATH, "matrix", "os"), "must be a list"),
        (
            {"matrix": {"os": ["a"], "include": {"os": "b"}}},
            (*PATH, "matrix", "include"),
            "list of maps",
        ),
        (
            {"matrix": {"os": ["a"], "exclude": ["x"]}},
            (*PATH, "matrix", "exclude", 0),
            "must be maps",
        ),
        (
            {"matrix": {"os": ["a"], "exclude": [{"arch": "x"}]}},
            (*PATH, "matrix", "exclude", 0, "arch"),
            "not a matrix variable",
        ),
    ],
)
def test_strategy_problems(raw: Any, path: tuple[Any, ...], fragment: str) -> None:
    _, problems = parse_strategy(raw, PATH)
    assert any(problem.path == path and fragment in problem.message for problem in problems), (
        problems
    )


def test_whole_number_floats_are_accepted_for_max_parallel() -> None:
    assert parse_strategy({"max-parallel": 3.0}, PATH) == (Strategy(max_parallel=3), [])


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["${{ x }}"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["os", "OS", "include", "exclude", "matrix", "fail-fast", "max-parallel", ""]
            )
            | st.integers(),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)


@settings(max_examples=300)
@given(_PLAIN)
def test_any_plain_value_gives_a_strategy_and_problems(raw: Any) -> None:
    strategy, problems = parse_strategy(raw, PATH)
    assert isinstance(strategy, Strategy)
    assert all(problem.path[: len(PATH)] == PATH and problem.message for problem in problems)


@settings(max_examples=300)
@given(_PLAIN)
def test_any_plain_matrix_expands_or_raises_matrix_error(raw: Any) -> None:
    errors: list[MatrixError] = []
    try:
        combinations = expand_matrix(raw)
    except MatrixError as error:
        errors.append(error)
        combinations = []
    assert bool(errors) != (1 <= len(combinations) <= MAX_COMBINATIONS)
    assert all(error.diagnostics for error in errors)
