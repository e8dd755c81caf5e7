"""YAML 1.2 semantics and positions of ``vmrunner.workflow.yaml``."""

from __future__ import annotations

import math

import pytest

from vmrunner.errors import WorkflowError
from vmrunner.workflow.yaml import load_document, plain_scalar


def value(text: str):
    return load_document(text, "w.yml").value


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "Yes", "NO", "On"])
def test_yaml_11_booleans_are_strings(word: str) -> None:
    assert value(f"k: {word}\n") == {"k": word}


def test_on_key_is_the_string_on() -> None:
    assert value("on: push\n") == {"on": "push"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("FALSE", False),
        ("null", None),
        ("~", None),
        ("", None),
        ("Null", None),
        ("12", 12),
        ("-3", -3),
        ("+4", 4),
        ("017", 17),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        (".inf", math.inf),
        ("-.Inf", -math.inf),
        ("1_000", "1_000"),
        ("0b101", "0b101"),
        ("08.1.2", "08.1.2"),
        ("0o8", "0o8"),
        ("TrUe", "TrUe"),
    ],
)
def test_core_schema_scalars(text: str, expected: object) -> None:
    assert plain_scalar(text) == expected
    assert type(plain_scalar(text)) is type(expected)


def test_nan() -> None:
    assert math.isnan(value("k: .NaN\n")["k"])


@pytest.mark.parametrize("text", ["'true'", '"12"', "'null'", "!!str yes", "!!str 1", '"on"'])
def test_quoted_and_str_tagged_scalars_are_strings(text: str) -> None:
    result = value(f"k: {text}\n")["k"]
    assert isinstance(result, str)


def test_explicit_tags() -> None:
    assert value("a: !!int '7'\nb: !!float 1\nc: !!bool 'true'\n") == {"a": 7, "b": 1.0, "c": True}


def test_keys_keep_their_text() -> None:
    assert value("1: a\ntrue: b\nnull: c\n") == {"1": "a", "true": "b", "null": "c"}


def test_anchors_and_aliases() -> None:
    doc = value("base: &b {runs-on: x, env: {A: 1}}\nother: *b\nlist: [&s hi, *s]\n")
    assert doc["other"] == {"runs-on": "x", "env": {"A": 1}}
    assert doc["list"] == ["hi", "hi"]


def test_merge_keys_are_rejected_at_the_key() -> None:
    with pytest.raises(WorkflowError) as info:
        load_document("a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n", "w.yml")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.line, diagnostic.column) == (3, 3)
    assert "merge keys" in diagnostic.message


def test_quoted_merge_key_is_a_plain_key() -> None:
    assert value("'<<': 1\n") == {"<<": 1}


def test_duplicate_keys_are_all_reported() -> None:
    with pytest.raises(WorkflowError) as info:
        load_document("a: 1\nb: 2\na: 3\nc:\n  d: 1\n  d: 2\n", "w.yml")
    found = [(d.line, d.column, d.message) for d in info.value.diagnostics]
    assert found == [
        (3, 1, "duplicate key 'a' (first at line 1)"),
        (6, 3, "duplicate key 'd' (first at line 5)"),
    ]


def test_positions_of_keys_and_values() -> None:
    doc = load_document(
        "jobs:\n  build:\n    runs-on: [a, b]\n    steps:\n      - run: x\n", "w.yml"
    )
    assert doc.locate(("jobs", "build", "runs-on")) == (3, 14)
    assert doc.locate(("jobs", "build", "runs-on", 1)) == (3, 18)
    assert doc.locate_key(("jobs", "build", "runs-on")) == (3, 5)
    # A block collection is reported at its key, its items where they are.
    assert doc.locate(("jobs", "build", "steps")) == (4, 5)
    assert doc.locate(("jobs", "build", "steps", 0)) == (5, 9)
    # Unknown paths fall back to the nearest ancestor.
    assert doc.locate(("jobs", "build", "steps", 0, "nothing", 3)) == (5, 9)
    assert doc.locate(("nothing",)) == (1, 1)


def test_position_inside_a_literal_block() -> None:
    text = "a:\n  run: |\n    one\n    two ${{ x }}\n"
    doc = load_document(text, "w.yml")
    offset = doc.value["a"]["run"].index("${{")
    assert doc.locate_in_string(("a", "run"), offset) == (4, 9)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: b: c\n", 1, "invalid YAML: mapping values are not allowed"),
        ("a: [1, 2\n", 2, "invalid YAML"),
        ("a: 1\n- b\n", 2, "invalid YAML"),
        ("a: 'x\n", 2, "invalid YAML"),
        ("a: \x07\n", 1, "control characters"),
        ("a: \ud800\n", 1, "cannot be encoded"),
        ("", 0, "empty"),
        ("# only a comment\n", 0, "empty"),
        ("[1, 2]\n", 1, "must be a mapping"),
        ("just text\n", 1, "must be a mapping"),
        ("--- {a: 1}\n--- {b: 2}\n", 2, "invalid YAML: expected a single document"),
        ("a: &x [*x]\n", 1, "recursive alias"),
        ("a: *nothing\n", 1, "invalid YAML: found undefined alias"),
        ("? [k]\n: v\n", 1, "must be a string"),
    ],
)
def test_malformed_documents(text: str, line: int, words: str) -> None:
    with pytest.raises(WorkflowError) as info:
        load_document(text, "w.yml")
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.file == "w.yml"
    assert diagnostic.line == line
    assert words in diagnostic.message


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        prior = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([prior] * 10)}]")
    with pytest.raises(WorkflowError, match="expands to more than"):
        load_document("\n".join(lines) + "\n", "w.yml")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(WorkflowError):
        load_document("a: " + "[" * 5000 + "]" * 5000 + "\n", "w.yml")


def test_nesting_is_bounded_with_a_position() -> None:
    with pytest.raises(WorkflowError) as info:
        load_document("a: " + "[" * 250 + "]" * 250 + "\n", "w.yml")
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.line == 1
    assert "nested more than 200 levels" in diagnostic.message
