"""``python -m bench triggers [--seconds S]``: cost of deciding which workflows an event starts.

Figures, each the median over repeated rounds: matching one branch name against an ordered
pattern list, deciding ``match_event`` for every real webhook payload in the shared fixtures,
expanding a 256-combination matrix with excludes and includes, and finding a cron's next run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vmrunner.workflow.cron import CronSchedule
from vmrunner.workflow.filters import matches_any
from vmrunner.workflow.matrix import expand_matrix
from vmrunner.workflow.triggers import match_event, parse_on, payload_changed_files

_ON = """
push: {branches: [main, 'releases/**', '!releases/**-alpha'], paths: ['src/**', '!src/**/*.md']}
pull_request: {branches: [main, master], paths-ignore: ['docs/**']}
issues: {types: [opened, labeled]}
release: {types: [published]}
workflow_run: {workflows: [test], types: [completed]}
check_suite:
merge_group: {branches: [main]}
"""
_PATTERNS = [
    "main",
    "releases/**",
    "feature/*",
    "v[12].[0-9]+.[0-9]+",
    "!releases/**-alpha",
    "hotfix/**",
]
_MATRIX: dict[str, Any] = {
    "os": [f"os{i}" for i in range(8)],
    "node": list(range(8)),
    "arch": ["x64", "arm64", "riscv", "ppc"],
    "exclude": [{"os": "os0", "arch": "ppc"}],
    "include": [{"os": "os1", "node": 3, "extra": True}, {"os": "new", "node": 99}],
}


def _fixtures() -> list[tuple[str, dict[str, Any]]]:
    shared = os.environ.get("VMRUNNER_SHARED") or Path(__file__).resolve().parents[2] / "shared"
    root = Path(shared) / "fixtures" / "github-webhooks"
    return [
        (path.parent.name, json.loads(path.read_text())) for path in sorted(root.glob("*/*.json"))
    ]


def _median_seconds(action: Callable[[], object], budget: float) -> float:
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples) < 5:
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench triggers", description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="time spent on each figure")
    args = parser.parse_args(argv)
    triggers, problems = parse_on(yaml.safe_load(_ON))
    assert not problems, problems
    payloads = _fixtures()
    diffs = [payload_changed_files(payload) for _, payload in payloads]
    schedule = CronSchedule.parse("30 5 * * 1,3")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def match_all() -> None:
        for (event, payload), diff in zip(payloads, diffs, strict=True):
            match_event(triggers, event, payload, changed_files=diff)

    figures = [
        (
            "branch vs 6 ordered patterns",
            _median_seconds(lambda: matches_any(_PATTERNS, "releases/10-alpha"), args.seconds),
            1,
        ),
        (
            f"match_event, {len(payloads)} real payloads",
            _median_seconds(match_all, args.seconds),
            len(payloads),
        ),
        (
            "expand 8x8x4 matrix (+exclude, include)",
            _median_seconds(lambda: expand_matrix(_MATRIX), args.seconds),
            1,
        ),
        (
            "cron next_after, weekly schedule",
            _median_seconds(lambda: schedule.next_after(start), args.seconds),
            1,
        ),
    ]
    for label, seconds, count in figures:
        per = seconds / count * 1e6
        print(f"{label:45} {seconds * 1e6:10.1f} µs total  {per:8.2f} µs each")
    return 0
