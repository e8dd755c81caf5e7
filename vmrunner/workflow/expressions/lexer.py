"""Tokens of the expression language.

The lexer walks the text once; runs of identifier or number characters are taken with one
regular-expression match each (never one per character). Its quirks follow GitHub's: a ``.``
right after a name, ``]``, ``)`` or ``*`` is member access and anywhere else starts a number;
``-``/``+`` always start a number; numbers are read up to the next boundary character and
converted the way JavaScript's ``Number()`` does, so ``0x1F``, ``1e3`` and ``.5`` work and
``-0xFF`` does not.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, NamedTuple, NoReturn

from vmrunner.errors import ExpressionLexingError
from vmrunner.workflow.expressions.values import JS_WHITESPACE, string_to_number

#: GitHub's limit on the length of one expression, in UTF-16 code units.
MAX_EXPRESSION_LENGTH: Final = 21000

# Token types.
LEFT_PAREN: Final = 1
RIGHT_PAREN: Final = 2
LEFT_BRACKET: Final = 3
RIGHT_BRACKET: Final = 4
COMMA: Final = 5
DOT: Final = 6
BANG: Final = 7
BANG_EQUAL: Final = 8
EQUAL_EQUAL: Final = 9
GREATER: Final = 10
GREATER_EQUAL: Final = 11
LESS: Final = 12
LESS_EQUAL: Final = 13
AND: Final = 14
OR: Final = 15
STAR: Final = 16
NUMBER: Final = 17
STRING: Final = 18
IDENTIFIER: Final = 19
TRUE: Final = 20
FALSE: Final = 21
NULL: Final = 22
EOF: Final = 23


class Token(NamedTuple):
    """One token; ``pos`` is the 0-based offset of its first character in the expression."""

    type: int
    lexeme: str
    value: Any
    pos: int

    def describe(self) -> str:
        """The token as GitHub quotes it in error messages (strings unquoted, end as EOF)."""
        if self.type == EOF:
            return "EOF"
        if self.type == STRING:
            return str(self.value)
        return self.lexeme


_WS = re.escape(JS_WHITESPACE)
# Characters that end an identifier or a number; a number may also contain dots.
_IDENTIFIER_RUN = re.compile(rf"[^()\[\],.!><=&|{_WS}]*")
_NUMBER_RUN = re.compile(rf"[^()\[\],!><=&|{_WS}]*")
_LEGAL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_SINGLE: Final = {
    "(": LEFT_PAREN,
    ")": RIGHT_PAREN,
    "[": LEFT_BRACKET,
    "]": RIGHT_BRACKET,
    ",": COMMA,
    "*": STAR,
}
_KEYWORDS: Final[dict[str, tuple[int, Any]]] = {
    "true": (TRUE, True),
    "false": (FALSE, False),
    "null": (NULL, None),
    "NaN": (NUMBER, math.nan),
    "Infinity": (NUMBER, math.inf),
}
_MEMBER_BEFORE_DOT: Final = frozenset({IDENTIFIER, RIGHT_BRACKET, RIGHT_PAREN, STAR})
_SKIPPED: Final = frozenset(" \r\t\n")
#: The characters that start something other than a name.
_SPECIAL: Final = frozenset("()[],*'.!<>=&|-+0123456789 \r\t\n")


def utf16_length(text: str) -> int:
    """The length of ``text`` in UTF-16 code units, the unit of GitHub's length limit."""
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def tokenize(text: str) -> list[Token]:
    """Split an expression into tokens, ending with an EOF token; raise on an unknown symbol."""
    if len(text) > MAX_EXPRESSION_LENGTH // 2 and utf16_length(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionLexingError(
            f"Exceeded max expression length {MAX_EXPRESSION_LENGTH}", text, 0
        )
    tokens: list[Token] = []
    append = tokens.append
    previous = EOF
    index = 0
    start = 0
    length = len(text)
    while index < length:
        start = index
        char = text[index]
        index += 1
        if char not in _SPECIAL:
            index = _identifier(text, start, previous, append)
            previous = tokens[-1].type
            continue
        single = _SINGLE.get(char)
        if single is not None:
            append(Token(single, char, None, start))
            previous = single
            continue
        if char in _SKIPPED:
            continue
        if char == "'":
            index = _string(text, start, append)
            previous = STRING
            continue
        if char == "." and previous in _MEMBER_BEFORE_DOT:
            append(Token(DOT, ".", None, start))
            previous = DOT
            continue
        if char in "!<>=":
            if index < length and text[index] == "=":
                index += 1
                kind = {"!": BANG_EQUAL, "<": LESS_EQUAL, ">": GREATER_EQUAL, "=": EQUAL_EQUAL}[
                    char
                ]
            elif char == "=":
                _illegal(text, start)
            else:
                kind = {"!": BANG, "<": LESS, ">": GREATER}[char]
            append(Token(kind, text[start:index], None, start))
            previous = kind
            continue
        if char in "&|":
            if index < length and text[index] == char:
                index += 1
                kind = AND if char == "&" else OR
                append(Token(kind, char * 2, None, start))
                previous = kind
                continue
            _illegal(text, start)
        # What is left of the special characters starts a number: a digit, '-', '+' or '.'.
        match = _NUMBER_RUN.match(text, index)  # never None: the pattern matches ""
        index = match.end() if match is not None else index
        lexeme = text[start:index]
        value = float(lexeme) if lexeme.isdigit() and lexeme.isascii() else string_to_number(lexeme)
        if value != value:
            raise ExpressionLexingError(f"Unexpected symbol: '{lexeme}'", text, start)
        append(Token(NUMBER, lexeme, value, start))
        previous = NUMBER
    append(Token(EOF, "", None, start))
    return tokens


def _identifier(text: str, start: int, previous: int, append: Any) -> int:
    """Read a name (or keyword) starting at ``start``; return the offset after it."""
    match = _IDENTIFIER_RUN.match(text, start + 1)  # never None: the pattern matches ""
    end = match.end() if match is not None else start + 1
    lexeme = text[start:end]
    if previous != DOT and lexeme in _KEYWORDS:
        kind, literal = _KEYWORDS[lexeme]
        append(Token(kind, lexeme, literal, start))
    elif _LEGAL_IDENTIFIER.fullmatch(lexeme):
        append(Token(IDENTIFIER, lexeme, None, start))
    else:
        raise ExpressionLexingError(f"Unexpected symbol: '{lexeme}'", text, start)
    return end


def _string(text: str, start: int, append: Any) -> int:
    """Read a '...' literal starting at ``start`` ('' is a quote); return the offset after it."""
    search = start + 1
    while True:
        end = text.find("'", search)
        if end < 0:
            raise ExpressionLexingError(f"Unexpected symbol: '{text[start:]}'", text, start)
        if text.startswith("''", end):
            search = end + 2
            continue
        break
    append(Token(STRING, text[start : end + 1], text[start + 1 : end].replace("''", "'"), start))
    return end + 1


def _illegal(text: str, start: int) -> NoReturn:
    """A lone ``=``, ``&`` or ``|``: report it with the rest of its run, as GitHub does."""
    match = _IDENTIFIER_RUN.match(text, start + 1)  # never None: the pattern matches ""
    end = match.end() if match is not None else start + 1
    raise ExpressionLexingError(f"Unexpected symbol: '{text[start:end]}'", text, start)
