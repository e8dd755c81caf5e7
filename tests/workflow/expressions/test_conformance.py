"""GitHub's cross-language conformance cases (actions/languageservices ``expressions/testdata``).

Every case runs: a ``result`` must match in kind and value, an ``err`` in kind and, as a
substring, in message (GitHub's own runner compares messages the same way). Cases that the
data marks ``skip: typescript`` run too: they are skipped upstream only because the TypeScript
implementation reports columns instead of offsets and has no memory limit, and we do neither.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import shared_dir
from vmrunner.errors import ExpressionError
from vmrunner.workflow.expressions import evaluate, kind_of, parse

CONFORMANCE = shared_dir() / "conformance" / "expressions"


def _cases() -> list[Any]:
    params = []
    for path in sorted(CONFORMANCE.glob("*.json")):
        groups = json.loads(path.read_text(encoding="utf-8"))
        for group, cases in groups.items():
            for number, case in enumerate(cases):
                case_id = f"{path.stem}/{group}/{number}"
                params.append(pytest.param(case, id=case_id))
    return params


def _same(actual: Any, expected: Any) -> bool:
    """Structural equality with numbers compared as floats (NaN equals NaN, -0 equals 0)."""
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, int | float):
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
        if math.isnan(expected):
            return math.isnan(actual)
        return float(actual) == float(expected)
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    assert isinstance(expected, dict)
    return (
        isinstance(actual, dict)
        and list(actual) == list(expected)
        and all(_same(actual[key], value) for key, value in expected.items())
    )


def run_case(case: dict[str, Any]) -> tuple[str, Any]:
    """Run one case; ('result', (kind, value)) or ('err', (kind, message))."""
    contexts = case.get("contexts") or {}
    try:
        expression = parse(case["expr"], contexts=list(contexts))
        value = evaluate(expression, contexts)
    except ExpressionError as exc:
        return "err", (exc.kind, str(exc))
    return "result", (kind_of(value), value)


def test_conformance_data_is_present() -> None:
    assert len(_cases()) > 600, f"conformance cases missing under {CONFORMANCE}"


@pytest.mark.parametrize("case", _cases())
def test_conformance(case: dict[str, Any]) -> None:
    outcome, detail = run_case(case)
    if "err" in case:
        assert outcome == "err", f"expected {case['err']}, got {detail}"
        kind, message = detail
        assert kind == case["err"]["kind"], message
        assert case["err"]["value"] in message
    else:
        assert outcome == "result", detail
        kind, value = detail
        assert kind == case["result"]["kind"]
        assert _same(value, case["result"]["value"]), (value, case["result"]["value"])


def count_exact_messages(directory: Path = CONFORMANCE) -> tuple[int, int]:
    """How many error cases have our message containing GitHub's text exactly (for reports)."""
    total = exact = 0
    for path in sorted(directory.glob("*.json")):
        for cases in json.loads(path.read_text(encoding="utf-8")).values():
            for case in cases:
                if "err" not in case:
                    continue
                total += 1
                outcome, detail = run_case(case)
                exact += outcome == "err" and case["err"]["value"] in detail[1]
    return exact, total
