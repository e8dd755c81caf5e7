"""GitHub's filter patterns for branches, tags and paths (the "filter pattern cheat sheet")."""

from __future__ import annotations

import re
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
