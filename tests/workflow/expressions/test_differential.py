"""Differential tests against GitHub's own implementation (npm ``@actions/expressions``).

One ``node oracle.mjs`` process answers every example of a run. Discrepancies found this way
are fixed in vmrunner and kept below as explicit regression cases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.workflow.expressions import strategies as s
from tests.workflow.oracle.client import Oracle, ours, same_answer

#: Examples per property; raise it (VMRUNNER_ORACLE_EXAMPLES=20000) for a long hunt.
EXAMPLES = int(os.environ.get("VMRUNNER_ORACLE_EXAMPLES", "400"))


@pytest.fixture(scope="module")
def oracle() -> Iterator[Oracle]:
    process = Oracle()
    try:
        yield process
    finally:
        process.close()


def check(oracle: Oracle, expr: str, contexts: dict[str, Any]) -> None:
    github = oracle.ask(expr, contexts)
    assert github.get("err", {}).get("kind") != "oracle", github
    mine = ours(expr, contexts)
    assert same_answer(expr, mine, github), f"{expr!r} with {contexts!r}:\n ours:   {mine}\n github: {github}"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=s.expressions, contexts=s.contexts)
def test_matches_github(oracle: Oracle, expr: str, contexts: dict[str, Any]) -> None:
    check(oracle, expr, contexts)


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(contexts=s.contexts, data=s.st.data())
def test_matches_github_on_context_access(oracle: Oracle, contexts: dict[str, Any], data: s.st.DataObject) -> None:
    check(oracle, data.draw(s.named_values), contexts)


_VOCABULARY = [
    "ab", "a", "b", "true", "false", "null", "NaN", "Infinity", "1", "0x1", ".5", "1.5", "-", "+",
    "e5", "'x'", "''", "'", "(", ")", "[", "]", ".", "*", ",", "!", "==", "!=", "<", "<=", ">",
    "&&", "||", "=", "&", "|", " ", "\n", "\t", "contains", "format", "case", "join", "@", "_",
]


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(
    text=s.st.text(s.st.sampled_from(list("ab1.0x-+e*!=<>&|()[],' \n\t_")), max_size=16)
    | s.st.lists(s.st.sampled_from(_VOCABULARY), max_size=12).map("".join)
)
def test_matches_github_on_token_soup(oracle: Oracle, text: str) -> None:
    check(oracle, text, {"ab": {"a": [1, "b"]}, "B": [{"a": 2}]})


#: Discrepancies the differential tests found, each fixed in vmrunner; kept as regressions.
REGRESSIONS: list[tuple[str, dict[str, Any]]] = [
    # Integers beyond 2**53 print their shortest round-trip digits, not every exact digit.
    ("join(3.653422403975749e+16, null)", {}),
    ("format('{0}', 1e20 + 1)", {}),
]


@pytest.mark.parametrize(("expr", "contexts"), REGRESSIONS or [("1", {})])
def test_regressions_match_github(oracle: Oracle, expr: str, contexts: dict[str, Any]) -> None:
    check(oracle, expr, contexts)
