"""The database goes away under running agents: briefly (transparent) and for longer than the
stall interval (agents fence themselves, start again, the job runs once more, once)."""

from __future__ import annotations

import asyncio

from tests.fleet.conftest import Cluster
from tests.fleet.harness import agents, finished, options, until
from vmrunner.fleet.store import FleetStore

SLOW = "on: push\njobs:\n  slow:\n    runs-on: linux\n    steps:\n      - run: sleep {seconds}\n"


async def _running(store: FleetStore, run_id: str) -> bool:
    return (await store.run(run_id)).job("slow").status == "running"


async def _outage(cluster: Cluster, seconds: float) -> None:
    await asyncio.to_thread(cluster.stop)
    try:
        await asyncio.sleep(seconds)
    finally:
        await asyncio.to_thread(cluster.start)


async def test_a_short_outage_retries_nothing(database: str, postgres_cluster: Cluster) -> None:
    async with agents(database, ("h1", "linux"), ("h2", "linux")) as started:
        async with FleetStore(database) as store:
            run_id = await store.submit(SLOW.format(seconds=5), "slow.yml", options(started))
            await until(lambda: _running(store, run_id), within=60, what="the job running")
        await _outage(postgres_cluster, 1.5)  # shorter than the fence (4 s)
        async with FleetStore(database) as store:
            run = await finished(store, run_id)
            assert run.conclusion == "success"
            assert [(attempt, result) for _, attempt, _, result in await store.attempts(run_id)] == [(1, "success")]


async def test_a_long_outage_reruns_the_job_once_and_never_twice(database: str, postgres_cluster: Cluster) -> None:
    async with agents(database, ("h1", "linux"), ("h2", "linux")) as started:
        async with FleetStore(database) as store:
            run_id = await store.submit(SLOW.format(seconds=3), "slow.yml", options(started))
            await until(lambda: _running(store, run_id), within=60, what="the job running")
        await _outage(postgres_cluster, 8)  # longer than the stall interval (6 s)
        async with FleetStore(database) as store:
            run = await finished(store, run_id)
            assert run.conclusion == "success"
            results = [result for _, _, _, result in await store.attempts(run_id)]
            assert results.count("success") == 1
            assert results[-1] == "success"
        for agent in started.values():
            assert agent.process is not None
            assert agent.process.poll() is None  # still serving
