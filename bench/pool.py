"""``python -m bench pool``: what the warm pool and the session manager add.

Figures:
- warm allocation: ``allocate`` from a filled pool (goal p50 <= 2 ms); each machine is released
  and the pool refilled before the next sample, so every sample is a hit;
- restore-mode recycling: ``release`` of a dirtied machine until it is back in the pool
  (restore, ping, fingerprint check), for providers with snapshots;
- session open and close through ``SessionManager`` over a warm pool, and the manager's own
  share of it (bookkeeping: slot, state transitions and store writes), i.e. the time not spent
  inside the provider's ``allocate``/``release``;
- one store write (a state transition) in the SQLite store: the reason the manager writes
  inline on the event loop rather than through a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.sandbox import percentiles
from vmrunner.machines.base import MachineSpec, Provider
from vmrunner.machines.pool import Reuse, WarmPool
from vmrunner.machines.testing import CountingProvider, Event

GOALS = {"warm_allocation_p50_ms": 2.0}


async def warm_allocations(provider: Provider, count: int) -> tuple[list[float], dict[str, Any]]:
    spec = MachineSpec()
    samples = []
    async with WarmPool(provider, {spec.vm_type: 1}) as pool:
        for _ in range(count):
            await pool.wait_filled()
            started = time.perf_counter()
            machine = await pool.allocate(spec)
            samples.append(time.perf_counter() - started)
            await pool.release(machine)
        stats = pool.statistics()
    return samples, {"hits": stats.hits, "misses": stats.misses}


async def recycles(provider: Provider, count: int) -> list[float]:
    spec = MachineSpec()
    samples = []
    async with WarmPool(provider, {spec.vm_type: 1}, reuse="restore") as pool:
        for _ in range(count):
            await pool.wait_filled()
            machine = await pool.allocate(spec)
            await machine.exec(["sh", "-c", "echo dirty > file"], cwd=machine.paths.workspace)
            started = time.perf_counter()
            await pool.release(machine)
            samples.append(time.perf_counter() - started)
    return samples


async def sessions(provider: Provider, count: int) -> dict[str, Any]:
    from vmrunner.sessions import SessionManager

    opens, closes, bookkeeping = [], [], []
    # In restore mode a release recycles the machine instead of starting a new one, so no
    # refill (a process spawn, which blocks the event loop) runs inside the timed window.
    reuse: Reuse = "restore" if provider.capabilities.snapshots else "destroy"
    async with WarmPool(provider, {"default": 1}, reuse=reuse) as pool:
        counting = CountingProvider(pool)  # times the pool's allocate and release
        async with SessionManager(counting, limit=2) as manager:
            for _ in range(count):
                await pool.wait_filled()
                mark = len(counting.events)
                started = time.perf_counter()
                async with manager.open():
                    opened = time.perf_counter()
                closed = time.perf_counter()
                opens.append(opened - started)
                closes.append(closed - opened)
                bookkeeping.append(closed - started - _provider_time(counting.events[mark:]))
    return {
        "reuse": reuse,
        "open": percentiles(opens),
        "close": percentiles(closes),
        "bookkeeping": percentiles(bookkeeping),
    }


def _provider_time(events: list[Event]) -> float:
    """Seconds spent inside the pool's ``allocate`` and ``release`` calls among ``events``."""
    total, started = 0.0, 0.0
    for event in events:
        if event.kind in ("allocating", "releasing"):
            started = event.at
        elif event.kind in ("allocated", "released"):
            total += event.at - started
    return total


def store_writes(count: int) -> dict[str, float]:
    from vmrunner.store import SessionRow, Store

    with Store.open() as store:
        now = time.time()
        session_id = f"s-bench-{uuid.uuid4().hex[:8]}"
        store.add_session(
            SessionRow(session_id, "active", "default", "bench", os.getpid(), None, now, now, now)
        )
        samples = []
        for index in range(count):
            started = time.perf_counter()
            store.set_session_state(session_id, "executing" if index % 2 else "active", time.time())
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def run(
    provider: Provider, *, allocations: int, sessions_count: int, writes: int
) -> dict[str, Any]:
    spec = MachineSpec()
    await provider.release(await provider.allocate(spec))  # warm caches (agent bundle, page cache)
    results: dict[str, Any] = {"provider": provider.name}
    samples, counts = await warm_allocations(provider, allocations)
    results["warm_allocation"] = {**percentiles(samples), **counts}
    if provider.capabilities.snapshots:
        results["recycle"] = percentiles(await recycles(provider, allocations))
    results["session"] = await sessions(provider, sessions_count)
    results["store_write"] = store_writes(writes)
    return results


def report(results: dict[str, Any]) -> str:
    def row(name: str, figures: dict[str, float], goal: str = "") -> tuple[str, str, str, str]:
        return (name, f"p50 {figures['p50_ms']:.2f} ms", f"p99 {figures['p99_ms']:.2f} ms", goal)

    warm = results["warm_allocation"]
    rows = [
        row(
            "warm allocation",
            warm,
            f"goal p50 <= {GOALS['warm_allocation_p50_ms']:.0f} ms ({warm['hits']} hits, "
            f"{warm['misses']} misses)",
        )
    ]
    if "recycle" in results:
        rows.append(
            row("restore-mode recycle", results["recycle"], "restore + verify, back in the pool")
        )
    session = results["session"]
    rows += [
        row("session open (warm pool)", session["open"]),
        row("session close", session["close"], f"pool reuse: {session['reuse']}"),
        row("session bookkeeping", session["bookkeeping"], "open + close minus provider time"),
        row("store write (transition)", results["store_write"]),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"provider: {results['provider']}"]
    lines += [f"  {name:<{width}}  {a:<16} {b:<16} {goal}" for name, a, b, goal in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pool", description=__doc__)
    parser.add_argument(
        "--provider", default="sandbox", help="provider to measure (default: sandbox)"
    )
    parser.add_argument(
        "--allocations", type=int, default=100, help="warm allocations (and recycles) to time"
    )
    parser.add_argument(
        "--sessions", type=int, default=100, help="session open/close cycles to time"
    )
    parser.add_argument("--writes", type=int, default=2000, help="store writes to time")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    from vmrunner.machines.providers import get_provider

    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as home:
        os.environ["VMRUNNER_HOME"] = home  # the store of the session figures, thrown away after
        provider = get_provider(args.provider, home=Path(home))
        results = asyncio.run(
            run(
                provider,
                allocations=args.allocations,
                sessions_count=args.sessions,
                writes=args.writes,
            )
        )
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0
