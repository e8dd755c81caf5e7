"""``strategy:`` of a job and the expansion of its ``matrix`` into combinations, as GitHub does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Strategy:
    """A job's strategy as written; parts may still be ``${{ }}`` expression strings.

    ``matrix`` is the raw mapping (or one expression string, or ``None`` without a matrix); the
    runner evaluates expressions, then calls ``expand_matrix`` on concrete values.
    """

    matrix: Mapping[str, Any] | str | None = None
    fail_fast: bool | str = True
    max_parallel: int | str | None = None
