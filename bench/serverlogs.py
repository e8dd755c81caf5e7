"""``python -m bench serverlogs [--mib N] [--line-bytes B] [--json]``: the memory of serving and
showing a run with a huge log.

Keeps a synthetic run whose one step prints ``--mib`` MiB (default 100) in lines of
``--line-bytes`` (through ``StoreSink``: the step's log is capped, 64 MiB by default), starts a
real ``vmrunner serve`` on 127.0.0.1 and streams ``GET /api/runs/{id}/logs`` with a read token,
then runs ``vmrunner runs show ID --logs`` (and ``--json``). Reported: the kept size, the
server's resident set before and its high-water mark (VmHWM) after streaming, the bytes and
seconds of the stream, and the high-water mark of each ``runs show``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from vmrunner.reports import events as ev
from vmrunner.reports.storage import StoreSink
from vmrunner.store import Store


def _hwm_mib(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _keep_run(mib: int, line_bytes: int) -> tuple[str, int]:
    now = time.time()
    with Store.open() as store, StoreSink(store) as sink:
        sink.emit(ev.RunStarted("bench-logs", "loud", "loud.yml", "push", now))
        sink.emit(ev.JobQueued("bench-logs", "loud", "loud", "loud", now))
        sink.emit(ev.JobStarted("bench-logs", "loud", now, "s", "m", "sandbox", "default", False))
        sink.emit(ev.StepStarted("bench-logs", "loud", 0, "run", "print", now))
        line = "y" * line_bytes
        for _ in range(mib * (1 << 20) // line_bytes):
            sink.emit(ev.LogLine("bench-logs", "loud", 0, "stdout", line, now))
        sink.emit(ev.StepFinished("bench-logs", "loud", 0, "success", "success", now, 1.0))
        sink.emit(ev.RunFinished("bench-logs", "success", time.time(), 1.0))
        kept = sum(len(row.text) for _, row in store.iter_run_logs("bench-logs"))
    return "bench-logs", kept


def _show(env: dict[str, str], *extra: str) -> float:
    process = subprocess.Popen(
        [sys.executable, "-m", "vmrunner", "runs", "show", "bench-logs", "--logs", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    peak = 0.0
    with process:
        while process.stdout.read(1 << 20):
            try:
                peak = max(peak, _hwm_mib(process.pid))
            except OSError:
                break
    return round(peak, 1)


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-logs-") as tmp:
        env = {**os.environ, "VMRUNNER_HOME": str(Path(tmp) / "home"),
               "VMRUNNER_WEBHOOK_SECRET": "bench"}
        os.environ["VMRUNNER_HOME"] = env["VMRUNNER_HOME"]
        run_id, kept = _keep_run(args.mib, args.line_bytes)
        token = subprocess.run(
            [sys.executable, "-m", "vmrunner", "tokens", "create", "bench", "--scope", "read"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "vmrunner", "serve", "--port", str(port), "--repo",
             f"bench/repo={tmp}", "--log-level", "error"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                for _ in range(600):
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.1)
                idle = _hwm_mib(server.pid, "VmRSS")
                start = time.perf_counter()
                received = 0
                with client.stream("GET", f"/api/runs/{run_id}/logs") as response:
                    for chunk in response.iter_bytes():
                        received += len(chunk)
                seconds = time.perf_counter() - start
                peak = _hwm_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
        return {
            "printed_mib": args.mib, "kept_mib": round(kept / 2**20, 1),
            "server_idle_rss_mib": round(idle, 1), "server_peak_rss_mib": round(peak, 1),
            "streamed_mib": round(received / 2**20, 1), "stream_seconds": round(seconds, 2),
            "runs_show_peak_rss_mib": _show(env),
            "runs_show_json_peak_rss_mib": _show(env, "--json"),
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench serverlogs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mib", type=int, default=100, help="MiB the step prints (default 100)")
    parser.add_argument("--line-bytes", type=int, default=8191, help="bytes per line (8191)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    report = _bench(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    return 0
