"""The session manager on a real provider wrapped in ``CountingProvider``.

Every test checks the system itself (processes, machine directories, mounts) for leftovers,
not only the manager's bookkeeping. The helpers here are shared by the other session tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest

from vmrunner.errors import (
    AllocationError,
    CapacityError,
    InvalidTransition,
    SessionNotFound,
    SnapshotError,
)
from vmrunner.machines.base import MachineSpec, Provider
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.providers import get_provider
from vmrunner.machines.testing import CountingProvider
from vmrunner.sessions import TRANSITIONS, Owner, SessionManager, SessionState, machine_row
from vmrunner.store import Store

#: The real provider under test: bubblewrap sandboxes, wrapped in ``CountingProvider``.
PROVIDER = "sandbox"


def home() -> Path:
    return Path(os.environ["VMRUNNER_HOME"])


def real_provider() -> Provider:
    return get_provider(PROVIDER)


def processes_with(words: Iterable[str]) -> list[str]:
    """Processes (other than this one) whose command line contains one of ``words``."""
    words = list(words)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(word in cmdline for word in words):
            found.append(f"process {entry.name}: {cmdline}")
    return found


def left_on_system(machine_ids: Iterable[str] = (), needles: Iterable[str] = ()) -> list[str]:
    """Processes, machine directories and mounts of this test's VMRUNNER_HOME still present."""
    found = processes_with([str(home()), *machine_ids, *needles])
    machines = home() / "machines"
    if machines.exists():
        found += [f"directory {path}" for path in machines.iterdir()]
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        found += [f"mount {line.strip()}" for line in mountinfo if str(home()) in line]
    return found


async def eventually(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Let the event loop run until ``predicate()`` holds (bounded; not a timing assertion)."""
    async with asyncio.timeout(within):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.001 if _ else 0)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def counting() -> AsyncIterator[CountingProvider]:
    provider = CountingProvider(real_provider())
    yield provider
    await provider.aclose()


@pytest.fixture
async def manager(counting: CountingProvider) -> AsyncIterator[SessionManager]:
    async with SessionManager(counting, limit=4, release_timeout=30) as opened:
        yield opened
    assert left_on_system() == []


def job_commands(steps: int) -> list[str]:
    """A setup command, ``steps`` steps and a cleanup command, each logging where it ran."""
    setup = (
        "cat /proc/sys/kernel/random/uuid > .marker && echo setup $(cat .marker) $(hostname) >> log"
    )
    body = [f"echo step-{i} $(cat .marker) $(hostname) >> log" for i in range(1, steps + 1)]
    cleanup = "echo cleanup $(cat .marker) $(hostname) >> log"
    return [setup, *body, cleanup]


@pytest.mark.parametrize(("steps", "commands"), [(5, 7), (10, 12)])
async def test_a_job_runs_every_command_in_one_machine(
    manager: SessionManager, counting: CountingProvider, steps: int, commands: int
) -> None:
    script = job_commands(steps)
    assert len(script) == commands
    async with manager.open() as session:
        workspace = session.machine.paths.workspace
        for command in script:
            result = await session.exec(["sh", "-c", command], cwd=workspace)
            assert result.ok, result.stderr
        log = (await session.machine.read_file(f"{workspace}/log")).decode().splitlines()
        marker = (await session.machine.read_file(f"{workspace}/.marker")).decode().strip()
        machine_id = session.machine.id
    assert counting.allocation_count == 1
    assert counting.releases == {machine_id: 1}
    # From the counting log: every command went to that one machine.
    assert {record.machine_id for record in counting.execs} == {machine_id}
    assert [c[2] for c in counting.commands_in(machine_id)] == script
    # From inside: each command found the marker the setup command left in that machine.
    assert len(log) == commands
    assert [line.split()[0] for line in log] == [
        "setup",
        *[f"step-{i}" for i in range(1, steps + 1)],
        "cleanup",
    ]
    assert {line.split()[1] for line in log} == {marker}
    assert len({line.split()[2] for line in log}) == 1


async def test_parallel_jobs_get_distinct_machines(
    manager: SessionManager, counting: CountingProvider
) -> None:
    used: dict[str, str] = {}

    async def job(name: str) -> None:
        async with manager.open() as session:
            workspace = session.machine.paths.workspace
            used[name] = session.machine.id
            await session.exec(["sh", "-c", f"echo {name} > owner"], cwd=workspace)
            for step in range(3):
                await asyncio.sleep(0)
                check = await session.exec(
                    ["sh", "-c", f'test "$(cat owner)" = {name} # step {step}'], cwd=workspace
                )
                assert check.ok, f"{name} found another job's workspace"

    async with asyncio.TaskGroup() as group:
        for name in ("job-a", "job-b", "job-c"):
            group.create_task(job(name))
    assert counting.allocation_count == 3
    assert len(set(used.values())) == 3
    for name, machine_id in used.items():
        commands = counting.commands_in(machine_id)
        assert len(commands) == 4
        assert all(name in command[2] for command in commands)
    assert counting.max_alive == 3
    assert sorted(counting.releases.values()) == [1, 1, 1]


async def test_a_job_after_another_gets_a_new_machine_after_the_first_is_released(
    manager: SessionManager, counting: CountingProvider
) -> None:
    ids = []
    for _ in range(2):
        async with manager.open() as session:
            await session.exec(["true"])
            ids.append(session.machine.id)
    first, second = ids
    assert first != second
    assert counting.allocation_count == 2
    assert counting.time_of("released", first) < counting.time_of("allocated", second)
    kinds = [(e.kind, e.machine_id) for e in counting.events]
    assert (
        kinds.index(("released", first))
        < [i for i, k in enumerate(kinds) if k[0] == "allocating"][1]
    )


async def test_fail_fast_request_beyond_the_limit_is_refused_without_allocating(
    counting: CountingProvider,
) -> None:
    async with SessionManager(counting, limit=2) as manager, manager.open(), manager.open():
        with pytest.raises(CapacityError, match="all 2 session slots are in use"):
            async with manager.open(wait=False):
                pytest.fail("a third session was opened")
        assert counting.allocation_count == 2
        assert manager.stats().rejected == 1
    assert left_on_system() == []


async def test_a_waiting_request_proceeds_as_soon_as_a_session_is_released(
    counting: CountingProvider,
) -> None:
    async with SessionManager(counting, limit=2) as manager:
        first_block, second_block = contextlib.AsyncExitStack(), contextlib.AsyncExitStack()
        first = await first_block.enter_async_context(manager.open())
        await second_block.enter_async_context(manager.open())

        async def third() -> str:
            async with manager.open() as session:
                return session.machine.id

        waiting = asyncio.create_task(third())
        await eventually(lambda: manager.stats().waiting == 1)
        assert counting.allocation_count == 2
        await first_block.aclose()  # the first session's block ends: its machine is released
        third_id = await waiting
        await second_block.aclose()
    assert counting.allocation_count == 3
    assert counting.time_of("released", first.machine.id) < counting.time_of("allocated", third_id)
    assert counting.max_alive == 2
    assert left_on_system() == []


async def test_waiters_are_served_in_arrival_order(counting: CountingProvider) -> None:
    async with SessionManager(counting, limit=1) as manager:
        holder = contextlib.AsyncExitStack()
        await holder.enter_async_context(manager.open())
        served: list[int] = []

        async def waiter(index: int) -> None:
            async with manager.open():
                served.append(index)

        async with asyncio.TaskGroup() as group:
            for index in range(5):
                group.create_task(waiter(index))
                await eventually(lambda n=index + 1: manager.stats().waiting == n)
            await holder.aclose()
    assert served == [0, 1, 2, 3, 4]
    assert counting.max_alive == 1


async def test_waiting_past_the_timeout_is_a_capacity_error_without_allocating(
    counting: CountingProvider,
) -> None:
    async with SessionManager(counting, limit=1) as manager, manager.open():
        with pytest.raises(CapacityError, match=r"within 0\.05s"):
            async with manager.open(timeout=0.05):
                pytest.fail("a second session was opened")
        assert counting.allocation_count == 1
        stats = manager.stats()
        assert (stats.waiting, stats.timed_out, stats.active) == (0, 1, 1)


async def test_a_thousand_concurrent_requests_never_exceed_the_limit() -> None:
    """1,000 callers at once, limit 8: never a ninth live machine.

    The limit logic does not depend on the provider; to keep this fast, sessions get real
    sandboxes from a warm pool in restore mode (a restore per session instead of a start).
    ``handed`` counts machines handed to sessions, ``machines`` every real machine.
    """
    machines = CountingProvider(real_provider())
    peak = 0
    async with WarmPool(machines, {"default": 8}, reuse="restore") as pool:
        await pool.wait_filled()
        handed = CountingProvider(pool)
        async with SessionManager(handed, limit=8, wait_timeout=None) as manager:

            async def job() -> None:
                nonlocal peak
                async with manager.open() as session:
                    peak = max(peak, manager.active_count)
                    await session.exec(["true"])

            async with asyncio.TaskGroup() as group:
                for _ in range(1000):
                    group.create_task(job())
        assert pool.statistics().hits + pool.statistics().misses == 1000
    assert handed.allocation_count == handed.release_count == 1000
    assert handed.max_alive == 8  # reached, never exceeded
    assert peak == 8
    assert machines.max_alive <= 8
    assert machines.release_count == machines.allocation_count
    assert left_on_system() == []


async def test_states_and_transitions_are_recorded_in_memory_and_in_the_store(
    manager: SessionManager,
) -> None:
    async with manager.open(MachineSpec(labels={"job": "build"})) as session:
        await session.exec(["true"])
        assert manager.get_session(session.id) is session
        assert session.state is SessionState.ACTIVE
    memory = [(t.state.value, t.note) for t in session.transitions]
    assert [state for state, _ in memory] == [
        "initializing",
        "active",
        "executing",
        "active",
        "completed",
        "terminating",
        "released",
    ]
    stored = manager.store.transitions(session.id)
    assert [(t.state, t.note) for t in stored] == memory
    assert [t.at for t in stored] == [t.at for t in session.transitions]
    row = manager.store.session(session.id)
    assert row is not None
    assert (row.state, row.labels, row.provider) == ("released", {"job": "build"}, PROVIDER)
    machine = manager.store.machine(session.machine.id)
    assert machine is not None
    assert machine.released_at is not None
    assert machine.session_id == session.id
    with pytest.raises(SessionNotFound):
        manager.get_session(session.id)


async def test_invalid_transitions_raise(manager: SessionManager) -> None:
    async with manager.open() as session:
        with pytest.raises(InvalidTransition, match="from active to released"):
            session.set_state(SessionState.RELEASED)
        session.set_state(SessionState.COMPLETED)
        with pytest.raises(InvalidTransition, match="from completed to executing"):
            await session.exec(["true"])
        assert session.state is SessionState.COMPLETED


def test_the_lifecycle_table_is_consistent() -> None:
    assert set(TRANSITIONS) == set(SessionState)
    assert TRANSITIONS[SessionState.RELEASED] == frozenset()
    for state in set(SessionState) - {SessionState.RELEASED, SessionState.TERMINATING}:
        assert SessionState.TERMINATING in TRANSITIONS[state], state


async def test_a_block_ending_after_its_session_was_released_does_not_release_it_again(
    counting: CountingProvider,
) -> None:
    """Release twice (the reaper, then the end of the block) releases the machine once."""
    clock = FakeClock()
    async with SessionManager(
        counting, limit=1, idle_timeout=10, reap_interval=3600, clock=clock
    ) as manager:
        async with manager.open() as session:
            assert manager.active_count == 1
            clock.now += 11
            assert await manager.reap() == [session.id]
            with pytest.raises(SessionNotFound):
                manager.get_session(session.id)
        assert counting.releases == {session.machine.id: 1}
        assert manager.active_count == 0
        stats = manager.stats()
        assert (stats.created, stats.released) == (1, 1)
        states = [t.state for t in session.transitions]
        assert states.count(SessionState.RELEASED) == 1
        assert states[-2:] == [SessionState.TERMINATING, SessionState.RELEASED]


async def test_snapshots_pause_the_session_and_are_listed(
    manager: SessionManager, counting: CountingProvider
) -> None:
    async with manager.open() as session:
        if not counting.capabilities.snapshots:
            with pytest.raises(SnapshotError):
                await session.snapshot("after step 1")
            assert session.state is SessionState.ACTIVE
            assert session.snapshots == ()
            return
        workspace = session.machine.paths.workspace
        await session.exec(["sh", "-c", "echo one > file"], cwd=workspace)
        first = await session.snapshot("after step 1")
        await session.exec(["sh", "-c", "echo two > file"], cwd=workspace)
        assert session.snapshots[-1] == first
        await session.restore(first.snapshot_id)
        assert session.state is SessionState.ROLLED_BACK
        assert (await session.machine.read_file(f"{workspace}/file")) == b"one\n"
        states = [t.state.value for t in session.transitions]
        assert states == [
            "initializing",
            "active",
            "executing",
            "active",
            "paused",
            "active",
            "executing",
            "active",
            "paused",
            "rolled_back",
        ]
        assert [s.snapshot_id for s in manager.store.snapshots(session.id)] == [first.snapshot_id]
        assert manager.store.snapshots(session.id) == [first]  # one record, kept as it was made


async def test_the_reaper_releases_idle_sessions_and_keeps_active_ones(
    counting: CountingProvider,
) -> None:
    clock = FakeClock()
    async with SessionManager(
        counting, limit=4, idle_timeout=10, reap_interval=0.001, clock=clock
    ) as manager:
        async with manager.open() as idle, manager.open() as busy:
            clock.now += 6
            await busy.exec(["true"])  # activity at t+6
            clock.now += 6  # idle for 12s, busy for 6s
            await eventually(lambda: idle.state is SessionState.RELEASED)
            assert busy.state is SessionState.ACTIVE
            assert counting.releases == {idle.machine.id: 1}
            assert manager.stats().reaped == 1
            row = manager.store.session(idle.id)
            assert row is not None
            assert row.state == "released"
            assert "idle for 12.0s" in row.note
            with pytest.raises(SessionNotFound):
                manager.get_session(idle.id)
        assert counting.releases == {idle.machine.id: 1, busy.machine.id: 1}
    assert left_on_system() == []


async def test_output_is_activity_and_a_running_command_is_never_reaped(
    counting: CountingProvider,
) -> None:
    clock = FakeClock()
    async with SessionManager(
        counting, limit=1, idle_timeout=10, reap_interval=3600, clock=clock
    ) as manager, manager.open() as session:
        seen: list[float] = []

        def on_output(stream: str, chunk: bytes) -> None:
            clock.now += 100  # a long, chatty command
            seen.append(clock.now)

        command = asyncio.create_task(
            session.exec(["sh", "-c", "echo one; sleep 0.2; echo two"], on_output=on_output)
        )
        await eventually(lambda: len(seen) >= 1)
        assert session.state is SessionState.EXECUTING
        assert await manager.reap() == []  # idle for 100s by the clock, but executing
        assert (await command).ok
        assert session.last_activity == clock.now  # the last output (and the end) touched it
        assert await manager.reap() == []
        clock.now += 11
        assert await manager.reap() == [session.id]
    assert counting.releases == {session.machine.id: 1}


async def test_the_manager_releases_sessions_left_open_when_it_stops(
    counting: CountingProvider,
) -> None:
    async with contextlib.AsyncExitStack() as left_open:  # its block ends after the manager
        async with SessionManager(counting, limit=2) as manager:
            session = await left_open.enter_async_context(manager.open())
        assert counting.releases == {session.machine.id: 1}
        with Store.open() as store:
            row = store.session(session.id)
            assert row is not None
            assert (row.state, row.note) == ("released", "session manager stopped")
    assert counting.releases == {session.machine.id: 1}
    assert left_on_system() == []


def runner_script(tmp_path: Path, pool_size: int = 0) -> Path:
    """A runner process: opens a session (optionally with a warm pool), says ready, waits."""
    script = tmp_path / "runner.py"
    script.write_text(
        f"""
import asyncio, sys
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.providers import get_provider
from vmrunner.sessions import SessionManager

async def main():
    provider = get_provider({PROVIDER!r})
    pool = WarmPool(provider, {{"default": {pool_size}}}) if {pool_size} else None
    if pool is not None:
        await pool.__aenter__()
        provider = pool
    async with SessionManager(provider, limit=2) as manager:
        if pool is not None:
            await pool.wait_filled()
        async with manager.open() as session:
            await session.exec(
                ["sh", "-c", "echo running > marker"], cwd=session.machine.paths.workspace
            )
            print("ready", session.machine.id, flush=True)
            await asyncio.sleep(3600)

asyncio.run(main())
"""
    )
    return script


async def start_runner(
    tmp_path: Path, pool_size: int = 0
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(runner_script(tmp_path, pool_size)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        line = (await process.stdout.readline()).decode()
    if not line.startswith("ready"):
        process.kill()
        _, err = await process.communicate()
        pytest.fail(f"runner did not start: {line!r} {err.decode()[-2000:]}")
    return process, line.split()[1]


async def test_machines_of_a_sigkilled_runner_are_reclaimed_on_start(tmp_path: Path) -> None:
    runner, machine_id = await start_runner(tmp_path)
    runner.kill()
    await runner.wait()
    with Store.open() as store:
        live = store.machines()
        assert [m.machine_id for m in live] == [machine_id]
    assert (home() / "machines" / machine_id).exists()  # the crash left it behind
    counting = CountingProvider(real_provider())
    async with SessionManager(counting, limit=2) as manager:
        reclaimed = [a for a in manager.reclaimed if a.kind == "machine"]
        assert [(a.id, a.ok) for a in reclaimed] == [(machine_id, True)]
        assert counting.reclaims == {machine_id: 1}
        assert manager.store.machines() == []
        sessions = manager.store.sessions(include_released=True)
        assert [(s.state, s.note.startswith("reclaimed: runner pid")) for s in sessions] == [
            ("released", True)
        ]
        assert manager.stats().reclaimed == 1
    assert left_on_system([machine_id]) == []


async def test_machines_of_a_live_runner_are_left_alone(tmp_path: Path) -> None:
    runner, machine_id = await start_runner(tmp_path)
    try:
        counting = CountingProvider(real_provider())
        async with SessionManager(counting, limit=2) as manager:
            assert manager.reclaimed == []
            assert counting.reclaims == {}
            assert [m.machine_id for m in manager.store.machines()] == [machine_id]
        assert (home() / "machines" / machine_id).exists()
        assert runner.returncode is None
    finally:
        runner.kill()
        await runner.wait()
    async with SessionManager(CountingProvider(real_provider()), limit=2) as manager:
        assert [a.id for a in manager.reclaimed if a.kind == "machine"] == [machine_id]
    assert left_on_system([machine_id]) == []


def forget_the_store() -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (home() / name).unlink(missing_ok=True)


async def test_a_machine_on_disk_unknown_to_the_store_is_reclaimed(tmp_path: Path) -> None:
    """A crash between allocation and the store write: found through ``provider.leftovers()``."""
    runner, machine_id = await start_runner(tmp_path)
    runner.kill()
    await runner.wait()
    forget_the_store()
    counting = CountingProvider(real_provider())
    async with SessionManager(counting, limit=2) as manager:
        assert [(a.kind, a.id, a.ok) for a in manager.reclaimed] == [("machine", machine_id, True)]
    assert left_on_system([machine_id]) == []


async def test_a_reused_pid_does_not_keep_a_dead_runners_machine_alive() -> None:
    """The owner pid is alive (it is ours) but started at another time: that runner is gone."""
    provider = real_provider()
    machine = await provider.allocate(MachineSpec())
    record = machine.record
    assert Owner(os.getpid(), record.owner_start).alive()
    with Store.open() as store:
        store.put_machine(
            machine_row(
                dataclasses.replace(record, owner_start=(record.owner_start or 0) + 1), None
            )
        )
    counting = CountingProvider(real_provider())
    async with SessionManager(counting, limit=1) as manager:
        assert [(a.id, a.ok) for a in manager.reclaimed] == [(machine.id, True)]
        assert counting.reclaims == {machine.id: 1}
    assert left_on_system([machine.id]) == []
    await provider.release(machine)  # idempotent: already gone


async def test_the_limit_holds_through_timeouts_cancellations_and_failures() -> None:
    """Callers that time out, are cancelled or fail to allocate never leak or overshoot a slot."""
    rng = random.Random(7)
    machines = CountingProvider(real_provider())
    async with WarmPool(machines, {"default": 3}, reuse="restore") as pool:
        await pool.wait_filled()
        handed = CountingProvider(pool)
        async with SessionManager(handed, limit=3, wait_timeout=None) as manager:

            async def caller(index: int) -> None:
                with contextlib.suppress(CapacityError, AllocationError):
                    async with manager.open(timeout=rng.choice([None, 0.0, 0.01, 0.05])) as session:
                        await session.exec(["true"])

            tasks = []
            for index in range(150):
                if index % 10 == 0:
                    handed.fail_next("allocate")
                tasks.append(asyncio.create_task(caller(index)))
                if rng.random() < 0.2:
                    await asyncio.sleep(0)
            for task in rng.sample(tasks, 30):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            handed.clear_faults()
            stats = manager.stats()
            assert stats.failed_allocations > 0
            assert stats.timed_out + stats.rejected > 0
            assert manager.active_count == 0
            assert manager.stats().waiting == 0
            # Every slot is free again: three fail-fast sessions fit, a fourth does not.
            async with manager.open(wait=False), manager.open(wait=False), manager.open(wait=False):
                with pytest.raises(CapacityError):
                    async with manager.open(wait=False):
                        pytest.fail("a fourth session was opened")
    assert handed.max_alive <= 3
    assert handed.allocation_count == handed.release_count
    assert handed.releases == handed.allocations  # every hand-out released exactly once
    assert machines.max_alive <= 3
    assert left_on_system() == []
