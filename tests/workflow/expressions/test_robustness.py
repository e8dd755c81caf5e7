"""Whatever the input, the expression functions raise only vmrunner's ExpressionError."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.workflow.expressions import strategies as s
from vmrunner.errors import ExpressionError
from vmrunner.workflow.expressions import (
    MAX_EXPRESSION_LENGTH,
    evaluate,
    evaluate_if,
    kind_of,
    parse,
    parse_template,
)

_soup = st.text(st.sampled_from(list("abc019.-+*!=<>&|()[],'{}$ \n\t_xXeE😊ı")), max_size=40)
_any_text = st.text(max_size=40)


def _survives(call: Any) -> Any:
    try:
        return call()
    except ExpressionError:
        return None


@settings(max_examples=200, deadline=None)
@given(text=_soup | _any_text | s.expressions, contexts=s.contexts)
def test_parse_and_evaluate_raise_only_expression_errors(
    text: str, contexts: dict[str, Any]
) -> None:
    _survives(lambda: parse(text))
    value = _survives(lambda: evaluate(text, contexts))
    kind_of(value)  # every result is a value of the language


@settings(max_examples=150, deadline=None)
@given(
    text=st.lists(_soup | st.sampled_from(["${{", "}}", "'", " "]), max_size=8).map("".join),
    contexts=s.contexts,
)
def test_templates_raise_only_expression_errors(text: str, contexts: dict[str, Any]) -> None:
    template = _survives(lambda: parse_template(text))
    if template is not None:
        _survives(lambda: template.render(contexts))
    _survives(lambda: evaluate_if(text, contexts))


DEPTH = "Exceeded max expression depth 50"
LENGTH = f"Exceeded max expression length {MAX_EXPRESSION_LENGTH}"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1" + " == 1" * 4000, None),
        ("a" + " < a" * 5000, None),
        ("true" + " && true" * 2600, None),
        ("(" * 5000 + "1" + ")" * 5000, DEPTH),
        ("!" * 10000 + "true", DEPTH),
        ("a" + ".b" * 7000, DEPTH),
        ("a" + "[0]" * 5000, DEPTH),
        ("format(" * 3000 + "1" + ")" * 3000, LENGTH),
        ("'" + "x" * MAX_EXPRESSION_LENGTH + "'", LENGTH),
        ("'" + "😊" * (MAX_EXPRESSION_LENGTH // 2) + "'", LENGTH),  # counted in UTF-16 units
    ],
    ids=[
        "eq-chain",
        "lt-chain",
        "and-chain",
        "parens",
        "nots",
        "dots",
        "indexes",
        "calls",
        "long",
        "long-utf16",
    ],
)
def test_pathological_input_is_a_clean_error_or_value(text: str, error: str | None) -> None:
    if error is None:
        assert kind_of(evaluate(text, {"a": {"b": [1]}})) == "Boolean"
    else:
        with pytest.raises(ExpressionError, match=re.escape(error)):
            evaluate(text, {"a": {"b": [1]}})


def test_huge_results_hit_the_memory_limit() -> None:
    text = (
        "format('{0}{0}{0}{0}{0}{0}{0}{0}', format('{0}{0}{0}{0}{0}{0}{0}{0}', "
        "format('{0}{0}{0}{0}{0}{0}{0}{0}', format('{0}{0}{0}{0}{0}{0}{0}{0}', "
        "join(a, 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxx')))))"
    )
    with pytest.raises(ExpressionError, match="maximum allowed memory size"):
        evaluate(text, {"a": list(range(100))})
    # Each toJSON doubles the backslashes: stopped long before the string gets huge.
    with pytest.raises(ExpressionError, match="maximum allowed memory size"):
        evaluate("tojson(" * 45 + "'\"'" + ")" * 45, {})


def test_deep_and_cyclic_contexts_are_clean_errors() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    with pytest.raises(ExpressionError):
        evaluate("toJSON(a)", {"a": deep})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(ExpressionError):
        evaluate("toJSON(a)", {"a": cyclic})
    assert evaluate("a.self.self.self == a", {"a": cyclic}) is True


def test_values_that_are_not_json_like_are_evaluation_errors() -> None:
    with pytest.raises(ExpressionError, match="not JSON-like"):
        evaluate("a", {"a": object()})
