"""``vmrunner sessions list`` and ``vmrunner sessions reclaim``, run as real processes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tests.cli.helpers import vmrunner
from tests.test_sessions import PROVIDER, home, left_on_system, real_provider, start_runner
from vmrunner.machines.base import MachineSpec
from vmrunner.sessions import SessionManager
from vmrunner.store import MachineRow, Store


async def cli(*args: str):
    return await asyncio.to_thread(vmrunner, "sessions", *args)


async def test_list_without_sessions() -> None:
    done = await cli("list")
    assert done.returncode == 0, done.stderr
    assert "no live sessions" in done.stdout
    done = await cli("list", "--json")
    assert json.loads(done.stdout) == {"sessions": []}


async def test_list_shows_live_sessions_and_all_shows_released_ones() -> None:
    async with SessionManager(real_provider(), limit=2) as manager:
        async with manager.open(MachineSpec(labels={"job": "build"})) as session:
            await session.exec(["true"])
            done = await cli("list", "--json")
            assert done.returncode == 0, done.stderr
            [listed] = json.loads(done.stdout)["sessions"]
            assert {
                k: listed[k] for k in ("id", "state", "machine", "provider", "vm_type", "labels")
            } == {
                "id": session.id,
                "state": "active",
                "machine": session.machine.id,
                "provider": PROVIDER,
                "vm_type": "default",
                "labels": {"job": "build"},
            }
            assert listed["age"] >= listed["idle"] >= 0
            table = await cli("list")
            assert table.returncode == 0, table.stderr
            header, row = table.stdout.splitlines()
            assert header.split() == [
                "Session",
                "State",
                "Machine",
                "Provider",
                "VM",
                "type",
                "Age",
                "Idle",
            ]
            assert row.split()[:5] == [
                session.id,
                "active",
                session.machine.id,
                PROVIDER,
                "default",
            ]
        assert json.loads((await cli("list", "--json")).stdout) == {"sessions": []}
        released = json.loads((await cli("list", "--all", "--json")).stdout)["sessions"]
        assert [(s["id"], s["state"]) for s in released] == [(session.id, "released")]


async def test_reclaim_releases_the_machines_of_a_dead_runner(tmp_path: Path) -> None:
    runner, machine_id = await start_runner(tmp_path)
    live = await cli("reclaim")
    assert live.returncode == 0, live.stderr
    assert "nothing to reclaim" in live.stdout  # its runner still runs
    assert (home() / "machines" / machine_id).exists()
    runner.kill()
    await runner.wait()
    done = await cli("reclaim", "--json")
    assert done.returncode == 0, done.stderr
    actions = json.loads(done.stdout)["actions"]
    assert [(a["kind"], a["id"], a["ok"]) for a in actions if a["kind"] == "machine"] == [
        ("machine", machine_id, True)
    ]
    assert [a["kind"] for a in actions].count("session") == 1
    assert all(a["owner_pid"] == runner.pid for a in actions)
    assert left_on_system([machine_id]) == []
    with Store.open() as store:
        assert store.machines() == []
        assert [s.state for s in store.sessions(include_released=True)] == ["released"]
    again = await cli("reclaim")
    assert "nothing to reclaim" in again.stdout


async def test_reclaim_prints_what_it_did(tmp_path: Path) -> None:
    runner, machine_id = await start_runner(tmp_path)
    runner.kill()
    await runner.wait()
    done = await cli("reclaim", "--provider", PROVIDER)
    assert done.returncode == 0, done.stderr
    assert f"reclaimed machine {machine_id} ({PROVIDER}, runner pid {runner.pid})" in done.stdout
    assert "reclaimed session s-" in done.stdout
    assert left_on_system([machine_id]) == []


async def test_reclaim_with_an_unknown_provider_is_an_error() -> None:
    done = await cli("reclaim", "--provider", "nope")
    assert done.returncode == 1
    assert "unknown provider 'nope'" in done.stderr
    assert "Traceback" not in done.stderr


async def test_reclaim_fails_loudly_for_a_machine_no_provider_here_can_reclaim() -> None:
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    now = time.time()
    with Store.open() as store:
        store.put_machine(
            MachineRow(
                machine_id="imaginary-1234",
                provider="imaginary",
                vm_type="default",
                pid=None,
                pid_start=None,
                state_dir="/nonexistent",
                owner_pid=gone.pid,
                owner_start=1,
                created_at=now,
                allocated_at=now,
            )
        )
    done = await cli("reclaim")
    assert done.returncode == 1
    assert (
        f"FAILED to reclaim machine imaginary-1234 (imaginary, runner pid {gone.pid}): no "
        f"imaginary provider available" in done.stdout
    )
    with Store.open() as store:
        assert [m.machine_id for m in store.machines()] == [
            "imaginary-1234"
        ]  # still recorded, for a later try
