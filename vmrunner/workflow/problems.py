"""Problems found while checking a document, located by their path inside it.

Validators work on plain values (dicts, lists, scalars) and report ``Problem``s with the path of
the offending value, e.g. ``("jobs", "build", "steps", 2, "timeout-minutes")``. The loader turns
paths into file, line and column using the YAML positions, so validators never see YAML nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the value at ``path``."""

    path: Path
    message: str


def dotted(path: Path) -> str:
    """``jobs.build.steps[2].timeout-minutes``: the way error messages name a field."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text
