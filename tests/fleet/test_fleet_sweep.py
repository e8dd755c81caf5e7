"""The stalled-job sweep and the fencing token, driven through the store as agents drive it
(no agent processes: a host that stops answering is an attempt whose heartbeat ages)."""

from __future__ import annotations

import tempfile

from vmrunner.fleet.store import FleetStore
from vmrunner.runner.options import RunOptions

TWO = (
    "on: push\njobs:\n  work:\n    runs-on: linux\n    steps:\n      - run: 'true'\n  after:\n  "
    "  runs-on: linux\n    needs: work\n    steps:\n      - run: 'true'\n"
)


async def _age(store: FleetStore, run_id: str, seconds: float) -> None:
    """Make the running attempt's last heartbeat ``seconds`` old, as a silent host would."""
    async with store.pool.connection() as connection:
        await connection.execute(
            "UPDATE vmrunner_jobs SET heartbeat_at = now() - make_interval(secs => %s) WHERE "
            "run_id = %s AND status = 'running'",
            (seconds, run_id),
        )


async def test_a_silent_attempt_is_retried_up_to_the_limit_then_fails(database: str) -> None:
    async with FleetStore(database) as store:
        await store.register_agent("h1", ["linux"], 1)
        run_id = await store.submit(TWO, "two.yml", RunOptions(repo_root=tempfile.gettempdir()))
        assert await store.start(run_id, "work", 1, "h1") is not None
        assert await store.sweep(stall=6, max_attempts=2) == []  # fresh heartbeat
        await _age(store, run_id, 7)
        assert await store.sweep(stall=6, max_attempts=2) == [(run_id, "work", 2)]
        assert (
            await store.start(run_id, "work", 1, "h1") is None
        )  # the old attempt cannot start again
        assert await store.start(run_id, "work", 2, "h2") is not None
        assert not await store.heartbeat(run_id, "work", 1)
        assert await store.heartbeat(run_id, "work", 2)
        await _age(store, run_id, 7)
        assert await store.sweep(stall=6, max_attempts=2) == []
        run = await store.run(run_id)
        assert (run.job("work").status, run.job("work").reason) == (
            "failure",
            "its host stopped answering (2 attempts)",
        )
        # The dependent is queued so its agent can evaluate its if: (skipped unless always()).
        assert run.job("after").status == "queued"
        assert not await store.finish(run_id, "work", 2, "success", {})
        assert [(a, h, r) for _, a, h, r in await store.attempts(run_id)] == [
            (1, "h1", "lost"),
            (2, "h2", "lost"),
        ]


async def test_a_cancelled_run_is_never_retried(database: str) -> None:
    async with FleetStore(database) as store:
        await store.register_agent("h1", ["linux"], 1)
        run_id = await store.submit(TWO, "two.yml", RunOptions(repo_root=tempfile.gettempdir()))
        assert await store.start(run_id, "work", 1, "h1") is not None
        assert await store.cancel(run_id)
        await _age(store, run_id, 60)
        assert await store.sweep(stall=6, max_attempts=3) == []
        run = await store.run(run_id)
        assert {job.job_id: job.status for job in run.jobs} == {
            "work": "cancelled",
            "after": "cancelled",
        }
        assert not await store.finish(
            run_id, "work", 1, "success", {}
        )  # the aborted attempt's late write


async def test_a_finished_job_defers_its_dependent_once(database: str) -> None:
    async with FleetStore(database) as store:
        await store.register_agent("h1", ["linux"], 1)
        run_id = await store.submit(TWO, "two.yml", RunOptions(repo_root=tempfile.gettempdir()))
        assert await store.start(run_id, "work", 1, "h1") is not None
        assert await store.finish(run_id, "work", 1, "success", {"k": "v"})
        assert not await store.finish(
            run_id, "work", 1, "success", {"k": "v"}
        )  # a repeated report changes nothing
        async with store.pool.connection() as connection:
            rows = await (
                await connection.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE queueing_lock LIKE %s",
                    (f"{run_id}/after/%",),
                )
            ).fetchone()
        assert rows == (1,)
        assignment = await store.start(run_id, "after", 1, "h1")
        assert assignment is not None
        assert assignment.needs == {"work": {"result": "success", "outputs": {"k": "v"}}}
