"""``vmrunner expr``: evaluate one ``${{ }}`` expression, or a stream of them, as JSON.

Prints ``{"kind": ..., "value": ...}`` (exit 0) or ``{"error": {"kind", "message", "position"}}``
(exit 1). With ``-`` it serves editors and tools: one JSON request per stdin line,
``{"expr": ..., "contexts": {...}}``, one JSON answer per line, flushed as it is written.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

import click


def _wire(value: Any) -> Any:
    """A value as strict JSON: non-finite numbers become "NaN"/"Infinity"/"-Infinity"."""
    from vmrunner.workflow.expressions.values import object_items

    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_wire(item) for item in value]
    if isinstance(value, dict):
        return {key: _wire(item) for key, item in object_items(value)}
    return value


def _answer(expr: str, contexts: dict[str, Any], hooks: Any) -> dict[str, Any]:
    from vmrunner.errors import ExpressionError
    from vmrunner.workflow.expressions import evaluate, kind_of

    try:
        value = evaluate(expr, contexts, hooks=hooks)
    except ExpressionError as exc:
        return {"error": {"kind": exc.kind, "message": str(exc), "position": exc.position}}
    return {"kind": kind_of(value), "value": _wire(value)}


def _input_error(message: str) -> dict[str, Any]:
    return {"error": {"kind": "input", "message": message}}


def _request(line: str, default: dict[str, Any], hooks: Any) -> dict[str, Any]:
    """Answer one stdin line; a malformed line gets an error object, never an exception."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return _input_error(f"not JSON: {exc}")
    if not isinstance(request, dict) or not isinstance(request.get("expr"), str):
        return _input_error('expected an object like {"expr": "...", "contexts": {...}}')
    contexts = request.get("contexts", default)
    if not isinstance(contexts, dict):
        return _input_error('"contexts" must be an object')
    return _answer(request["expr"], contexts, hooks)


def _serve(stdin: TextIO, stdout: TextIO, default: dict[str, Any], hooks: Any) -> None:
    for line in stdin:
        if not line.strip():
            continue
        stdout.write(json.dumps(_request(line, default, hooks), ensure_ascii=False) + "\n")
        stdout.flush()


def _load_contexts(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        contexts = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--contexts"
        ) from exc
    except ValueError as exc:
        raise click.BadParameter(
            f"{path} is not valid JSON: {exc}", param_hint="--contexts"
        ) from exc
    if not isinstance(contexts, dict):
        raise click.BadParameter(
            f"{path} must hold a JSON object mapping context names to values",
            param_hint="--contexts",
        )
    return contexts


@click.command(name="expr")
@click.argument("expression")
@click.option(
    "--contexts",
    "contexts_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON file with the contexts, e.g. {\"github\": {...}, \"matrix\": {...}}.",
)
@click.option(
    "--workspace",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Directory hashFiles() reads.",
)
def command(expression: str, contexts_file: Path | None, workspace: Path) -> None:
    """Evaluate EXPRESSION (the text inside ${{ }}), or '-' for JSON lines on stdin."""
    from functools import partial

    from vmrunner.workflow.expressions import EvaluationHooks, hash_files

    contexts = _load_contexts(contexts_file)
    hooks = EvaluationHooks(hash_files=partial(hash_files, workspace))
    if expression == "-":
        _serve(sys.stdin, sys.stdout, contexts, hooks)
        return
    answer = _answer(expression, contexts, hooks)
    click.echo(json.dumps(answer, ensure_ascii=False))
    if "error" in answer:
        sys.exit(1)
