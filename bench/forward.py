"""``python -m bench forward``: throughput of a port forward into a machine.

A program inside the machine moves a payload (100 MiB by default) through ``Machine.forward``
to a host unix socket and back: upload (the machine sends, the host counts and answers once it
has everything) and download (the host sends, the machine reads it all). Beside them, the same
program reads the same payload from a file of the machine's own disk: what a copy costs without
the forward. Every figure is timed inside the machine, from the first byte to the last, and
given in MiB/s (best and median of ``--repeat`` runs). Goal: upload and download well above
100 MiB/s on the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from vmrunner.machines.base import Machine, MachineSpec, Provider

GOAL_MIB_S = 100.0
MiB = 1 << 20

#: ``python3 -c MEASURE PORT WHAT PATH SIZE``: seconds for one transfer, timed in the machine.
MEASURE = textwrap.dedent("""
    import socket, sys, time
    port, what, path, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    buffer = bytearray(1 << 20)
    started = time.perf_counter()
    if what == "local":
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    elif what == "upload":
        with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb", 0) as f:
            s.sendall(b"upload %d\\n" % size)
            while n := f.readinto(buffer):
                s.sendall(memoryview(buffer)[:n])
            assert s.recv(100) == b"ok\\n"
    else:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"download %d\\n" % size)
            got = 0
            while got < size:
                n = s.recv_into(buffer)
                assert n, "the host ended early"
                got += n
    print(time.perf_counter() - started)
""")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The host's end: ``upload N`` (count N bytes, answer ok) or ``download N``."""
    what, size = (await reader.readline()).split()
    left = int(size)
    if what == b"upload":
        while left:
            data = await reader.read(min(left, MiB))
            if not data:
                break
            left -= len(data)
        writer.write(b"ok\n")
    else:
        block = bytes(MiB)
        while left:
            writer.write(block[: min(left, MiB)])
            left -= min(left, MiB)
            await writer.drain()
    await writer.drain()
    writer.close()


async def measure(machine: Machine, port: int, what: str, path: str, size: int) -> float:
    result = await machine.exec(["python3", "-c", MEASURE, str(port), what, path, str(size)])
    if not result.ok:
        raise RuntimeError(f"{what} failed: {result.stderr.decode(errors='replace')}")
    return size / MiB / float(result.stdout)


async def run(provider: Provider, *, network: str, size_mib: int, repeat: int) -> dict[str, Any]:
    size = size_mib * MiB
    machine = await provider.allocate(MachineSpec(network=network))  # type: ignore[arg-type]
    try:
        with tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as folder:
            socket_path = Path(folder) / "service.sock"
            server = await asyncio.start_unix_server(serve, str(socket_path), limit=MiB)
            payload = f"{machine.paths.temp}/payload"
            made = await machine.exec(["sh", "-c", f"head -c {size} /dev/urandom > {payload}"])
            if not made.ok:
                raise RuntimeError(f"cannot write the payload: {made.stderr.decode()}")
            figures: dict[str, list[float]] = {"local": [], "upload": [], "download": []}
            async with machine.forward(socket_path) as port:
                for _ in range(repeat):
                    for what in figures:
                        figures[what].append(await measure(machine, port, what, payload, size))
            server.close()
    finally:
        await provider.release(machine)
        await provider.aclose()
    return {
        "provider": provider.name,
        "network": network,
        "size_mib": size_mib,
        **{
            f"{what}_mib_s": {"best": max(values), "median": statistics.median(values)}
            for what, values in figures.items()
        },
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        f"provider: {results['provider']}, network: {results['network']}, "
        f"payload: {results['size_mib']} MiB"
    ]
    for what, label in (
        ("local", "read from the machine's disk"),
        ("upload", "upload through the forward"),
        ("download", "download through the forward"),
    ):
        figure = results[f"{what}_mib_s"]
        goal = "" if what == "local" else f"(goal > {GOAL_MIB_S:.0f} MiB/s)"
        lines.append(
            f"  {label:<30} best {figure['best']:8.0f} MiB/s   "
            f"median {figure['median']:8.0f} MiB/s  {goal}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench forward", description=__doc__)
    parser.add_argument("--provider", default="sandbox", help="provider (default: sandbox)")
    parser.add_argument(
        "--network", default="private", choices=("private", "host", "none"),
        help="the machine's network (default: private)",
    )
    parser.add_argument("--size-mib", type=int, default=100, help="payload size (default: 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each transfer")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    from vmrunner.machines.providers import get_provider

    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as home:
        Path(home).chmod(0o711)
        provider = get_provider(args.provider, home=Path(home))
        results = asyncio.run(
            run(provider, network=args.network, size_mib=args.size_mib, repeat=args.repeat)
        )
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0
