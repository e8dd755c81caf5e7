"""Attacks a hostile job would try, run as a job does (as ``runner``, and as root through the
machine's ``sudo``) in real sandboxes started by a runner that is host root.

Sysctls are only ever written with the value just read from them: a write that went through
would change nothing on the host.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vmrunner.machines.base import Machine, MachineSpec
from vmrunner.machines.identity import AGENT_UID, RUNNER_UID
from vmrunner.machines.sandbox import SandboxProvider

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these attacks target a root runner")

SYSCTLS = (
    "kernel/core_pattern",
    "vm/drop_caches",
    "kernel/panic",
    "fs/file-max",
    "net/ipv4/ip_forward",
)
#: Who runs the attack: the job's own user, and root inside the machine.
AS = ("", "sudo ")


@pytest.fixture
async def provider() -> AsyncIterator[SandboxProvider]:
    provider = SandboxProvider(grace=0.5)
    yield provider
    await provider.aclose()


@pytest.fixture
async def machine(provider: SandboxProvider) -> AsyncIterator[Machine]:
    machine = await provider.allocate(MachineSpec())
    yield machine
    await provider.release(machine)


async def sh(machine: Machine, script: str) -> tuple[int | None, str]:
    # An attack that stopped the agent would leave the command unanswered: a failure, not a hang.
    try:
        async with asyncio.timeout(60):
            result = await machine.exec(["bash", "-c", script])
    except TimeoutError:
        pytest.fail(f"no answer from the machine after: {script}")
    return result.exit_code, (result.stdout + result.stderr).decode()


@pytest.mark.parametrize("who", AS)
@pytest.mark.parametrize("name", SYSCTLS)
async def test_host_sysctls_cannot_be_written(machine: Machine, who: str, name: str) -> None:
    path = f"/proc/sys/{name}"
    write_only = name == "vm/drop_caches"
    before = "" if write_only else _read(path)
    # A write-only knob gets 1 (a write that went through would only drop the host's caches);
    # the others get the value just read, never a new one.
    script = f"{who}sh -c 'echo 1 > {path}'" if write_only else f"{who}sh -c 'cat {path} > {path}'"
    code, output = await sh(machine, script)
    assert code != 0, output
    assert "Read-only file system" in output or "Permission denied" in output, output
    if not write_only:
        assert _read(path) == before


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


async def test_jobs_run_as_runner_and_sudo_gives_root_inside_only(machine: Machine) -> None:
    code, output = await sh(machine, "id -u; id -un; echo $HOME; sudo id -u; sudo -u runner id -u")
    assert code == 0, output
    assert output.split() == [str(RUNNER_UID), "runner", "/home/runner", "0", str(RUNNER_UID)]
    code, output = await sh(
        machine, "sudo touch /home/runner/made-by-root && stat -c %u /home/runner/made-by-root"
    )
    assert (code, output.strip()) == (0, "0")


async def test_no_process_of_the_machine_is_host_root(machine: Machine) -> None:
    code, output = await sh(machine, "sleep 30 & sudo sleep 30 & sleep 0.5; echo started")
    assert code == 0, output
    pids = [pid for pid in _machine_pids(machine)]
    assert len(pids) >= 4  # bwrap, the agent, both sleeps
    for pid in pids:
        ids = {
            line.split(":")[0]: [int(n) for n in line.split()[1:]]
            for line in _read(f"/proc/{pid}/status").splitlines()
            if line.startswith(("Uid:", "Gid:"))
        }
        assert 0 not in ids["Uid"], (pid, ids)
        assert 0 not in ids["Gid"], (pid, ids)


def _machine_pids(machine: Machine) -> list[int]:
    root = machine.record.pid
    assert root is not None
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, stack = [root], [root]
    while stack:
        for child in parents.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


@pytest.mark.parametrize("who", AS)
async def test_the_agent_cannot_be_traced_or_signalled(machine: Machine, who: str) -> None:
    code, output = await sh(
        machine, f"ps -o pid= -o ruid= -C python3 | awk '$2 == {AGENT_UID} {{print $1}}'"
    )
    agent = output.split()[0]
    trace = (
        "import ctypes; "
        f"print(ctypes.CDLL(None, use_errno=True).ptrace(16, {agent}, 0, 0), ctypes.get_errno())"
    )
    code, output = await sh(machine, f"{who}python3 -c '{trace}'")
    assert output.split() == ["-1", "1"], output  # EPERM
    for signal in ("STOP", "KILL", "TERM"):
        code, output = await sh(machine, f"{who}kill -{signal} {agent}; echo $?")
        assert "Operation not permitted" in output, output
    code, output = await sh(machine, f"{who}cat /proc/{agent}/environ /proc/{agent}/mem")
    assert code != 0
    assert (await machine.exec(["true"])).ok  # the agent still answers


@pytest.mark.parametrize("who", AS)
async def test_kernel_wide_calls_are_refused(machine: Machine, who: str) -> None:
    calls = {
        "bpf": "321, 0, 0, 0",
        "perf_event_open": "298, 0, 0, -1, -1, 0",
        "keyctl": "250, 0",
        "userfaultfd": "323, 0",
        "init_module": "175, 0, 0, 0",
        "kexec_load": "246, 0, 0, 0, 0",
        "mount": "165, 0, 0, 0, 0, 0",
        "unshare (user)": "272, 0x10000000",
        "unshare (mount)": "272, 0x00020000",
        "setns": "308, 0, 0",
    }
    program = "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); " + "; ".join(
        f"print({name!r}, libc.syscall({args}), ctypes.get_errno())" for name, args in calls.items()
    )
    code, output = await sh(machine, f'{who}python3 -c "{program}"')
    assert code == 0, output
    for line in output.strip().splitlines():
        _, result, error = line.rsplit(" ", 2)
        assert (result, error) == ("-1", "1"), line  # EPERM
    code, output = await sh(machine, f"{who}unshare --user true || {who}unshare --mount true")
    assert code != 0


async def test_no_host_secrets_in_etc(machine: Machine) -> None:
    own = "/etc/hostname /etc/hosts /etc/resolv.conf /etc/machine-id"
    code, output = await sh(machine, f"cat {own}")
    assert code == 0, output  # the machine's own files, readable by the job
    assert machine.id in output
    code, output = await sh(machine, "ls /etc; cat /etc/passwd")
    assert code == 0
    for name in ("shadow", "gshadow", "sudoers", "subuid", "ssh", "vmrunner"):
        assert name not in output.split(), name
    host_users = {line.split(":")[0] for line in _read("/etc/passwd").splitlines()}
    inside = {line.split(":")[0] for line in output.splitlines() if line.count(":") == 6}
    assert inside == {"root", "runner", "vmrunner-agent", "nobody"}
    assert host_users - inside  # the host's own users stay outside


UNPRIVILEGED = "vmrunner-test"


def _unprivileged_user() -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


@pytest.mark.skipif(
    _unprivileged_user() is None,
    reason=f"no user {UNPRIVILEGED} (scripts/bootstrap --dev makes it)",
)
def test_the_same_attacks_fail_under_an_unprivileged_runner() -> None:
    """vmrunner started by a user with subordinate ids (as rootless podman): its machines'
    processes are that user or its subordinate ids, and the attacks fail the same way."""
    import json
    import shutil
    import subprocess
    import tempfile

    user = _unprivileged_user()
    assert user is not None
    repository = Path(__file__).resolve().parents[2]
    work = Path(tempfile.mkdtemp(prefix="vmrunner-unprivileged-"))
    try:
        work.chmod(0o755)
        shutil.copytree(repository / "vmrunner", work / "vmrunner")
        shutil.copy(Path(__file__).with_name("unprivileged_probe.py"), work / "probe.py")
        (work / "home").mkdir()
        os.chown(work / "home", *user)
        done = subprocess.run(
            ["runuser", "-u", UNPRIVILEGED, "--", "/usr/bin/python3", str(work / "probe.py")],
            capture_output=True, text=True, timeout=120, check=False, cwd=work,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(work),
                 "VMRUNNER_HOME": str(work / "home")},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert results["id"].split() == ["1001", "0"]
    codes = results["sysctl"].split()
    assert codes[-1] != "0", results["sysctl"]
    assert codes[-2] != "0" if len(codes) > 1 else True
    assert results["signal"].count("Operation not permitted") == 2, results["signal"]
    assert results["ptrace"].split()[-1] == "-1", results["ptrace"]
    assert results["seccomp"].split()[-1] == "-1", results["seccomp"]
    subordinate = range(400000, 400000 + 65536)
    assert results["host_uids"], results
    for uid in results["host_uids"]:
        assert uid == user[0] or uid in subordinate, results["host_uids"]
    assert results["left"] == []


async def test_no_host_paths_inside(machine: Machine, provider: SandboxProvider) -> None:
    """Neither the mount table, the cgroups nor the environment name a host path."""
    code, output = await sh(machine, "cat /proc/self/mountinfo /proc/self/cgroup; env")
    assert code == 0, output
    details = (str(provider.home), str(provider.home.parent), "process_api", "vmrunner-sandbox")
    for host_detail in details:
        assert host_detail not in output, host_detail


def test_a_runner_without_subordinate_ids_is_told_what_to_set_up() -> None:
    """Started by a user that has no subordinate id range, the sandbox refuses, saying how."""
    import shutil
    import subprocess
    import tempfile

    repository = Path(__file__).resolve().parents[2]
    program = (
        "from vmrunner.machines.identity import id_map\n"
        "from vmrunner.errors import AllocationError\n"
        "try:\n    id_map()\nexcept AllocationError as exc:\n    print(exc)\n"
    )
    work = Path(tempfile.mkdtemp(prefix="vmrunner-nobody-"))
    try:
        work.chmod(0o755)
        shutil.copytree(repository / "vmrunner", work / "vmrunner")
        done = subprocess.run(
            [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--",
             "/usr/bin/python3", "-c", program],
            capture_output=True, text=True, timeout=60, check=False, cwd=work,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(work)},
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert "subordinate ids for nobody" in done.stdout, done.stdout
    assert "usermod --add-subuids" in done.stdout
