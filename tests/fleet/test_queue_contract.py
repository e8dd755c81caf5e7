"""The one queue interface, two implementations: the same checks on the embedded single-host
queue (in-process, SQLite) and on the fleet (PostgreSQL, procrastinate, a real agent)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fleet.harness import agents, until
from vmrunner.fleet.embedded import EmbeddedQueue
from vmrunner.fleet.queue import JobQueue, QueuedRun
from vmrunner.fleet.store import FleetStore
from vmrunner.machines.providers import get_provider
from vmrunner.runner.options import RunOptions
from vmrunner.sessions import SessionManager
from vmrunner.store import Store

CHAIN = """
on: push
jobs:
  first:
    runs-on: linux
    outputs:
      word: ${{ steps.s.outputs.word }}
    steps:
      - id: s
        run: |
          echo "first says hi"
          echo "word=hello" >> "$GITHUB_OUTPUT"
  second:
    runs-on: linux
    needs: first
    outputs:
      heard: ${{ steps.s.outputs.heard }}
    steps:
      - id: s
        run: echo "heard=${{ needs.first.outputs.word }}" >> "$GITHUB_OUTPUT"
"""
HANGS = (
    "on: push\njobs:\n  hang:\n    runs-on: linux\n    steps:\n      - run: sleep 120\n  "
    "later:\n    runs-on: linux\n    needs: hang\n    steps:\n      - run: 'true'\n"
)


@pytest.fixture(params=["embedded", "fleet"])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[tuple[JobQueue, RunOptions]]:
    with tempfile.TemporaryDirectory(prefix="vmrunner-queue-") as folder:
        repo = Path(folder) / "repo"
        repo.mkdir()
        options = RunOptions(repo_root=str(repo), repository="octo/queue")
        async with contextlib.AsyncExitStack() as stack:
            if request.param == "embedded":
                provider = get_provider("sandbox")
                stack.push_async_callback(provider.aclose)
                sessions = await stack.enter_async_context(
                    SessionManager(provider, limit=2, wait_timeout=None)
                )
                store = stack.enter_context(Store.open())
                yield await stack.enter_async_context(EmbeddedQueue(sessions, store)), options
            else:
                database: str = request.getfixturevalue("database")
                await stack.enter_async_context(agents(database, ("h1", "linux")))
                yield await stack.enter_async_context(FleetStore(database)), options


async def _finished(queue: JobQueue, run_id: str) -> QueuedRun:
    async def done() -> QueuedRun | None:
        run = await queue.run(run_id)
        return run if run.status == "completed" else None

    result: QueuedRun = await until(done, within=60, what="the run to finish")
    return result


async def test_needs_outputs_and_logs(queue: tuple[JobQueue, RunOptions]) -> None:
    jobs, options = queue
    run_id = await jobs.submit(CHAIN, "chain.yml", options)
    lines = [(job, line) async for job, _, line in jobs.follow(run_id)]
    run = await _finished(jobs, run_id)
    assert run.conclusion == "success"
    assert run.job("second").outputs == {"heard": "hello"}
    assert ("first", "first says hi") in lines
    assert ("first", "first says hi") in [
        (job, line) for _, job, _, line in await jobs.logs(run_id)
    ]
    assert all(
        job != "first"
        for _, job, _, _ in await jobs.logs(run_id, after=(await jobs.logs(run_id))[-1][0])
    )


async def test_cancel_ends_running_and_waiting_jobs(queue: tuple[JobQueue, RunOptions]) -> None:
    jobs, options = queue
    run_id = await jobs.submit(HANGS, "hang.yml", options)

    async def running() -> bool:
        return any(
            job.job_id == "hang" and job.status == "running"
            for job in (await jobs.run(run_id)).jobs
        )

    await until(running, within=60, what="the job running")
    assert await jobs.cancel(run_id)
    run = await _finished(jobs, run_id)
    assert run.conclusion == "cancelled"
    assert run.job("hang").status == "cancelled"
    assert not await jobs.cancel(run_id)


async def test_a_redelivery_makes_no_second_run(queue: tuple[JobQueue, RunOptions]) -> None:
    jobs, options = queue
    first = await jobs.submit(CHAIN, "chain.yml", options, delivery_id="abc")
    assert await jobs.submit(CHAIN, "chain.yml", options, delivery_id="abc") == first
    assert (await _finished(jobs, first)).conclusion == "success"
