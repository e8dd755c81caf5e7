"""The database goes away under running agents: for 5 s (issue 9: nothing is retried) and for
longer than the stall interval (agents fence themselves, start again, the job runs once more, once).

Intervals: a stop of PostgreSQL is survived without a retry when it is shorter than the agents'
fence (an agent gives its attempts up after ``fence`` seconds without the database) and than the
stall (the sweep retries a job whose heartbeat is older). The 5 s test runs its agents with
fence 8 s and stall 10 s, so a real 5 s stop (plus the second or two PostgreSQL takes to stop
and start) stays below both. The long-outage test stops it for 45 s under the agents' default
intervals (fence 20 s, stall 30 s, sweep every 5 s)."""

from __future__ import annotations

import asyncio

from tests.fleet.conftest import Cluster
from tests.fleet.harness import agents, finished, options, until
from vmrunner.fleet.store import FleetStore

#: The agent's own defaults (``AgentConfig``), not the harness's fast ones.
DEFAULTS = {"heartbeat": 1.0, "fence": 20.0, "stall": 30.0, "sweep_interval": 5.0}
SLOW = "on: push\njobs:\n  slow:\n    runs-on: linux\n    steps:\n      - run: sleep {seconds}\n"
#: Prints a line a second, before, during and after the outage.
TICKS = (
    "on: push\njobs:\n  slow:\n    runs-on: linux\n    steps:\n      - run: for i in 1 2 3 4 "
    "5 6 7 8; do echo tick $i; sleep 1; done\n"
)


async def _running(store: FleetStore, run_id: str) -> bool:
    return (await store.run(run_id)).job("slow").status == "running"


async def _outage(cluster: Cluster, seconds: float) -> None:
    await asyncio.to_thread(cluster.stop)
    try:
        await asyncio.sleep(seconds)
    finally:
        await asyncio.to_thread(cluster.start)


async def test_a_five_second_outage_retries_nothing(
    database: str, postgres_cluster: Cluster
) -> None:
    async with agents(database, ("h1", "linux"), ("h2", "linux"), fence=8.0, stall=10.0) as started:
        async with FleetStore(database) as store:
            run_id = await store.submit(TICKS, "ticks.yml", options(started))
            await until(lambda: _running(store, run_id), within=60, what="the job running")
        await _outage(
            postgres_cluster, 5
        )  # issue 9's outage; shorter than the fence (8 s) and the stall (10 s)
        async with FleetStore(database) as store:
            run = await finished(store, run_id)
            assert run.conclusion == "success"
            assert [
                (attempt, result) for _, attempt, _, result in await store.attempts(run_id)
            ] == [(1, "success")]
            # What the job printed and reported while the database was away was written after.
            assert [line for _, _, _, line in await store.logs(run_id)] == [
                f"tick {i}" for i in range(1, 9)
            ]
            assert [(step.name, step.status) for step in (await store.steps(run_id))["slow"]] == [
                ("Run for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 1; done", "success")
            ]


async def test_a_45_second_outage_reruns_the_job_once_and_never_twice(
    database: str, postgres_cluster: Cluster
) -> None:
    """Issue 9's long outage with the agents' default intervals: the agent running the job
    fences itself off after 20 s, both agents start again once the database is back, and the
    sweep retries the job whose heartbeat is older than 30 s at once: it succeeds once."""
    async with agents(database, ("h1", "linux"), ("h2", "linux"), **DEFAULTS) as started:
        async with FleetStore(database) as store:
            run_id = await store.submit(SLOW.format(seconds=5), "slow.yml", options(started))
            await until(lambda: _running(store, run_id), within=60, what="the job running")
        await _outage(postgres_cluster, 45)
        async with FleetStore(database) as store:
            # Not left running past the stall interval (long over) plus one sweep (and a restart).
            await until(
                lambda: _retried_or_over(store, run_id),
                within=DEFAULTS["sweep_interval"] + 15,
                what="the stalled job retried",
            )
            run = await finished(store, run_id)
            assert run.conclusion == "success"
            results = [(attempt, result) for _, attempt, _, result in await store.attempts(run_id)]
            assert [result for _, result in results].count("success") == 1
            assert results[-1] == (2, "success")  # the first attempt was fenced off, never reported
        for agent in started.values():
            assert agent.process is not None
            assert agent.process.poll() is None  # they started again by themselves


async def _retried_or_over(store: FleetStore, run_id: str) -> bool:
    job = (await store.run(run_id)).job("slow")
    return job.attempt > 1 or job.status != "running"
