"""All terminal output of the CLI: one Rich console for stdout and one for stderr.

Commands print tables and messages through these helpers, and machine-readable output
through ``print_json``, so that ``--json`` output is never wrapped, coloured or highlighted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Rich loads when something is printed through it
    from rich.console import Console

#: Width used when output goes to a file or pipe, so that lines are never wrapped there.
PIPE_WIDTH = 1000


@cache
def console(*, stderr: bool = False) -> Console:
    """The shared console for stdout, or for stderr with ``stderr=True``."""
    from rich.console import Console

    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = PIPE_WIDTH
    return out


def columns(titles: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table as plain left-aligned columns, two spaces apart (as act's tables are): the
    header in bold on a terminal."""
    widths = [max(len(cell) for cell in column) for column in zip(titles, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    bold = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    header = line(titles)
    out = [f"\x1b[1m{header}\x1b[0m" if bold else header, *(line(row) for row in rows)]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, exactly as written (no markup, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """A message for people on stdout; ``message`` is plain text, never Rich markup."""
    console().print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr."""
    console(stderr=True).print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    """An error on stderr."""
    console(stderr=True).print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
