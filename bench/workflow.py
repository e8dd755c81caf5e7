"""``python -m bench workflow``: load, validate and plan act's conformance workflows, on one core.

Prints workflow files per second (the goal is 500 or more) and the median time per file.
Options: ``--rounds N`` (default 20), ``--cold`` (empty the expression parser's cache before
every round, as for files never seen before), ``--profile`` (top functions by cumulative time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.planner import plan

GOAL = 500


def shared_dir() -> Path:
    """The shared material beside the checkout (or ``$VMRUNNER_SHARED``), as the tests find it."""
    explicit = os.environ.get("VMRUNNER_SHARED")
    return Path(explicit) if explicit else Path(__file__).resolve().parents[2] / "shared"


def corpus() -> list[tuple[str, str]]:
    """(file name, text) of every workflow file in the act corpus (actions excluded)."""
    root = shared_dir() / "conformance" / "act" / "testdata"
    files = sorted(
        p for p in root.rglob("*") if p.suffix in {".yml", ".yaml"} and p.stem != "action"
    )
    return [(str(p), p.read_text(encoding="utf-8")) for p in files]


def run(files: list[tuple[str, str]], rounds: int, cold: bool = False) -> list[float]:
    """Seconds per file load+plan, for every file in every round."""
    from vmrunner.workflow import expressions

    timings: list[float] = []
    clock = time.perf_counter
    for _ in range(rounds):
        if cold:
            expressions._parse_cached.cache_clear()
        for name, text in files:
            start = clock()
            plan(load_workflow_text(text, name))
            timings.append(clock() - start)
    return timings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench workflow", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args(argv)
    files = corpus()
    if not files:
        print(f"no workflow files under {shared_dir() / 'conformance' / 'act' / 'testdata'}")
        return 1
    run(files, 1)  # warm up imports and caches
    if options.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(run, files, options.rounds, options.cold)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    timings = run(files, options.rounds, options.cold)
    total = sum(timings)
    rate = len(timings) / total
    median_ms = statistics.median(timings) * 1000
    size = sum(len(text) for _, text in files) / len(files)
    cache = "expression cache emptied every round" if options.cold else "expression cache warm"
    print(
        f"{len(files)} workflow files (mean {size:.0f} bytes), {options.rounds} rounds, one core, "
        f"{cache}"
    )
    print(
        f"load+validate+plan: {rate:.0f} files/s (goal {GOAL}); median {median_ms:.3f} ms per file"
    )
    print(
        f"p90 {statistics.quantiles(timings, n=10)[-1] * 1000:.3f} ms, max "
        f"{max(timings) * 1000:.3f} ms"
    )
    return 0 if rate >= GOAL else 1
