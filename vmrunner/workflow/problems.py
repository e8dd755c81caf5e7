"""Problems found while checking a document, located by their path inside it.

Validators work on plain values (dicts, lists, scalars) and report ``Problem``s with the path of
the offending value, e.g. ``("jobs", "build", "steps", 2, "timeout-minutes")``. The loader turns
paths into file, line and column using the YAML positions, so validators never see YAML nodes.
A ``warning`` is something GitHub accepts but that is most likely a mistake (a filter GitHub
ignores, a reference to a step or job that cannot hold a value): it is shown, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the value at ``path``."""

    path: Path
    message: str
    warning: bool = False


def dotted(path: Path) -> str:
    """``jobs.build.steps[2].timeout-minutes``: the way error messages name a field."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def kind_of_value(value: Any) -> str:
    """How error messages name the type of a plain YAML value: "a string", "a map", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__
