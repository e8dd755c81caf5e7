"""The warm pool on real sandboxes, counted by ``CountingProvider``."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_sessions import eventually, home, left_on_system, real_provider, start_runner
from vmrunner.machines.base import Machine, MachineSpec
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.testing import CountingProvider
from vmrunner.sessions import Owner, SessionManager
from vmrunner.store import Store


@pytest.fixture
def counting() -> CountingProvider:
    return CountingProvider(real_provider())


@pytest.fixture
async def pool(counting: CountingProvider) -> AsyncIterator[WarmPool]:
    async with WarmPool(counting, {"default": 2}, retry_delay=0.01) as opened:
        await opened.wait_filled()
        yield opened
    assert counting.release_count == counting.allocation_count
    assert left_on_system() == []


async def dirty(machine: Machine, mark: str) -> None:
    result = await machine.exec(
        ["sh", "-c", f"echo {mark} > job-was-here"], cwd=machine.paths.workspace
    )
    assert result.ok


async def workspace_is_empty(machine: Machine) -> bool:
    result = await machine.exec(["sh", "-c", 'test -z "$(ls -A)"'], cwd=machine.paths.workspace)
    return result.ok


async def test_a_filled_pool_hands_out_a_ready_machine_and_refills(
    pool: WarmPool, counting: CountingProvider
) -> None:
    assert pool.statistics().idle == {"default": 2}
    assert counting.allocation_count == 2
    machine = await pool.allocate(MachineSpec(labels={"job": "build"}))
    assert machine.from_pool
    assert machine.id in counting.allocations
    assert (await machine.exec(["echo", "ready"])).stdout == b"ready\n"
    stats = pool.statistics()
    assert (stats.hits, stats.misses, stats.busy) == (1, 0, 1)
    await pool.wait_filled()
    assert pool.statistics().idle == {"default": 2}
    assert pool.statistics().refills == 3
    assert counting.allocation_count == 3
    await pool.release(machine)
    assert counting.releases[machine.id] == 1
    assert pool.statistics().discarded == 1


async def test_a_released_machine_is_never_handed_out_again(
    pool: WarmPool, counting: CountingProvider
) -> None:
    handed: list[str] = []
    for job in range(5):
        await pool.wait_filled()
        machine = await pool.allocate(MachineSpec())
        assert machine.id not in handed
        assert await workspace_is_empty(machine), "a machine came with another job's files"
        await dirty(machine, f"job-{job}")
        handed.append(machine.id)
        await pool.release(machine)
        assert counting.releases[machine.id] == 1
    assert len(set(handed)) == 5
    assert pool.statistics().hits == 5


async def test_an_empty_or_mismatching_pool_falls_back_to_a_cold_allocation(
    counting: CountingProvider,
) -> None:
    async with WarmPool(counting, {"default": 1, "big": 0}) as pool:
        await pool.wait_filled()
        cold = await pool.allocate(MachineSpec(vm_type="big"))
        other = await pool.allocate(
            MachineSpec(network="none")
        )  # the pool's machines have network "host"
        assert not cold.from_pool
        assert not other.from_pool
        stats = pool.statistics()
        assert (stats.hits, stats.misses, stats.idle) == (0, 2, {"default": 1, "big": 0})
        assert (await other.exec(["true"])).ok
        await pool.release(cold)
        await pool.release(other)
    assert counting.release_count == counting.allocation_count == 3
    assert left_on_system() == []


async def test_a_machine_whose_agent_does_not_answer_never_enters_the_pool(
    counting: CountingProvider,
) -> None:
    counting.fail_next("ping")
    async with WarmPool(counting, {"default": 1}, retry_delay=0.01) as pool:
        await pool.wait_filled()
        [unready, ready] = counting.allocations
        assert counting.releases[unready] == 1
        assert pool.statistics().failures == 1
        machine = await pool.allocate(MachineSpec())
        assert machine.id == ready
        await pool.release(machine)
    assert left_on_system() == []


async def test_refill_retries_after_a_failed_start(counting: CountingProvider) -> None:
    counting.fail_next("allocate", times=2)
    async with WarmPool(counting, {"default": 1}, retry_delay=0.001) as pool:
        await pool.wait_filled()
        assert pool.statistics().failures == 2
        assert pool.statistics().refills == 1
    assert left_on_system() == []


async def test_closing_the_pool_releases_every_idle_machine(counting: CountingProvider) -> None:
    pool = WarmPool(counting, {"default": 3})
    async with pool:
        await pool.wait_filled()
        assert len(counting.alive) == 3
    assert counting.alive == set()
    assert pool.statistics().discarded == 3
    await pool.aclose()  # idempotent
    assert left_on_system() == []


def test_statistics_are_a_frozen_record() -> None:
    stats = WarmPool(CountingProvider(real_provider()), {"default": 1}).statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 3  # type: ignore[misc]


def test_restore_mode_needs_snapshots() -> None:
    provider = real_provider()
    if provider.capabilities.snapshots:
        WarmPool(provider, {"default": 1}, reuse="restore")
    else:
        with pytest.raises(ValueError, match="needs snapshots"):
            WarmPool(provider, {"default": 1}, reuse="restore")


@pytest.fixture
async def restoring(counting: CountingProvider) -> AsyncIterator[WarmPool]:
    if not counting.capabilities.snapshots:
        pytest.skip(f"the {counting.name} provider has no snapshots")
    async with WarmPool(counting, {"default": 1}, reuse="restore", retry_delay=0.01) as opened:
        await opened.wait_filled()
        yield opened
    assert left_on_system() == []


async def test_restore_mode_recycles_a_verified_clean_machine(
    restoring: WarmPool, counting: CountingProvider
) -> None:
    machine = await restoring.allocate(MachineSpec())
    await dirty(machine, "first-job")
    await restoring.release(machine)
    stats = restoring.statistics()
    assert (stats.recycled, stats.discarded, stats.idle) == (1, 0, {"default": 1})
    again = await restoring.allocate(MachineSpec())
    assert again.id == machine.id
    assert await workspace_is_empty(again)
    assert counting.allocation_count == 1
    await restoring.release(again)


async def test_restore_mode_discards_a_machine_that_fails_verification(
    restoring: WarmPool, counting: CountingProvider
) -> None:
    machine = await restoring.allocate(MachineSpec())
    await dirty(machine, "first-job")
    counting.skip_next("restore")  # the restore "succeeds" but leaves the job's file behind
    await restoring.release(machine)
    stats = restoring.statistics()
    assert (stats.recycled, stats.discarded, stats.failures) == (0, 1, 1)
    assert counting.releases[machine.id] == 1
    await restoring.wait_filled()
    fresh = await restoring.allocate(MachineSpec())
    assert fresh.id != machine.id
    assert await workspace_is_empty(fresh)
    await restoring.release(fresh)


@pytest.mark.parametrize(("change", "inside", "host"), [
    ("echo x > $HOME/new-file", True, True),
    ("printf more >> $HOME/.seed; : > $HOME/.seed", True, True),  # resized
    ("ln -s /nowhere $GITHUB_WORKSPACE/link", True, True),
    ("mkdir -p /tmp/a/b", False, True),  # find covers home, workspace and temp; the host all
    ("rm -rf $RUNNER_TEMP && mkdir $RUNNER_TEMP", False, False),  # a new directory, same names
])
async def test_the_sandbox_lists_from_the_host_what_find_sees_inside(
    change: str, inside: bool, host: bool
) -> None:
    """The sandbox's fingerprint (a host-side walk of all its writable directories) changes
    whenever the generic one (``find`` inside the machine) does, and both come back after a
    restore."""
    provider = real_provider()
    machine = await provider.allocate(MachineSpec())
    try:
        await machine.exec(["sh", "-c", "echo seed > $HOME/.seed"])
        before = (await machine.fingerprint(), await Machine.fingerprint(machine))
        pristine = await machine.snapshot("pristine")
        paths = machine.paths
        result = await machine.exec(
            ["sh", "-c", f"GITHUB_WORKSPACE={paths.workspace} RUNNER_TEMP={paths.temp}; {change}"]
        )
        assert result.ok, result.stderr
        after = (await machine.fingerprint(), await Machine.fingerprint(machine))
        assert (after[0] != before[0], after[1] != before[1]) == (host, inside)
        await machine.restore(pristine)
        assert (await machine.fingerprint(), await Machine.fingerprint(machine)) == before
    finally:
        await provider.release(machine)
        await provider.aclose()


async def test_restore_mode_discards_a_machine_whose_restore_fails(
    restoring: WarmPool, counting: CountingProvider
) -> None:
    machine = await restoring.allocate(MachineSpec())
    counting.fail_next("restore")
    await restoring.release(machine)
    assert counting.releases[machine.id] == 1
    assert restoring.statistics().failures == 1


async def test_pool_machines_are_recorded_in_the_store(counting: CountingProvider) -> None:
    with Store.open() as store:
        async with (
            WarmPool(counting, {"default": 2}) as pool,
            SessionManager(pool, store=store) as manager,
        ):
            await pool.wait_filled()
            idle_ids = set(counting.allocations)
            recorded = {m.machine_id: m.session_id for m in store.machines()}
            assert recorded == dict.fromkeys(idle_ids)
            async with manager.open() as session:
                assert session.machine.from_pool
                row = store.machine(session.machine.id)
                assert row is not None
                assert row.session_id == session.id
            await pool.wait_filled()
            released = store.machine(session.machine.id)
            assert released is not None
            assert released.released_at is not None
            assert len(store.machines()) == 2
        # Closing the pool released its idle machines, and recorded it.
        assert store.machines() == []
    assert left_on_system() == []


async def test_pool_machines_are_reclaimed_after_the_runner_is_sigkilled(tmp_path: Path) -> None:
    runner, session_machine = await start_runner(tmp_path, pool_size=2)
    runner.kill()
    await runner.wait()
    with Store.open() as store:
        recorded = {m.machine_id: m.session_id for m in store.machines()}
    assert session_machine in recorded
    assert None in recorded.values()  # at least one idle pool machine was recorded
    on_disk = {p.name for p in (home() / "machines").iterdir()}
    assert set(recorded) <= on_disk
    counting = CountingProvider(real_provider())
    async with SessionManager(counting, limit=1) as manager:
        reclaimed = {a.id for a in manager.reclaimed if a.kind == "machine" and a.ok}
        assert reclaimed == on_disk
    assert left_on_system(list(on_disk)) == []


async def test_a_machine_that_died_while_idle_is_never_handed_out(
    pool: WarmPool, counting: CountingProvider
) -> None:
    idle = list(counting.allocations)
    victim = idle[0]
    record = next(m.record for m in pool._idle["default"] if m.id == victim)
    assert record.pid is not None
    os.kill(record.pid, signal.SIGKILL)
    await eventually(lambda: not Owner(record.pid, record.pid_start).alive())
    machine = await pool.allocate(MachineSpec())
    assert machine.id == idle[1]
    assert (await machine.exec(["true"])).ok
    assert counting.releases[victim] == 1
    assert pool.statistics().failures == 1
    await pool.release(machine)
