"""A machine's limits: memory, processes, CPU (cgroups) and its disk budget (a loop mount).

Real cgroups, real loop mounts, real sandboxes: every test checks what the kernel did, and
that nothing (cgroup, mount, loop device) is left once the machine is released or reclaimed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.helpers import vmrunner
from tests.machines.provider_suite import eventually, machine_processes
from vmrunner.errors import AllocationError, ConfigError
from vmrunner.machines import disk
from vmrunner.machines.base import MachineRecord, MachineSpec
from vmrunner.machines.cgroups import Cgroups, MachineCgroup
from vmrunner.machines.disk import MachineDisk
from vmrunner.machines.limits import Host, Limits, format_mib, parse_size, resolve_limits
from vmrunner.machines.local import descendants
from vmrunner.machines.sandbox import SandboxMachine, SandboxProvider
from vmrunner.server.config import read_config_file

CHECKOUT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and loop mounts need root here")
#: Small limits, so that a test hits them at once.
SMALL = MachineSpec(cpus=1, memory_mib=64, pids=64, disk_mib=64)


@pytest.fixture
async def provider() -> AsyncIterator[SandboxProvider]:
    provider = SandboxProvider(grace=0.5)
    yield provider
    await provider.aclose()


@pytest.fixture
async def machine(provider: SandboxProvider) -> AsyncIterator[SandboxMachine]:
    machine = await provider.allocate(SMALL)
    assert isinstance(machine, SandboxMachine)
    yield machine
    await provider.release(machine)


def assert_limits_freed(record: MachineRecord) -> None:
    """No cgroup, mount, loop device or directory of the machine is left."""
    cgroup = MachineCgroup.from_data(record.data["cgroup"])
    assert not cgroup.exists(), cgroup.paths
    disk = MachineDisk.from_data(record.data["disk"])
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        assert disk.mount not in mounts.read()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        assert disk.image not in backing.read_text(), backing
    assert not os.path.exists(record.state_dir)


def text_of(*parts: str) -> str:
    return Path(*parts).read_text()


# Sizes and defaults.


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("256M", 256),
        ("7G", 7168),
        ("512MiB", 512),
        ("1.5GiB", 1536),
        ("268435456", 256),
        ("64m", 64),
        ("0", 0),
        ("1T", 1 << 20),
    ],
)
def test_sizes_parse(text: str, mib: int) -> None:
    assert parse_size(text, "memory") == mib


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12x", "is not a size"),
        ("", "is not a size"),
        ("-5M", "is not a size"),
        ("1.5", "whole number"),
        ("1M", "at least 32 MiB"),
    ],
)
def test_bad_sizes_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_size(text, "memory")


def test_sizes_are_shown_plainly() -> None:
    assert [format_mib(m) for m in (64, 256, 1024, 1536, 7168)] == [
        "64 MiB",
        "256 MiB",
        "1 GiB",
        "1.5 GiB",
        "7 GiB",
    ]


def test_defaults_are_githubs_scaled_down_to_a_small_host() -> None:
    assert resolve_limits(None, None, None, host=Host(cpus=16, memory_mib=65536)) == Limits(
        2, 7168, 4096
    )
    assert resolve_limits(None, None, None, host=Host(cpus=1, memory_mib=4096)) == Limits(
        1, 2048, 4096
    )
    assert resolve_limits(8, 0, 100, host=Host(cpus=1, memory_mib=4096)) == Limits(8, 0, 100)
    with pytest.raises(ConfigError, match="pids must be at least 16"):
        resolve_limits(None, None, 3)


def test_a_limit_the_host_cannot_give_is_refused_with_how_to_fix_it() -> None:
    without_memory = Cgroups(1, {"pids": Path("/sys/fs/cgroup/pids")})
    with pytest.raises(AllocationError, match=r"cannot limit a machine's memory.*Delegate=yes"):
        without_memory.plan("vmrunner-test", Limits(memory_mib=64, pids=64))
    assert without_memory.plan("vmrunner-test", Limits(pids=64)).directories == {
        "pids": "/sys/fs/cgroup/pids/vmrunner-test"
    }


# Limits in real sandboxes.


@needs_root
async def test_limits_are_written_to_the_machines_cgroup(machine: SandboxMachine) -> None:
    cgroup = MachineCgroup.from_data(machine.record.data["cgroup"])
    if cgroup.version == 1:
        assert cgroup.read("cpu", "cpu.cfs_quota_us") == "100000"
        assert cgroup.read("cpu", "cpu.cfs_period_us") == "100000"
        assert cgroup.read("memory", "memory.limit_in_bytes") == str(64 << 20)
    else:
        assert cgroup.read("cpu", "cpu.max") == "100000 100000"
        assert cgroup.read("memory", "memory.max") == str(64 << 20)
    assert cgroup.read("pids", "pids.max") == "64"
    members = {int(p) for p in cgroup.read("pids", "cgroup.procs").split()}
    assert machine.record.pid in members  # bwrap itself, so every process of the machine
    # A command's processes are in it too (seen from the host: inside, the machine's own cgroup
    # namespace shows it as its root, naming no host path).
    result = await machine.exec(["sh", "-c", "sleep 3 & cat /proc/self/cgroup"])
    assert f"vmrunner-{machine.id}" not in result.stdout.decode()
    assert machine.record.pid is not None
    family = [pid for pid, _ in descendants(machine.record.pid)]
    members = {int(p) for p in cgroup.read("pids", "cgroup.procs").split()}
    assert len(family) >= 2
    assert set(family) <= members
    assert await machine.limits_hit() == []


@needs_root
async def test_a_command_beyond_the_memory_limit_is_killed_and_the_machine_lives_on(
    machine: SandboxMachine,
) -> None:
    result = await machine.exec(["python3", "-c", "x = bytearray(200 << 20)"])
    assert not result.ok
    assert await machine.limits_hit() == ["out of memory: the machine's limit is 64 MiB"]
    assert (await machine.exec(["true"])).ok  # the agent was not the one killed


@needs_root
async def test_a_fork_bomb_is_bounded_and_the_host_keeps_working(machine: SandboxMachine) -> None:
    bomb = "b() { b | b & }; b; sleep 1; exit 1"
    result = await machine.exec(["sh", "-c", bomb], timeout=20)
    assert not result.ok
    assert "too many processes: the machine's limit is 64" in await machine.limits_hit()
    host = await asyncio.create_subprocess_exec("true")  # the host still forks
    assert await host.wait() == 0


@needs_root
async def test_writing_beyond_the_disk_budget_fails_with_disk_full(machine: SandboxMachine) -> None:
    result = await machine.exec(["sh", "-c", "dd if=/dev/zero of=$HOME/big bs=1M count=100"])
    assert not result.ok
    assert b"No space left on device" in result.stderr
    assert await machine.limits_hit() == ["disk full: the machine's limit is 64 MiB"]
    assert (await machine.exec(["sh", "-c", "rm $HOME/big && echo ok > /tmp/small"])).ok
    # The machine's disk is its own: the host's file system was not touched.
    disk = MachineDisk.from_data(machine.record.data["disk"])
    assert os.stat(disk.mount).st_dev != os.stat(machine.record.state_dir).st_dev
    assert text_of(disk.mount, "tmp", "small") == "ok\n"


@needs_root
async def test_snapshots_work_on_the_machines_disk(machine: SandboxMachine) -> None:
    await machine.write_file(f"{machine.paths.workspace}/a.txt", b"one")
    first = await machine.snapshot("first")
    await machine.exec(
        [
            "sh",
            "-c",
            f"echo two > {machine.paths.workspace}/a.txt; "
            "dd if=/dev/zero of=/tmp/big bs=1M count=100",
        ]
    )
    assert "disk full: the machine's limit is 64 MiB" in await machine.limits_hit()
    await machine.restore(first)
    assert await machine.read_file(f"{machine.paths.workspace}/a.txt") == b"one"
    assert await machine.limits_hit() == []  # a restored machine counts afresh (a pool reuses it)


@needs_root
async def test_cgroup_and_disk_are_gone_after_release(provider: SandboxProvider) -> None:
    machine = await provider.allocate(SMALL)
    await machine.exec("sleep 1000 </dev/null >/dev/null 2>&1 &")
    await provider.release(machine)
    assert_limits_freed(machine.record)
    await provider.release(machine)  # once only


OWNER = """
import asyncio, json, sys
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.sandbox import SandboxProvider

async def main():
    provider = SandboxProvider()
    machine = await provider.allocate(MachineSpec(cpus=1, memory_mib=64, pids=64, disk_mib=64))
    await machine.exec("sleep 1000 </dev/null >/dev/null 2>&1 &")
    print(json.dumps({"id": machine.id}), flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


@needs_root
async def test_cgroup_and_disk_of_a_killed_runner_are_reclaimed(provider: SandboxProvider) -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, stdout=asyncio.subprocess.PIPE, cwd=CHECKOUT
    )
    assert owner.stdout is not None
    started = json.loads(await asyncio.wait_for(owner.stdout.readline(), 60))
    owner.send_signal(signal.SIGKILL)
    await owner.wait()
    (record,) = provider.leftovers()
    assert record.machine_id == started["id"]
    assert MachineCgroup.from_data(record.data["cgroup"]).exists()
    await provider.reclaim(record)
    await eventually(lambda: not machine_processes(record.machine_id), "the machine's processes")
    assert_limits_freed(record)
    assert provider.leftovers() == []


class PlanKeeper(SandboxProvider):
    """A sandbox provider that keeps the records it planned (to check what a failure left)."""

    planned: list[MachineRecord]

    def _plan(self, spec: MachineSpec, record: MachineRecord) -> MachineRecord:
        record = super()._plan(spec, record)
        self.planned.append(record)
        return record


@needs_root
async def test_a_failed_allocation_leaves_no_cgroup_or_disk(provider: SandboxProvider) -> None:
    broken = PlanKeeper(home=provider.home, bwrap="/bin/false")  # limits made, then the agent fails
    broken.planned = []
    with pytest.raises(AllocationError, match="did not answer"):
        await broken.allocate(SMALL)
    (record,) = broken.planned
    assert_limits_freed(record)
    assert broken.leftovers() == []


# The runner and the command line.

HUNGRY = """
on: push
jobs:
  hungry:
    runs-on: ubuntu-latest
    steps:
      - run: echo before
      - run: python3 -c "x = bytearray(200 << 20)"
      - run: echo never
  filler:
    runs-on: ubuntu-latest
    steps:
      - run: dd if=/dev/zero of=$HOME/big bs=1M count=100
"""


@needs_root
def test_a_job_that_hits_a_limit_fails_with_the_reason_and_its_record_is_kept(
    tmp_path: Path,
) -> None:
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "ci.yml").write_text(HUNGRY)
    result = vmrunner(
        "run",
        "--json",
        "--memory",
        "64M",
        "--disk",
        "64M",
        "--pids",
        "256",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    run = json.loads(result.stdout)["runs"][0]
    jobs = {job["job_id"]: job for job in run["jobs"]}
    assert jobs["hungry"]["conclusion"] == "failure"
    assert jobs["hungry"]["reason"].startswith("out of memory: the machine's limit is 64 MiB")
    assert jobs["filler"]["reason"].startswith("disk full: the machine's limit is 64 MiB")
    kept = vmrunner("runs", "show", run["run_id"], "--logs", "--json", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    shown = json.loads(kept.stdout)
    assert "out of memory: the machine's limit is 64 MiB" in json.dumps(shown["logs"])
    assert "No space left on device" in json.dumps(shown["logs"])


def test_bad_limits_on_the_command_line_are_usage_errors(tmp_path: Path) -> None:
    for args, message in (
        (("--memory", "12x"), "'12x' is not a size"),
        (("--disk", "1K"), "disk must be at least 16 MiB"),
        (("--pids", "3"), "at least 16"),
        (("--cpus", "-1"), "--cpus"),
    ):
        result = vmrunner("run", "-n", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_machine_types_in_the_server_config(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        '[machine-types.default]\ncpus = 4\nmemory = "8G"\npids = 1000\ndisk = "20G"\n'
        '[machine-types.small]\nmemory = "512M"\n'
    )
    assert read_config_file(config)["machine_limits"] == {
        "default": {"cpus": 4, "memory_mib": 8192, "pids": 1000, "disk_mib": 20480},
        "small": {"memory_mib": 512},
    }
    config.write_text('[machine-types.default]\nmemory = "lots"\n')
    with pytest.raises(ConfigError, match=r"machine-types\.default: memory: 'lots' is not a size"):
        read_config_file(config)


def test_cgroups_are_found_below_this_process_cgroup() -> None:
    try:
        cgroups = Cgroups.detect()
    except AllocationError:
        pytest.skip("no cgroups here")
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    for controller, parent in cgroups.parents.items():
        mine = own[controller if cgroups.version == 1 else ""]
        assert str(parent).rstrip("/").endswith(mine.rstrip("/")), (controller, parent, mine)


def test_a_default_disk_planned_with_more_room_shrinks_to_its_share_at_admission(
    tmp_path: Path,
) -> None:
    """Concurrent jobs plan their default disks at once and are admitted one by one: a default
    budget that no longer fits shrinks (in whole GiB) instead of failing the job; a budget the
    user asked for is all or nothing."""
    machines = tmp_path / "machines"
    room = disk._room_mib(machines)
    too_big = room + 4096
    with disk.reserve(machines, too_big, default=True) as size:
        assert size == min(disk.DEFAULT_DISK_MIB, room // disk.DEFAULT_DISK_SHARE // 1024 * 1024)
        assert size % 1024 == 0
    with pytest.raises(AllocationError, match="not enough disk"), disk.reserve(machines, too_big):
        pass
    assert disk.resolve_disk(None, machines) % 1024 == 0
