"""``python -m bench machines_service``: what the machine service adds over loopback.

A real ``vmrunner machines serve`` (its own process, uvicorn, sandboxes, a warm pool) on
127.0.0.1, and the ``remote`` provider as a runner uses it. Figures:
- warm allocation through the service: ``RemoteProvider.allocate`` while the service's pool has
  a machine ready (one ``POST /api/vms`` that waits until the VM runs; goal p50 <= 5 ms);
- command overhead: ``exec(["true"])`` on a remote machine minus the same on a local sandbox
  machine, p50 against p50, timed in alternating rounds (goal <= 2 ms);
- the floor under both: one ``GET /health`` round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.sandbox import percentiles
from vmrunner.machines.base import Machine, MachineSpec
from vmrunner.machines.providers import get_provider
from vmrunner.machines.remote import RemoteProvider

GOALS = {"warm_allocation_p50_ms": 5.0, "exec_overhead_p50_ms": 2.0}
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_pool(http: httpx.AsyncClient) -> None:
    """Until the service's pool has a machine ready (it lives in another process: polled)."""
    for _ in range(3000):
        if (await http.get("/api/vm-types")).json()["pool"]["idle"].get("default"):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("the service's warm pool never filled")


async def _commands(machine: Machine, count: int, samples: list[float]) -> None:
    for _ in range(count):
        started = time.perf_counter()
        await machine.exec(["true"])
        samples.append(time.perf_counter() - started)


async def _interleaved(remote: Machine, local: Machine, count: int) -> tuple[list[float], ...]:
    """``count`` commands on each machine, in alternating rounds of 20, so that a change of the
    host's load meanwhile (it is shared) weighs on both alike."""
    for machine in (remote, local):
        await _commands(machine, 5, [])
    remote_samples: list[float] = []
    local_samples: list[float] = []
    for start in range(0, count, 20):
        await _commands(remote, min(20, count - start), remote_samples)
        await _commands(local, min(20, count - start), local_samples)
    return remote_samples, local_samples


async def measure(url: str, token: str, allocations: int, commands: int) -> dict[str, Any]:
    remote = RemoteProvider(url, token)
    spec = MachineSpec()
    http = remote.client()
    health = []
    for _ in range(commands):
        started = time.perf_counter()
        await http.get("/health")
        health.append(time.perf_counter() - started)
    allocs, hits = [], 0
    for _ in range(allocations):
        await _wait_pool(http)
        started = time.perf_counter()
        machine = await remote.allocate(spec)
        allocs.append(time.perf_counter() - started)
        hits += machine.from_pool
        await remote.release(machine)
    machine = await remote.allocate(spec)
    local = get_provider("sandbox")
    local_machine = await local.allocate(spec)
    await _wait_pool(http)  # the service's refill is not timed with the commands
    remote_exec, local_exec = await _interleaved(machine, local_machine, commands)
    await remote.release(machine)
    await remote.aclose()
    await local.release(local_machine)
    await local.aclose()
    figures = {
        "health": percentiles(health),
        "warm_allocation": {**percentiles(allocs), "hits": hits},
        "remote_exec": percentiles(remote_exec),
        "local_exec": percentiles(local_exec),
    }
    figures["exec_overhead_p50_ms"] = (
        figures["remote_exec"]["p50_ms"] - figures["local_exec"]["p50_ms"]
    )
    return figures


def report(results: dict[str, Any]) -> str:
    def row(name: str, figures: dict[str, float], goal: str = "") -> str:
        p50, p99 = figures["p50_ms"], figures["p99_ms"]
        return f"  {name:<28} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {goal}"

    warm = results["warm_allocation"]
    return "\n".join([
        "machine service on 127.0.0.1 (sandbox provider, warm pool)",
        row("GET /health round trip", results["health"]),
        row("warm allocation (remote)", warm,
            f"goal p50 <= {GOALS['warm_allocation_p50_ms']:.0f} ms ({warm['hits']} pool hits)"),
        row("exec true (remote)", results["remote_exec"]),
        row("exec true (local sandbox)", results["local_exec"]),
        f"  {'remote exec overhead':<28} p50 {results['exec_overhead_p50_ms']:7.2f} ms"
        f"{'':<20}goal <= {GOALS['exec_overhead_p50_ms']:.0f} ms",
    ])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench machines_service", description=__doc__)
    parser.add_argument("--allocations", type=int, default=50, help="warm allocations to time")
    parser.add_argument("--commands", type=int, default=200, help="commands to time")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as home:
        os.chmod(home, 0o711)
        os.environ["VMRUNNER_HOME"] = home
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        token = subprocess.run(
            [sys.executable, "-m", "vmrunner", "tokens", "create", "bench", "--scope", "operate"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "vmrunner", "machines", "serve", "--port", str(port),
             "--network", "host", "--pool", "default=1"],
            env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health").is_success:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("the machine service did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.05)
            results = asyncio.run(measure(url, token, args.allocations, args.commands))
        finally:
            server.terminate()
            server.wait(60)
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0
