"""The functions of the expression language: their names, arities and implementations.

Names are case-insensitive. The built-in functions are pure; the status functions and
``hashFiles`` depend on the run and come from :class:`EvaluationHooks`, which the runner fills.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vmrunner.workflow.expressions.values import (
    ARRAY,
    BOOLEAN,
    JS_WHITESPACE,
    NULL,
    NUMBER,
    OBJECT,
    STRING,
    as_number,
    js_number_to_string,
    kind_code,
    loose_equals,
    object_items,
    to_string,
    upper_special,
)

#: GitHub's cap on a function's argument count (``format``, ``hashFiles``).
MAX_ARGUMENTS: Final = 255


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A function's spelling in GitHub's docs and how many arguments it accepts."""

    name: str
    min_args: int
    max_args: int


_INFOS: Final = (
    FunctionInfo("case", 3, 2**53 - 1),
    FunctionInfo("contains", 2, 2),
    FunctionInfo("endsWith", 2, 2),
    FunctionInfo("format", 1, MAX_ARGUMENTS),
    FunctionInfo("fromJSON", 1, 1),
    FunctionInfo("join", 1, 2),
    FunctionInfo("startsWith", 2, 2),
    FunctionInfo("toJSON", 1, 1),
    FunctionInfo("success", 0, 0),
    FunctionInfo("failure", 0, 0),
    FunctionInfo("cancelled", 0, 0),
    FunctionInfo("always", 0, 0),
    FunctionInfo("hashFiles", 1, MAX_ARGUMENTS),
)

#: Every function, by lower-case name.
FUNCTIONS: Final[Mapping[str, FunctionInfo]] = {info.name.lower(): info for info in _INFOS}
#: The functions available everywhere (GitHub's built-ins), lower-case.
BUILTIN_FUNCTIONS: Final = frozenset(
    {"case", "contains", "endswith", "format", "fromjson", "join", "startswith", "tojson"}
)
#: The job-status functions; an ``if:`` using none of them gets an implicit ``success() &&``.
STATUS_FUNCTIONS: Final = frozenset({"success", "failure", "cancelled", "always"})
#: Every function name as GitHub's documentation spells it.
FUNCTION_NAMES: Final = frozenset(info.name for info in _INFOS)


def _always_true() -> bool:
    return True


def _always_false() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class EvaluationHooks:
    """What the run supplies to an evaluation: the job status and ``hashFiles``.

    ``hash_files`` receives the patterns given to ``hashFiles(...)`` and returns the hex
    digest (``functools.partial(hash_files, workspace)`` is the usual choice); without it,
    ``hashFiles`` is an evaluation error.
    """

    success: Callable[[], bool] = _always_true
    failure: Callable[[], bool] = _always_false
    cancelled: Callable[[], bool] = _always_false
    hash_files: Callable[[Sequence[str]], str] | None = None


DEFAULT_HOOKS: Final = EvaluationHooks()


class FunctionError(Exception):
    """A function rejected its arguments; the evaluator adds the position and the expression."""


class MemoryLimitError(FunctionError):
    """A result would outgrow the memory an evaluation may use."""


def contains(search: Any, item: Any) -> bool:
    """Substring test ignoring case for primitives; loose membership for arrays."""
    code = kind_code(search)
    if code <= STRING:
        if kind_code(item) > STRING:
            return False
        return to_string(item).lower() in to_string(search).lower()
    if code == ARRAY:
        return any(loose_equals(item, element) for element in search)
    return False


def _affix(text: Any, affix: Any, test: Callable[[str, str], bool]) -> bool:
    if kind_code(text) > STRING or kind_code(affix) > STRING:
        return False
    return test(upper_special(to_string(text)), upper_special(to_string(affix)))


def starts_with(text: Any, prefix: Any) -> bool:
    """Prefix test ignoring case; false when either side is an array or object."""
    return _affix(text, prefix, str.startswith)


def ends_with(text: Any, suffix: Any) -> bool:
    """Suffix test ignoring case; false when either side is an array or object."""
    return _affix(text, suffix, str.endswith)


def join(items: Any, separator: Any = ",") -> str:
    """Items as strings joined by ``separator`` (',' by default or when it is not primitive)."""
    code = kind_code(items)
    if code <= STRING:
        return to_string(items)
    if code != ARRAY:
        return ""
    glue = to_string(separator) if kind_code(separator) <= STRING else ","
    return glue.join(to_string(item) for item in items)


def format_string(template: Any, *args: Any, limit: int = 0) -> str:
    """``format('{0} {1}', a, b)``: ``{N}`` replaced, ``{{`` and ``}}`` are literal braces.

    ``limit`` (characters, 0 for none) stops a result from growing past the memory limit
    before it is built.
    """
    text = to_string(template)
    parts: list[str] = []
    size = 0
    index = 0
    length = len(text)
    while index < length:
        left = text.find("{", index)
        right = text.find("}", index)
        if left >= 0 and (right < 0 or right > left):
            if text.startswith("{", left + 1):
                parts.append(text[index : left + 1])
                index = left + 2
                continue
            if right > left + 1:
                digits = _digits_at(text, left + 1)
                if digits:
                    number = int(digits)
                    if number + 1 > len(args):
                        raise FunctionError(
                            "The following format string references more arguments than were "
                            f"supplied: {text}"
                        )
                    parts.append(text[index:left])
                    parts.append(to_string(args[number]))
                    size += left - index + len(parts[-1])
                    if limit and size > limit:
                        raise MemoryLimitError
                    index = right + 1
                    continue
            raise FunctionError(f"The following format string is invalid: {text}")
        if right >= 0:
            if text.startswith("}", right + 1):
                parts.append(text[index : right + 1])
                index = right + 2
                continue
            raise FunctionError(f"The following format string is invalid: {text}")
        parts.append(text[index:])
        break
    return "".join(parts)


_DIGITS = re.compile(r"[0-9]*")


def _digits_at(text: str, start: int) -> str:
    match = _DIGITS.match(text, start)
    return match.group() if match else ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def from_json(text: Any) -> Any:
    """Parse JSON text into values (numbers become floats)."""
    source = to_string(text)
    if not source.strip(JS_WHITESPACE):
        raise FunctionError("empty input")
    try:
        return json.loads(source, parse_int=float, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise FunctionError("Error parsing JSON when evaluating fromJson") from exc


_ESCAPES: Final = {code: f"\\u{code:04x}" for code in range(0x20)} | {
    ord("\b"): "\\b",
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\f"): "\\f",
    ord("\r"): "\\r",
    ord('"'): '\\"',
    ord("\\"): "\\\\",
}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_string(text: str) -> str:
    """A JSON string literal the way ``JSON.stringify`` writes it (non-ASCII kept as is)."""
    escaped = text.translate(_ESCAPES)
    if _LONE_SURROGATE.search(escaped):
        escaped = _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", escaped)
    return '"' + escaped + '"'


def to_json(value: Any) -> str:
    """Pretty JSON with a two-space indent, numbers written as GitHub writes them."""
    parts: list[str] = []
    _write_json(value, "\n", parts)
    return "".join(parts)


def _write_json(value: Any, newline: str, parts: list[str]) -> None:
    code = kind_code(value)
    if code == STRING:
        parts.append(json_string(value))
    elif code == NUMBER:
        number = as_number(value)
        parts.append(js_number_to_string(number) if math.isfinite(number) else "null")
    elif code == BOOLEAN:
        parts.append("true" if value else "false")
    elif code == NULL:
        parts.append("null")
    elif code == ARRAY:
        if not value:
            parts.append("[]")
            return
        inner = newline + "  "
        parts.append("[")
        for position, item in enumerate(value):
            parts.append(inner if position == 0 else "," + inner)
            _write_json(item, inner, parts)
        parts.append(newline + "]")
    elif code == OBJECT:
        members = list(object_items(value))
        if not members:
            parts.append("{}")
            return
        inner = newline + "  "
        parts.append("{")
        for position, (name, item) in enumerate(members):
            parts.append(inner if position == 0 else "," + inner)
            parts.append(json_string(name) + ": ")
            _write_json(item, inner, parts)
        parts.append(newline + "}")
