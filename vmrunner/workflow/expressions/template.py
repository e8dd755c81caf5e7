"""Strings with ``${{ }}`` expressions embedded, and ``if:`` conditions.

A ``}}`` inside a quoted string does not close an expression. A template that is exactly one
expression evaluates to that expression's value (an object stays an object); anything else
is a string, each value converted with GitHub's string coercion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from vmrunner.errors import ExpressionError, ExpressionParsingError
from vmrunner.workflow.expressions.evaluator import evaluate_tree
from vmrunner.workflow.expressions.functions import STATUS_FUNCTIONS, EvaluationHooks
from vmrunner.workflow.expressions.parser import Expression
from vmrunner.workflow.expressions.values import to_string, truthy

OPEN: Final = "${{"
CLOSE: Final = "}}"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TemplateExpression:
    """One ``${{ }}`` of a template: the parsed expression and where its text starts."""

    expression: Expression
    offset: int

    @property
    def text(self) -> str:
        return self.expression.text


@dataclass(frozen=True, slots=True)
class Template:
    """A string split into literal text (``str``) and expressions, in order."""

    text: str
    parts: tuple[str | TemplateExpression, ...]

    @property
    def expressions(self) -> tuple[TemplateExpression, ...]:
        return tuple(part for part in self.parts if isinstance(part, TemplateExpression))

    @property
    def is_single_expression(self) -> bool:
        """True when the whole text is one ``${{ }}``: rendering keeps the value's kind."""
        return len(self.parts) == 1 and isinstance(self.parts[0], TemplateExpression)

    @property
    def functions(self) -> frozenset[str]:
        """The (lower-case) functions any of the expressions calls."""
        return frozenset().union(*(part.expression.functions for part in self.expressions))

    def render(self, contexts: Mapping[str, Any], hooks: EvaluationHooks | None = None) -> Any:
        """The value of a single-expression template, else the interpolated string."""
        if len(self.parts) == 1 and isinstance(single := self.parts[0], TemplateExpression):
            # is_single_expression, spelled out so that the type checker knows the part's type
            return _located(single.offset, evaluate_tree, single.expression, contexts, hooks)
        pieces: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
            else:
                value = _located(part.offset, evaluate_tree, part.expression, contexts, hooks)
                pieces.append(to_string(value))
        return "".join(pieces)


def contains_expression(text: str) -> bool:
    """Whether ``text`` holds a ``${{`` (and so needs evaluating)."""
    return OPEN in text


def _located(offset: int, call: Callable[..., _T], *args: Any) -> _T:
    """Run ``call``, marking any expression error with the expression's offset in the template."""
    try:
        return call(*args)
    except ExpressionError as exc:
        exc.offset = offset
        raise


def _closing(text: str, start: int) -> int:
    """The index of the ``}}`` closing the expression whose text starts at ``start``, or -1."""
    in_string = False
    index = start
    length = len(text)
    while index < length:
        char = text[index]
        if char == "'":
            in_string = not in_string
        elif char == "}" and not in_string and text.startswith(CLOSE, index):
            return index
        index += 1
    return -1


def split_template(
    text: str, parse: Callable[[str], Expression]
) -> Template:
    """Split ``text`` into literals and parsed expressions; errors carry their offsets."""
    parts: list[str | TemplateExpression] = []
    index = 0
    while True:
        start = text.find(OPEN, index)
        if start < 0:
            if index < len(text):
                parts.append(text[index:])
            break
        if start > index:
            parts.append(text[index:start])
        inner_start = start + len(OPEN)
        end = _closing(text, inner_start)
        if end < 0:
            error = ExpressionParsingError(
                "The expression is not closed. An unescaped ${{ sequence was found, but the "
                "closing }} sequence was not found",
                text[start:],
                0,
            )
            error.offset = start
            raise error
        raw = text[inner_start:end]
        stripped = raw.strip()
        offset = inner_start + (len(raw) - len(raw.lstrip()))
        if not stripped:
            error = ExpressionParsingError("An expression was expected", text[start : end + 2], 0)
            error.offset = start
            raise error
        expression = _located(offset, parse, stripped)
        parts.append(TemplateExpression(expression, offset))
        index = end + len(CLOSE)
    return Template(text, tuple(parts))


def condition_expression(
    condition: str, parse: Callable[[str], Expression]
) -> tuple[Template | Expression, bool]:
    """What an ``if:`` evaluates, and whether GitHub adds its implicit ``success() &&``."""
    text = condition.strip()
    if not text:
        text = "success()"
    if contains_expression(text):
        template = split_template(text, parse)
        if template.is_single_expression:
            single = template.expressions[0].expression
            return single, not (single.functions & STATUS_FUNCTIONS)
        return template, not (template.functions & STATUS_FUNCTIONS)
    expression = parse(text)
    return expression, not (expression.functions & STATUS_FUNCTIONS)


def evaluate_condition(
    condition: str,
    contexts: Mapping[str, Any],
    hooks: EvaluationHooks | None,
    parse: Callable[[str], Expression],
) -> bool:
    """Evaluate an ``if:`` the way GitHub does (see :func:`condition_expression`)."""
    target, implicit_success = condition_expression(condition, parse)
    if implicit_success and hooks is not None and not hooks.success():
        return False
    if isinstance(target, Template):
        return truthy(target.render(contexts, hooks))
    return truthy(evaluate_tree(target, contexts, hooks))
