"""``python -m bench runlog``: what keeping and showing a run costs per event.

The engine calls every sink inline on the event loop, so an ``emit`` must be quick. Figures,
for a synthetic run (``--jobs`` × ``--steps`` × ``--lines`` output lines):
- ``StoreSink`` into a fresh SQLite store: per-event latency (p50/p99, the p99 being a batch
  write) and log lines per second overall;
- ``ProgressView`` rendering plain lines (as in CI), and coloured lines (as on a terminal),
  to memory: lines per second;
- ``ResultCollector``: events per second;
- reading the run back (``RunHistory.get_run``) and all its logs.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.sandbox import percentiles
from vmrunner.cli.progress import ProgressView
from vmrunner.reports import events as ev
from vmrunner.reports.results import ResultCollector
from vmrunner.reports.storage import RunHistory, StoreSink
from vmrunner.store import Store


def synthetic_run(run_id: str, jobs: int, steps: int, lines: int) -> Iterator[ev.Event]:
    """A valid event sequence; jobs interleave step by step, as parallel jobs do."""
    now = time.time()
    yield ev.RunStarted(run_id, "Bench", ".github/workflows/bench.yml", "push", now)
    keys = [f"job ({n})" for n in range(jobs)]
    for key in keys:
        yield ev.JobQueued(run_id, key, "job", key, now)
        yield ev.JobStarted(run_id, key, now, f"s-{key}", f"m-{key}", "sandbox", "default", False)
    for index in range(steps):
        for key in keys:
            yield ev.StepStarted(run_id, key, index, "step", f"Step {index}", now)
            for n in range(lines):
                yield ev.LogLine(
                    run_id, key, index, "stdout", f"output line {n} of step {index}: some text", now
                )
            yield ev.StepFinished(run_id, key, index, "success", "success", now, 0.01, 0)
    for key in keys:
        yield ev.JobFinished(run_id, key, "success", now, 0.1)
    yield ev.RunFinished(run_id, "success", now, 0.1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench runlog", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args(argv)
    events = list(synthetic_run("bench-run", args.jobs, args.steps, args.lines))
    log_lines = args.jobs * args.steps * args.lines
    figures: dict[str, Any] = {"events": len(events), "log_lines": log_lines}

    with (
        tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as home,
        Store.open(Path(home) / "state.db") as store,
    ):
        sink = StoreSink(store)
        latencies = []
        started = time.perf_counter()
        for event in events:
            before = time.perf_counter()
            sink.emit(event)
            latencies.append(time.perf_counter() - before)
        sink.close()
        total = time.perf_counter() - started
        figures["store_sink_emit"] = percentiles(latencies)
        figures["store_sink_lines_per_s"] = round(log_lines / total)
        started = time.perf_counter()
        result = RunHistory(store).get_run("bench-run")
        kept = RunHistory(store).logs("bench-run")
        figures["read_back_ms"] = (time.perf_counter() - started) * 1000
        assert len(kept) == log_lines
        assert len(result.jobs) == args.jobs

    view = ProgressView(Console(file=io.StringIO(), width=200, force_terminal=False))
    started = time.perf_counter()
    for event in events:
        view.emit(event)
    figures["plain_view_lines_per_s"] = round(log_lines / (time.perf_counter() - started))

    terminal = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="truecolor")
    view = ProgressView(terminal, live=False)
    started = time.perf_counter()
    for event in events:
        view.emit(event)
    figures["terminal_view_lines_per_s"] = round(log_lines / (time.perf_counter() - started))

    collector = ResultCollector()
    started = time.perf_counter()
    for event in events:
        collector.emit(event)
    collector.result()
    figures["collector_events_per_s"] = round(len(events) / (time.perf_counter() - started))

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    emit = figures["store_sink_emit"]
    print(
        f"run of {args.jobs} jobs x {args.steps} steps x {args.lines} lines: {len(events)} events"
    )
    print(
        f"StoreSink emit      p50 {emit['p50_ms'] * 1000:.1f} us, p99 {emit['p99_ms'] * 1000:.1f} "
        f"us;"
        f" {figures['store_sink_lines_per_s']:,} log lines/s"
    )
    print(f"read back           run + {log_lines:,} log rows in {figures['read_back_ms']:.1f} ms")
    print(f"ProgressView plain  {figures['plain_view_lines_per_s']:,} lines/s;"
          f" on a terminal (colours) {figures['terminal_view_lines_per_s']:,} lines/s")
    print(f"ResultCollector     {figures['collector_events_per_s']:,} events/s")
    return 0
