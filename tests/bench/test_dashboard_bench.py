"""``python -m bench dashboard`` runs and reports its figures (never timed here)."""

from __future__ import annotations

import json

import pytest

from bench import dashboard
from vmrunner.reports.events import JobQueued


def test_the_bench_renders_a_run_page_of_a_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert dashboard.main(["--jobs", "6", "--levels", "3", "--steps", "2", "--lines", "2",
                           "--repeat", "2", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["jobs"] == 6
    assert figures["run_page_bytes"] > 0
    assert {"run_page_median_ms", "runs_list_ms", "within_goal"} <= set(figures)


def test_the_graph_run_needs_the_level_before() -> None:
    events = dashboard.graph_run("1", 6, 3, 1, 0)
    queued = [e for e in events if isinstance(e, JobQueued)]
    assert [e.needs for e in queued][:4] == [(), (), ("job0", "job1"), ("job0", "job1")]
