"""The machine lifecycle timeline, from real sandbox runs: one machine per job, shown and
counted."""

from __future__ import annotations

import itertools

import jsonschema

from tests.runner.engine import Ran, run
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.providers import get_provider
from vmrunner.machines.testing import CountingProvider
from vmrunner.reports.events import (
    Event,
    MachineReleased,
    Recorder,
    SessionStateChanged,
    SnapshotRestored,
)
from vmrunner.reports.results import RUN_RESULT_SCHEMA, ResultCollector, RunResult
from vmrunner.reports.storage import RunHistory, StoreSink
from vmrunner.reports.timeline import TimelineEntry, prove, state_during, visible
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import run_workflow
from vmrunner.sessions import SessionManager, Transition
from vmrunner.store import Store
from vmrunner.workflow.loader import load_workflow_text

ONE_JOB = """
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo compiled > out.txt
      - run: cat out.txt
"""

PARALLEL = """
on: push
jobs:
""" + "".join(
    f"""
  {name}:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 0.4
"""
    for name in ("one", "two", "three")
)

ROLLBACK = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo good > good.txt
      - run: exit 7
"""


def collected(ran: Ran) -> RunResult:
    collector = ResultCollector()
    for event in ran.events:
        collector.emit(event)
    return collector.result()


def kinds(entries: tuple[TimelineEntry, ...] | list[TimelineEntry]) -> list[str]:
    return [e.kind for e in entries]


async def test_one_job_one_machine_every_command_in_it_then_one_release() -> None:
    ran = await run(ONE_JOB, setup_commands=("echo ready",), cleanup_commands=("echo tidy",))
    result = collected(ran)
    timeline = result.job("build").timeline  # type: ignore[union-attr]
    assert timeline == result.timeline
    allocated = [e for e in timeline if e.kind == "machine_allocated"]
    released = [e for e in timeline if e.kind == "machine_released"]
    assert len(allocated) == 1
    assert len(released) == 1
    machine = allocated[0].machine_id
    assert machine == result.job("build").machine_id  # type: ignore[union-attr]
    assert released[0].machine_id == machine
    assert released[0].outcome == "success"
    commands = [e for e in timeline if e.kind == "command_started"]
    assert [c.step_kind for c in commands] == ["setup", "step", "step", "cleanup"]
    assert {c.machine_id for c in commands} == {machine}
    # allocation requested < allocated < every command < release requested < released
    order = kinds(timeline)
    first, last = (
        order.index("command_started"),
        len(order) - 1 - order[::-1].index("command_finished"),
    )
    assert order.index("allocation_requested") < order.index("machine_allocated") < first
    assert last < order.index("release_requested") < order.index("machine_released")
    times = [e.time for e in timeline]
    assert times == sorted(times)
    finished = [e for e in timeline if e.kind == "command_finished"]
    assert [f.exit_code for f in finished] == [0, 0, 0, 0]
    states = [e.state for e in timeline if e.kind == "session_state"]
    assert states[0] == "initializing"
    assert states[-3:] == ["completed", "terminating", "released"]
    assert "executing" in states
    proof = prove(timeline)
    assert (
        proof.machines_allocated,
        proof.machines_released,
        proof.jobs,
        proof.total_machines,
    ) == (1, 1, 1, 1)
    assert proof.commands == 4
    assert proof.commands_in_own_machine
    assert proof.released_once
    assert proof.kept
    assert [m.commands for m in proof.machines] == [4]


async def test_machine_released_is_told_only_once_the_provider_released_the_machine() -> None:
    provider = CountingProvider(get_provider("sandbox"))
    released_before: list[int] = []

    class Watch(Recorder):
        def emit(self, event: Event) -> None:
            super().emit(event)
            if isinstance(event, MachineReleased):
                released_before.append(provider.releases[event.machine_id])

    watch = Watch()
    try:
        async with SessionManager(provider, limit=2) as sessions:
            await run_workflow(load_workflow_text(ONE_JOB, "w.yml"), RunOptions(), sessions, watch)
    finally:
        await provider.aclose()
    assert released_before == [1]
    states = [(e.state, e.time) for e in watch.events if isinstance(e, SessionStateChanged)]
    released = next(e for e in watch.events if isinstance(e, MachineReleased))
    assert states[-1] == ("released", released.time)


async def test_three_parallel_jobs_three_machines_overlapping_each_released_once() -> None:
    ran = await run(PARALLEL, limit=3)
    result = collected(ran)
    proof = result.lifecycle()
    assert proof.jobs == 3
    assert proof.machines_allocated == 3
    assert proof.total_machines == 3
    assert proof.machines_released == 3
    assert proof.released_once
    assert proof.kept
    assert len({m.machine_id for m in proof.machines}) == 3
    assert {m.job_key for m in proof.machines} == {"one", "two", "three"}
    for a, b in itertools.combinations(proof.machines, 2):
        assert a.overlaps(b), (a, b)
    assert proof.peak_machines == 3
    for job in result.jobs:
        own = {e.machine_id for e in job.timeline if e.kind == "machine_allocated"}
        assert {e.machine_id for e in job.timeline if e.kind.startswith("command")} == own


async def test_a_rollback_shows_the_restore_between_the_failure_and_the_release() -> None:
    ran = await run(ROLLBACK, rollback_on_failure=True, cleanup_commands=("ls",))
    assert ran.of(SnapshotRestored)
    timeline = collected(ran).timeline
    order = kinds(timeline)
    failed = next(
        i for i, e in enumerate(timeline) if e.kind == "command_finished" and e.outcome == "failure"
    )
    assert timeline[failed].exit_code == 7
    restored = order.index("snapshot_restored")
    assert failed < restored < order.index("release_requested") < order.index("machine_released")
    assert timeline[restored].state == "rolled_back"
    assert "snapshot_taken" in order[:failed]
    assert prove(timeline).kept


async def test_a_failed_job_ends_its_session_failed_not_completed() -> None:
    timeline = collected(await run(ROLLBACK)).timeline
    states = [e.state for e in timeline if e.kind == "session_state"]
    assert states[-3:] == ["failed", "terminating", "released"]
    assert "completed" not in states
    assert prove(timeline).kept


async def test_the_timeline_is_kept_in_the_store_and_read_back_as_recorded() -> None:
    ran = await run(ROLLBACK, rollback_on_failure=True, setup_commands=("true",))
    live = collected(ran)
    with Store.open() as store:
        with StoreSink(store) as sink:
            for event in ran.events:
                sink.emit(event)
        assert not sink.errors
        kept = RunHistory(store).get_run(live.run_id)
    assert kept.timeline == live.timeline
    assert kept.job("a").timeline == live.job("a").timeline  # type: ignore[union-attr]
    data = kept.to_json()
    jsonschema.validate(data, RUN_RESULT_SCHEMA)
    assert data["lifecycle"]["kept"] is True
    assert data["lifecycle"]["total_machines"] == 1
    assert [e["kind"] for e in data["jobs"][0]["timeline"]] == kinds(live.timeline)


async def test_a_job_that_gets_no_machine_has_no_allocation_in_its_timeline() -> None:
    workflow = ONE_JOB.replace("runs-on: ubuntu-latest", "runs-on: macos-latest")
    result = collected(await run(workflow))
    assert result.timeline == ()
    proof = result.lifecycle()
    assert (proof.jobs, proof.total_machines, proof.commands) == (0, 0, 0)


def test_visible_rows_drop_round_trips_but_keep_a_rollback() -> None:
    def state(time: float, value: str) -> TimelineEntry:
        return TimelineEntry(
            time, "a", "session_state", session_id="s", machine_id="m", state=value
        )

    entries = [
        state(0, "initializing"),
        state(1, "active"),
        TimelineEntry(
            1.1, "a", "machine_allocated", session_id="s", machine_id="m", state="active"
        ),
        TimelineEntry(
            2, "a", "command_started", session_id="s", machine_id="m", state="active", step_index=0
        ),
        state(2.1, "executing"),
        state(2.9, "active"),
        TimelineEntry(
            3, "a", "command_finished", session_id="s", machine_id="m", state="active", step_index=0
        ),
        state(4, "paused"),
        state(5, "rolled_back"),
        state(6, "terminating"),
    ]
    shown = visible(entries)
    assert [e.state if e.kind == "session_state" else e.kind for e in shown] == [
        "initializing",
        "machine_allocated",
        "command_started",
        "command_finished",
        "rolled_back",
        "terminating",
    ]
    assert state_during(entries, 3) == "executing"
    assert state_during(entries, 6) == "active"


def test_the_counts_catch_a_command_in_another_machine_and_a_double_release() -> None:
    def entry(time: float, job: str, kind: str, machine: str, outcome: str = "") -> TimelineEntry:
        return TimelineEntry(time, job, kind, machine_id=machine, outcome=outcome)  # type: ignore[arg-type]

    entries = [
        entry(0, "a", "machine_allocated", "m1"),
        entry(1, "b", "machine_allocated", "m2"),
        entry(2, "a", "command_started", "m1"),
        entry(3, "a", "command_started", "m2"),
        entry(4, "b", "command_started", ""),
        entry(5, "a", "machine_released", "m1", "success"),
        entry(6, "a", "machine_released", "m1", "success"),
        entry(7, "b", "machine_released", "m2", "failure"),
    ]
    proof = prove(entries)
    assert proof.stray_commands == 2
    assert not proof.commands_in_own_machine
    assert [m.releases for m in proof.machines] == [2, 0]
    assert proof.machines_released == 1
    assert not proof.released_once
    assert not proof.kept
    assert proof.peak_machines == 2
    assert not proof.machines[0].overlaps(
        prove(
            [
                entry(10, "c", "machine_allocated", "m3"),
                entry(11, "c", "machine_released", "m3", "success"),
            ]
        ).machines[0]
    )


async def test_the_session_manager_tells_observers_every_transition_until_stopped() -> None:
    seen: list[tuple[str, str]] = []

    def observer(session: object, transition: Transition) -> None:
        seen.append((getattr(session, "id", ""), transition.state.value))

    def broken(session: object, transition: Transition) -> None:
        raise RuntimeError("an observer's bug must not break the session")

    provider = get_provider("sandbox")
    try:
        async with SessionManager(provider, limit=1) as sessions:
            stop = sessions.observe(observer)
            sessions.observe(broken)
            async with sessions.open() as session:
                await session.exec(["true"])
            first = session.id
            stop()
            async with sessions.open():
                pass
    finally:
        await provider.aclose()
    assert seen == [
        (first, state)
        for state in (
            "initializing",
            "active",
            "executing",
            "active",
            "completed",
            "terminating",
            "released",
        )
    ]


async def test_an_observer_of_a_label_hears_only_the_sessions_carrying_it() -> None:
    seen: list[tuple[str, str]] = []
    provider = get_provider("sandbox")
    try:
        async with SessionManager(provider, limit=2) as sessions:
            stop = sessions.observe(
                lambda session, t: seen.append((session.spec.labels["run"], t.state.value)),
                label=("run", "r1"),
            )
            async with (
                sessions.open(MachineSpec(labels={"run": "r1", "job": "a"})),
                sessions.open(MachineSpec(labels={"run": "r2"})),
            ):
                pass
            stop()
            async with sessions.open(MachineSpec(labels={"run": "r1"})):
                pass
    finally:
        await provider.aclose()
    assert seen == [
        ("r1", state)
        for state in ("initializing", "active", "completed", "terminating", "released")
    ]


async def test_the_runs_own_annotations_belong_to_no_job_live_and_kept() -> None:
    """A warning about the run itself (an undeclared dispatch input) makes no pseudo-job."""
    ran = await run(
        "on:\n  workflow_dispatch:\n    inputs:\n      known: {type: string}\njobs:\n  a:\n    "
        "runs-on: ubuntu-latest\n    steps:\n      - run: 'true'\n",
        event_name="workflow_dispatch",
        inputs={"unknown": "1"},
    )
    live = collected(ran)
    with Store.open() as store:
        with StoreSink(store) as sink:
            for event in ran.events:
                sink.emit(event)
        kept = RunHistory(store).get_run(live.run_id)
    for result in (live, kept):
        assert [job.job_key for job in result.jobs] == ["a"]
        assert [(a.level, "unknown" in a.message) for a in result.run_annotations] == [
            ("warning", True)
        ]
        data = result.to_json()
        jsonschema.validate(data, RUN_RESULT_SCHEMA)
        assert [a["level"] for a in data["annotations"]] == ["warning"]
