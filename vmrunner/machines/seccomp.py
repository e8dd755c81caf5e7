"""The seccomp baseline of every sandbox: the system calls no job needs and an attacker wants.

In the spirit of Docker's default profile: the calls that reach the kernel as a whole (modules,
kexec, BPF, perf, keyrings, swap, clock, reboot), that build new mounts or namespaces (a way
around the read-only file system and the id map), ``userfaultfd`` and ``io_uring`` (favourite
exploit primitives), and calls from another ABI (32-bit or x32 numbers would skip this table)
fail with ``EPERM``. ``clone3`` says ``ENOSYS``, as under Docker, so that C libraries fall back
to ``clone``, whose namespace flags can be checked. ``ptrace`` stays: a job may debug its own
processes; the agent is out of its reach by uid, not by this filter.

The program is classic BPF, built here (no libseccomp) and handed to ``bwrap --seccomp FD``,
which installs it after the sandbox is set up and before the agent starts: every process of
the machine, the agent included, runs under it.
"""

from __future__ import annotations

import errno
import platform
import struct

from vmrunner.errors import AllocationError

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000

#: seccomp_data offsets: the call's number, the ABI, the low half of the first argument.
_NR, _ARCH, _ARG0 = 0, 4, 16

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000

#: Namespace flags of clone and unshare (user, mount, pid, net, uts, ipc, cgroup, time).
NAMESPACE_FLAGS = (
    0x10000000 | 0x00020000 | 0x20000000 | 0x40000000 | 0x04000000 | 0x08000000
    | 0x02000000 | 0x00000080
)

#: x86_64 numbers of the calls refused outright.
DENIED_X86_64 = {
    "_sysctl": 156, "acct": 163, "add_key": 248, "adjtimex": 159, "bpf": 321,
    "clock_adjtime": 305, "clock_settime": 227, "create_module": 174, "delete_module": 176,
    "fanotify_init": 300, "finit_module": 313, "fsconfig": 431, "fsmount": 432,
    "fsopen": 430, "fspick": 433, "get_kernel_syms": 177, "init_module": 175,
    "io_uring_enter": 426, "io_uring_register": 427, "io_uring_setup": 425, "ioperm": 173,
    "iopl": 172, "kexec_file_load": 320, "kexec_load": 246, "keyctl": 250,
    "lookup_dcookie": 212, "mount": 165, "mount_setattr": 442, "move_mount": 429,
    "nfsservctl": 180, "open_by_handle_at": 304, "open_tree": 428, "perf_event_open": 298,
    "pivot_root": 155, "query_module": 178, "quotactl": 179, "quotactl_fd": 443,
    "reboot": 169, "request_key": 249, "setns": 308, "settimeofday": 164, "swapoff": 168,
    "swapon": 167, "sysfs": 139, "syslog": 103, "umount2": 166, "uselib": 134,
    "userfaultfd": 323, "ustat": 136, "vhangup": 153,
}  # fmt: skip
_CLONE, _UNSHARE, _CLONE3 = 56, 272, 435


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def baseline() -> bytes:
    """The filter as the raw ``sock_filter`` array bwrap reads from its ``--seccomp`` fd."""
    machine = platform.machine()
    if machine not in ("x86_64", "amd64"):
        raise AllocationError(
            f"the sandbox's seccomp baseline knows no system call numbers for {machine}:"
            " use --provider qemu"
        )
    denied = sorted(set(DENIED_X86_64.values()))
    # Layout: checks, then four returns at the end; every jump lands on one of them.
    body: list[tuple[int, int, str, str] | tuple[str]] = []
    body.append((_LD_W_ABS, _ARCH, "", ""))
    body.append((_JEQ_K, _AUDIT_ARCH_X86_64, "next", "deny"))
    body.append((_LD_W_ABS, _NR, "", ""))
    body.append((_JGE_K, _X32_BIT, "deny", "next"))
    for number in denied:
        body.append((_JEQ_K, number, "deny", "next"))
    body.append((_JEQ_K, _CLONE3, "nosys", "next"))
    body.append((_JEQ_K, _CLONE, "flags", "next"))
    body.append((_JEQ_K, _UNSHARE, "flags", "allow"))
    labels = {"flags": len(body)}
    body.append((_LD_W_ABS, _ARG0, "", ""))
    body.append((_JSET_K, NAMESPACE_FLAGS, "deny", "allow"))
    returns = {"allow": _ALLOW, "deny": _ERRNO | errno.EPERM, "nosys": _ERRNO | errno.ENOSYS}
    for name in returns:
        labels[name] = len(body)
        body.append((name,))
    program = bytearray()
    for index, item in enumerate(body):
        if len(item) == 1:
            program += _op(_RET_K, returns[item[0]])
            continue
        code, k, on_true, on_false = item

        def offset(label: str, here: int = index) -> int:
            if label in ("", "next"):
                return 0
            jump = labels[label] - here - 1
            if not 0 <= jump <= 255:  # pragma: no cover - the table is far smaller
                raise AssertionError("seccomp jump out of range")
            return jump

        program += _op(code, k, offset(on_true), offset(on_false))
    return bytes(program)
