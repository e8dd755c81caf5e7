"""``python -m bench server [--rate R] [--seconds S] [--queue-seconds Q] [--json]``: webhook accept
latency and memory.

Starts a real ``vmrunner serve`` process on 127.0.0.1 (own VMRUNNER_HOME, one local repository)
and sends signed webhooks open-loop at ``rate`` requests per second (each sent on schedule,
whatever the previous ones are doing, so a slow server shows up as latency, not as a lower
rate). Latency is from sending a request to its complete response, on the client.

Scenarios: ``ping`` (answered, nothing stored); ``acknowledged`` (an ``issues`` event: the
delivery is recorded in SQLite and ignored); ``queue-run`` (a ``push`` that the repository's
workflow matches: recorded, dispatched in the background, one run each; its job is skipped by
``if: false`` so no machine is started and the backlog stays small); ``api-read`` (``GET
/api/runs?limit=20`` with a ``read`` bearer token: the token check is one indexed read). The
goal is p99 <= 10 ms.
The server's own CPU time per request (from /proc, over the scenario, background work
included) is reported too: unlike latency it does not depend on what else the host runs.
Memory: the server's resident set (VmRSS) at idle after start, its peak while under load, and
after the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.qemu import cpu_seconds
from vmrunner.server.signatures import sign

SECRET = b"bench-secret"
WORKFLOW = (
    "on: push\njobs:\n  skipped:\n    if: false\n    runs-on: ubuntu-latest\n    steps:\n  "
    "    - run: 'true'\n"
)


def _git(root: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@example.com",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def _repo(root: Path) -> str:
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(WORKFLOW)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "bench")
    return _git(root, "rev-parse", "HEAD")


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bodies(kind: str, count: int, sha: str) -> list[tuple[str, bytes]]:
    if kind == "ping":
        return [("ping", json.dumps({"zen": "Design for failure.", "hook_id": 1}).encode())] * count
    if kind == "acknowledged":
        return [
            (
                "issues",
                json.dumps(
                    {
                        "action": "opened",
                        "issue": {"number": i},
                        "repository": {"full_name": "bench/repo"},
                    }
                ).encode(),
            )
            for i in range(count)
        ]
    payload: dict[str, Any] = {
        "ref": "refs/heads/main",
        "after": sha,
        "deleted": False,
        "repository": {"full_name": "bench/repo"},
        "commits": [],
    }
    return [("push", json.dumps({**payload, "n": i}).encode()) for i in range(count)]


class _Connections:
    """Keep-alive HTTP/1.1 connections with hand-built requests: a load generator far cheaper than
    the server it measures."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.opened: list[asyncio.StreamWriter] = []

    async def post(
        self, path: str, headers: dict[str, str], body: bytes, method: str = "POST"
    ) -> int:
        if self.idle.empty() and len(self.opened) < self.size:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened.append(writer)
        else:
            reader, writer = await self.idle.get()
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        self.idle.put_nowait((reader, writer))
        return status

    def close(self) -> None:
        for writer in self.opened:
            writer.close()


async def _load(
    port: int, kind: str, rate: float, seconds: float, sha: str, pid: int, token: str = ""
) -> dict[str, Any]:
    count = max(1, int(rate * seconds))
    bodies = _bodies(kind, count, sha) if kind != "api-read" else [("", b"")] * count
    signed = [(event, body, sign(SECRET, body), str(uuid.uuid4())) for event, body in bodies]
    connections = _Connections(port, 64)
    latencies: list[float] = []
    errors = 0
    peak = 0

    async def one(event: str, body: bytes, signature: str, delivery: str) -> None:
        nonlocal errors
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
            "Content-Type": "application/json",
        }
        start = time.perf_counter()
        if kind == "api-read":
            status = await connections.post(
                "/api/runs?limit=20", {"Authorization": f"Bearer {token}"}, b"", "GET"
            )
        else:
            status = await connections.post("/webhook", headers, body)
        latencies.append(time.perf_counter() - start)
        if status not in (200, 202):
            errors += 1

    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for index, request in enumerate(signed):
                delay = start + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(one(*request))
                if index % max(1, int(rate / 10)) == 0:
                    peak = max(peak, _rss_kib(pid))
    finally:
        connections.close()
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu
    ordered = sorted(latencies)
    return {
        "scenario": kind,
        "requests": count,
        "errors": errors,
        "achieved_rate": round(count / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "server_cpu_ms_per_request": round(cpu * 1000 / count, 2),
        "peak_rss_mib": round(peak / 1024, 1),
    }


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-server-") as tmp:
        root = Path(tmp)
        sha = _repo(root / "repo")
        port = _free_port()
        env = {
            **os.environ,
            "VMRUNNER_HOME": str(root / "home"),
            "VMRUNNER_WEBHOOK_SECRET": SECRET.decode(),
        }
        command = [
            sys.executable,
            "-m",
            "vmrunner",
            "serve",
            "--port",
            str(port),
            "--repo",
            f"bench/repo={root / 'repo'}",
            "--log-level",
            "error",
            "--drain-seconds",
            "5",
        ]
        token = subprocess.run(
            [sys.executable, "-m", "vmrunner", "tokens", "create", "bench", "--scope", "read"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            return asyncio.run(_measure(args, port, sha, server.pid, token))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


async def _measure(
    args: argparse.Namespace, port: int, sha: str, pid: int, token: str
) -> dict[str, Any]:
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        asyncio.timeout(60),
    ):
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    idle = _rss_kib(pid)
    results = [await _load(port, "ping", args.rate, args.seconds, sha, pid)]
    results.append(await _load(port, "acknowledged", args.rate, args.seconds, sha, pid))
    if args.queue_seconds > 0:
        results.append(await _load(port, "queue-run", args.rate, args.queue_seconds, sha, pid))
    results.append(await _load(port, "api-read", args.rate, args.seconds, sha, pid, token))
    return {
        "rate": args.rate,
        "scenarios": results,
        "idle_rss_mib": round(idle / 1024, 1),
        "after_load_rss_mib": round(_rss_kib(pid) / 1024, 1),
        "high_water_rss_mib": round(_rss_kib(pid, "VmHWM") / 1024, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="requests per second (default 200)"
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="seconds per acknowledged scenario (default 5)"
    )
    parser.add_argument(
        "--queue-seconds",
        type=float,
        default=2.0,
        help="seconds of run-queuing pushes (0: skip; default 2)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    report = _bench(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"webhook accept latency at {args.rate:g} req/s (goal: p99 <= 10 ms)")
    print(
        f"{'scenario':<14}{'requests':>9}{'rate':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}{'CPU ms/req':>11}{'peak RSS MiB':>14}"
    )
    for row in report["scenarios"]:
        print(f"{row['scenario']:<14}{row['requests']:>9}{row['achieved_rate']:>8}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['max_ms']:>9}{row['errors']:>8}{row['server_cpu_ms_per_request']:>11}{row['peak_rss_mib']:>14}")
    print(
        f"server RSS: idle {report['idle_rss_mib']} MiB, after load "
        f"{report['after_load_rss_mib']} MiB, high water {report['high_water_rss_mib']} MiB"
    )
    return 0
