"""Real ``vmrunner agent`` processes against the test cluster, and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from vmrunner.fleet.queue import QueuedRun
from vmrunner.fleet.store import FleetStore
from vmrunner.runner.options import RunOptions

#: Short intervals so losing a host takes seconds, not minutes (same logic as the defaults).
FAST = {"heartbeat": 0.3, "stall": 6.0, "fence": 4.0, "sweep_interval": 0.5}


class AgentProcess:
    def __init__(
        self,
        url: str,
        name: str,
        labels: str,
        home: Path,
        capacity: int = 1,
        extra: tuple[str, ...] = (),
        **intervals: float,
    ) -> None:
        self.name = name
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        settings = {**FAST, **intervals}
        self.argv = [
            sys.executable,
            "-m",
            "vmrunner",
            "agent",
            "--name",
            name,
            "--labels",
            labels,
            "--capacity",
            str(capacity),
            "--store",
            url,
            "--provider",
            "sandbox",
            "--log-level",
            "info",
            *[
                arg
                for key, value in settings.items()
                for arg in (f"--{key.replace('_', '-')}", str(value))
            ],
            *extra,
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / f"{name}.log"

    def start(self) -> None:
        env = {**os.environ, "VMRUNNER_HOME": str(self.home)}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.asynccontextmanager
async def agents(
    url: str, *specs: tuple[str, str], extra: tuple[str, ...] = (), **intervals: float
) -> AsyncIterator[dict[str, AgentProcess]]:
    """Start one agent per (name, labels), each with its own home (its own host), and wait
    until each is registered. Homes live outside pytest's tmp_path, which concurrent pytest
    sessions may rotate away; a failing test shows the agents' logs."""
    with tempfile.TemporaryDirectory(prefix="vmrunner-fleet-") as folder:
        os.chmod(folder, 0o711)  # the sandboxes' unprivileged bwrap passes through it
        started = {
            name: AgentProcess(url, name, labels, Path(folder) / name, extra=extra, **intervals)
            for name, labels in specs
        }
        try:
            for agent in started.values():
                agent.start()
            async with FleetStore(url) as store:
                await until(
                    lambda: _registered(store, set(started)), within=60, what="agents registered"
                )
            yield started
        except BaseException:
            for agent in started.values():
                sys.stderr.write(f"--- agent {agent.name}\n{agent.output()[-4000:]}\n")
            raise
        finally:
            for agent in started.values():
                agent.stop()


async def _registered(store: FleetStore, names: set[str]) -> bool:
    async with store.pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT name FROM vmrunner_agents WHERE heartbeat_at > now() - interval '5 seconds'"
            )
        ).fetchall()
    return names <= {row[0] for row in rows}


async def until(
    check: Callable[[], Awaitable[Any]], *, within: float, what: str, every: float = 0.1
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


async def finished(store: FleetStore, run_id: str, within: float = 60) -> QueuedRun:
    async def done() -> QueuedRun | None:
        run = await store.run(run_id)
        return run if run.status == "completed" else None

    result: QueuedRun = await until(done, within=within, what=f"run {run_id} to finish")
    return result


def options(agents: dict[str, AgentProcess]) -> RunOptions:
    """Run options for a run on these agents (an empty repository beside their homes)."""
    repo = next(iter(agents.values())).home.parent / "repo"
    repo.mkdir(exist_ok=True)
    return RunOptions(repo_root=str(repo), repository="octo/fleet")
