"""Logs with bounds, for real: a step printing 100 MiB is kept capped at 64 MiB with a visible
mark, a 20 MB single line does not stall its run, and a real ``vmrunner serve`` streams that
run's logs (and ``vmrunner runs show --logs`` prints them) with a peak RSS under 300 MiB."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.server.helpers import (
    SECRET,
    api_token,
    config,
    deliver,
    finished,
    make_repo,
    settled,
)
from tests.server.test_webhook_bounds import _push
from vmrunner.reports.storage import DEFAULT_MAX_STEP_LOG, truncation_mark
from vmrunner.workflow.lines import MAX_LINE

WORKFLOW = """\
name: CI
on: push
jobs:
  loud:
    runs-on: ubuntu-latest
    steps:
      - name: one long line
        run: head -c 20000000 /dev/zero | tr '\\0' x; echo; echo after the long line
      - name: a hundred MiB
        run: head -c 104857600 /dev/zero | tr '\\0' y | fold -w 8191
      - name: after
        run: echo still running
"""
MAX_RSS_MIB = 300


def _rss_mib(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def _serve(port: int, repo: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "VMRUNNER_WEBHOOK_SECRET": SECRET.decode()}
    process = subprocess.Popen(
        [sys.executable, "-m", "vmrunner", "serve", "--port", str(port),
         "--repo", f"acme/widgets={repo}", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_a_loud_step_is_capped_and_its_logs_are_served_in_bounded_memory(
    tmp_path: Path,
) -> None:
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW})
    from tests.server.helpers import live_server

    async with live_server(config({"acme/widgets": root})) as client:
        delivery = str(uuid.uuid4())
        await deliver(client, "push", _push(sha), delivery)
        run_id = (await settled(client, delivery))["runs"][0]["run_id"]
        run = await finished(client, run_id, patience=600)
    assert run["server"]["conclusion"] == "success"
    steps = {step["name"]: step["index"] for step in run["result"]["jobs"][0]["steps"]}
    by_step: dict[int, list[str]] = {}
    for row in run["logs"]:
        by_step.setdefault(row["step_index"], []).append(row["text"])
    long_line = by_step[steps["one long line"]]
    assert "".join(long_line[:-1]) == "x" * 20_000_000  # in pieces, nothing lost
    assert max(map(len, long_line)) <= MAX_LINE
    assert long_line[-1] == "after the long line"
    loud = by_step[steps["a hundred MiB"]]
    assert loud[-1] == truncation_mark(DEFAULT_MAX_STEP_LOG)
    kept = sum(len(text) for text in loud[:-1])
    assert DEFAULT_MAX_STEP_LOG - 8192 <= kept <= DEFAULT_MAX_STEP_LOG
    assert by_step[steps["after"]] == ["still running"]

    # A real server process streams the run's 64 MiB of logs; its peak RSS stays bounded.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = api_token("rss", "read")
    with _serve(port, root) as server:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=120,
            headers={"Authorization": f"Bearer {token}"},
        ) as api:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await api.get("/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
            before = _rss_mib(server.pid, "VmRSS")
            received = lines = 0
            async with api.stream("GET", f"/api/runs/{run_id}/logs") as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    received += len(line)
                    lines += 1
            peak = _rss_mib(server.pid)
    assert lines == len(run["logs"])
    assert received > DEFAULT_MAX_STEP_LOG
    assert peak < MAX_RSS_MIB, f"server peak RSS {peak:.0f} MiB (idle {before:.0f} MiB)"

    # `vmrunner runs show --logs` prints it as a stream too.
    for extra in ((), ("--json",)):
        size, peak = await asyncio.to_thread(_show, run_id, *extra)
        assert size > DEFAULT_MAX_STEP_LOG
        assert peak < MAX_RSS_MIB, f"runs show {' '.join(extra)}: peak RSS {peak:.0f} MiB"
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "vmrunner", "runs", "show", run_id, "--logs", "--json"],
        capture_output=True, check=True,
    )
    assert json.loads(shown.stdout)["logs"][-1]["text"] == "still running"


def _show(run_id: str, *extra: str) -> tuple[int, float]:
    """Bytes printed by ``vmrunner runs show RUN --logs`` and its peak RSS in MiB (VmHWM, read
    as it prints: it belongs to the program, unlike ``ru_maxrss``, which counts the memory of
    the forking test process too)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vmrunner", "runs", "show", run_id, "--logs", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    size, peak = 0, 0.0
    with process:
        while chunk := process.stdout.read(1 << 20):
            size += len(chunk)
            with contextlib.suppress(OSError):
                peak = max(peak, _rss_mib(process.pid))
    assert process.returncode == 0
    return size, peak
