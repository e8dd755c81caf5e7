"""A machine's limits (CPUs, memory, processes, disk): defaults, host scaling, and sizes.

One place decides what a machine gets when its ``MachineSpec`` leaves a limit ``None``: the
size of GitHub's standard Linux runner (2 CPUs, 7 GiB memory, 14 GiB disk), scaled down where
the host is smaller, so that a machine cannot starve the host it runs on. ``0`` means "no
limit" for every setting: the explicit opt-out (``--disk 0``), never a default.

Sizes are written as ``256M``, ``7G``, ``1.5GiB``, ``512MiB`` or plain bytes; the units are
binary (``M`` is MiB, as for ``docker --memory``), and limits are kept in whole MiB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vmrunner.errors import ConfigError

DEFAULT_CPUS = 2
DEFAULT_MEMORY_MIB = 7 * 1024
DEFAULT_DISK_MIB = 14 * 1024
#: Threads count too: generous for a parallel build, small enough to stop a fork bomb.
DEFAULT_PIDS = 4096
#: A machine's default memory is at most this share of the host's, so the host stays usable.
HOST_MEMORY_SHARE = 0.5
#: Free disk kept for the host (state database, logs, snapshots): this, or 2% of the file system.
DISK_RESERVE_MIB = 1024
#: A default disk smaller than this is not worth starting a job on.
MIN_DEFAULT_DISK_MIB = 1024
#: Below these a machine cannot even run its agent.
MIN_MEMORY_MIB = 32
MIN_DISK_MIB = 16
MIN_PIDS = 16

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?)(?:i?b)?", re.IGNORECASE)
EXAMPLES = "e.g. 512M, 7G, 1.5GiB, or plain bytes; 0 for no limit"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one machine may use; ``0`` for no limit."""

    cpus: int = 0
    memory_mib: int = 0
    pids: int = 0
    disk_mib: int = 0


@dataclass(frozen=True, slots=True)
class Host:
    """What the host has, for scaling the defaults down."""

    cpus: int
    memory_mib: int

    @classmethod
    def this(cls) -> Host:
        return cls(cpus=len(os.sched_getaffinity(0)) or 1, memory_mib=_mem_total_mib())


def _mem_total_mib() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return DEFAULT_MEMORY_MIB * 2


def resolve_limits(
    cpus: int | None, memory_mib: int | None, pids: int | None, *, host: Host | None = None
) -> Limits:
    """The CPU, memory and process limits of a machine: those given, the defaults for the rest.

    The disk is resolved by ``disk.resolve_disk`` (it depends on the free space at allocation).
    """
    host = host or Host.this()
    return Limits(
        cpus=min(DEFAULT_CPUS, host.cpus) if cpus is None else check_count(cpus, "cpus", minimum=1),
        memory_mib=(
            min(DEFAULT_MEMORY_MIB, max(MIN_MEMORY_MIB, int(host.memory_mib * HOST_MEMORY_SHARE)))
            if memory_mib is None
            else check_mib(memory_mib, "memory", MIN_MEMORY_MIB)
        ),
        pids=DEFAULT_PIDS if pids is None else check_count(pids, "pids", minimum=MIN_PIDS),
    )


def check_count(value: int, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} must be a whole number (0 for no limit), got {value!r}")
    if 0 < value < minimum:
        raise ConfigError(f"{what} must be at least {minimum} (or 0 for no limit), got {value}")
    return value


def check_mib(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} must be a size in MiB (0 for no limit), got {value!r}")
    if 0 < value < minimum:
        raise ConfigError(
            f"{what} must be at least {format_mib(minimum)} (or 0 for no limit), "
            f"got {format_mib(value)}"
        )
    return value


def parse_size(text: str | int, what: str, *, minimum: int = MIN_MEMORY_MIB) -> int:
    """A size in whole MiB (rounded up) from ``256M``, ``7G``, ``1.5GiB`` or plain bytes."""
    if isinstance(text, bool):
        raise ConfigError(f"{what}: {text!r} is not a size ({EXAMPLES})")
    if isinstance(text, int):
        text = str(text)
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{what}: {text!r} is not a size ({EXAMPLES})")
    number, unit = match["number"], match["unit"].lower()
    if not unit and "." in number:
        raise ConfigError(
            f"{what}: {text!r} is not a size: plain bytes are a whole number ({EXAMPLES})"
        )
    size = float(number) * _UNITS[unit]
    mib = int(-(-size // (1 << 20)))
    return check_mib(mib, what, minimum)


def format_mib(mib: int) -> str:
    """``256 MiB``, ``7 GiB``, ``1.5 GiB``: how reasons and messages show a size."""
    if mib >= 1024 and mib % 1024 == 0:
        return f"{mib // 1024} GiB"
    if mib >= 1024 and (mib * 10) % 1024 == 0:
        return f"{mib / 1024:g} GiB"
    return f"{mib} MiB"
