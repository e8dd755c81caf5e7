"""GitHub Actions ``${{ }}`` expressions: parse, evaluate, interpolate, as GitHub does.

Values are JSON-like Python values (None, bool, float, str, list, dict); numbers come back as
floats because GitHub's are doubles. Errors are :class:`~vmrunner.errors.ExpressionError`
subclasses with GitHub's messages and a 0-based ``position``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import lru_cache
from typing import Any, Final

from vmrunner.workflow.expressions.evaluator import MAX_MEMORY, evaluate_tree
from vmrunner.workflow.expressions.functions import (
    FUNCTION_NAMES,
    STATUS_FUNCTIONS,
    EvaluationHooks,
)
from vmrunner.workflow.expressions.hashfiles import hash_files
from vmrunner.workflow.expressions.lexer import MAX_EXPRESSION_LENGTH
from vmrunner.workflow.expressions.parser import MAX_DEPTH, Expression, function_table, parse_tokens
from vmrunner.workflow.expressions.template import (
    Template,
    TemplateExpression,
    condition_expression,
    contains_expression,
    evaluate_condition,
    split_template,
)
from vmrunner.workflow.expressions.values import FilteredArray, Kind, kind_of, to_string, truthy

#: Every context a workflow can name, as GitHub's documentation spells them.
CONTEXT_NAMES: Final = frozenset(
    {
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
    }
)

__all__ = [
    "CONTEXT_NAMES",
    "FUNCTION_NAMES",
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_MEMORY",
    "STATUS_FUNCTIONS",
    "EvaluationHooks",
    "Expression",
    "FilteredArray",
    "Kind",
    "Template",
    "TemplateExpression",
    "contains_expression",
    "evaluate",
    "evaluate_if",
    "hash_files",
    "kind_of",
    "needs_implicit_success",
    "parse",
    "parse_template",
    "to_string",
    "truthy",
]


@lru_cache(maxsize=8192)
def _parse_cached(
    text: str, contexts: frozenset[str] | None, functions: frozenset[str] | None
) -> Expression:
    return parse_tokens(text, contexts, function_table(functions))


def _names(names: Collection[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(name.lower() for name in names)


def parse(
    text: str,
    *,
    contexts: Collection[str] | None = None,
    functions: Collection[str] | None = None,
) -> Expression:
    """Parse one expression (the text inside ``${{ }}``).

    With ``contexts``, naming any other context is a parsing error ("Unrecognized
    named-value"); with None every name is accepted. ``functions`` adds to GitHub's built-in
    functions (``success``, ``hashFiles``, ...); None allows every known function. Unknown
    functions and wrong argument counts are parsing errors, as on GitHub.
    """
    return _parse_cached(text, _names(contexts), _names(functions))


def evaluate(
    expr: str | Expression,
    contexts: Mapping[str, Any],
    *,
    hooks: EvaluationHooks | None = None,
) -> Any:
    """Evaluate an expression; a string is parsed first, allowing only the given contexts."""
    if isinstance(expr, str):
        expr = parse(expr, contexts=contexts.keys())
    return evaluate_tree(expr, contexts, hooks)


def parse_template(
    text: str,
    *,
    contexts: Collection[str] | None = None,
    functions: Collection[str] | None = None,
) -> Template:
    """Split ``text`` into literals and ``${{ }}`` expressions, parsing each expression.

    Errors carry ``offset``, where the failing expression starts in ``text``.
    """
    context_names, function_names = _names(contexts), _names(functions)
    return split_template(
        text, lambda inner: _parse_cached(inner, context_names, function_names)
    )


def evaluate_if(
    condition: str,
    contexts: Mapping[str, Any],
    hooks: EvaluationHooks | None = None,
) -> bool:
    """Evaluate an ``if:`` condition as GitHub does.

    The condition may be bare or wrapped in ``${{ }}``; an empty one means ``success()``, and
    one that calls none of ``success()``, ``failure()``, ``cancelled()``, ``always()`` is
    read as ``success() && (condition)``.
    """
    names = _names(contexts.keys())
    return evaluate_condition(
        condition, contexts, hooks, lambda inner: _parse_cached(inner, names, None)
    )


def needs_implicit_success(condition: str) -> bool:
    """Whether GitHub adds ``success() &&`` to this ``if:`` (it calls no status function)."""
    return condition_expression(condition, lambda inner: _parse_cached(inner, None, None))[1]
