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


def same_answer(expr: str, mine: dict[str, Any], github: dict[str, Any]) -> bool:
    """Equal kinds and values; for syntax errors also equal messages.

    Messages are compared only where the TypeScript positions mean offsets: it counts UTF-16
    units and restarts columns after a newline, GitHub's runner does neither. Evaluation
    messages are not compared: the package words some of them differently from the runner.
    """
    if "result" in github or "result" in mine:
        return mine == github
    if mine["err"]["kind"] != github["err"]["kind"]:
        return False
    if mine["err"]["kind"] == "evaluation" or "\n" in expr or any(ord(c) > 0xFFFF for c in expr):
        return True
    return bool(mine["err"]["value"] == github["err"]["value"])
