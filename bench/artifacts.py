"""Artifact upload/download and cache save/restore throughput, beside a plain ``cp``.

``python -m bench artifacts [--mib 100] [--repeat 3]``

Runs GitHub's own built actions (``actions/upload-artifact``, ``download-artifact``,
``cache``; built once per machine like the tests do, ``tests/services/actions.py``) with node
on the host against the services served on their unix socket, reached through a 127.0.0.1
listener piped to it (what a machine's forward does). The payload is ``--mib`` MiB of random
bytes (incompressible, so the figures are the transfer's, not the compressor's; upload-artifact
runs with ``compression-level: 0``). Each figure is the best of ``--repeat`` runs of the whole
action (node start, zip or tar, HTTP, blob storage), in MiB/s of payload.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

MIB = 1 << 20


async def _measure(mib: int, repeat: int, scratch: Path) -> dict[str, float]:
    from tests.services.actions import built_actions
    from tests.services.node import run_action, tcp_to_unix
    from vmrunner.services.host import serve_services
    from vmrunner.services.settings import ServiceSettings
    from vmrunner.services.tokens import JobGrant

    build = built_actions() / "build"
    source = scratch / "source"
    (source / "out").mkdir(parents=True)
    payload = source / "out" / "payload.bin"
    with payload.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = max(best.get(name, 0.0), mib / seconds)

    for _ in range(repeat):
        copy = scratch / "copy.bin"
        began = time.perf_counter()
        process = await asyncio.create_subprocess_exec("cp", str(payload), str(copy))
        if await process.wait():
            raise RuntimeError("cp failed")
        keep("cp", time.perf_counter() - began)
        copy.unlink()
    settings = ServiceSettings(scratch / "artifacts", scratch / "cache", cache_size=100 * mib * MIB)
    async with serve_services(settings) as host:
        if host is None:
            raise RuntimeError("the services did not start")
        async with tcp_to_unix(host.socket) as port:
            for round_ in range(repeat):
                run_id = f"bench-{round_}"
                up = JobGrant(run_id, "up", "bench/repo", "refs/heads/main", ("refs/heads/main",))
                down = JobGrant(run_id, "down", "bench/repo", "refs/heads/main", ())
                began = time.perf_counter()
                result = await run_action(
                    build / "upload-artifact" / "dist" / "upload" / "index.js", source,
                    host.action_env(up, port),
                    {"name": "payload", "path": "out/", "compression-level": "0",
                     "if-no-files-found": "error", "retention-days": "1",
                     "overwrite": "false", "include-hidden-files": "false"},
                )
                if result.exit_code:
                    raise RuntimeError(result.output)
                keep("artifact upload", time.perf_counter() - began)
                target = scratch / f"down-{round_}"
                target.mkdir()
                began = time.perf_counter()
                result = await run_action(
                    build / "download-artifact" / "dist" / "index.js", target,
                    host.action_env(down, port),
                    {"name": "payload", "path": "got", "merge-multiple": "false",
                     "repository": "bench/repo", "run-id": "1", "github-token": ""},
                )
                if result.exit_code:
                    raise RuntimeError(result.output)
                keep("artifact download", time.perf_counter() - began)
                shutil.rmtree(target)
                inputs = {"path": "out", "key": f"bench-{round_}", "enableCrossOsArchive": "false",
                          "fail-on-cache-miss": "false", "lookup-only": "false",
                          "save-always": "false"}
                cache = build / "cache" / "dist"
                began = time.perf_counter()
                result = await run_action(
                    cache / "save-only" / "index.js", source, host.action_env(up, port), inputs
                )
                if result.exit_code or "Cache saved" not in result.output:
                    raise RuntimeError(result.output)
                keep("cache save", time.perf_counter() - began)
                target = scratch / f"restore-{round_}"
                target.mkdir()
                began = time.perf_counter()
                result = await run_action(
                    cache / "restore-only" / "index.js", target, host.action_env(up, port), inputs
                )
                if result.outputs.get("cache-hit") != "true":
                    raise RuntimeError(result.output)
                keep("cache restore", time.perf_counter() - began)
                shutil.rmtree(target)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench artifacts", description=__doc__)
    parser.add_argument("--mib", type=int, default=100, help="payload size (MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best kept")
    parser.add_argument("--where", default=None, help="scratch folder's parent (default /tmp)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="vmrunner-bench-artifacts-", dir=args.where))
    os.environ.setdefault("VMRUNNER_HOME", str(scratch / "home"))
    try:
        best = asyncio.run(_measure(args.mib, args.repeat, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.mib} MiB of random bytes, best of {args.repeat} (whole action, node included)")
    for name in ("cp", "artifact upload", "artifact download", "cache save", "cache restore"):
        print(f"  {name:<18} {best[name]:8.1f} MiB/s")
    return 0
