"""Run by ``test_sandbox_attacks`` as an unprivileged host user: allocate a sandbox, attack it
as a job would, print what happened as JSON, release it."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from vmrunner.machines.base import MachineSpec
from vmrunner.machines.identity import AGENT_UID
from vmrunner.machines.sandbox import SandboxProvider

ATTACKS = {
    "id": "id -u; sudo id -u",
    "sysctl": "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern; echo $?;"
    " sudo sh -c 'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern'; echo $?",
    "signal": f"agent=$(ps -o pid= -o ruid= -C python3 | awk '$2 == {AGENT_UID} {{print $1}}');"
    " kill -STOP $agent; echo $?; sudo kill -STOP $agent; echo $?",
    "ptrace": f"agent=$(ps -o pid= -o ruid= -C python3 | awk '$2 == {AGENT_UID} {{print $1}}');"
    ' python3 -c "import ctypes,sys;'
    ' print(ctypes.CDLL(None).ptrace(16, int(sys.argv[1]), 0, 0))" $agent',
    "seccomp": "python3 -c 'import ctypes; print(ctypes.CDLL(None).syscall(321, 0, 0, 0))'",
    "uids": "sleep 5 & sudo sleep 5 & sleep 0.3; echo started",
}


def host_uids(root: int) -> list[int]:
    """Every uid (real, effective, saved, fs) of ``root`` and the processes below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parents.setdefault(int(stat.read().rsplit(b")", 1)[1].split()[1]), []).append(
                        int(entry)
                    )
            except OSError:
                continue
    uids, stack = [], [root]
    while stack:
        pid = stack.pop()
        stack += parents.get(pid, [])
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            uids += [int(n) for line in status if line.startswith("Uid:") for n in line.split()[1:]]
    return uids


async def main() -> dict[str, object]:
    provider = SandboxProvider(grace=0.5)
    results: dict[str, object] = {}
    # An unprivileged runner has no disk budget and, here, no delegated cgroup: no limits.
    machine = await provider.allocate(
        MachineSpec(network="none", cpus=0, memory_mib=0, pids=0, disk_mib=0)
    )
    try:
        for name, script in ATTACKS.items():
            result = await machine.exec(["bash", "-c", script])
            results[name] = (result.stdout + result.stderr).decode()
        assert machine.record.pid is not None
        results["host_uids"] = sorted(set(host_uids(machine.record.pid)))
    finally:
        await provider.release(machine)
        await provider.aclose()
    results["left"] = [str(path) for path in provider.machines_dir.iterdir()]
    return results


if __name__ == "__main__":
    json.dump(asyncio.run(main()), sys.stdout)
