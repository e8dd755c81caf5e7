"""The qemu provider beyond the shared suite: VM snapshots, the ready state, the warm pool,
the accelerator probe, networks, and reclaim after the runner is SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.machines.provider_suite import (
    assert_nothing_left,
    eventually,
    is_dir,
    machine_processes,
    process_alive,
)
from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.machines.test_network import STAND_IN_TARGETS, behind_a_stand_in_host, host_addresses
from vmrunner.errors import AllocationError, SnapshotError
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.images import Image
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.qemu import QemuMachine, QemuProvider, Shape, accelerator, qemu_argv

CHECKOUT = Path(__file__).resolve().parents[2]


def command_line(pid: int | None) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


@pytest.fixture
def image() -> Image:
    return qemu_image()


@pytest.fixture
async def provider(image: Image) -> AsyncIterator[QemuProvider]:
    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    yield provider
    await provider.aclose()
    assert provider.leftovers() == [], "a test left a machine behind"


@pytest.fixture
async def machine(provider: QemuProvider) -> AsyncIterator[QemuMachine]:
    machine = await provider.allocate(MachineSpec())
    assert isinstance(machine, QemuMachine)
    try:
        yield machine
    finally:
        await provider.release(machine)
    assert_nothing_left(machine)


async def test_restore_brings_back_files_and_running_processes(machine: QemuMachine) -> None:
    notes = f"{machine.paths.workspace}/notes.txt"
    await machine.write_file(notes, b"original")
    started = await machine.exec("sleep 1000 </dev/null >/dev/null 2>&1 & echo $!")
    pid = started.stdout.decode().strip()
    snapshot = await machine.snapshot("before")

    await machine.write_file(notes, b"changed")
    await machine.exec(["kill", "-9", pid])
    await machine.exec(["sh", "-c", f"echo new > {machine.paths.home}/added"])
    assert (await machine.exec(["kill", "-0", pid])).exit_code != 0

    await machine.restore(snapshot)
    assert await machine.read_file(notes) == b"original"
    assert (await machine.exec(["kill", "-0", pid])).ok, "the background process is gone"
    cmdline = await machine.exec(["cat", f"/proc/{pid}/cmdline"])
    assert cmdline.stdout.split(b"\0")[:2] == [b"sleep", b"1000"]
    assert (await machine.exec(["test", "-e", f"{machine.paths.home}/added"])).exit_code == 1
    # The machine goes on from there: new commands, new snapshots, a second restore.
    again = await machine.snapshot()
    assert again != snapshot
    await machine.restore(snapshot)
    assert (await machine.exec(["kill", "-0", pid])).ok


async def test_restore_of_an_unknown_snapshot_is_an_error(machine: QemuMachine) -> None:
    with pytest.raises(SnapshotError, match="no snapshot"):
        await machine.restore("nonexistent")


async def test_machines_from_the_ready_state_are_separate_vms(provider: QemuProvider) -> None:
    first = await provider.allocate(MachineSpec())
    second = await provider.allocate(MachineSpec())
    try:
        assert first.record.pid != second.record.pid
        assert machine_processes(first.id) == [first.record.pid]
        # Both resumed the same saved state, yet write to disks of their own.
        ready = list((test_images_dir() / "ready").glob(f"{qemu_image().digest}-*/state"))
        assert ready, "no ready state was saved"
        for machine in (first, second):
            argv = command_line(machine.record.pid)
            assert argv[argv.index(b"-incoming") + 1].startswith(b"exec:cat ")
        await first.write_file("/tmp/owner", b"first")
        assert (await second.exec(["test", "-e", "/tmp/owner"])).exit_code == 1
        assert (await first.exec(["test", "-e", "/tmp/owner"])).ok
    finally:
        await asyncio.gather(provider.release(first), provider.release(second))


def damage(target: Path, image: Image) -> None:
    """A ready state with a good disk and a state file QEMU cannot load."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.rootfs),
         str(target / "disk.qcow2")],
        check=True,
    )  # fmt: skip
    (target / "state").write_bytes(b"not a migration stream")


async def test_a_damaged_ready_state_is_made_again(provider: QemuProvider, image: Image) -> None:
    memory = 320  # a shape of its own: the other tests' ready state stays as it is
    shape = Shape(await provider.accelerator(image), memory, 1, "host")
    target = provider.store.root / "ready" / f"{image.digest}-{shape.key(image, provider.qemu())}"
    damage(target, image)
    try:
        machine = await provider.allocate(MachineSpec(memory_mib=memory))
        try:
            assert (await machine.exec(["true"])).ok
            assert (target / "state").stat().st_size > 1 << 20
        finally:
            await provider.release(machine)
    finally:
        shutil.rmtree(target, ignore_errors=True)


async def test_network_none_has_no_interface_and_host_has_user_mode_nat(
    provider: QemuProvider,
) -> None:
    isolated = await provider.allocate(MachineSpec(network="none"))
    connected = await provider.allocate(MachineSpec(network="host"))
    try:
        assert (await isolated.exec(["test", "-e", "/sys/class/net/eth0"])).exit_code == 1
        route = await connected.exec(["cat", "/proc/net/route"])
        assert b"eth0" in route.stdout
        # The user-mode network's gateway answers on its DNS port (no internet needed).
        probe = await connected.exec(
            ["python3", "-c", "import socket; socket.create_connection(('10.0.2.2', 1), 2)"],
        )
        assert b"Connection refused" in probe.stderr or b"timed out" in probe.stderr
    finally:
        await asyncio.gather(provider.release(isolated), provider.release(connected))


GUEST_PROBE = """
import errno, json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            out[target] = "ok:" + s.recv(100).decode()
    except TimeoutError:
        out[target] = "timeout"
    except OSError as exc:
        out[target] = errno.errorcode.get(exc.errno, str(exc))
print(json.dumps(out))
"""


async def test_private_reaches_neither_the_hosts_loopback_nor_its_addresses(
    provider: QemuProvider,
) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        writer.close()

    addresses = host_addresses()
    loopback = await asyncio.start_server(greet, "127.0.0.1", 0)
    everywhere = await asyncio.start_server(greet, "0.0.0.0", 0)
    port, any_port = loopback.sockets[0].getsockname()[1], everywhere.sockets[0].getsockname()[1]
    machine = await provider.allocate(MachineSpec(network="private"))
    try:
        assert isinstance(machine, QemuMachine)
        assert machine.network is not None
        # QEMU itself runs in a namespace of its own; the guest still has its user-mode network.
        assert os.readlink(f"/proc/{machine.record.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert b"eth0" in (await machine.exec(["cat", "/proc/net/route"])).stdout
        targets = [
            f"10.0.2.2:{port}",
            f"10.0.2.2:{any_port}",
            *(f"{a}:{any_port}" for a in addresses),
        ]
        result = await machine.exec(["python3", "-c", GUEST_PROBE, *targets])
        outcome = json.loads(result.stdout)
        assert not any(o.startswith("ok") for o in outcome.values()), outcome
        helper = machine.network.helper
    finally:
        await provider.release(machine)
        loopback.close()
        everywhere.close()
    assert not process_alive(helper.pid, helper.start)


async def test_private_reaches_the_internet_behind_a_stand_in_host(
    image: Image, tmp_path: Path
) -> None:
    options = {"images": str(test_images_dir())}
    outcome = await behind_a_stand_in_host(tmp_path / "home", "qemu", options, *STAND_IN_TARGETS)
    internet = STAND_IN_TARGETS[0]
    assert outcome[internet] == "ok:hello 198.51.100.2\n"  # through QEMU's NAT, then the helper's
    assert not any(o.startswith("ok") for target, o in outcome.items() if target != internet), (
        outcome
    )


async def test_warm_pool_hands_out_booted_vms_and_restores_them_for_reuse(
    provider: QemuProvider,
) -> None:
    async with WarmPool(provider, sizes={"default": 1}, reuse="restore") as pool:
        await eventually(lambda: pool.statistics().idle.get("default", 0) == 1, "a pooled VM", 120)
        machine = await pool.allocate(MachineSpec())
        assert machine.from_pool
        await machine.write_file(f"{machine.paths.workspace}/job.txt", b"left by a job")
        await pool.release(machine)
        await eventually(lambda: pool.statistics().recycled == 1, "the VM to be restored", 120)
        again = await pool.allocate(MachineSpec())
        try:
            assert again.id == machine.id
            assert (
                await again.exec(["test", "-e", f"{again.paths.workspace}/job.txt"])
            ).exit_code == 1
        finally:
            await pool.release(again)
    assert provider.leftovers() == []


async def test_missing_image_is_an_allocation_error(provider: QemuProvider) -> None:
    with pytest.raises(AllocationError, match=r"no image named 'gpu'.*vmrunner image build"):
        await provider.allocate(MachineSpec(vm_type="gpu"))


async def test_accelerator_is_probed_once_and_cached(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "accelerator.json"
    cache.write_text(json.dumps({"other-host": "kvm"}))
    provider = QemuProvider(images=test_images_dir())
    found = accelerator(provider.qemu(), image, test_images_dir() / "accelerator.json")
    assert found in ("kvm", "tcg")
    known = json.loads((test_images_dir() / "accelerator.json").read_text())
    assert found in known.values()
    # A cached answer is used as it is (the probe is not run again).
    key = next(k for k, v in known.items() if v == found)
    forced = "tcg" if found == "kvm" else "kvm"
    cache.write_text(json.dumps({key: forced}))
    assert accelerator(provider.qemu(), image, cache) == forced


def test_command_line_has_fixed_device_ids_and_the_network_mode(
    image: Image, tmp_path: Path
) -> None:
    none = qemu_argv("qemu", image, Shape("tcg", 256, 1, "none"), tmp_path)
    host = qemu_argv("qemu", image, Shape("tcg", 256, 1, "host"), tmp_path, incoming=tmp_path / "s")
    assert none[none.index("-nic") + 1] == "none"
    assert "user,id=net0" in host
    # The guest sees the same network under private (QEMU runs in its own namespace instead).
    assert Shape("tcg", 256, 1, "private").key(image) == Shape("tcg", 256, 1, "host").key(image)
    assert host[-2:] == ["-incoming", f"exec:cat {tmp_path / 's'}"]
    assert "vmrunner.agent=port:vmrunner" in none[none.index("-append") + 1]
    assert Shape("tcg", 256, 1, "none").key(image) != Shape("tcg", 512, 1, "none").key(image)


async def test_a_tcg_guest_runs_without_aslr_and_kernel_allocation_zeroing(
    provider: QemuProvider, machine: QemuMachine
) -> None:
    if await provider.accelerator(provider.image_for(machine.spec.vm_type)) != "tcg":
        pytest.skip("only TCG guests trade these for speed")
    assert (await machine.exec(["cat", "/proc/sys/kernel/randomize_va_space"])).stdout == b"0\n"
    cmdline = (await machine.exec(["cat", "/proc/cmdline"])).stdout.split()
    assert b"init_on_alloc=0" in cmdline
    # For real: two processes map libc at the same address.
    maps = [await machine.exec(["grep", "-m1", "libc", "/proc/self/maps"]) for _ in range(2)]
    assert maps[0].stdout
    assert maps[0].stdout == maps[1].stdout


OWNER = """
import asyncio, json, sys
from pathlib import Path
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.qemu import QemuProvider

async def main():
    provider = QemuProvider(images=Path(sys.argv[1]))
    machine = await provider.allocate(MachineSpec())
    await machine.exec("sleep 1000 </dev/null >/dev/null 2>&1 &")
    print(json.dumps({"id": machine.id, "pid": machine.record.pid}), flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_vms_of_a_killed_runner_are_found_and_reclaimed(image: Image) -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, str(test_images_dir()),
        stdout=asyncio.subprocess.PIPE, cwd=CHECKOUT,
    )  # fmt: skip
    assert owner.stdout is not None
    try:
        line = await asyncio.wait_for(owner.stdout.readline(), 240)
    finally:
        owner.send_signal(signal.SIGKILL)
        await owner.wait()
    started = json.loads(line)
    assert process_alive(started["pid"]), "QEMU must outlive its runner (its own session)"

    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    (record,) = provider.leftovers()
    assert (record.machine_id, record.pid, record.owner_pid) == (
        started["id"], started["pid"], owner.pid,
    )  # fmt: skip
    assert (Path(record.state_dir) / "disk.qcow2").exists()
    await provider.reclaim(record)
    await eventually(lambda: not machine_processes(record.machine_id), "the QEMU process")
    assert not process_alive(record.pid)
    assert not is_dir(record.state_dir)
    assert provider.leftovers() == []
    await provider.reclaim(record)
