"""``python -m bench dashboard``: server time to render the dashboard's run page of a large run.

A synthetic run (``--jobs`` jobs in ``--levels`` levels of ``needs``, ``--steps`` steps each,
``--lines`` log lines per step, an annotation per job, its machine lifecycle) is kept through
``StoreSink`` in a fresh store, then the page ``GET /runs/ID`` is asked ``--repeat`` times from
the dashboard app in process (ASGI, no socket: server time only). Prints the median and the
slowest time, the page's bytes, and the runs list's time. The goal: a 50-job run's page in
under 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from vmrunner.reports import events as ev
from vmrunner.reports.storage import StoreSink
from vmrunner.server.dashboard import local_dashboard
from vmrunner.store import Store

GOAL_MS = 300.0


def graph_run(run_id: str, jobs: int, levels: int, steps: int, lines: int) -> Iterator[ev.Event]:
    """A finished run whose jobs need every job of the level before theirs."""
    now = time.time()
    yield ev.RunStarted(run_id, "Bench", ".github/workflows/bench.yml", "push", now)
    ids = [f"job{n}" for n in range(jobs)]
    level = {job: n * levels // jobs for n, job in enumerate(ids)}
    for job in ids:
        needs = tuple(j for j in ids if level[j] == level[job] - 1)
        yield ev.JobQueued(run_id, job, job, f"Job {job}", now, needs=needs)
    for job in ids:
        start = now + level[job]
        yield ev.JobStarted(run_id, job, start, f"s-{job}", f"m-{job}", "sandbox", "default", False)
        for index in range(steps):
            yield ev.StepStarted(run_id, job, index, "step", f"Step {index}", start + index * 0.1)
            for n in range(lines):
                yield ev.LogLine(run_id, job, index, "stdout", f"line {n} of step {index}", start)
            yield ev.StepFinished(
                run_id, job, index, "success", "success", start + index * 0.1 + 0.1, 0.1, 0
            )
        yield ev.Annotation(run_id, job, 0, "warning", f"{job} warns", start, "src/a.py", 3)
        yield ev.JobFinished(run_id, job, "success", start + steps * 0.1, steps * 0.1,
                             summary=f"## {job}\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    yield ev.RunFinished(run_id, "success", now + levels + 1, levels + 1.0)


async def measure(store: Store, run_id: str, repeat: int) -> dict[str, Any]:
    app = local_dashboard(store, "bench-token")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        login = await client.get("/login", params={"token": "bench-token", "next": "/"})
        assert login.status_code == 303, login.text
        times, size = [], 0
        for _ in range(repeat):
            before = time.perf_counter()
            page = await client.get(f"/runs/{run_id}")
            times.append((time.perf_counter() - before) * 1000)
            assert page.status_code == 200, page.text[:300]
            size = len(page.content)
        before = time.perf_counter()
        listed = await client.get("/")
        list_ms = (time.perf_counter() - before) * 1000
        assert listed.status_code == 200
    return {
        "run_page_median_ms": round(statistics.median(times), 1),
        "run_page_max_ms": round(max(times), 1),
        "run_page_bytes": size,
        "runs_list_ms": round(list_ms, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dashboard",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as home,
        Store.open(Path(home) / "state.db") as store,
    ):
        with StoreSink(store) as sink:
            for event in graph_run("4242", args.jobs, args.levels, args.steps, args.lines):
                sink.emit(event)
        figures = {"jobs": args.jobs, "steps": args.jobs * args.steps,
                   **asyncio.run(measure(store, "4242", args.repeat))}
    figures["goal_ms"] = GOAL_MS
    figures["within_goal"] = figures["run_page_median_ms"] < GOAL_MS
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>20}: {value}")
    return 0
