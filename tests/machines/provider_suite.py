"""The one test suite every provider passes (``test_providers.py`` runs it per provider).

Subclass ``ProviderSuite`` and give it a ``provider`` fixture yielding a fresh provider; each
test then gets real machines from it. What is left on the system after a release is checked
against the system itself: ``/proc`` for the machine's processes (marked by their
``VMRUNNER_MACHINE_ID`` variable, plus the recorded root process), the state directory, and our
mount table.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vmrunner.errors import AgentError, AllocationError, ExecError, SnapshotUnsupported
from vmrunner.machines.base import Isolation, Machine, MachineSpec, Provider


def machine_processes(machine_id: str) -> list[int]:
    """Host pids of live processes whose environment names the machine."""
    marker = f"VMRUNNER_MACHINE_ID={machine_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                environ = file.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as file:
                state = file.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def sleepers(machine: Machine) -> list[int]:
    """The machine's ``sleep`` processes (what the tests start and expect killed)."""
    found = []
    for pid in machine_processes(machine.id):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"):
                found.append(pid)
        except OSError:
            continue
    return found


def child_processes(before: frozenset[int] = frozenset()) -> list[int]:
    """Live children of this (the test) process, but those in ``before`` (alive before the
    test began: a session's fixtures, such as the test registry of the container tests)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] not in (b"Z", b"X") and int(entry) not in before:
                found.append(int(entry))
    return found


def machine_dirs(provider: Provider) -> list[str]:
    machines = Path(getattr(provider, "machines_dir", "/nonexistent"))
    return sorted(p.name for p in machines.iterdir()) if machines.is_dir() else []


async def no_sleepers(provider: Provider, machine: Machine) -> None:
    """Wait until none of the machine's ``sleep`` processes runs any more.

    A VM's processes are not the host's: there the guest itself is asked (``pgrep``).
    """
    if provider.capabilities.isolation != Isolation.VM:
        await eventually(lambda: not sleepers(machine), "the command's processes to die")
        return
    deadline = time.monotonic() + 10.0
    while (await machine.exec(["pgrep", "-x", "sleep"])).exit_code == 0:
        if time.monotonic() > deadline:
            pytest.fail("still waiting for the command's processes to die in the guest")
        await asyncio.sleep(0.05)


def is_dir(path: str | Path) -> bool:
    return os.path.isdir(path)


def process_alive(pid: int | None, start: int | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``start``, is still the process that started then)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    if fields[0] in (b"Z", b"X"):
        return False
    return start is None or int(fields[19]) == start  # pids wrap quickly on a busy host


async def eventually(predicate, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what}")
        await asyncio.sleep(0.01)


def assert_nothing_left(machine: Machine) -> None:
    record = machine.record
    assert not process_alive(record.pid, record.pid_start), f"root process {record.pid} runs"
    assert machine_processes(machine.id) == []
    assert not os.path.exists(record.state_dir)
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        assert record.state_dir not in mounts.read()


def tar_with(name: str, data: bytes, mode: int = 0o644) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ProviderSuite:
    """The contract of ``Provider`` and ``Machine``, for any provider."""

    @pytest.fixture
    async def machine(self, provider: Provider) -> AsyncIterator[Machine]:
        machine = await provider.allocate(MachineSpec())
        try:
            yield machine
        finally:
            await provider.release(machine)

    # Allocation.

    async def test_allocate_gives_an_answering_machine_with_its_paths(
        self, provider: Provider, machine: Machine
    ) -> None:
        assert machine.provider_name == provider.name
        assert await machine.ping() > 0
        for path in (machine.paths.workspace, machine.paths.temp, machine.paths.home):
            result = await machine.exec(["sh", "-c", f'touch "{path}/probe" && echo ok'])
            assert result.stdout == b"ok\n", path
        home = await machine.exec(["sh", "-c", 'printf "%s" "$HOME"'])
        assert home.stdout.decode() == machine.paths.home
        pwd = await machine.exec(["pwd"])
        assert pwd.stdout.decode().strip() == machine.paths.workspace

    async def test_record_names_the_machine_and_is_persisted(
        self, provider: Provider, machine: Machine
    ) -> None:
        record = machine.record
        assert (record.machine_id, record.provider) == (machine.id, provider.name)
        assert process_alive(record.pid, record.pid_start)
        assert record.owner_pid == os.getpid()
        assert any(r.machine_id == machine.id for r in provider.leftovers())

    async def test_machines_are_distinct(self, provider: Provider) -> None:
        first = await provider.allocate(MachineSpec())
        second = await provider.allocate(MachineSpec())
        try:
            assert first.id != second.id
            await first.write_file(f"{first.paths.workspace}/mine", b"first")
            check = await second.exec(["sh", "-c", f"test -e {second.paths.workspace}/mine"])
            assert check.exit_code == 1
        finally:
            await asyncio.gather(provider.release(first), provider.release(second))

    async def test_network_modes_are_given_or_refused(self, provider: Provider) -> None:
        for mode in ("host", "none"):
            if mode in provider.capabilities.network_modes:
                machine = await provider.allocate(MachineSpec(network=mode))
                try:
                    assert (await machine.exec(["true"])).ok
                finally:
                    await provider.release(machine)
            else:
                with pytest.raises(AllocationError, match="network"):
                    await provider.allocate(MachineSpec(network=mode))
        assert provider.leftovers() == []

    async def test_cancelled_allocations_leave_nothing(self, provider: Provider) -> None:
        # Cancelled at every stage of a start: directory, process creation, first answer.
        before = frozenset(child_processes())
        for step in range(40):
            task = asyncio.create_task(provider.allocate(MachineSpec()))
            await asyncio.sleep((step % 20) * 0.0007)
            task.cancel()
            try:
                async with asyncio.timeout(30):
                    machine = await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
            await provider.release(machine)  # it was done before the cancellation came
        assert provider.leftovers() == []
        assert machine_dirs(provider) == []
        await eventually(lambda: not child_processes(before), "every started process to be gone")

    # Commands.

    async def test_exec_env_cwd_stdin_and_exit_codes(self, machine: Machine) -> None:
        result = await machine.exec(
            'printf "%s:" "$NAME"; pwd; cat; exit 4',
            env={"NAME": "value with spaces"},
            cwd=machine.paths.temp,
            stdin=b"from stdin",
        )
        assert result.exit_code == 4
        assert result.stdout == f"value with spaces:{machine.paths.temp}\nfrom stdin".encode()
        assert (await machine.exec(["false"])).exit_code == 1
        assert (await machine.exec(["true"])).ok

    async def test_exec_streams_output(self, machine: Machine) -> None:
        seen: list[tuple[str, bytes]] = []
        result = await machine.exec(
            "echo one; echo two >&2; echo three", on_output=lambda s, d: seen.append((s, d))
        )
        assert result.ok
        assert b"".join(d for s, d in seen if s == "stdout") == b"one\nthree\n"
        assert b"".join(d for s, d in seen if s == "stderr") == b"two\n"

    async def test_exec_timeout_kills_the_process_group(
        self, provider: Provider, machine: Machine
    ) -> None:
        result = await machine.exec(
            "sleep 100 & echo $!; sleep 100", timeout=0.3
        )
        assert result.timed_out
        assert result.exit_code is None
        await no_sleepers(provider, machine)

    async def test_cancelled_exec_kills_the_process_group(
        self, provider: Provider, machine: Machine
    ) -> None:
        started = asyncio.Event()
        task = asyncio.create_task(
            machine.exec("echo go; sleep 100 & sleep 100", on_output=lambda s, d: started.set())
        )
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await no_sleepers(provider, machine)
        assert (await machine.exec(["true"])).ok

    async def test_missing_program_is_an_exec_error(self, machine: Machine) -> None:
        with pytest.raises(ExecError):
            await machine.exec(["definitely-not-a-program"])

    # Files.

    async def test_put_get_write_read_round_trip(self, machine: Machine, tmp_path: Path) -> None:
        workspace = machine.paths.workspace
        await machine.put(f"{workspace}/dir", tar_with("tool.sh", b"#!/bin/sh\necho tool\n", 0o755))
        assert (await machine.exec([f"{workspace}/dir/tool.sh"])).stdout == b"tool\n"
        await machine.write_file(f"{workspace}/notes.txt", b"some notes")
        assert await machine.read_file(f"{workspace}/notes.txt") == b"some notes"
        with tarfile.open(fileobj=io.BytesIO(await machine.get(f"{workspace}/dir"))) as tar:
            assert sorted(tar.getnames()) == ["dir", "dir/tool.sh"]
        source = tmp_path / "upload"
        (source / "sub").mkdir(parents=True)
        (source / "sub" / "f").write_bytes(b"uploaded")
        await machine.upload(source, workspace)
        assert await machine.read_file(f"{workspace}/upload/sub/f") == b"uploaded"

    # Snapshots.

    async def test_snapshot_and_restore_or_unsupported(
        self, provider: Provider, machine: Machine
    ) -> None:
        path = f"{machine.paths.workspace}/state.txt"
        if not provider.capabilities.snapshots:
            with pytest.raises(SnapshotUnsupported):
                await machine.snapshot()
            with pytest.raises(SnapshotUnsupported):
                await machine.restore("anything")
            return
        await machine.write_file(path, b"before")
        first = await machine.snapshot("first")
        await machine.write_file(path, b"after")
        await machine.exec(["sh", "-c", f"echo new > {machine.paths.home}/added"])
        second = await machine.snapshot("second")
        await machine.restore(first)
        assert await machine.read_file(path) == b"before"
        assert (await machine.exec(["test", "-e", f"{machine.paths.home}/added"])).exit_code == 1
        assert first != second

    # Release.

    async def test_release_is_idempotent_and_leaves_nothing(
        self, provider: Provider, machine: Machine
    ) -> None:
        await machine.exec("sleep 100 >/dev/null 2>&1 &")
        assert machine_processes(machine.id)
        await provider.release(machine)
        await provider.release(machine)
        assert_nothing_left(machine)
        assert all(r.machine_id != machine.id for r in provider.leftovers())
        with pytest.raises(AgentError):
            await machine.exec(["true"])

    async def test_release_during_a_running_command(self, provider: Provider) -> None:
        machine = await provider.allocate(MachineSpec())
        task = asyncio.create_task(machine.exec(["sleep", "100"]))
        await asyncio.sleep(0.05)
        await provider.release(machine)
        with pytest.raises(AgentError):
            await task
        assert_nothing_left(machine)

    async def test_release_after_the_machine_process_died(self, provider: Provider) -> None:
        machine = await provider.allocate(MachineSpec())
        pid = machine.record.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        start = machine.record.pid_start
        await eventually(lambda: not process_alive(pid, start), "the machine process to die")
        await provider.release(machine)
        assert_nothing_left(machine)

    async def test_release_completes_when_the_caller_is_cancelled(self, provider: Provider) -> None:
        machine = await provider.allocate(MachineSpec())
        await machine.exec("sleep 100 >/dev/null 2>&1 &")
        task = asyncio.create_task(provider.release(machine))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_nothing_left(machine)

    async def test_reclaim_by_record(self, provider: Provider) -> None:
        machine = await provider.allocate(MachineSpec())
        await machine.exec("sleep 100 >/dev/null 2>&1 &")
        (record,) = [r for r in provider.leftovers() if r.machine_id == machine.id]
        await provider.reclaim(record)
        await eventually(lambda: not machine_processes(machine.id), "the machine's processes")
        assert_nothing_left(machine)
        await provider.reclaim(record)  # idempotent
        await provider.release(machine)  # and the live handle's release still works
