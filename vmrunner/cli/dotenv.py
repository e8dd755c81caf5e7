"""``KEY=value`` files (dotenv), for ``--secret-file``, ``--env-file`` and ``--var-file``.

As act and most dotenv readers do: blank lines and ``#`` comments are skipped, ``export`` is
allowed, double-quoted values expand ``\\n``, ``\\t``, ``\\"`` and ``\\\\``, single-quoted values
are literal, and a quoted value may span lines.
"""

from __future__ import annotations

import re

from vmrunner.errors import ConfigError

_KEY = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def parse_dotenv(text: str, filename: str = "<dotenv>") -> dict[str, str]:
    values: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        match = _KEY.match(line)
        if match is None:
            raise ConfigError(f"{filename}:{number}: expected KEY=value, got {line!r}")
        key, raw = match.groups()
        quote = raw[:1]
        if quote in ('"', "'"):
            body = raw[1:]
            while not _closed(body, quote) and index < len(lines):
                body += "\n" + lines[index]
                index += 1
            if not _closed(body, quote):
                raise ConfigError(
                    f"{filename}:{number}: unterminated {quote} quote in the value of {key}"
                )
            body = body[: _closing(body, quote)]
            values[key] = _unescape(body) if quote == '"' else body
        else:
            values[key] = raw.split(" #", 1)[0].strip()
    return values


def _closing(body: str, quote: str) -> int:
    position = 0
    while position < len(body):
        char = body[position]
        if char == "\\" and quote == '"':
            position += 2
            continue
        if char == quote:
            return position
        position += 1
    return -1


def _closed(body: str, quote: str) -> bool:
    return _closing(body, quote) >= 0


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text)


def read_dotenv(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_dotenv(text, path)
