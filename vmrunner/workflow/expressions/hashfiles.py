"""``hashFiles(patterns...)`` as GitHub's runner computes it.

Each argument holds one or more glob patterns (one per line, ``#`` comments, ``!`` negates),
relative to the workspace. ``*``, ``?``, ``[...]`` and ``**`` work as in ``@actions/glob``,
dot files included, and a pattern naming a directory takes everything below it. Matching
files are visited depth-first with directory entries in byte order (the order the runner's
globber yields them); the result is the hex SHA-256 of the concatenated SHA-256 digests of
their contents, or '' when nothing matched. Symbolic links to directories are not followed,
and nothing outside the workspace is hashed.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from vmrunner.errors import ExpressionEvaluationError

_CHUNK: Final = 1 << 16


def _segment_regex(segment: str) -> str:
    """One path segment of a glob as a regular expression (never crossing a '/')."""
    out: list[str] = []
    index = 0
    length = len(segment)
    while index < length:
        char = segment[index]
        index += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            first = index + (1 if segment[index : index + 1] in ("!", "^") else 0)
            close = segment.find("]", first + 1 if segment[first : first + 1] == "]" else first)
            if close < 0:
                out.append(re.escape(char))
                continue
            body = segment[index:close]
            index = close + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = (
                body.replace("\\", "\\\\")
                .replace("^", "\\^")
                .replace("[", "\\[")
                .replace("]", "\\]")
            )
            out.append(f"[^/{body}]" if negate else f"[{body}]")
        elif char == "\\" and index < length:
            out.append(re.escape(segment[index]))
            index += 1
        else:
            out.append(re.escape(char))
    return "".join(out)


def _compile(pattern: str, root: str) -> re.Pattern[str]:
    """A rooted pattern as a regex over absolute paths, matching also everything below."""
    if not pattern.startswith("/"):
        pattern = root.rstrip("/") + "/" + pattern
    pattern = posixpath.normpath(pattern)
    regex = []
    for segment in pattern.split("/")[1:]:
        if segment == "**":
            regex.append("(?:/[^/]+)*")
        elif segment:
            regex.append("/" + _segment_regex(segment))
    return re.compile("".join(regex) + "(?:/.*)?", re.DOTALL)


def _patterns(arguments: Sequence[str], root: str) -> list[tuple[bool, re.Pattern[str]]]:
    compiled: list[tuple[bool, re.Pattern[str]]] = []
    for argument in arguments:
        for line in argument.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = False
            while line.startswith("!"):
                negate = not negate
                line = line[1:]
            if line:
                compiled.append((negate, _compile(line, root)))
    return compiled


def _files(root: str) -> Iterator[str]:
    """Every non-directory under ``root``, depth-first, entries sorted; links not followed."""
    stack: list[tuple[str, bool]] = [(root, True)]
    while stack:
        path, is_directory = stack.pop()
        if not is_directory:
            yield path
            continue
        try:
            with os.scandir(path) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except OSError:
            continue
        stack.extend(
            (entry.path, entry.is_dir(follow_symlinks=False)) for entry in reversed(children)
        )


def hash_files(root: Path, patterns: Sequence[str]) -> str:
    """The ``hashFiles`` digest of the files under ``root`` matching ``patterns`` ('' if none)."""
    import hashlib  # here: the expression language loads with every command, hashing is rare

    base = os.path.abspath(root)
    compiled = _patterns(patterns, base)
    result = hashlib.sha256()
    matched = False
    for path in _files(base):
        included = False
        for negate, regex in compiled:
            if included == negate and regex.fullmatch(path):
                included = not negate
        if not included or os.path.isdir(path):
            continue
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise ExpressionEvaluationError(
                f"hashFiles('{', '.join(patterns)}') failed: cannot read {path}: {exc.strerror}"
            ) from exc
        result.update(digest.digest())
        matched = True
    return result.hexdigest() if matched else ""
