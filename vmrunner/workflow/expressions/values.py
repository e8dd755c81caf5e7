"""Values of the expression language: kinds, coercions, comparisons, number formatting.

Values are plain JSON-like Python objects (None, bool, int/float, str, list, dict). GitHub's
numbers are IEEE doubles and its strings compare case-insensitively; the helpers here follow
GitHub's rules (the JavaScript abstract-equality algorithm without coercing objects, strings
compared ignoring case, objects and arrays by identity) so that the evaluator stays small.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal

Kind = Literal["Null", "Boolean", "Number", "String", "Array", "Object"]

# Kind codes, cheaper to compare than strings inside the evaluator.
NULL: Final = 0
BOOLEAN: Final = 1
NUMBER: Final = 2
STRING: Final = 3
ARRAY: Final = 4
OBJECT: Final = 5

KIND_NAMES: Final[tuple[Kind, ...]] = ("Null", "Boolean", "Number", "String", "Array", "Object")

#: The characters JavaScript's ``trim`` and ``\s`` treat as white space.
JS_WHITESPACE: Final = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)

_DECIMAL = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_NON_DECIMAL = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")
_BASES: Final = {"x": 16, "o": 8, "b": 2}


class UnsupportedValue(TypeError):
    """A context holds something that is not a JSON-like value."""


class FilteredArray(list[Any]):
    """The array a ``*`` filter produces; indexing it projects into each of its items."""

    __slots__ = ()


def kind_code(value: Any) -> int:
    """The kind of ``value`` as one of the codes above (``bool`` before ``int``: it is one)."""
    if value is None:
        return NULL
    if value is True or value is False:
        return BOOLEAN
    if isinstance(value, str):
        return STRING
    if isinstance(value, float | int):
        return NUMBER
    if isinstance(value, Mapping):
        return OBJECT
    if isinstance(value, Sequence):
        return ARRAY
    raise UnsupportedValue(f"not an expression value: {type(value).__name__}")


def kind_of(value: Any) -> Kind:
    """GitHub's name for the kind of ``value``, as in error messages and the conformance data."""
    return KIND_NAMES[kind_code(value)]


def is_primitive(value: Any) -> bool:
    """True for null, booleans, numbers and strings (the values that coerce to strings)."""
    return kind_code(value) <= STRING


def as_number(value: int | float) -> float:
    """A number value as a double, as GitHub holds it (huge integers become infinities)."""
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def string_to_number(text: str) -> float:
    """JavaScript's ``Number(text)``: trimmed decimal, hex/octal/binary, Infinity, else NaN."""
    text = text.strip(JS_WHITESPACE)
    if not text:
        return 0.0
    if _DECIMAL.fullmatch(text):
        if text[-1] == "y":  # [+-]Infinity
            return -math.inf if text[0] == "-" else math.inf
        return float(text)
    if _NON_DECIMAL.fullmatch(text):
        return as_number(int(text[2:], _BASES[text[1].lower()]))
    return math.nan


def to_number(value: Any) -> float:
    """Number coercion: null is 0, booleans 0/1, strings via ``Number()``, containers NaN."""
    code = kind_code(value)
    if code == NUMBER:
        return as_number(value)
    if code == STRING:
        return string_to_number(value)
    if code == BOOLEAN:
        return 1.0 if value else 0.0
    if code == NULL:
        return 0.0
    return math.nan


def js_number_to_string(number: float) -> str:
    """ECMAScript ``Number::toString``: shortest round-trip digits, exponent outside 1e-7..1e21."""
    if number != number:
        return "NaN"
    if number == 0:
        return "0"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    sign = "-" if number < 0 else ""
    mantissa, _, exponent = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        text = digits + "0" * (point - count)
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        exp = point - 1
        exp_text = f"e{'+' if exp >= 0 else '-'}{abs(exp)}"
        text = (digits if count == 1 else digits[0] + "." + digits[1:]) + exp_text
    return sign + text


def number_to_string(number: float) -> str:
    """GitHub's string form of a number: at most 15 decimals, then JavaScript formatting."""
    if number == 0:
        return "0"
    if math.isinf(number) or number != number or abs(number) >= 1e21:
        return js_number_to_string(number)
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))  # exact, and as short as any round-trip form
    shortest = repr(number)
    if "e" not in shortest and len(shortest) - shortest.index(".") - 1 <= 15:
        return js_number_to_string(number)
    # Round the exact binary value half away from zero at 15 decimals (``toFixed(15)``); decimal
    # is imported here, for the rare number that needs it (every command line loads this module).
    from decimal import ROUND_HALF_UP, Context, Decimal

    exact = abs(Decimal(number))
    fixed = exact.quantize(Decimal("1e-15"), rounding=ROUND_HALF_UP, context=Context(prec=400))
    rounded = float(fixed)
    return js_number_to_string(-rounded if number < 0 else rounded)


def to_string(value: Any) -> str:
    """GitHub's string coercion, used by interpolation, ``format`` and ``join``."""
    code = kind_code(value)
    if code == STRING:
        return str(value)
    if code == NUMBER:
        return number_to_string(as_number(value))
    if code == BOOLEAN:
        return "true" if value else "false"
    if code == NULL:
        return ""
    return KIND_NAMES[code]


def truthy(value: Any) -> bool:
    """Falsy are null, false, 0, -0, NaN and ''; everything else (also containers) is truthy."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str):
        return bool(value)
    if isinstance(value, float | int):
        return value == value and value != 0
    return True


def upper_special(text: str) -> str:
    """Upper-case for comparisons, leaving the dotless ``ı`` alone (GitHub's
    ordinal-ignore-case)."""
    if "ı" not in text:
        return text.upper()
    return "ı".join(part.upper() for part in text.split("ı"))


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


def _string_less(left: str, right: str) -> bool:
    """``left < right`` by UTF-16 code units, as JavaScript and .NET compare strings."""
    if left.isascii() and right.isascii():
        return left < right
    return _utf16(left) < _utf16(right)


def _coerce(left: Any, right: Any) -> tuple[int, Any, int, Any]:
    """Bring two values to one kind where GitHub does: null/bool to number, string to number."""
    lk, rk = kind_code(left), kind_code(right)
    while lk != rk:
        if lk == NUMBER and rk == STRING:
            return lk, left, NUMBER, string_to_number(right)
        if lk == STRING and rk == NUMBER:
            return NUMBER, string_to_number(left), rk, right
        if lk in (NULL, BOOLEAN):
            left, lk = to_number(left), NUMBER
        elif rk in (NULL, BOOLEAN):
            right, rk = to_number(right), NUMBER
        else:
            break
    return lk, left, rk, right


def loose_equals(left: Any, right: Any) -> bool:
    """GitHub's ``==``: coercing equality, strings ignore case, NaN equals nothing."""
    lk, lv, rk, rv = _coerce(left, right)
    if lk != rk:
        return False
    if lk == NUMBER:
        return bool(lv == rv)  # NaN compares unequal by itself
    if lk == STRING:
        return lv == rv or upper_special(lv) == upper_special(rv)
    if lk in (ARRAY, OBJECT):
        return lv is rv
    return bool(lv == rv)  # null == null, bool == bool


def _order(left: Any, right: Any) -> int:
    """-1, 0 or 1 when ``left`` is below, level with or above ``right``; 0 when incomparable."""
    lk, lv, rk, rv = _coerce(left, right)
    if lk != rk:
        return 0
    if lk == STRING:
        lv, rv = upper_special(lv), upper_special(rv)
        return -1 if _string_less(lv, rv) else int(_string_less(rv, lv))
    if lk in (NUMBER, BOOLEAN):
        return -1 if lv < rv else int(lv > rv)  # NaN is neither: 0
    return 0


def greater_than(left: Any, right: Any) -> bool:
    """GitHub's ``>`` after coercion; false whenever the kinds still differ."""
    return _order(left, right) > 0


def less_than(left: Any, right: Any) -> bool:
    """GitHub's ``<`` after coercion; false whenever the kinds still differ."""
    return _order(left, right) < 0


def get_property(obj: Mapping[Any, Any], name: str, default: Any = None) -> Any:
    """Case-insensitive member lookup; the first key in insertion order wins, like GitHub."""
    lowered = name.lower()
    for key, value in obj.items():
        if key == name or (key if isinstance(key, str) else str(key)).lower() == lowered:
            return value
    return default


def object_items(obj: Mapping[Any, Any]) -> Iterator[tuple[str, Any]]:
    """The members of an object as GitHub sees them: string keys, first of each case kept."""
    seen: set[str] = set()
    for key, value in obj.items():
        name = key if isinstance(key, str) else str(key)
        lowered = name.lower()
        if lowered in seen:
            continue
        seen.add(lowered)
        yield name, value
