"""Text that learning keeps and compares: bounded, valid UTF-8, and free of run-specific noise.

Two levels of normalisation:
- ``command_key`` makes the same command match across runs: quotes dropped, whitespace
  collapsed, temp paths, UUIDs, hex ids, timestamps and long numbers (run ids) replaced by
  placeholders. Short numbers stay: ``sleep 1`` and ``sleep 9`` are different commands.
- ``noise_free`` goes further for failure signatures: every number goes too, so that
  ``line 12: error at 0x7f3a`` and ``line 14: error at 0x9b01`` are the same failure.

Both are idempotent, never raise, and return at most ``limit`` bytes of valid UTF-8 (lone
surrogates become U+FFFD; a cut never splits a character).
"""

from __future__ import annotations

import re
from collections.abc import Callable

DEFAULT_LIMIT = 4096

_SURROGATES = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_QUOTES = re.compile(r"[\"'`]")
_UUID = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
)
_TIMESTAMP = re.compile(
    r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_TIME = re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b")
_HEX = re.compile(
    r"\b(?:0x[0-9a-fA-F]+|(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{7,})\b"
)
_TEMP = re.compile(r"(/(?:tmp|var/tmp|dev/shm)|\$?RUNNER_TEMP|\$\{?RUNNER_TEMP\}?)/[^\s:;,)\]}<>]+")
_LONG_NUMBER = re.compile(r"\d{6,}")
_NUMBER = re.compile(r"\d+")


def clean(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` as at most ``limit`` bytes of valid UTF-8, without control characters."""
    text = _CONTROL.sub(" ", _SURROGATES.sub("\ufffd", text))
    return truncate(text, limit)


def truncate(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``limit`` bytes."""
    data = _SURROGATES.sub("\ufffd", text).encode("utf-8")
    return data[:limit].decode("utf-8", errors="ignore")


def command_key(command: str, limit: int = DEFAULT_LIMIT) -> str:
    """The form of ``command`` under which the same command matches across runs."""
    return _fixed_point(_command_key, command, limit)


def noise_free(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``command_key`` with every number, time and id replaced: for failure signatures."""
    return _fixed_point(_noise_free, text, limit)


def _fixed_point(step: Callable[[str, int], str], text: str, limit: int) -> str:
    """``step`` applied until nothing changes: a cut at ``limit`` can expose a new match."""
    text = step(clean(text, limit * 4), limit)
    for _ in range(8):
        again = step(text, limit)
        if again == text:
            break
        text = again
    return text


def _command_key(text: str, limit: int) -> str:
    text = _QUOTES.sub("", text)
    text = _UUID.sub("<uuid>", text)
    text = _TIMESTAMP.sub("<time>", text)
    text = _TEMP.sub(r"\1/<tmp>", text)
    text = _HEX.sub("<hex>", text)
    text = _LONG_NUMBER.sub("<n>", text)
    return _squeeze(text, limit)


def _noise_free(text: str, limit: int) -> str:
    text = _command_key(text, limit * 4)
    text = _TIME.sub("<time>", text)
    text = _NUMBER.sub("<n>", text)
    return _squeeze(text, limit)


def _squeeze(text: str, limit: int) -> str:
    """Whitespace collapsed, cut to ``limit`` bytes, then stripped (so a second pass changes
    nothing)."""
    return truncate(" ".join(text.split()), limit).strip()
