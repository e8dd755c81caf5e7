"""The public API: parse options, values and coercions, templates, ``if:`` and hooks."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from vmrunner.errors import (
    ExpressionError,
    ExpressionEvaluationError,
    ExpressionLexingError,
    ExpressionParsingError,
)
from vmrunner.workflow.expressions import (
    CONTEXT_NAMES,
    FUNCTION_NAMES,
    EvaluationHooks,
    FilteredArray,
    contains_expression,
    evaluate,
    evaluate_if,
    kind_of,
    needs_implicit_success,
    parse,
    parse_template,
    to_string,
)


def test_names_cover_githubs_contexts_and_functions() -> None:
    assert {
        "github",
        "env",
        "vars",
        "job",
        "jobs",
        "steps",
        "runner",
        "secrets",
        "strategy",
        "matrix",
        "needs",
        "inputs",
    } <= CONTEXT_NAMES
    assert {
        "contains",
        "startsWith",
        "endsWith",
        "format",
        "join",
        "toJSON",
        "fromJSON",
        "hashFiles",
        "case",
        "success",
        "failure",
        "always",
        "cancelled",
    } == FUNCTION_NAMES


def test_parse_checks_named_values_only_when_asked() -> None:
    assert parse("anything.at.all").named_values == frozenset({"anything"})
    with pytest.raises(ExpressionParsingError) as caught:
        parse("github.sha == envx.A", contexts=["github", "env"])
    assert caught.value.message == "Unrecognized named-value: 'envx'"
    assert caught.value.position == 14
    assert parse("GitHub.sha", contexts=["github"]).named_values == frozenset({"github"})


def test_parse_checks_functions_and_arity() -> None:
    assert parse("success() && hashFiles('x')").functions == frozenset({"success", "hashfiles"})
    with pytest.raises(ExpressionParsingError, match="Unrecognized function: 'success'"):
        parse("success()", functions=[])
    assert parse("SUCCESS()", functions=["success"]).functions == frozenset({"success"})
    with pytest.raises(ExpressionParsingError, match="Unrecognized function: 'nope'"):
        parse("nope()")
    with pytest.raises(ExpressionParsingError, match="Too few parameters supplied: 'hashFiles'"):
        parse("hashFiles()")
    with pytest.raises(ExpressionParsingError, match="Too many parameters supplied: 'always'"):
        parse("always(1)")
    with pytest.raises(ExpressionParsingError, match="Even number of parameters supplied"):
        parse("case(true, 1, false, 2)")


def test_error_kinds_and_positions() -> None:
    with pytest.raises(ExpressionLexingError) as lexing:
        parse("a == 'open")
    assert (lexing.value.kind, lexing.value.position) == ("lexing", 5)
    assert (
        str(lexing.value)
        == "Unexpected symbol: ''open'. Located at position 6 within expression: a == 'open"
    )
    with pytest.raises(ExpressionEvaluationError) as evaluation:
        evaluate("1 && fromJSON('')", {})
    assert (evaluation.value.kind, evaluation.value.position) == ("evaluation", 5)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "Null"),
        (True, "Boolean"),
        (0, "Number"),
        (1.5, "Number"),
        ("", "String"),
        ([], "Array"),
        ((1,), "Array"),
        ({}, "Object"),
        (FilteredArray(), "Array"),
    ],
)
def test_kind_of(value: Any, kind: str) -> None:
    assert kind_of(value) == kind


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (123.0, "123"),
        (-0.0, "0"),
        (1.5, "1.5"),
        (0.1 + 0.2, "0.3"),
        (1 / 3, "0.333333333333333"),
        (1e21, "1e+21"),
        (1.5e21, "1.5e+21"),
        (123456789012345680000.0, "123456789012345680000"),
        (1e-7, "1e-7"),
        (1e-20, "0"),
        (-1.0000000000000002, "-1"),
        (0.000001, "0.000001"),
        (2**53 + 2.0, "9007199254740994"),
        (math.nan, "NaN"),
        (-math.inf, "-Infinity"),
        ([1], "Array"),
        ({"a": 1}, "Object"),
    ],
)
def test_to_string(value: Any, text: str) -> None:
    assert to_string(value) == text


def test_numbers_come_back_as_floats_and_containers_as_themselves() -> None:
    contexts: dict[str, Any] = {"a": {"n": 3, "list": [1, 2]}}
    value = evaluate("a.n", contexts)
    assert type(value) is float
    assert value == 3.0
    assert evaluate("a.list", contexts) is contexts["a"]["list"]
    assert evaluate("a.list == a.list", contexts) is True
    assert evaluate("a.list.* == a.list.*", contexts) is False


def test_logical_operators_return_operands() -> None:
    contexts = {"env": {"NAME": ""}}
    assert evaluate("env.NAME || 'default'", contexts) == "default"
    assert evaluate("env.MISSING && 'x'", contexts) is None
    assert evaluate("'a' && 2", contexts) == 2.0


def test_filters_project_objects_and_arrays() -> None:
    contexts = {"needs": {"build": {"result": "success"}, "test": {"result": "failure"}}}
    assert evaluate("needs.*.result", contexts) == ["success", "failure"]
    assert evaluate("contains(needs.*.result, 'FAILURE')", contexts) is True
    matrix = {"m": [{"os": ["a", "b"]}, {"os": ["c"]}, {"other": 1}, 5]}
    assert evaluate("m.*.os[0]", matrix) == ["a", "c"]
    assert evaluate("m[*].os.*", matrix) == ["a", "b", "c"]
    assert evaluate("m.*.missing", matrix) == []


def test_case_evaluates_only_the_chosen_branch() -> None:
    assert evaluate("case(true, 'picked', fromJSON(''))", {}) == "picked"
    assert evaluate("case(1 == 2, fromJSON(''), 'default')", {}) == "default"
    with pytest.raises(
        ExpressionEvaluationError, match="case predicate must evaluate to a boolean"
    ):
        evaluate("case('yes', 1, 2)", {})


def test_format_errors() -> None:
    assert evaluate("format('{{{0}}} {1}', 'a', 2)", {}) == "{a} 2"
    with pytest.raises(
        ExpressionEvaluationError, match=re.escape("The following format string is invalid: {")
    ):
        evaluate("format('{', 1)", {})
    with pytest.raises(
        ExpressionEvaluationError, match="references more arguments than were supplied"
    ):
        evaluate("format('{1}', 1)", {})


def test_status_functions_use_the_hooks() -> None:
    failed = EvaluationHooks(success=lambda: False, failure=lambda: True)
    assert evaluate("success()", {}) is True
    assert evaluate("failure() && !cancelled()", {}, hooks=failed) is True
    assert evaluate("always()", {}, hooks=failed) is True
    with pytest.raises(ExpressionEvaluationError, match="hashFiles"):
        evaluate("hashFiles('*')", {})
    assert (
        evaluate("hashFiles('a', 'b')", {}, hooks=EvaluationHooks(hash_files=lambda p: "|".join(p)))
        == "a|b"
    )


def test_template_parts_and_offsets() -> None:
    text = "build ${{ matrix.os }}-${{ 'x}}y' }} done"
    template = parse_template(text)
    assert [part if isinstance(part, str) else part.text for part in template.parts] == [
        "build ",
        "matrix.os",
        "-",
        "'x}}y'",
        " done",
    ]
    offsets = [part.offset for part in template.expressions]
    assert [text[offset:].split(" ")[0] for offset in offsets] == ["matrix.os", "'x}}y'"]
    assert template.render({"matrix": {"os": "linux"}}) == "build linux-x}}y done"
    assert contains_expression(text)
    assert not contains_expression("$ {{ plain }}")
    assert parse_template("no expressions").render({}) == "no expressions"


def test_single_expression_templates_keep_the_kind() -> None:
    contexts: dict[str, Any] = {"inputs": {"n": 2, "obj": {"a": [1]}}}
    assert parse_template("${{ inputs.n }}").render(contexts) == 2.0
    assert parse_template("${{inputs.obj}}").render(contexts) == {"a": [1]}
    assert (
        parse_template("n=${{ inputs.n }} ${{ inputs.obj }} ${{ inputs.none }}.").render(contexts)
        == "n=2 Object ."
    )


def test_template_errors_carry_the_offset() -> None:
    text = "ok ${{ 1 }} then ${{ github.( }}"
    with pytest.raises(ExpressionParsingError) as caught:
        parse_template(text)
    assert caught.value.expression == "github.("
    assert caught.value.offset == text.index("github.(")
    assert caught.value.offset + caught.value.position == text.index("(")
    with pytest.raises(ExpressionParsingError, match="The expression is not closed") as unclosed:
        parse_template("a ${{ 'b }}")
    assert unclosed.value.offset == 2
    with pytest.raises(ExpressionParsingError, match="An expression was expected"):
        parse_template("a ${{  }} b")
    template = parse_template("x ${{ fromJSON('') }}")
    with pytest.raises(ExpressionEvaluationError) as failed:
        template.render({})
    assert failed.value.offset == 6


def test_template_named_values_can_be_restricted() -> None:
    with pytest.raises(ExpressionParsingError, match="Unrecognized named-value: 'secret'"):
        parse_template("${{ secret.x }}", contexts=["secrets"])


@pytest.mark.parametrize(
    ("condition", "succeeded", "expected"),
    [
        ("", True, True),
        ("", False, False),
        ("github.ref == 'refs/heads/main'", True, True),
        ("github.ref == 'refs/heads/main'", False, False),
        ("${{ github.ref == 'refs/heads/dev' }}", True, False),
        ("  ${{ github.ref == 'refs/heads/main' }}  ", True, True),
        ("always()", False, True),
        ("failure()", False, True),
        ("failure()", True, False),
        ("${{ failure() || github.ref == 'x' }}", True, False),
        ("!cancelled()", False, True),
        (
            "${{ github.ref }} == 'refs/heads/dev'",
            True,
            True,
        ),  # a non-empty string: GitHub's famous trap
        ("${{ github.ref }} == 'x'", False, False),
    ],
)
def test_evaluate_if(condition: str, succeeded: bool, expected: bool) -> None:
    hooks = EvaluationHooks(success=lambda: succeeded, failure=lambda: not succeeded)
    assert evaluate_if(condition, {"github": {"ref": "refs/heads/main"}}, hooks) is expected


def test_evaluate_if_errors_and_implicit_success() -> None:
    with pytest.raises(ExpressionError, match="Unrecognized named-value: 'steps'"):
        evaluate_if("steps.x.outcome == 'success'", {"github": {}})
    assert needs_implicit_success("github.ref == 'x'")
    assert not needs_implicit_success("${{ always() && github.ref == 'x' }}")
    assert not needs_implicit_success("")  # an empty if: is success() itself


def test_public_names_are_exactly_the_api() -> None:
    import vmrunner.workflow.expressions as package

    assert set(package.__all__) == {
        "CONTEXT_NAMES", "FUNCTION_NAMES", "MAX_DEPTH", "MAX_EXPRESSION_LENGTH", "MAX_MEMORY",
        "STATUS_FUNCTIONS", "EvaluationHooks", "Expression", "FilteredArray", "Kind", "Template",
        "TemplateExpression", "contains_expression", "evaluate", "evaluate_if", "hash_files",
        "kind_of", "needs_implicit_success", "parse", "parse_template", "to_string", "truthy",
    }
    assert all(hasattr(package, name) for name in package.__all__)
