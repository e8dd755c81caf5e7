"""A runner that dies leaves machines behind; a new one finds and reclaims them."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.machines.provider_suite import eventually, is_dir, machine_processes, process_alive
from vmrunner.errors import ReleaseError
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.providers import get_provider

CHECKOUT = Path(__file__).resolve().parents[2]
OWNER = """
import asyncio, json, sys
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.providers import get_provider

async def main():
    provider = get_provider(sys.argv[1])
    machine = await provider.allocate(MachineSpec())
    await machine.exec("sleep 1000 </dev/null >/dev/null 2>&1 &")
    await machine.write_file(machine.paths.workspace + "/work.txt", b"unfinished")
    print(json.dumps({"id": machine.id, "pid": machine.record.pid}), flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


@pytest.mark.parametrize("name", ["sandbox", "host"])
async def test_machines_of_a_killed_runner_are_found_and_reclaimed(name: str) -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, name, stdout=asyncio.subprocess.PIPE,
        cwd=CHECKOUT,
    )  # fmt: skip
    assert owner.stdout is not None
    line = await asyncio.wait_for(owner.stdout.readline(), 60)
    started = json.loads(line)
    assert len(machine_processes(started["id"])) >= 2
    owner.send_signal(signal.SIGKILL)
    await owner.wait()

    provider = get_provider(name, grace=0.5)
    (record,) = provider.leftovers()
    assert (record.machine_id, record.pid, record.owner_pid) == (
        started["id"], started["pid"], owner.pid,
    )  # fmt: skip
    assert is_dir(record.state_dir)
    await provider.reclaim(record)
    await eventually(lambda: not machine_processes(record.machine_id), "the machine's processes")
    assert not process_alive(record.pid, record.pid_start)
    assert not is_dir(record.state_dir)
    assert provider.leftovers() == []
    await provider.reclaim(record)  # a second reclaim finds nothing to do


async def test_reclaim_spares_a_process_that_reused_the_pid() -> None:
    provider = get_provider("sandbox", grace=0.5)
    # Without limits: a machine's cgroup names its processes whatever their pids, and reclaim
    # kills what is in it (tests/machines/test_limits.py); here only the pid guard is at work.
    machine = await provider.allocate(MachineSpec(cpus=0, memory_mib=0, pids=0, disk_mib=0))
    try:
        (record,) = provider.leftovers()
        stranger = replace(record, pid_start=(record.pid_start or 0) + 1)
        await provider.reclaim(stranger)
        assert process_alive(record.pid, record.pid_start)  # not the same process: spared
        assert (await machine.exec(["true"])).ok
    finally:
        await provider.release(machine)


async def test_reclaim_refuses_a_directory_outside_the_machines_dir(tmp_path: Path) -> None:
    provider = get_provider("sandbox")
    machine = await provider.allocate(MachineSpec())
    await provider.release(machine)
    precious = tmp_path / "precious"
    precious.mkdir()
    record = replace(machine.record, pid=None, state_dir=str(precious))
    with pytest.raises(ReleaseError, match="not a machine directory"):
        await provider.reclaim(record)
    assert precious.is_dir()


async def test_leftovers_skip_unreadable_records_and_other_providers() -> None:
    sandbox, host = get_provider("sandbox"), get_provider("host")
    machine = await host.allocate(MachineSpec())
    try:
        broken = sandbox.home / "machines" / "sandbox-broken"
        broken.mkdir(parents=True)
        (broken / "machine.json").write_text("{not json")
        assert sandbox.leftovers() == []
        assert [r.machine_id for r in host.leftovers()] == [machine.id]
    finally:
        await host.release(machine)
