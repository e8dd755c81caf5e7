"""Masking: secret values and ``add-mask`` values become ``***`` in everything a run emits.

A multi-line value is also masked line by line (as GitHub does), so a secret that a step
prints across several lines, or one line of it, never shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"


class Masker:
    """The values to hide in one run; ``mask`` replaces every occurrence, longest first."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for value in values:
            self.add(value)

    def add(self, value: str) -> None:
        """Hide ``value`` and each of its lines from now on (blank values are ignored)."""
        candidates = [value, *value.splitlines()] if "\n" in value or "\r" in value else [value]
        for candidate in candidates:
            text = candidate.strip()
            if text and text not in self._values:
                self._values.add(text)
                self._pattern = None

    def mask(self, text: str) -> str:
        if not self._values or not text:
            return text
        return self._compiled().sub(MASK, text)

    def cut(self, text: str, at: int) -> int:
        """Where to end a piece of an overlong line at or before ``at`` so that no value to hide
        is split across two pieces (each piece is masked alone)."""
        if not self._values:
            return at
        longest = max(map(len, self._values))
        for match in self._compiled().finditer(text, max(0, at - longest), at + longest):
            if match.start() < at < match.end():
                return match.start()
        return at

    def _compiled(self) -> re.Pattern[str]:
        if self._pattern is None:
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(value) for value in ordered))
        return self._pattern

    def __contains__(self, value: object) -> bool:
        return value in self._values
