"""The live view on a real terminal (a pseudo-terminal 80 columns wide): one line per running
job, cut to the width, never wrapped, and the queued jobs listed under them."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.cli.helpers import ROOT

LONG = "a-step-whose-name-is-much-longer-than-an-eighty-column-terminal-can-hold-END"
WORKFLOW = f"""\
name: Live
on: push
jobs:
  first:
    runs-on: ubuntu-latest
    steps:
      - name: {LONG}
        run: sleep 2
  second:
    runs-on: ubuntu-latest
    steps:
      - run: echo second
"""
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_LIVE_ROW = re.compile(r"^[\u2800-\u28ff·] ")


def run_in_terminal(cwd: Path, *args: str, columns: int = 80) -> str:
    """``vmrunner ARGS`` on a pseudo-terminal of ``columns``; everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    for name in ("COLUMNS", "LINES", "NO_COLOR"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "vmrunner", *args], cwd=cwd, env=env,
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other end is closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
    finally:
        process.kill() if process.poll() is None else None
        process.wait()
        os.close(leader)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_the_live_view_fits_80_columns_and_shows_queued_jobs(tmp_path: Path) -> None:
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "live.yml").write_text(WORKFLOW)
    text = run_in_terminal(tmp_path, "run", "--concurrent-jobs", "1", "-j", "first", "-j", "second")
    lines = [
        line.strip() for line in re.split(r"[\r\n]", _ESCAPE.sub("", text)) if line.strip()
    ]
    rows = [line for line in lines if _LIVE_ROW.match(line)]
    running = [row for row in rows if "[Live/first]" in row and "queued" not in row]
    assert any(LONG[:20] in row for row in running), lines
    for row in rows:
        assert len(row) <= 80, row
        assert re.search(r"\d+\.\ds$", row), f"a live row was wrapped: {row!r}"
    assert not [line for line in lines if line.startswith("END") or line == LONG[-20:]]
    assert all("…" in row for row in running if LONG[:20] in row)
    assert any(row.startswith("·") and "[Live/second]" in row and "queued" in row for row in rows)
    # the lines printed above the live region keep the whole name
    assert any(line.endswith(LONG) for line in lines)
