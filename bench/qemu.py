"""``python -m bench qemu``: what a QEMU machine costs, with the accelerator named.

Figures: a cold boot to a ready agent (no ready state), allocation from the warm pool,
allocation from the image's ready state (pool empty), the ``true`` round trip (wall clock,
and the CPU time QEMU spent on it: a busy host stretches the first, hardly the second), and
a VM snapshot's save and restore times and size (the growth of the machine's qcow2 overlay),
with the host's load average while it ran.
Goals under TCG: pool allocation p50 <= 5 ms, ready-state allocation <= 1.5 s, snapshot save
and restore of a 256 MiB guest <= 1.5 s each, ``true`` p50 <= 25 ms.

Uses the image named ``default`` in ``--images`` (default: VMRUNNER_IMAGES or
VMRUNNER_HOME/images; build it with ``vmrunner image build``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sandbox import cold_allocations, exec_round_trips, percentiles
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.qemu import QemuMachine, QemuProvider

GOALS = {
    "pool_p50_ms": 5.0,
    "ready_state_p50_ms": 1500.0,
    "snapshot_save_ms": 1500.0,
    "snapshot_restore_ms": 1500.0,
    "exec_true_p50_ms": 25.0,
}


async def pool_allocations(provider: QemuProvider, spec: MachineSpec, count: int) -> list[float]:
    """Allocations from a pool kept full: each waits for an idle VM, then times the pop."""
    samples = []
    async with WarmPool(provider, sizes={spec.vm_type: 2}, specs={spec.vm_type: spec}) as pool:
        for _ in range(count):
            for _ in range(6000):  # up to 5 minutes for a refill
                if pool.statistics().idle.get(spec.vm_type, 0):
                    break
                await asyncio.sleep(0.05)
            started = time.perf_counter()
            machine = await pool.allocate(spec)
            samples.append(time.perf_counter() - started)
            await pool.release(machine)
    return samples


async def snapshots(machine: QemuMachine, count: int) -> dict[str, Any]:
    disk = machine.state_dir / "disk.qcow2"
    saves, restores, sizes = [], [], []
    await machine.exec("head -c 16M /dev/urandom > /tmp/ballast")  # some state worth saving
    for _ in range(count):
        before = disk.stat().st_blocks * 512
        started = time.perf_counter()
        snapshot_id = await machine.snapshot()
        saves.append(time.perf_counter() - started)
        sizes.append(disk.stat().st_blocks * 512 - before)
        await machine.exec("echo changed > /tmp/changed")
        started = time.perf_counter()
        await machine.restore(snapshot_id)
        await machine.exec(["true"])  # restored and answering
        restores.append(time.perf_counter() - started)
    return {
        "save": percentiles(saves),
        "restore": percentiles(restores),
        "size_mib": sum(sizes) / len(sizes) / 2**20,
    }


async def run(provider: QemuProvider, args: argparse.Namespace) -> dict[str, Any]:
    spec = MachineSpec(memory_mib=args.memory, network=args.network)
    cold = QemuProvider(provider.home, images=provider.store.root, ready_state=False)
    results: dict[str, Any] = {"provider": "qemu", "network": args.network}
    results["cold_boot"] = percentiles(await cold_allocations(cold, args.boots, spec))
    results["accelerator"] = await cold.accelerator(cold.image_for(spec.vm_type))
    await provider.release(await provider.allocate(spec))  # makes the ready state once
    results["ready_state"] = percentiles(await cold_allocations(provider, args.allocations, spec))
    results["pool"] = percentiles(await pool_allocations(provider, spec, args.allocations))
    machine = await provider.allocate(spec)
    assert isinstance(machine, QemuMachine)
    try:
        await exec_round_trips(machine, 10)
        spent = cpu_seconds(machine.record.pid)
        results["exec_true"] = percentiles(await exec_round_trips(machine, args.execs))
        results["exec_true_cpu_ms"] = (cpu_seconds(machine.record.pid) - spent) / args.execs * 1000
        results["snapshot"] = await snapshots(machine, args.snapshots)
    finally:
        await provider.release(machine)
    results["load_average"] = os.getloadavg()
    return results


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of a process so far (QEMU's, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(results: dict[str, Any]) -> str:
    def ms(figure: dict[str, float]) -> str:
        return f"p50 {figure['p50_ms']:.1f} ms  p99 {figure['p99_ms']:.1f} ms"

    snapshot = results["snapshot"]
    rows = [
        ("cold boot to agent", ms(results["cold_boot"]), ""),
        ("warm-pool allocation", ms(results["pool"]), f"goal p50 <= {GOALS['pool_p50_ms']:.0f} ms"),
        ("ready-state allocation", ms(results["ready_state"]),
         f"goal p50 <= {GOALS['ready_state_p50_ms']:.0f} ms"),
        ("exec `true` round trip", ms(results["exec_true"]),
         f"goal p50 <= {GOALS['exec_true_p50_ms']:.0f} ms"),
        ("QEMU CPU per `true`", f"{results['exec_true_cpu_ms']:.1f} ms", ""),
        ("snapshot save", ms(snapshot["save"]), f"goal <= {GOALS['snapshot_save_ms']:.0f} ms"),
        ("snapshot restore", ms(snapshot["restore"]),
         f"goal <= {GOALS['snapshot_restore_ms']:.0f} ms"),
        ("snapshot size", f"{snapshot['size_mib']:.1f} MiB in the overlay", ""),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    load = ", ".join(f"{figure:.2f}" for figure in results["load_average"])
    lines = [
        f"provider: qemu, network: {results['network']} (accelerator: {results['accelerator']};"
        f" host load average {load})"
    ]
    lines += [f"  {name:<{width}}  {figure:<34} {goal}" for name, figure, goal in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench qemu", description=__doc__)
    parser.add_argument("--network", default="private", choices=("private", "host", "none"),
                        help="the machines' network (default: private)")
    parser.add_argument("--images", type=Path, default=None, help="image directory")
    parser.add_argument("--memory", type=int, default=256, help="guest memory in MiB")
    parser.add_argument("--boots", type=int, default=2, help="cold boots to time")
    parser.add_argument("--allocations", type=int, default=10, help="allocations to time")
    parser.add_argument("--execs", type=int, default=100, help="`true` round trips to time")
    parser.add_argument("--snapshots", type=int, default=3, help="snapshot/restore pairs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-", dir="/tmp") as home:
        provider = QemuProvider(Path(home), images=args.images)
        results = asyncio.run(run(provider, args))
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0
