"""Host-side git (``vmrunner/repository.py``): a git that outlives its bound or its caller is
killed and reaped, with what it started."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from vmrunner import repository


def live_git_daemons(folder: Path) -> list[int]:
    """git daemons serving ``folder`` (the one the test started, if still alive)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        serving = b"daemon" in argv and f"--base-path={folder}".encode() in argv
        if serving and Path(f"/proc/{entry}/stat").read_text().split()[2] != "Z":
            found.append(int(entry))
    return found


async def test_a_git_past_its_timeout_is_killed_and_reaped_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``git daemon`` runs git-daemon as its child, which holds git's pipes: without the whole
    # process group killed, asyncio would wait for them, past the timeout, for ever.
    monkeypatch.setattr(repository, "GIT_TIMEOUT", 0.5)
    serve = ("daemon", "--listen=127.0.0.1", "--port=0", f"--base-path={tmp_path}")
    async with asyncio.timeout(30):
        with pytest.raises(TimeoutError):
            await repository.git(*serve, cwd=tmp_path)
    assert live_git_daemons(tmp_path) == []


async def test_a_cancelled_git_is_killed_and_reaped(tmp_path: Path) -> None:
    serve = ("daemon", "--listen=127.0.0.1", "--port=0", f"--base-path={tmp_path}")
    task = asyncio.ensure_future(repository.git(*serve, cwd=tmp_path))
    for _ in range(200):
        if live_git_daemons(tmp_path):
            break
        await asyncio.sleep(0.01)
    assert live_git_daemons(tmp_path), "git daemon did not start"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live_git_daemons(tmp_path) == []
