"""GitHub's filter patterns for branches, tags and paths (the "filter pattern cheat sheet").

A pattern matches a whole value (never a substring):

- ``*`` is any run of characters except ``/``; ``**`` is any run of characters, ``/`` included,
  and ``**/`` also matches nothing, so ``**/README.md`` matches ``README.md``;
- ``?`` makes the preceding character (or ``[...]`` set) optional, ``+`` repeats it once or more;
- ``[...]`` is one character among letters, digits and ranges of them (``[0-9a-f]``);
- ``\\`` makes the next character literal; a leading ``!`` negates the pattern.

A list of patterns is read in order: the last pattern that matches a value decides, so a later
``!pattern`` excludes what earlier ones included and a later positive pattern re-includes it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FilterPattern:
    """One compiled pattern: ``negated`` when written with a leading ``!``.

    ``regex`` is ``None`` for an invalid pattern, which then matches nothing (``validate_pattern``
    says what is wrong with it).
    """

    source: str
    negated: bool
    regex: re.Pattern[str] | None

    def matches(self, value: str) -> bool:
        return self.regex is not None and self.regex.fullmatch(value) is not None


class _Invalid(Exception):
    """Internal: why a pattern cannot be translated."""


def _is_set_member(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _same_class(low: str, high: str) -> bool:
    return any(a <= low <= b and a <= high <= b for a, b in (("0", "9"), ("a", "z"), ("A", "Z")))


def _translate_set(body: str, start: int) -> str:
    """The regex class for the ``[...]`` whose content is ``body`` (``start``: its offset)."""
    if not body:
        raise _Invalid(f"empty [] at position {start + 1}")
    out = []
    i = 0
    while i < len(body):
        char = body[i]
        if not _is_set_member(char):
            raise _Invalid(
                f"{char!r} in [...] at position {start + i + 2}: sets may only hold letters, "
                "digits and ranges a-z, A-Z, 0-9"
            )
        if i + 2 < len(body) and body[i + 1] == "-":
            high = body[i + 2]
            if not (_is_set_member(high) and _same_class(char, high) and char <= high):
                raise _Invalid(
                    f"invalid range {char}-{high} in [...]: ranges go upwards within a-z, A-Z or "
                    f"0-9"
                )
            out.append(f"{char}-{high}")
            i += 3
        else:
            out.append(char)
            i += 1
    return "[" + "".join(out) + "]"


def _translate(pattern: str, offset: int = 0) -> str:
    """The regex for ``pattern`` (its ``!`` removed, ``offset`` characters in), or raise
    ``_Invalid``."""
    if not pattern:
        raise _Invalid("empty pattern")
    out: list[str] = []
    repeatable = False  # whether the last piece is one character, so ``?``/``+`` may follow
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            else:
                out.append("[^/]*")
                i += 1
            repeatable = False
            continue
        if char in "?+":
            if not repeatable:
                if out and out[-1] in (".*", "[^/]*", "(?:.*/)?"):
                    i += 1  # already "any number of": the quantifier changes nothing
                    continue
                raise _Invalid(
                    f"{char!r} at position {offset + i + 1} has no character before it to apply to "
                    f"(write \\{char} for a literal {char!r})"
                )
            out[-1] = f"(?:{out[-1]}){char}"
            repeatable = False
            i += 1
            continue
        if char == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise _Invalid(f"unclosed [ at position {offset + i + 1}")
            out.append(_translate_set(pattern[i + 1 : end], offset + i))
            repeatable = True
            i = end + 1
            continue
        if char == "\\":
            if i + 1 >= len(pattern):
                raise _Invalid("pattern ends with \\ (nothing left to escape)")
            char = pattern[i + 1]
            i += 1
        out.append(re.escape(char))
        repeatable = True
        i += 1
    return "".join(out)


def _split_negation(pattern: str) -> tuple[bool, str]:
    return (True, pattern[1:]) if pattern.startswith("!") else (False, pattern)


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> FilterPattern:
    """Compile ``pattern``; an invalid one yields a pattern that matches nothing."""
    negated, body = _split_negation(pattern)
    try:
        regex: re.Pattern[str] | None = re.compile(_translate(body, int(negated)), re.DOTALL)
    except _Invalid:
        regex = None
    return FilterPattern(pattern, negated, regex)


def validate_pattern(pattern: str) -> str | None:
    """What is wrong with ``pattern``, or ``None`` when it is valid."""
    negated, body = _split_negation(pattern)
    try:
        _translate(body, int(negated))
    except _Invalid as invalid:
        return f"invalid filter pattern {pattern!r}: {invalid}"
    return None


def matches_any(patterns: Sequence[str], value: str) -> bool:
    """Whether ``value`` is selected by the ordered ``patterns`` (the last match decides)."""
    selected = False
    for pattern in patterns:
        compiled = compile_pattern(pattern)
        if compiled.negated == selected and compiled.matches(value):
            selected = not selected
    return selected
