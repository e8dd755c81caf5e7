"""Lost hosts, fencing and cancellation, with real agents killed and frozen by signals."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.fleet.harness import AgentProcess, agents, finished, options, until
from vmrunner.fleet.store import EventRecord, FleetStore
from vmrunner.store import Store

#: The first attempt hangs; a retry (attempt 2 and later) ends at once with its attempt number.
HANGS_FIRST = """
on: push
jobs:
  work:
    runs-on: linux
    outputs:
      attempt: ${{ steps.s.outputs.attempt }}
    steps:
      - id: s
        run: |
          if [ "$VMRUNNER_ATTEMPT" = 1 ]; then echo hanging; sleep 120; fi
          echo "attempt=$VMRUNNER_ATTEMPT" >> "$GITHUB_OUTPUT"
  after:
    runs-on: linux
    needs: work
    steps:
      - run: echo after
"""


async def _running_on(store: FleetStore, run_id: str, job_id: str = "work") -> str:
    async def host() -> str | None:
        job = (await store.run(run_id)).job(job_id)
        return job.host if job.status == "running" else None

    found: str = await until(host, within=60, what=f"{job_id} running")
    return found


def _live_machines(home: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("VMRUNNER_HOME", str(home))
    with Store.open() as store:
        return len(store.machines())


async def test_a_killed_agent_s_job_runs_again_elsewhere_once(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux")) as started,
        FleetStore(database) as store,
    ):
        run_id = await store.submit(HANGS_FIRST, "hang.yml", options(started))
        lost = started[await _running_on(store, run_id)]
        await until(
            lambda: _has_machine(lost.home, monkeypatch), within=30, what="the machine recorded"
        )
        lost.kill()
        run = await finished(store, run_id)
        assert run.conclusion == "success"
        assert run.job("work").outputs == {"attempt": "2"}
        attempts = [
            (job, attempt, host, result)
            for job, attempt, host, result in await store.attempts(run_id)
            if job == "work"
        ]
        survivor = next(name for name in started if name != lost.name)
        assert attempts == [("work", 1, lost.name, "lost"), ("work", 2, survivor, "success")]
        assert _live_machines(lost.home, monkeypatch) == 1  # left behind by the killed process
        restarted = AgentProcess(database, lost.name, "linux", lost.home)
        restarted.start()
        try:
            await until(
                lambda: _no_machine(lost.home, monkeypatch),
                within=30,
                what="the orphan machine reclaimed",
            )
        finally:
            restarted.stop()


async def _has_machine(home: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    return _live_machines(home, monkeypatch) > 0


async def _no_machine(home: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    return _live_machines(home, monkeypatch) == 0


async def test_a_frozen_agent_is_fenced_off_and_its_late_writes_rejected(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux")) as started,
        FleetStore(database) as store,
    ):
        run_id = await store.submit(HANGS_FIRST, "hang.yml", options(started))
        frozen = started[await _running_on(store, run_id)]
        await until(
            lambda: _has_machine(frozen.home, monkeypatch), within=30, what="the machine recorded"
        )
        frozen.signal(signal.SIGSTOP)
        try:
            run = await finished(store, run_id)
        finally:
            frozen.signal(signal.SIGCONT)
        assert run.conclusion == "success"
        assert run.job("work").outputs == {"attempt": "2"}
        # The thawed agent finds its attempt superseded: it kills the machine, reports nothing.
        await until(
            lambda: _no_machine(frozen.home, monkeypatch),
            within=30,
            what="the fenced machine released",
        )
        fenced = re.compile(
            r"attempt 1 (fenced off|aborted)|attempt 1 ended \w+ but was no longer current"
        )

        async def said_fenced() -> bool:  # the agent logs it after releasing the machine
            return fenced.search(frozen.output()) is not None

        await until(said_fenced, within=30, what="the thawed agent to say it was fenced off")
        results = [
            (attempt, result)
            for job, attempt, _, result in await store.attempts(run_id)
            if job == "work"
        ]
        assert results == [(1, "lost"), (2, "success")]
        # Writes of the old attempt are refused by the fencing token.
        assert not await store.finish(run_id, "work", 1, "success", {"attempt": "1"})
        assert not await store.append_logs(run_id, "work", 1, ["late"])
        assert not await store.append_events(
            run_id,
            "work",
            1,
            [EventRecord(1000, "Annotation", 0.0, {"level": "error", "message": "late"})],
        )
        assert "late" not in [
            event.data["message"]
            for event in await store.events(run_id, "work", kinds=("Annotation",))
        ]
        assert {
            event.attempt for event in await store.events(run_id, "work", kinds=("StepFinished",))
        } == {2}
        assert not await store.heartbeat(run_id, "work", 1)
        assert (await store.run(run_id)).job("work").outputs == {"attempt": "2"}


async def test_cancel_tears_the_machine_down_and_retries_nothing(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        run_id = await store.submit(HANGS_FIRST, "hang.yml", options(started))
        host = started[await _running_on(store, run_id)]
        await until(
            lambda: _has_machine(host.home, monkeypatch), within=30, what="the machine recorded"
        )
        assert await store.cancel(run_id)
        await until(
            lambda: _no_machine(host.home, monkeypatch),
            within=10,
            what="the machine released after cancel",
        )
        run = await store.run(run_id)
        assert (run.status, run.conclusion) == ("completed", "cancelled")
        assert {job.job_id: job.status for job in run.jobs} == {
            "work": "cancelled",
            "after": "cancelled",
        }
        assert not await store.cancel(run_id)
        assert [
            attempt for job, attempt, _, _ in await store.attempts(run_id) if job == "work"
        ] == [1]
