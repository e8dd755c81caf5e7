"""``python -m bench expressions``: how fast expressions parse (cold and cached) and evaluate."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from vmrunner.workflow.expressions import EvaluationHooks, evaluate, parse, parse_template
from vmrunner.workflow.expressions.functions import FUNCTIONS
from vmrunner.workflow.expressions.parser import parse_tokens

#: Expressions as they appear in real workflows.
SAMPLES = [
    "github.event_name == 'push' && github.ref == 'refs/heads/main'",
    "matrix.os",
    "secrets.GITHUB_TOKEN",
    "needs.build.outputs.version",
    "format('{0}-{1}', runner.os, hashFiles('**/package-lock.json'))",
    "contains(github.event.pull_request.labels.*.name, 'ci') || startsWith(github.ref, "
    "'refs/tags/')",
    "fromJSON(needs.setup.outputs.matrix)",
    "steps.cache.outputs.cache-hit != 'true'",
    "!cancelled() && (success() || failure())",
    "toJSON(github.event)",
]
CONTEXTS = {
    "github": {
        "event_name": "push",
        "ref": "refs/heads/main",
        "event": {"pull_request": {"labels": [{"name": "ci"}]}},
    },
    "matrix": {"os": "ubuntu-latest"},
    "runner": {"os": "Linux"},
    "secrets": {"GITHUB_TOKEN": "x"},
    "needs": {
        "build": {"outputs": {"version": "1.2.3"}},
        "setup": {"outputs": {"matrix": '{"a": [1, 2]}'}},
    },
    "steps": {"cache": {"outputs": {"cache-hit": "false"}}},
}


def _rate(label: str, count: int, action: Callable[[], object], seconds: float) -> None:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(count):
            action()
        done += count
    elapsed = time.perf_counter() - start
    print(f"{label:<32} {done / elapsed:>12,.0f} /s   {elapsed / done * 1e6:8.1f} us each")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench expressions")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)
    samples = iter(SAMPLES * 1_000_000)
    _rate(
        "parse (uncached)", 100, lambda: parse_tokens(next(samples), None, FUNCTIONS), args.seconds
    )
    _rate("parse (cached)", 1000, lambda: parse(next(samples)), args.seconds)
    _rate(
        "parse_template (cached)",
        1000,
        lambda: parse_template("v-${{ " + SAMPLES[1] + " }}"),
        args.seconds,
    )
    trees = [parse(text) for text in SAMPLES]
    parsed = iter(trees * 1_000_000)
    hooks = EvaluationHooks(hash_files=lambda patterns: "0" * 64)
    _rate(
        "evaluate (parsed)",
        100,
        lambda: evaluate(next(parsed), CONTEXTS, hooks=hooks),
        args.seconds,
    )
    return 0
