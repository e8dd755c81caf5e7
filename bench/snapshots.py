"""Snapshot + restore cost of a machine's directories against the size of a change.

``python -m bench snapshots [--files 1024] [--file-mib 1] [--tracking inotify|rescan]``

Builds a workspace of ``--files`` files of ``--file-mib`` MiB of random data (1 GiB by default)
in a temporary directory, takes a baseline snapshot (not counted), then for changes of 1, 10 and
100 MiB (rewriting that many MiB of existing files with new random data) measures one snapshot
plus one restore back to the baseline, several times, and prints p50/p99. The goal for 1 MiB is
at most 100 ms. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from vmrunner.machines.snapshots import DirectorySnapshots

MIB = 1 << 20
CHANGES_MIB = (1, 10, 100)
GOAL_MS = 100.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _build(workspace: Path, files: int, file_mib: int) -> list[Path]:
    paths = []
    for index in range(files):
        directory = workspace / f"dir{index // 64:03d}"
        directory.mkdir(exist_ok=True)
        path = directory / f"file{index:05d}.bin"
        path.write_bytes(os.urandom(file_mib * MIB))
        paths.append(path)
    return paths


def _change(paths: list[Path], change_mib: int, file_mib: int, round_: int) -> None:
    """Rewrite ``change_mib`` MiB: whole files, spread over the workspace."""
    count = max(1, change_mib // file_mib)
    step = max(1, len(paths) // count)
    for number in range(count):
        path = paths[(round_ + number * step) % len(paths)]
        with path.open("r+b") as file:
            file.write(os.urandom(file_mib * MIB))


def run(files: int, file_mib: int, repeat: int, tracking: str, where: str | None) -> bool:
    scratch = Path(tempfile.mkdtemp(prefix="vmrunner-bench-snapshots-", dir=where))
    try:
        workspace, temp = scratch / "workspace", scratch / "temp"
        workspace.mkdir()
        temp.mkdir()
        engine = DirectorySnapshots(
            {"workspace": workspace, "temp": temp},
            scratch / "snapshots",
            tracking="inotify" if tracking == "inotify" else "rescan",
        )
        engine.start_sync()
        try:
            return _measure(engine, workspace, files, file_mib, repeat, tracking)
        finally:
            engine.delete_sync()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(
    engine: DirectorySnapshots,
    workspace: Path,
    files: int,
    file_mib: int,
    repeat: int,
    tracking: str,
) -> bool:
    total_mib = files * file_mib
    print(
        f"workspace: {files} files x {file_mib} MiB of os.urandom data = {total_mib} MiB, "
        f"in {workspace.parent} (tracking: {tracking}, {os.cpu_count()} CPUs)"
    )
    started = time.perf_counter()
    paths = _build(workspace, files, file_mib)
    print(f"built in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    baseline = engine.snapshot_sync("baseline")
    print(
        f"baseline snapshot (not counted): {time.perf_counter() - started:.2f} s, "
        f"{baseline.bytes_stored // MIB} MiB copied, {baseline.files_copied} files"
    )
    print()
    print(
        f"{'change':>8} {'runs':>5} {'snapshot p50':>13} {'restore p50':>12} "
        f"{'total p50':>10} {'total p99':>10} {'copied/snap':>12} {'written/restore':>16}"
    )
    ok = True
    for change_mib in CHANGES_MIB:
        if change_mib > total_mib:
            continue
        runs = max(3, repeat if change_mib == 1 else repeat // (2 if change_mib == 10 else 4))
        snaps, restores, totals = [], [], []
        copied = written = 0
        for round_ in range(runs):
            _change(paths, change_mib, file_mib, round_)
            started = time.perf_counter()
            info = engine.snapshot_sync(f"change {change_mib} MiB")
            middle = time.perf_counter()
            restored = engine.restore_sync(baseline.id)
            ended = time.perf_counter()
            snaps.append((middle - started) * 1000)
            restores.append((ended - middle) * 1000)
            totals.append((ended - started) * 1000)
            copied, written = info.bytes_stored, restored.bytes_written
        p99 = _percentile(totals, 0.99)
        print(
            f"{change_mib:>5} MiB {runs:>5} {statistics.median(snaps):>10.1f} ms "
            f"{statistics.median(restores):>9.1f} ms {statistics.median(totals):>7.1f} ms "
            f"{p99:>7.1f} ms {copied / MIB:>8.1f} MiB {written / MIB:>12.1f} MiB"
        )
        if change_mib == 1 and p99 > GOAL_MS:
            ok = False
    print()
    print(
        f"goal: snapshot + restore after a 1 MiB change <= {GOAL_MS:.0f} ms: "
        f"{'met' if ok else 'NOT met'} (p99; page cache warm, no fsync)"
    )
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench snapshots", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--files", type=int, default=1024, help="files in the workspace")
    parser.add_argument("--file-mib", type=int, default=1, help="size of each file, MiB")
    parser.add_argument("--repeat", type=int, default=20, help="runs for the 1 MiB change")
    parser.add_argument("--tracking", choices=["inotify", "rescan"], default="inotify")
    parser.add_argument("--dir", default=None, help="where to build the workspace (default: /tmp)")
    args = parser.parse_args(argv)
    ok = run(args.files, args.file_mib, args.repeat, args.tracking, args.dir)
    return 0 if ok else 1
