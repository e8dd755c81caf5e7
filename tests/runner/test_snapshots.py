"""Snapshots after successful steps, and rollback of a failed job to the last good one."""

from __future__ import annotations

import pytest

from tests.runner.engine import run
from vmrunner.errors import ConfigError
from vmrunner.machines.providers import get_provider
from vmrunner.reports.events import SnapshotRestored, SnapshotTaken
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import run_workflow
from vmrunner.sessions import SessionManager
from vmrunner.workflow.loader import load_workflow_text

WORKFLOW = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo good > good.txt
      - run: echo bad > bad.txt; echo more >> good.txt; exit 1
"""


async def test_rollback_restores_the_workspace_to_the_last_good_snapshot() -> None:
    ran = await run(
        WORKFLOW, snapshot=True, rollback_on_failure=True, cleanup_commands=("ls; cat good.txt",)
    )
    taken = ran.of(SnapshotTaken)
    assert [t.step_index for t in taken] == [-1, 0]
    first, second, _cleanup = ran.steps("a")
    assert first.snapshot_id == taken[-1].snapshot_id
    assert second.snapshot_id == ""
    restored = ran.of(SnapshotRestored)
    assert [r.snapshot_id for r in restored] == [taken[-1].snapshot_id]
    finished = ran.finished("a")
    assert finished.result == "failure"
    assert finished.rolled_back
    assert ran.logs("a")[-2:] == ["good.txt", "good"]


async def test_without_rollback_the_failed_state_stays() -> None:
    ran = await run(WORKFLOW, snapshot=True, cleanup_commands=("ls",))
    assert not ran.of(SnapshotRestored)
    assert not ran.finished("a").rolled_back
    assert ran.logs("a")[-2:] == ["bad.txt", "good.txt"]


async def test_snapshots_need_the_capability() -> None:
    workflow = load_workflow_text(WORKFLOW, "w.yml")
    provider = get_provider("host")
    async with SessionManager(provider, limit=1) as sessions:
        with pytest.raises(ConfigError, match="snapshots"):
            await run_workflow(workflow, RunOptions(snapshot=True), sessions)
