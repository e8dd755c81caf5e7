"""Workflow commands in a step's output (``::name props::message``) and the file commands
(``GITHUB_ENV``, ``GITHUB_OUTPUT``, ``GITHUB_STATE``: ``NAME=value`` or ``NAME<<DELIM`` blocks).

Escaping follows GitHub: in a message ``%25``, ``%0D`` and ``%0A`` stand for ``%``, CR and LF;
property values also escape ``:`` (``%3A``) and ``,`` (``%2C``). ``::stop-commands::TOKEN``
stops processing until a line ``::TOKEN::``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_COMMAND = re.compile(r"^::([A-Za-z][\w-]*)(?:\s+([^:]*))?::(.*)$")
_DATA_ESCAPES = (("%0D", "\r"), ("%0A", "\n"), ("%25", "%"))
_PROPERTY_ESCAPES = (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%"))


class FileCommandError(ValueError):
    """A file command (GITHUB_ENV, GITHUB_OUTPUT, ...) is malformed; the step fails."""


@dataclass(frozen=True, slots=True)
class WorkflowCommand:
    name: str
    properties: Mapping[str, str] = field(default_factory=dict)
    message: str = ""


def _unescape(text: str, escapes: tuple[tuple[str, str], ...]) -> str:
    for escaped, plain in escapes:
        text = text.replace(escaped, plain)
    return text


def parse_command(line: str) -> WorkflowCommand | None:
    """The workflow command on one output line, or None if the line is not one."""
    stripped = line.strip()
    if not stripped.startswith("::"):
        return None
    match = _COMMAND.match(stripped)
    if match is None:
        return None
    name, props, message = match.groups()
    properties: dict[str, str] = {}
    for part in (props or "").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            properties[key.strip()] = _unescape(value, _PROPERTY_ESCAPES)
    return WorkflowCommand(name.lower(), properties, _unescape(message, _DATA_ESCAPES))


class CommandReader:
    """Reads a step's output line by line, honouring ``stop-commands``."""

    def __init__(self) -> None:
        self._stop_token: str | None = None

    def feed(self, line: str) -> WorkflowCommand | None:
        if self._stop_token is not None:
            if line.strip() == f"::{self._stop_token}::":
                self._stop_token = None
            return None
        command = parse_command(line)
        if command is not None and command.name == "stop-commands" and command.message:
            self._stop_token = command.message
            return None
        return command


def parse_file_commands(text: str, what: str = "file command") -> dict[str, str]:
    """``NAME=value`` lines and ``NAME<<DELIMITER`` … ``DELIMITER`` blocks, in order."""
    values: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip():
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if heredoc >= 0 and (equals < 0 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            if not name or not delimiter:
                raise FileCommandError(f"{what}: invalid line {line!r}: expected NAME<<DELIMITER")
            block: list[str] = []
            while index < len(lines) and lines[index] != delimiter:
                block.append(lines[index])
                index += 1
            if index >= len(lines):
                raise FileCommandError(
                    f"{what}: matching delimiter {delimiter!r} not found for {name!r}"
                )
            index += 1
            values[name] = "\n".join(block)
        elif equals > 0:
            values[line[:equals]] = line[equals + 1 :]
        else:
            raise FileCommandError(
                f"{what}: invalid line {line!r}: expected NAME=value or NAME<<DELIMITER"
            )
    return values
