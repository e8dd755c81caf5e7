"""A long-lived ``node oracle.mjs`` process answering expression requests, one line each."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

from vmrunner.errors import ExpressionError
from vmrunner.workflow.expressions import evaluate, kind_of, parse
from vmrunner.workflow.expressions.values import object_items

ORACLE_DIR = Path(__file__).resolve().parent
PACKAGE = ORACLE_DIR / "node_modules" / "@actions" / "expressions" / "package.json"


class Oracle:
    """GitHub's TypeScript implementation behind a pipe; ``close()`` ends the process."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed (scripts/bootstrap --dev installs it)")
        if not PACKAGE.exists():
            raise RuntimeError(f"@actions/expressions missing: run `npm ci` in {ORACLE_DIR}")
        self.process = subprocess.Popen(
            [node, str(ORACLE_DIR / "oracle.mjs")],
            cwd=ORACLE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.serial = 0

    def ask(self, expr: str, contexts: dict[str, Any]) -> dict[str, Any]:
        """GitHub's answer, in the conformance format (see oracle.mjs).

        Requests carry a serial number, so an answer left unread by an interrupted test
        is skipped instead of being taken for the next one.
        """
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        self.serial += 1
        stdin.write(json.dumps({"expr": expr, "contexts": contexts, "id": self.serial}) + "\n")
        stdin.flush()
        while True:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"the oracle exited with {self.process.wait()}")
            answer: dict[str, Any] = json.loads(line, parse_int=float)
            if answer.pop("id", None) == self.serial:
                return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def plain(value: Any) -> Any:
    """Our value in the oracle's wire form (non-finite numbers as names, objects as pairs)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return number
    if isinstance(value, list):
        return [plain(item) for item in value]
    return [[key, plain(item)] for key, item in object_items(value)]


def ours(expr: str, contexts: dict[str, Any]) -> dict[str, Any]:
    """Our answer in the same format."""
    try:
        value = evaluate(parse(expr, contexts=list(contexts)), contexts)
    except ExpressionError as exc:
        return {"err": {"kind": exc.kind, "value": str(exc)}}
    return {"result": {"kind": kind_of(value), "value": plain(value)}}


#: The package prefixes errors raised while evaluating an index; GitHub's runner does not.
_INDEX_PREFIX = "could not evaluate index for index access: "


def _over_memory(mine: dict[str, Any]) -> bool:
    """GitHub's runner caps an evaluation at 1 MiB, as we do; the package has no cap."""
    return "err" in mine and mine["err"]["value"].startswith("The maximum allowed memory size")


def same_answer(expr: str, mine: dict[str, Any], github: dict[str, Any]) -> bool:
    """Equal kinds and values, or equal error kinds and messages.

    Syntax error messages are compared only where the TypeScript positions mean offsets: it
    counts UTF-16 units and restarts columns after a newline, GitHub's runner does neither.
    The package's evaluation messages carry no position, so ours must start with them.
    """
    if "result" in github:
        return mine == github or _over_memory(mine)
    if "result" in mine:
        return False
    if mine["err"]["kind"] != github["err"]["kind"]:
        return False
    ours_text, theirs = mine["err"]["value"], github["err"]["value"]
    if _over_memory(mine):
        return True
    if mine["err"]["kind"] == "evaluation":
        return bool(ours_text.startswith(theirs.removeprefix(_INDEX_PREFIX) + "."))
    if "\n" in expr or any(ord(c) > 0xFFFF for c in expr):
        return True
    return bool(ours_text == theirs)
