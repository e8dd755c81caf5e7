"""Faults around a session: whatever fails, the machine is released once and nothing is left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from vmrunner.errors import (
    AllocationError,
    ExecError,
    ReleaseError,
    SessionError,
    SnapshotError,
    StoreDiskError,
)
from vmrunner.machines.testing import CountingProvider
from vmrunner.sessions import ABANDONED, Session, SessionManager, SessionState
from vmrunner.store import Store

from .test_sessions import eventually, left_on_system, processes_with, real_provider


async def hold(manager: SessionManager) -> None:
    """Open a session and keep it until cancelled."""
    async with manager.open():
        await asyncio.Event().wait()


@pytest.fixture
async def counting() -> AsyncIterator[CountingProvider]:
    provider = CountingProvider(real_provider())
    yield provider
    await provider.aclose()


@pytest.fixture
async def manager(counting: CountingProvider) -> AsyncIterator[SessionManager]:
    async with SessionManager(counting, limit=2, release_timeout=30) as opened:
        yield opened
    assert left_on_system() == []


def states(manager: SessionManager, session_id: str) -> list[str]:
    return [t.state for t in manager.store.transitions(session_id)]


async def test_a_failed_allocation_frees_its_slot(
    manager: SessionManager, counting: CountingProvider
) -> None:
    counting.fail_next("allocate", AllocationError("no room at the inn"))
    with pytest.raises(AllocationError, match="no room"):
        async with manager.open(wait=False):
            pytest.fail("the block ran without a machine")
    assert manager.active_count == 0
    [row] = manager.store.sessions(include_released=True)
    assert states(manager, row.id) == ["initializing", "failed", "terminating", "released"]
    assert "no room at the inn" in manager.store.transitions(row.id)[1].note
    # Both slots are free again: two fail-fast sessions fit.
    async with manager.open(wait=False), manager.open(wait=False):
        assert counting.allocation_count == 2
    assert manager.stats().failed_allocations == 1


async def test_an_error_in_a_command_releases_the_machine(
    manager: SessionManager, counting: CountingProvider
) -> None:
    async def job() -> None:
        async with manager.open() as session:
            await session.exec(["true"])
            counting.fail_next("exec")
            await session.exec(["true"])

    with pytest.raises(ExecError, match="injected exec fault"):
        await job()
    [session] = [
        manager.store.session(row.id) for row in manager.store.sessions(include_released=True)
    ]
    assert session is not None
    session_machine = session.machine_id
    assert session_machine is not None
    assert counting.releases == {session_machine: 1}
    assert states(manager, session.id)[-4:] == ["active", "failed", "terminating", "released"]
    assert left_on_system([session_machine]) == []


async def test_a_failing_command_is_a_result_not_an_error(manager: SessionManager) -> None:
    async with manager.open() as session:
        result = await session.exec(["sh", "-c", "echo oops >&2; exit 3"])
        assert (result.exit_code, result.stderr) == (3, b"oops\n")
        assert session.state is SessionState.ACTIVE


async def test_an_error_in_a_snapshot_keeps_the_session_usable(
    manager: SessionManager, counting: CountingProvider
) -> None:
    async with manager.open() as session:
        if counting.capabilities.snapshots:
            counting.fail_next("snapshot")
        with pytest.raises(SnapshotError):
            await session.snapshot("after step 1")
        assert session.state is SessionState.ACTIVE
        assert session.snapshots == ()
        assert (await session.exec(["true"])).ok
    machines: list[str] = []

    async def job() -> None:
        async with manager.open() as failing:
            machines.append(failing.machine.id)
            if counting.capabilities.snapshots:
                counting.fail_next("snapshot")
            await failing.snapshot("x")

    with pytest.raises(SnapshotError):
        await job()
    assert counting.release_count == 2
    assert left_on_system([session.machine.id, *machines]) == []


async def test_a_failed_release_is_retried(
    manager: SessionManager, counting: CountingProvider
) -> None:
    async with manager.open() as session:
        counting.fail_next("release", machine_id=session.machine.id)
    assert counting.releases == {session.machine.id: 1}
    row = manager.store.machine(session.machine.id)
    assert row is not None
    assert (row.released_at is not None, row.note) == (True, "released")
    assert left_on_system([session.machine.id]) == []


async def test_a_release_that_keeps_failing_falls_back_to_reclaim(
    manager: SessionManager, counting: CountingProvider
) -> None:
    async with manager.open() as session:
        counting.fail_next("release", times=manager.release_attempts)
    assert counting.releases == {}
    assert counting.reclaims == {session.machine.id: 1}
    row = manager.store.machine(session.machine.id)
    assert row is not None
    assert row.released_at is not None
    assert row.note.startswith("reclaimed after failed release")
    assert left_on_system([session.machine.id]) == []


async def test_a_release_that_cannot_succeed_is_recorded_and_retried_on_exit(
    counting: CountingProvider,
) -> None:
    async with SessionManager(counting, limit=1) as manager:
        block = contextlib.AsyncExitStack()
        session = await block.enter_async_context(manager.open())
        machine_id = session.machine.id
        counting.fail_next("release", times=manager.release_attempts)
        counting.fail_next("reclaim")
        with pytest.raises(ReleaseError, match="injected reclaim fault"):
            await block.aclose()  # the block ends: its release fails
        # Recorded honestly: the session is over, its machine is alive and marked abandoned.
        assert manager.active_count == 0
        row = manager.store.machine(machine_id)
        assert row is not None
        assert row.released_at is None
        assert row.note.startswith(ABANDONED)
        assert left_on_system([machine_id]) != []
        assert manager.stats().release_failures == 1
    assert counting.reclaims == {machine_id: 1}  # retried when the manager stopped
    with Store.open() as store:
        assert store.machines() == []
    assert left_on_system([machine_id]) == []


async def test_a_cancelled_task_releases_its_machine_and_kills_its_command(
    manager: SessionManager, counting: CountingProvider
) -> None:
    started = asyncio.Event()

    async def job() -> None:
        async with manager.open() as session:
            started.set()
            await session.exec(["sh", "-c", "sleep 987.25; true"])

    task = asyncio.create_task(job())
    await started.wait()
    await eventually(lambda: processes_with(["987.25"]) != [])  # the command runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [machine_id] = counting.allocations
    assert counting.releases == {machine_id: 1}
    assert manager.active_count == 0
    assert left_on_system([machine_id], ["987.25"]) == []


async def test_a_timeout_releases_the_machine(
    manager: SessionManager, counting: CountingProvider
) -> None:
    opened = []

    async def job() -> None:
        async with manager.open() as session:
            opened.append(session)
            async with asyncio.timeout(0.3):
                await session.exec(["sh", "-c", "sleep 986.5; true"])

    with pytest.raises(TimeoutError):
        await job()
    [session] = opened
    assert counting.releases == {session.machine.id: 1}
    assert states(manager, session.id)[-3:] == ["failed", "terminating", "released"]
    assert left_on_system([session.machine.id], ["986.5"]) == []


async def test_cancellation_while_waiting_for_a_slot_takes_no_slot(
    manager: SessionManager, counting: CountingProvider
) -> None:
    async with manager.open(), manager.open():
        waiter = asyncio.create_task(hold(manager))
        await eventually(lambda: manager.stats().waiting == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert manager.stats().waiting == 0
    assert manager.active_count == 0
    assert counting.allocation_count == 2


async def test_cancellation_during_allocation_frees_the_slot(
    manager: SessionManager, counting: CountingProvider
) -> None:
    # A first allocation prepares the provider's agent bundle cache (a one-time helper process
    # that a cancelled allocation would leave finishing on its own); this test is about ours.
    async with manager.open():
        pass
    task = asyncio.create_task(hold(manager))
    await eventually(lambda: counting.allocating == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.active_count == 0
    rows = manager.store.sessions(include_released=True)
    assert [row.state for row in rows] == ["released", "released"]
    assert states(manager, rows[1].id) == ["initializing", "failed", "terminating", "released"]
    # The interrupted allocation finished under a shield and its machine was released at once.
    assert counting.allocation_count == counting.release_count == 2
    assert set(counting.releases.values()) == {1}


async def test_stopping_the_manager_turns_waiters_away_and_finishes_allocations(
    counting: CountingProvider,
) -> None:
    async with contextlib.AsyncExitStack() as left_open:  # its block ends after the manager
        async with SessionManager(counting, limit=1) as manager:
            holder = await left_open.enter_async_context(manager.open())
            waiter = asyncio.create_task(hold(manager))
            await eventually(lambda: manager.stats().waiting == 1)
        with pytest.raises(SessionError, match="stopping"):
            await waiter
        assert counting.releases == {holder.machine.id: 1}
    assert counting.releases == {holder.machine.id: 1}
    assert counting.allocation_count == 1
    assert left_on_system() == []


async def test_a_session_being_allocated_is_listed_and_handed_out_once_ready(
    manager: SessionManager, counting: CountingProvider
) -> None:
    async def use() -> Session:
        async with manager.open() as session:
            assert session.state is SessionState.ACTIVE
            return session

    creating = asyncio.create_task(use())
    await eventually(lambda: counting.allocating == 1)
    [pending] = manager.sessions()
    assert pending.state is SessionState.INITIALIZING
    session = await creating
    assert session is pending
    assert counting.releases == {session.machine.id: 1}


async def test_a_full_disk_under_the_store_never_keeps_a_machine_or_fails_the_session(
    counting: CountingProvider,
) -> None:
    """Bookkeeping that cannot be written once the machine runs is kept, retried, and reported."""

    FAILING = ("set_session_state", "mark_machine_released", "touch_session")

    def full(*_args: object, **_kwargs: object) -> None:
        raise StoreDiskError("state.db: cannot commit: database or disk is full")

    async with SessionManager(counting, limit=1) as manager:
        async with manager.open() as session:
            machine_id = session.machine.id
            for name in FAILING:
                setattr(manager.store, name, full)
            await session.exec(["true"])
            session.touch()
            await manager.reap()
        assert counting.releases == {machine_id: 1}
        assert left_on_system([machine_id]) == []
        assert manager.active_count == 0
        assert manager.store_failures >= 3
        assert all(isinstance(e, StoreDiskError) for e in manager.store_errors)
        for name in FAILING:
            delattr(manager.store, name)  # the disk has room again
    with Store.open() as store:  # written once the disk had room again, when the manager stopped
        assert store.machines() == []
        [row] = store.sessions(include_released=True)
        assert row.state == "released"
        assert [t.state for t in store.transitions(row.id)][-2:] == ["terminating", "released"]
