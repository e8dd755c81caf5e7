"""``python -m bench fleet``: a fleet of two ``vmrunner agent`` processes on PostgreSQL.

Prints the enqueue-to-start latency p50/p99 on an idle fleet (runs submitted one at a time;
from the run's row being written to its job's attempt starting on an agent, both stamped by the
database's clock), and the jobs per second the fleet sustains through a backlog of trivial jobs
(``run: true`` in a sandbox), and how long a cancel takes to tear down the machine of a running
job (from ``cancel`` returning to the machine's process gone from the agent's host). Without
``--store`` a throwaway cluster is started on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from typing import Any

TRIVIAL = "on: push\njobs:\n  trivial:\n    runs-on: linux\n    steps:\n      - run: 'true'\n"
HANGS = "on: push\njobs:\n  hang:\n    runs-on: linux\n    steps:\n      - run: sleep 600\n"
AGENTS = ("b1", "b2")


def _start_agents(url: str, capacity: int, folder: str) -> list[subprocess.Popen[bytes]]:
    agents = []
    for name in AGENTS:
        home = os.path.join(folder, name)
        os.makedirs(home)
        argv = [
            sys.executable,
            "-m",
            "vmrunner",
            "agent",
            "--name",
            name,
            "--labels",
            "linux",
            "--capacity",
            str(capacity),
            "--store",
            url,
            "--provider",
            "sandbox",
            "--log-level",
            "warning",
            "--heartbeat",
            "0.5",
        ]
        agents.append(
            subprocess.Popen(
                argv,
                env={**os.environ, "VMRUNNER_HOME": home},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return agents


async def _completed(store: Any, run_ids: list[str]) -> int:
    async with store.pool.connection() as connection:
        row = await (
            await connection.execute(
                "SELECT count(*) FROM vmrunner_runs WHERE status = 'completed' AND id = ANY(%s)",
                (run_ids,),
            )
        ).fetchone()
    return int(row[0]) if row else 0


async def _wait_all(store: Any, run_ids: list[str]) -> None:
    while True:
        if await _completed(store, run_ids) >= len(run_ids):
            return
        await asyncio.sleep(0.05)


async def _measure(url: str, samples: int, backlog: int, cancel_samples: int, folder: str) -> None:
    from vmrunner.fleet.store import FleetStore
    from vmrunner.runner.options import RunOptions

    async with FleetStore(url) as store:
        for _ in range(600):
            if len(await store.agents()) >= 2:
                break
            await asyncio.sleep(0.1)
        repo = os.path.join(folder, "repo")
        os.makedirs(repo)
        options = RunOptions(repo_root=repo, repository="bench/fleet")
        idle: list[str] = []
        for _ in range(samples):  # one at a time: the fleet is idle when each is submitted
            idle.append(await store.submit(TRIVIAL, "trivial.yml", options))
            await _wait_all(store, idle[-1:])
        started = time.perf_counter()
        queued = [await store.submit(TRIVIAL, "trivial.yml", options) for _ in range(backlog)]
        submitted = time.perf_counter() - started
        await _wait_all(store, queued)
        elapsed = time.perf_counter() - started
        async with store.pool.connection() as connection:
            rows = await (
                await connection.execute(
                    "SELECT extract(epoch FROM a.started_at - r.created_at)::float FROM "
                    "vmrunner_attempts a"
                    " JOIN vmrunner_runs r ON r.id = a.run_id WHERE a.run_id = ANY(%s)",
                    (idle,),
                )
            ).fetchall()
            failed = await (
                await connection.execute(
                    "SELECT count(*) FROM vmrunner_runs WHERE conclusion <> 'success'"
                )
            ).fetchone()
        cancels = [await _cancel_latency(store, options, folder) for _ in range(cancel_samples)]
    quantiles = statistics.quantiles(sorted(float(r[0]) * 1000 for r in rows), n=100)
    print(f"2 agents; not successful: {failed[0] if failed else '?'}")
    print(
        f"enqueue-to-start latency, idle fleet ({samples} runs)   p50 {quantiles[49]:7.1f} ms   "
        f"p99 {quantiles[98]:7.1f} ms"
    )
    print(f"submit (one transaction per run)                 {backlog / submitted:7.1f} runs/s")
    print(
        f"throughput, backlog of {backlog} trivial jobs          {backlog / elapsed:7.2f} jobs/s "
        f"({elapsed:.1f} s)"
    )
    if cancels:
        print(
            f"cancel to machine gone ({len(cancels)} runs)            p50 "
            f"{statistics.median(cancels) * 1000:7.1f} ms   "
            f"max {max(cancels) * 1000:7.1f} ms (goal 2000)"
        )


def _live_machine_pids(folder: str) -> set[int]:
    """The processes of the machines the agents' own stores list as not released."""
    from vmrunner.store import DATABASE_NAME, Store

    pids: set[int] = set()
    for name in AGENTS:
        with Store.open(os.path.join(folder, name, DATABASE_NAME)) as store:
            pids.update(row.pid for row in store.machines() if row.pid)
    return {pid for pid in pids if os.path.exists(f"/proc/{pid}")}


async def _cancel_latency(store: Any, options: Any, folder: str) -> float:
    """Seconds from cancelling a run whose job runs in a machine to that machine's process gone."""
    run_id = await store.submit(HANGS, "hangs.yml", options)
    while True:
        pids = _live_machine_pids(folder)
        if pids and (await store.run(run_id)).jobs[0].status == "running":
            break
        await asyncio.sleep(0.02)
    await store.cancel(run_id)
    cancelled = time.perf_counter()
    while True:
        if not _alive(pids):
            return time.perf_counter() - cancelled
        await asyncio.sleep(0.005)


def _alive(pids: set[int]) -> bool:
    return any(os.path.exists(f"/proc/{pid}") for pid in pids)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fleet")
    parser.add_argument(
        "--store", default=None, help="a PostgreSQL URL (default: a throwaway cluster)"
    )
    parser.add_argument(
        "--samples", type=int, default=30, help="runs submitted one at a time for the latency"
    )
    parser.add_argument(
        "--backlog", type=int, default=60, help="runs submitted at once for the throughput"
    )
    parser.add_argument("--capacity", type=int, default=2, help="jobs at once per agent")
    parser.add_argument(
        "--cancels", type=int, default=5, help="runs cancelled while their job runs"
    )
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="vmrunner-bench-fleet-"))
        url = args.store
        if url is None:
            from vmrunner.fleet.testing import TemporaryCluster

            cluster = stack.enter_context(TemporaryCluster())
            url = cluster.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        agents = _start_agents(url, args.capacity, folder)
        try:
            asyncio.run(_measure(url, args.samples, args.backlog, args.cancels, folder))
        finally:
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(timeout=30)
    return 0
