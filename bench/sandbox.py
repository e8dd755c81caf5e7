"""``python -m bench sandbox``: what a sandbox machine costs.

Figures: cold allocation (bwrap + agent up to its first answer, with the machine's cgroup and
disk made first and the network helper attached on a private network, as for every job), the
round trip of ``true`` through the agent, and the resident memory of an idle machine (bwrap and
agent processes, summed from /proc; the network helper is not their child and is reported
apart). Goals: allocation p50 <= 80 ms, ``true`` p50 <= 3 ms, <= 15 MiB idle. For the sandbox,
cold allocation is also timed per configuration of limits (none; cgroup only; cgroup and the
default disk), so what each costs shows. ``--network`` picks the machines' network (default:
private, the runner's default).

Each measurement is a function taking a provider or machine, so other benchmarks (the warm
pool, snapshots) can reuse them and add their figures to ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmrunner.machines.base import Machine, MachineSpec, Provider

GOALS = {"allocation_p50_ms": 80.0, "exec_true_p50_ms": 3.0, "idle_rss_mib": 15.0}
#: Cold allocation per configuration of limits (sandbox): name -> spec.
CONFIGURATIONS = {
    "no limits": MachineSpec(cpus=0, memory_mib=0, pids=0, disk_mib=0),
    "cgroup": MachineSpec(disk_mib=0),
    "cgroup + disk": MachineSpec(),
}


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000, "n": len(ordered)}


async def cold_allocations(provider: Provider, count: int, spec: MachineSpec) -> list[float]:
    """Seconds from ``allocate`` to an answering machine, each released before the next."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        machine = await provider.allocate(spec)
        samples.append(time.perf_counter() - started)
        await provider.release(machine)
    return samples


async def exec_round_trips(
    machine: Machine, count: int, command: Sequence[str] = ("true",)
) -> list[float]:
    """Seconds for ``exec(command)`` from the host, one after the other."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await machine.exec(list(command))
        samples.append(time.perf_counter() - started)
    return samples


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(b")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry))
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def machine_memory(machine: Machine) -> dict[str, float]:
    """Resident memory of the machine's process tree (its root process and descendants), MiB."""
    root = machine.record.pid
    if root is None:
        return {"rss_mib": 0.0, "pss_mib": 0.0, "processes": 0}
    tree = _children()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, []))
    rss = pss = 0
    for pid in pids:
        one_rss, one_pss = _memory_kib(pid)
        rss += one_rss
        pss += one_pss
    return {"rss_mib": rss / 1024, "pss_mib": pss / 1024, "processes": len(pids)}


async def idle_memory(provider: Provider, count: int, spec: MachineSpec) -> dict[str, float]:
    """Memory per idle machine, averaged over ``count`` machines alive at once."""
    machines = [await provider.allocate(spec) for _ in range(count)]
    try:
        await asyncio.gather(*(m.exec(["true"]) for m in machines))
        figures = [machine_memory(m) for m in machines]
        helpers = [helper_memory(m) for m in machines]
    finally:
        await asyncio.gather(*(provider.release(m) for m in machines))
    return {
        "rss_mib": statistics.mean(f["rss_mib"] for f in figures),
        "pss_mib": statistics.mean(f["pss_mib"] for f in figures),
        "processes": statistics.mean(f["processes"] for f in figures),
        "helper_rss_mib": statistics.mean(f["rss_mib"] for f in helpers),
        "helper_pss_mib": statistics.mean(f["pss_mib"] for f in helpers),
    }


def helper_memory(machine: Machine) -> dict[str, float]:
    """Resident memory of the machine's network helper (a private network's slirp4netns), MiB."""
    helper = machine.record.data.get("network_helper")
    if not isinstance(helper, dict):
        return {"rss_mib": 0.0, "pss_mib": 0.0}
    rss, pss = _memory_kib(helper["pid"])
    return {"rss_mib": rss / 1024, "pss_mib": pss / 1024}


async def run(
    provider: Provider, *, allocations: int, execs: int, machines: int, network: str = "private"
) -> dict[str, Any]:
    spec = MachineSpec(network=network)  # type: ignore[arg-type]
    await provider.release(await provider.allocate(spec))  # warm caches (agent bundle, page cache)
    results: dict[str, Any] = {"provider": provider.name, "network": network}
    results["allocation"] = percentiles(await cold_allocations(provider, allocations, spec))
    if provider.name == "sandbox" and os.geteuid() == 0:
        results["allocation_by_limits"] = {
            name: percentiles(
                await cold_allocations(
                    provider, allocations, replace(limited, network=spec.network)
                )
            )
            for name, limited in CONFIGURATIONS.items()
        }
    machine = await provider.allocate(spec)
    try:
        await exec_round_trips(machine, 20)
        results["exec_true"] = percentiles(await exec_round_trips(machine, execs))
    finally:
        await provider.release(machine)
    results["idle_memory"] = await idle_memory(provider, machines, spec)
    return results


def report(results: dict[str, Any]) -> str:
    allocation, exec_true, memory = (
        results["allocation"],
        results["exec_true"],
        results["idle_memory"],
    )
    rows = [
        ("cold allocation",
         f"p50 {allocation['p50_ms']:.1f} ms", f"p99 {allocation['p99_ms']:.1f} ms",
         f"goal p50 <= {GOALS['allocation_p50_ms']:.0f} ms"),
        ("exec `true` round trip",
         f"p50 {exec_true['p50_ms']:.2f} ms", f"p99 {exec_true['p99_ms']:.2f} ms",
         f"goal p50 <= {GOALS['exec_true_p50_ms']:.0f} ms"),
        ("idle machine memory",
         f"RSS {memory['rss_mib']:.1f} MiB", f"PSS {memory['pss_mib']:.1f} MiB",
         f"goal <= {GOALS['idle_rss_mib']:.0f} MiB ({memory['processes']:.0f} processes)"),
    ]  # fmt: skip
    for name, figures in results.get("allocation_by_limits", {}).items():
        rows.append(
            (
                f"  cold allocation, {name}",
                f"p50 {figures['p50_ms']:.1f} ms",
                f"p99 {figures['p99_ms']:.1f} ms",
                "",
            )
        )
    width = max(len(r[0]) for r in rows)
    if memory.get("helper_rss_mib"):
        rows.append(
            (
                "network helper memory",
                f"RSS {memory['helper_rss_mib']:.1f} MiB",
                f"PSS {memory['helper_pss_mib']:.1f} MiB",
                "(slirp4netns, beside the machine)",
            )
        )
    lines = [f"provider: {results['provider']}, network: {results.get('network', 'private')}"]
    lines += [f"  {name:<{width}}  {a:<16} {b:<16} {goal}" for name, a, b, goal in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sandbox", description=__doc__)
    parser.add_argument(
        "--provider", default="sandbox", help="provider to measure (default: sandbox)"
    )
    parser.add_argument("--allocations", type=int, default=50, help="cold allocations to time")
    parser.add_argument("--execs", type=int, default=500, help="`true` round trips to time")
    parser.add_argument(
        "--machines", type=int, default=5, help="idle machines for the memory figure"
    )
    parser.add_argument(
        "--network",
        default="private",
        choices=("private", "host", "none"),
        help="the machines' network (default: private)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    from vmrunner.machines.providers import get_provider

    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as home:
        provider = get_provider(args.provider, home=Path(home))
        results = asyncio.run(
            run(provider, allocations=args.allocations, execs=args.execs, machines=args.machines,
                network=args.network)
        )
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0
