"""YAML 1.2 loading with positions, the way GitHub reads workflow files.

PyYAML implements YAML 1.1, where ``on``, ``yes`` and ``off`` are booleans and ``010`` is octal.
GitHub follows YAML 1.2's core schema, so we let PyYAML's C parser build only the node tree and
give plain scalars their meaning here. Every value and every mapping key keeps its 1-based line
and column under its path from the document root, so validators can report where a value is.

Anchors and aliases work, as on GitHub. Merge keys (``<<``) are rejected, because GitHub does not
support them: accepting them would make files pass here and fail there. Duplicate keys are
errors, as on GitHub.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from vmrunner.errors import Diagnostic, WorkflowError
from vmrunner.workflow.problems import Path

Position = tuple[int, int]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: The tag our loader gives plain (unquoted, untagged) scalars, resolved by YAML 1.2 rules below.
_PLAIN = "!plain"
_TAG = "tag:yaml.org,2002:"

#: Alias expansion beyond this many nodes is refused ("billion laughs").
MAX_NODES = 1_000_000
#: Collections nested deeper than this are refused, so that every later walk is bounded.
MAX_DEPTH = 200

_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Builds nodes only; plain scalars get ``_PLAIN`` instead of YAML 1.1's implicit tags."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit[0]:
            return _PLAIN
        tag: str = super().resolve(kind, value, implicit)
        return tag


def plain_scalar(text: str) -> Any:
    """The value of an unquoted scalar under YAML 1.2's core schema."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    first = text[0]
    if first.isdigit() or first in "+-.":
        if _INT.fullmatch(text):
            return int(text)
        if _OCT.fullmatch(text):
            return int(text[2:], 8)
        if _HEX.fullmatch(text):
            return int(text[2:], 16)
        if _FLOAT.fullmatch(text):
            return float(text)
        if _INF.fullmatch(text):
            return -math.inf if first == "-" else math.inf
        if _NAN.fullmatch(text):
            return math.nan
    return text


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded YAML document: plain ``value`` plus where each part of it was written."""

    filename: str
    value: Any
    values: Mapping[Path, Position]
    keys: Mapping[Path, Position]
    blocks: frozenset[Path]
    styles: Mapping[Path, str] = field(default_factory=dict)
    text: str = field(default="", repr=False)

    def locate(self, path: Path) -> Position:
        """Where the value at ``path`` is written (at its key when it is a block collection).

        Falls back to the key, then to the nearest ancestor we know, then to (1, 1).
        """
        if path in self.blocks and path in self.keys:
            return self.keys[path]
        return self._nearest(path, self.values, self.keys)

    def locate_key(self, path: Path) -> Position:
        """Where the mapping key ending ``path`` is written (for unknown or misplaced keys)."""
        return self._nearest(path, self.keys, self.values)

    @staticmethod
    def _nearest(
        path: Path, first: Mapping[Path, Position], then: Mapping[Path, Position]
    ) -> Position:
        while True:
            found = first.get(path) or then.get(path)
            if found is not None:
                return found
            if not path:
                return (1, 1)
            path = path[:-1]

    def locate_in_string(self, path: Path, offset: int) -> Position:
        """Where character ``offset`` of the string at ``path`` is written, as near as we can tell.

        Exact for single-line scalars and literal (``|``) block scalars; other multi-line
        scalars give the position of the value itself.
        """
        line, column = self.locate(path)
        value = _get(self.value, path)
        style = self.styles.get(path)
        if style is None or not isinstance(value, str) or path not in self.values:
            return line, column
        before = value[:offset]
        if style in {"", "'", '"'} and "\n" not in before:
            return line, column + offset + (1 if style else 0)
        if style == "|":
            lines = self.text.splitlines()
            indent = 0
            for candidate in lines[line:]:
                if candidate.strip():
                    indent = len(candidate) - len(candidate.lstrip(" "))
                    break
            newlines = before.count("\n")
            return line + 1 + newlines, indent + offset - (before.rfind("\n") + 1) + 1
        return line, column

    def diagnostic(self, path: Path, message: str, *, at_key: bool = False) -> Diagnostic:
        line, column = self.locate_key(path) if at_key else self.locate(path)
        return Diagnostic(self.filename, line, column, message)


class _Builder:
    """Turns a node tree into plain values, recording positions and collecting errors."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.values: dict[Path, Position] = {}
        self.keys: dict[Path, Position] = {}
        self.blocks: set[Path] = set()
        self.styles: dict[Path, str] = {}
        self.errors: list[Diagnostic] = []
        self.seen: set[int] = set()
        self.active: set[int] = set()
        self.count = 0

    def error(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.errors.append(Diagnostic(self.filename, mark.line + 1, mark.column + 1, message))

    def build(self, node: Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise WorkflowError(
                Diagnostic(
                    self.filename,
                    0,
                    0,
                    f"the document expands to more than {MAX_NODES} values through aliases",
                )
            )
        key = id(node)
        if key in self.active:
            self.error(node, "an alias refers to a node that contains it (recursive alias)")
            return None
        # An alias shares its node with the anchor: keep the anchor's positions, record none here.
        if key not in self.seen:
            self.seen.add(key)
            mark = node.start_mark
            self.values[path] = (mark.line + 1, mark.column + 1)
            if isinstance(node, MappingNode | SequenceNode) and not node.flow_style:
                self.blocks.add(path)
        if len(path) > MAX_DEPTH:
            self.error(node, f"values are nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(node, ScalarNode):
            if "${{" in node.value or path[-1:] == ("if",):
                self.styles.setdefault(path, node.style or "")
            return self.scalar(node)
        self.active.add(key)
        try:
            if isinstance(node, SequenceNode):
                self.check_tag(node, "seq")
                return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
            self.check_tag(node, "map")
            if not isinstance(node, MappingNode):
                self.error(node, f"unsupported YAML node {type(node).__name__}")
                return None
            return self.mapping(node, path)
        finally:
            self.active.discard(key)

    def check_tag(self, node: Node, kind: str) -> None:
        if node.tag != _TAG + kind:
            self.error(node, f"unsupported YAML tag {node.tag!r}")

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, "a mapping key must be a string, not a collection")
                continue
            name = str(key_node.value)
            if name == "<<" and key_node.tag == _PLAIN:
                self.error(
                    key_node,
                    "merge keys ('<<') are not supported by GitHub Actions; repeat the keys, or "
                    "use an alias for the whole value",
                )
                continue
            if name in result:
                first = self.keys.get((*path, name))
                where = f" (first at line {first[0]})" if first else ""
                self.error(key_node, f"duplicate key '{name}'{where}")
                continue
            mark = key_node.start_mark
            self.keys.setdefault((*path, name), (mark.line + 1, mark.column + 1))
            result[name] = self.build(value_node, (*path, name))
        return result

    def scalar(self, node: ScalarNode) -> Any:
        text: str = node.value
        tag = node.tag
        if tag == _PLAIN:
            return plain_scalar(text)
        if tag in {_TAG + "str", "!"}:
            return text
        if tag in {_TAG + "int", _TAG + "float", _TAG + "bool", _TAG + "null"}:
            value = plain_scalar(text)
            expected = {"int": int, "float": float, "bool": bool, "null": type(None)}[
                tag[len(_TAG) :]
            ]
            if tag.endswith("float") and type(value) is int:
                return float(value)
            if type(value) is expected:
                return value
            self.error(node, f"{text!r} is not a valid {tag[len(_TAG):]}")
            return text
        self.error(node, f"unsupported YAML tag {tag!r}")
        return text


def _get(value: Any, path: Path) -> Any:
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _yaml_error(filename: str, exc: Exception) -> Diagnostic:
    """A YAML library error in plain words, at its line and column."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        words = exc.problem or exc.context or "malformed YAML"
        if exc.context and exc.problem:
            # PyYAML splits one sentence in two: "expected X" + "but found Y".
            joined = exc.problem.startswith("but ")
            words = f"{exc.context}, {exc.problem}" if joined else f"{exc.problem} ({exc.context})"
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        return Diagnostic(filename, line, column, f"invalid YAML: {words}")
    return Diagnostic(filename, 0, 0, f"invalid YAML: {exc}")


def _position_of_offset(text: str, offset: int) -> Position:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def load_document(text: str, filename: str) -> Document:
    """Parse ``text`` as one YAML 1.2 document whose top level is a mapping.

    Raises ``WorkflowError`` for malformed YAML, an empty file, a top level that is not a
    mapping, and for duplicate keys, merge keys, recursive aliases and unknown tags (all of them).
    """
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        line, column = _position_of_offset(text, exc.position)
        raise WorkflowError(
            Diagnostic(
                filename, line, column, f"invalid YAML: {exc.reason} (character {exc.character!r})"
            )
        ) from exc
    except yaml.YAMLError as exc:
        raise WorkflowError(_yaml_error(filename, exc)) from exc
    except UnicodeError as exc:
        offset = getattr(exc, "start", 0)
        line, column = _position_of_offset(text, offset)
        raise WorkflowError(
            Diagnostic(
                filename,
                line,
                column,
                f"invalid text: character {text[offset]!r} cannot be encoded as UTF-8",
            )
        ) from exc
    except RecursionError as exc:
        raise WorkflowError(
            Diagnostic(filename, 0, 0, "the document is nested too deeply")
        ) from exc
    if node is None:
        raise WorkflowError(
            Diagnostic(
                filename, 0, 0, "the file is empty; a workflow needs at least 'on' and 'jobs'"
            )
        )
    builder = _Builder(filename)
    try:
        value = builder.build(node, ())
    except RecursionError as exc:
        raise WorkflowError(
            Diagnostic(filename, 0, 0, "the document is nested too deeply")
        ) from exc
    if builder.errors:
        raise WorkflowError(sorted(builder.errors, key=lambda d: (d.line, d.column)))
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else "a single value"
        line, column = builder.values.get((), (1, 1))
        raise WorkflowError(
            Diagnostic(
                filename,
                line,
                column,
                f"the top level of a workflow must be a mapping (keys such as 'on' and 'jobs'), "
                f"not {kind}",
            )
        )
    return Document(
        filename,
        value,
        builder.values,
        builder.keys,
        frozenset(builder.blocks),
        builder.styles,
        text,
    )
