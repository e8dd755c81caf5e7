"""``python -m bench runner``: what the run engine adds on top of the commands it runs.

Figures:
- per-step overhead: one job of 50 ``run: true`` steps; the time from the first step's start to
  the last step's end, minus the commands' own time (the same 50 ``bash -e`` scripts run back
  to back by one plain bash script in the same kind of machine: the floor), divided by 50;
  p50 over a few runs. Goal: <= 5 ms.
- throughput: single-job workflows of 5 ``run`` steps, many at once on a warm pool
  (workflows/s). Goal: >= 30/s. The pool reuses machines as ``vmrunner run`` does (restored to
  their pristine snapshot and verified), or destroys them with ``--reuse destroy``.
- CPU per workflow in restore mode: this process plus the machines' processes; the host's cores
  divided by it are the workflows per second the host could sustain with nothing else running.
- the floor itself: the 5-step workflow's commands as one plain bash script.
- CPU time per step, which a busy host does not inflate: this process (engine, session manager,
  agent client), and the machine's processes (agent plus commands) minus the floor's, i.e. the
  agent's own work per step; the load average is printed beside the figures.

On a loaded host every figure but the last grows with the load; compare with the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from typing import Any

from vmrunner.machines.base import MachineSpec
from vmrunner.machines.pool import Reuse, WarmPool
from vmrunner.machines.providers import get_provider
from vmrunner.reports.events import Event, JobStarted, Recorder, StepFinished, StepStarted
from vmrunner.runner.options import RunOptions, machine_spec
from vmrunner.runner.run import run_workflow
from vmrunner.sessions import SessionManager
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.models import Workflow

GOALS = {"step_overhead_p50_ms": 5.0, "workflows_per_s": 30.0}
FLOOR_SCRIPT = (
    'for i in $(seq {n}); do printf "true\\n" > "$RUNNER_TEMP/s.sh"; bash -e '
    '"$RUNNER_TEMP/s.sh"; done'
)


def steps_workflow(steps: int) -> Workflow:
    body = "".join("      - run: true\n" for _ in range(steps))
    text = f"on: push\njobs:\n  bench:\n    runs-on: ubuntu-latest\n    steps:\n{body}"
    return load_workflow_text(text, "bench.yml")


def steps_span(events: list[Event]) -> float:
    starts = [e.time for e in events if isinstance(e, StepStarted)]
    ends = [e.time for e in events if isinstance(e, StepFinished)]
    return max(ends) - min(starts)


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process tree (a machine), its waited-for children included."""
    total, stack = 0, [pid] if pid else []
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    stack.extend(int(child) for child in file.read().split())
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


class MachineCpu(Recorder):
    """Records events, and the CPU the job's machine used from its first step to its last."""

    def __init__(self, sessions: SessionManager, steps: int) -> None:
        super().__init__()
        self.sessions, self.steps = sessions, steps
        self.pid: int | None = None
        self.first = self.last = 0.0
        self.finished = 0

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, JobStarted):
            self.pid = self.sessions.get_session(event.session_id).machine.record.pid
        elif isinstance(event, StepStarted) and not self.first:
            self.first = tree_cpu(self.pid)
        elif isinstance(event, StepFinished):
            self.finished += 1
            if self.finished == self.steps:
                self.last = tree_cpu(self.pid)


async def floor_seconds(sessions: SessionManager, steps: int) -> float:
    """The commands' own time: the same scripts run back to back by one bash in one machine."""
    return (await floor(sessions, steps))[0]


async def floor(sessions: SessionManager, steps: int) -> tuple[float, float]:
    """The floor's wall time and its machine's CPU time."""
    async with sessions.open(MachineSpec()) as session:
        pid = session.machine.record.pid
        cpu = tree_cpu(pid)
        started = time.perf_counter()
        result = await session.exec(["bash", "-c", FLOOR_SCRIPT.format(n=steps)])
        elapsed = time.perf_counter() - started
        cpu = tree_cpu(pid) - cpu
        if not result.ok:
            raise RuntimeError(result.stderr.decode())
        return elapsed, cpu


async def step_overhead(runs: int, steps: int) -> dict[str, Any]:
    workflow = steps_workflow(steps)
    overheads: list[float] = []
    floors: list[float] = []
    cpu: list[float] = []
    agent_cpu: list[float] = []
    async with SessionManager(get_provider("sandbox"), limit=2) as sessions:
        for _ in range(runs):
            recorder = MachineCpu(sessions, steps)
            cpu_before = time.process_time()
            outcome = await run_workflow(
                workflow, RunOptions(repo_root=tempfile.gettempdir()), sessions, recorder
            )
            cpu.append((time.process_time() - cpu_before) / steps)
            if outcome.failed:
                raise RuntimeError("the benchmark workflow failed")
            floor_wall, floor_cpu = await floor(sessions, steps)
            agent_cpu.append((recorder.last - recorder.first - floor_cpu) / steps)
            floors.append(floor_wall)
            overheads.append((steps_span(recorder.events) - floor_wall) / steps)
    return {
        "step_overhead_p50_ms": statistics.median(overheads) * 1000,
        "step_overhead_all_ms": [round(o * 1000, 2) for o in overheads],
        "floor_per_command_ms": statistics.median(floors) / steps * 1000,
        # CPU time of this process (engine, session manager, agent client) per step: the part
        # of the overhead that does not depend on how busy the host is.
        "runner_cpu_per_step_ms": statistics.median(cpu) * 1000,
        # The machine's CPU per step beyond the floor's (the agent's work for one command).
        "agent_cpu_per_step_ms": statistics.median(agent_cpu) * 1000,
    }


async def throughput(
    count: int, pool_size: int, steps: int, reuse: Reuse = "restore"
) -> dict[str, Any]:
    workflow = steps_workflow(steps)
    options = RunOptions(concurrent_jobs=pool_size, repo_root=tempfile.gettempdir())
    # The pool's machines are made as the jobs ask for them (network, limits), or none would fit.
    spec = machine_spec(options, options.default_vm_type)
    async with (
        WarmPool(
            get_provider("sandbox"), {spec.vm_type: pool_size}, reuse=reuse,
            specs={spec.vm_type: spec},
        ) as pool,
        SessionManager(pool, limit=pool_size) as sessions,
    ):
        await pool.wait_filled()
        machines = pool_machine_pids(pool)
        machine_cpu = sum(tree_cpu(pid) for pid in machines)
        started = time.perf_counter()
        cpu_before = time.process_time()
        outcomes = await asyncio.gather(
            *(run_workflow(workflow, options, sessions) for _ in range(count))
        )
        elapsed = time.perf_counter() - started
        await pool.wait_filled()  # the last machines are back (their restore counts too)
        cpu = time.process_time() - cpu_before
        same = reuse == "restore" and pool_machine_pids(pool) == machines
        machine_cpu = sum(tree_cpu(pid) for pid in machines) - machine_cpu
        floor = await floor_seconds(sessions, steps)
        stats = pool.statistics()
    failed = sum(1 for o in outcomes if o.failed)
    if failed:
        raise RuntimeError(f"{failed} benchmark workflows failed")
    return {
        "workflows_per_s": count / elapsed, "workflows": count, "pool": pool_size,
        "floor_5_steps_ms": floor * 1000,
        # This process's CPU per workflow (engine, pool refills, session manager): 1000 / this is
        # the rate one free core could sustain for the runner's own part.
        "runner_cpu_per_workflow_ms": cpu / count * 1000,
        "pool_reuse": reuse,
        # Every workflow should take a machine from the pool (a miss is a cold allocation).
        "pool_hits": stats.hits,
        "pool_misses": stats.misses,
        # Only measurable when the same machines served every workflow (restore mode).
        **({
            "machine_cpu_per_workflow_ms": machine_cpu / count * 1000,
            "cpu_bound_workflows_per_s": (os.cpu_count() or 1) * count / (cpu + machine_cpu),
        } if same else {}),
    }


def pool_machine_pids(pool: WarmPool) -> set[int]:
    """The root processes of the pool's idle machines."""
    return {record.pid for record in pool.idle_records() if record.pid}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"load_average_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    figures.update(await step_overhead(args.runs, args.steps))
    figures.update(await throughput(args.workflows, args.pool, 5, args.reuse))
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench runner", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of the 50-step job")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--workflows", type=int, default=60, help="workflows for the throughput figure"
    )
    parser.add_argument("--pool", type=int, default=4, help="warm pool size (and concurrent jobs)")
    parser.add_argument(
        "--reuse",
        choices=["destroy", "restore"],
        default="restore",
        help="what the warm pool does with a used machine (vmrunner run restores)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if "VMRUNNER_HOME" not in os.environ:
        os.environ["VMRUNNER_HOME"] = tempfile.mkdtemp(prefix="vmrunner-bench-")
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            goal = GOALS.get(name)
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            note = ""
            if goal is not None:
                ok = value <= goal if name.endswith("_ms") else value >= goal
                note = (
                    f"  (goal {'<=' if name.endswith('_ms') else '>='} {goal:g}: "
                    f"{'met' if ok else 'NOT met'})"
                )
            print(f"{name:28} {shown}{note}")
    return 0
