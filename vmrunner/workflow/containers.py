"""``container:`` and ``services:`` options: the ``docker create`` flags that still mean
something without Docker, parsed once; every other flag is an error that names it.

A machine already has its own network, pid, ipc and uts namespaces, cgroup limits and disk, so
flags that choose those (``--network``, ``--privileged``, ``--cap-add``...) cannot apply.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from vmrunner.errors import ConfigError

#: Flags that take a value, by their long name (and short aliases).
_VALUED = {
    "--user": "user", "-u": "user", "--workdir": "workdir", "-w": "workdir",
    "--entrypoint": "entrypoint", "--env": "env", "-e": "env", "--hostname": "hostname",
    "-h": "hostname", "--health-cmd": "health_cmd", "--health-interval": "health_interval",
    "--health-timeout": "health_timeout", "--health-retries": "health_retries",
    "--health-start-period": "health_start_period",
}  # fmt: skip
#: Flags accepted and ignored: what they ask for is what every machine gets anyway.
_IGNORED = frozenset({"--init", "--rm", "--tty", "-t", "--interactive", "-i"})


@dataclass(frozen=True, slots=True)
class ContainerOptions:
    """What ``options:`` asks for, typed."""

    user: str = ""
    workdir: str = ""
    entrypoint: str = ""
    env: tuple[tuple[str, str], ...] = ()
    hostname: str = ""
    health_cmd: str = ""
    health_interval: float = 10.0
    health_timeout: float = 30.0
    health_retries: int = 3
    health_start_period: float = 0.0


def parse_options(text: str | None, where: str = "container.options") -> ContainerOptions:
    """``text`` (as a shell would split it) as options; ``ConfigError`` names a flag that
    cannot apply to a machine, or a malformed value."""
    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    values: dict[str, str] = {}
    env: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        flag, equals, value = word.partition("=")
        if flag in _IGNORED and not equals:
            index += 1
            continue
        if flag not in _VALUED:
            raise ConfigError(
                f"{where}: {flag} cannot apply to a vmrunner machine (it accepts "
                f"{', '.join(sorted(k for k in _VALUED if k.startswith('--')))})"
            )
        if not equals:
            index += 1
            if index >= len(words):
                raise ConfigError(f"{where}: {flag} needs a value")
            value = words[index]
        index += 1
        if _VALUED[flag] == "env":
            name, _, setting = value.partition("=")
            env.append((name, setting))
        else:
            values[_VALUED[flag]] = value
    numbers: dict[str, float] = {}
    for name in ("health_interval", "health_timeout", "health_start_period"):
        if name in values:
            numbers[name] = _duration(values.pop(name), f"{where}: --{name.replace('_', '-')}")
    retries = values.pop("health_retries", "3")
    if not retries.isdigit():
        raise ConfigError(f"{where}: --health-retries must be a whole number, not {retries!r}")
    return ContainerOptions(
        user=values.get("user", ""), workdir=values.get("workdir", ""),
        entrypoint=values.get("entrypoint", ""), env=tuple(env),
        hostname=values.get("hostname", ""), health_cmd=values.get("health_cmd", ""),
        health_interval=numbers.get("health_interval", 10.0),
        health_timeout=numbers.get("health_timeout", 30.0), health_retries=int(retries),
        health_start_period=numbers.get("health_start_period", 0.0),
    )  # fmt: skip


def _duration(text: str, where: str) -> float:
    """Docker's durations: ``10s``, ``1m30s``, ``500ms``, or plain seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number = 0.0, ""
    rest = text.strip()
    try:
        if rest.replace(".", "", 1).isdigit():
            return float(rest)
        while rest:
            digits = len(rest) - len(rest.lstrip("0123456789."))
            number, rest = rest[:digits], rest[digits:]
            unit = "ms" if rest.startswith("ms") else rest[:1]
            if not number or unit not in units:
                raise ValueError
            total += float(number) * units[unit]
            rest = rest[len(unit) :]
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a duration (e.g. 10s, 1m30s)") from None
    return total
