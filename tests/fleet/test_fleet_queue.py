"""Capacity and priority as procrastinate enforces them on real agents."""

from __future__ import annotations

import itertools

from tests.fleet.harness import agents, finished, options, until
from vmrunner.fleet.store import FleetStore

SIX = "on: push\njobs:\n" + "".join(
    f"  j{i}:\n    runs-on: linux\n    steps:\n      - run: sleep 0.3\n" for i in range(6)
)
ONE = "on: push\njobs:\n  only:\n    runs-on: linux\n    steps:\n      - run: sleep {seconds}\n"


async def _intervals(store: FleetStore, run_ids: list[str]) -> list[tuple[str, str, float, float]]:
    async with store.pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT run_id, host, extract(epoch FROM started_at)::float, extract(epoch FROM "
                "finished_at)::float"
                " FROM vmrunner_attempts WHERE run_id = ANY(%s) ORDER BY started_at",
                (run_ids,),
            )
        ).fetchall()
    return [(str(r), str(h), float(s), float(f)) for r, h, s, f in rows]


async def test_capacity_one_runs_one_job_at_a_time_per_host(database: str) -> None:
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux")) as started,
        FleetStore(database) as store,
    ):
        run_id = await store.submit(SIX, "six.yml", options(started))
        run = await finished(store, run_id)
        assert run.conclusion == "success"
        spans = await _intervals(store, [run_id])
        assert len(spans) == 6
        for host in {"h1", "h2"}:
            mine = [(start, end) for _, h, start, end in spans if h == host]
            assert all(end <= following for (_, end), (following, _) in itertools.pairwise(mine)), (
                mine
            )


async def test_a_higher_priority_job_is_taken_first(database: str) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        blocker = await store.submit(ONE.format(seconds=2), "block.yml", options(started))

        async def busy() -> bool:
            return (await store.run(blocker)).job("only").status == "running"

        await until(busy, within=60, what="the blocker running")
        low = await store.submit(ONE.format(seconds=0), "low.yml", options(started), priority=0)
        high = await store.submit(ONE.format(seconds=0), "high.yml", options(started), priority=10)
        for run_id in (blocker, low, high):
            await finished(store, run_id)
        order = [run_id for run_id, _, _, _ in await _intervals(store, [blocker, low, high])]
        assert order == [blocker, high, low]
