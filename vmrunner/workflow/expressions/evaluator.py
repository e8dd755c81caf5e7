"""Evaluation of a parsed expression against contexts.

Like GitHub's runner, an evaluation may hold at most 1 MiB of intermediate results (strings
count two bytes per character): results of finished sub-expressions are released when their
parent completes, so only values that coexist count. Functions are checked before they build
an oversized string.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from vmrunner.errors import ExpressionEvaluationError
from vmrunner.workflow.expressions import functions as fn
from vmrunner.workflow.expressions.functions import (
    DEFAULT_HOOKS,
    EvaluationHooks,
    FunctionError,
    MemoryLimitError,
)
from vmrunner.workflow.expressions.parser import (
    Call,
    Compare,
    Expression,
    Group,
    Index,
    Literal,
    Logical,
    NamedValue,
    Node,
    Not,
    Star,
)
from vmrunner.workflow.expressions.values import (
    ARRAY,
    BOOLEAN,
    OBJECT,
    STRING,
    FilteredArray,
    UnsupportedValue,
    as_number,
    get_property,
    greater_than,
    kind_code,
    less_than,
    loose_equals,
    object_items,
    to_number,
    to_string,
    truthy,
)

#: The memory one evaluation may use, as in GitHub's runner.
MAX_MEMORY: Final = 1024 * 1024
_STRING_OVERHEAD: Final = 26
_OBJECT_SIZE: Final = 24
_MISSING: Final = object()

_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": loose_equals,
    "!=": lambda left, right: not loose_equals(left, right),
    "<": less_than,
    ">": greater_than,
    "<=": lambda left, right: loose_equals(left, right) or less_than(left, right),
    ">=": lambda left, right: loose_equals(left, right) or greater_than(left, right),
}


class _Evaluation:
    """One evaluation: the contexts, the hooks and the memory accounting by tree level."""

    def __init__(self, text: str, contexts: Mapping[str, Any], hooks: EvaluationHooks) -> None:
        self.text = text
        self.contexts = contexts
        self.hooks = hooks
        self.levels: list[int] = []
        self.top = -1
        self.total = 0
        self.handlers: dict[type[Node], Callable[[Any, int], Any]] = {
            Literal: self.literal,
            NamedValue: self.named_value,
            Index: self.index,
            Not: self.negate,
            Compare: self.compare,
            Logical: self.logical,
            Group: self.group,
            Call: self.call,
        }

    def fail(self, message: str, node: Node) -> ExpressionEvaluationError:
        return ExpressionEvaluationError(message, self.text, node.pos)

    def memory_error(self, node: Node) -> ExpressionEvaluationError:
        return self.fail(
            "The maximum allowed memory size was exceeded while evaluating the following "
            f"expression: {self.text}",
            node,
        )

    def account(self, level: int, value: Any, node: Node) -> None:
        """Release what deeper levels held, then charge ``value`` to ``level``."""
        levels = self.levels
        while self.top > level:
            self.total -= levels[self.top]
            levels[self.top] = 0
            self.top -= 1
        if level > self.top:
            levels.extend([0] * (level + 1 - len(levels)))
            self.top = level
        size = _STRING_OVERHEAD + 2 * len(value) if isinstance(value, str) else _OBJECT_SIZE
        levels[level] += size
        self.total += size
        if self.total > MAX_MEMORY:
            raise self.memory_error(node)

    def eval(self, node: Node, level: int) -> Any:
        value = self.handlers[type(node)](node, level)
        self.account(level, value, node)
        return value

    def literal(self, node: Literal, level: int) -> Any:
        return node.value

    def named_value(self, node: NamedValue, level: int) -> Any:
        return get_property(self.contexts, node.name)

    def group(self, node: Group, level: int) -> Any:
        # Parentheses are not a node in GitHub's tree: the inner value sits at this level.
        return self.handlers[type(node.inner)](node.inner, level)

    def negate(self, node: Not, level: int) -> bool:
        return not truthy(self.eval(node.operand, level + 1))

    def compare(self, node: Compare, level: int) -> bool:
        # A chain like a == b == c is a left-deep tree; walk its spine without recursion.
        spine: list[Compare] = []
        current: Node = node
        while isinstance(current, Compare):
            spine.append(current)
            current = current.left
        value = self.eval(current, level + len(spine))
        for depth in range(len(spine) - 1, -1, -1):
            step = spine[depth]
            right = self.eval(step.right, level + depth + 1)
            value = _COMPARISONS[step.op](value, right)
            if depth:
                self.account(level + depth, value, step)
        return bool(value)

    def logical(self, node: Logical, level: int) -> Any:
        stop_when = node.op == "||"
        value: Any = None
        for operand in node.operands:
            value = self.eval(operand, level + 1)
            if truthy(value) == stop_when:
                break
        return value

    def index(self, node: Index, level: int) -> Any:
        target = self.eval(node.target, level + 1)
        star = isinstance(node.index, Star)
        key = None if star else self.eval(node.index, level + 1)
        name: str | None = None
        position: int | None = None
        if not star:
            if kind_code(key) <= STRING:
                name = to_string(key)
            number = to_number(key)
            if math.isfinite(number) and number >= 0:
                position = math.floor(number)
        code = kind_code(target)
        if code == ARRAY:
            if isinstance(target, FilteredArray):
                return _project(target, star, name, position)
            if star:
                return FilteredArray(target)
            if position is not None and position < len(target):
                return target[position]
            return None
        if code == OBJECT:
            if star:
                return FilteredArray(value for _, value in object_items(target))
            if name is not None:
                return get_property(target, name)
            return None
        return FilteredArray() if star else None

    def call(self, node: Call, level: int) -> Any:
        name = node.name
        if name == "case":
            return self.case(node, level + 1)
        args = [self.eval(arg, level + 1) for arg in node.args]
        try:
            return self.apply(name, args)
        except MemoryLimitError:
            raise self.memory_error(node) from None
        except FunctionError as exc:
            raise self.fail(str(exc), node) from exc
        except ExpressionEvaluationError as exc:
            if exc.expression:
                raise
            raise self.fail(exc.message, node) from exc  # from a hook: add where it happened

    def case(self, node: Call, level: int) -> Any:
        # Lazy like GitHub's runner: only the chosen value is evaluated.
        args = node.args
        for position in range(0, len(args) - 1, 2):
            predicate = self.eval(args[position], level)
            if kind_code(predicate) != BOOLEAN:
                raise self.fail("case predicate must evaluate to a boolean value", node)
            if predicate:
                return self.eval(args[position + 1], level)
        return self.eval(args[-1], level)

    def apply(self, name: str, args: list[Any]) -> Any:
        if name == "contains":
            return fn.contains(args[0], args[1])
        if name == "startswith":
            return fn.starts_with(args[0], args[1])
        if name == "endswith":
            return fn.ends_with(args[0], args[1])
        if name == "format":
            return fn.format_string(args[0], *args[1:], limit=MAX_MEMORY // 2)
        if name == "join":
            return fn.join(*args)
        if name == "tojson":
            return fn.to_json(args[0])
        if name == "fromjson":
            return fn.from_json(args[0])
        if name == "success":
            return bool(self.hooks.success())
        if name == "failure":
            return bool(self.hooks.failure())
        if name == "cancelled":
            return bool(self.hooks.cancelled())
        if name == "always":
            return True
        if name == "hashfiles":
            if self.hooks.hash_files is None:
                raise FunctionError(
                    "'hashFiles' expression function is only supported under runner context"
                )
            return self.hooks.hash_files([to_string(arg) for arg in args])
        raise FunctionError(f"Unrecognized function: '{name}'")


def _project(items: FilteredArray, star: bool, name: str | None, position: int | None) -> Any:
    """Index every item of a filter result, keeping what exists (GitHub's object filters)."""
    result = FilteredArray()
    for item in items:
        code = kind_code(item)
        if code == OBJECT:
            if star:
                result.extend(value for _, value in object_items(item))
            elif name is not None:
                value = get_property(item, name, _MISSING)
                if value is not _MISSING:
                    result.append(value)
        elif code == ARRAY:
            if star:
                result.extend(item)
            elif position is not None and position < len(item):
                result.append(item[position])
    return result


def evaluate_tree(
    expression: Expression, contexts: Mapping[str, Any], hooks: EvaluationHooks | None
) -> Any:
    """Evaluate a parsed expression; an empty one is null. Numbers come back as floats."""
    if expression.root is None:
        return None
    evaluation = _Evaluation(expression.text, contexts, hooks or DEFAULT_HOOKS)
    try:
        value = evaluation.eval(expression.root, 0)
        kind_code(value)  # a context may hand back something that is not a value
    except RecursionError:
        raise ExpressionEvaluationError(
            "A value is nested too deeply to evaluate", expression.text, 0
        ) from None
    except UnsupportedValue as exc:
        raise ExpressionEvaluationError(
            f"A context holds a value that is not JSON-like ({exc})", expression.text, 0
        ) from exc
    if isinstance(value, int) and not isinstance(value, bool):
        return as_number(value)
    return value
