"""Runs across two real agents: routing by labels, needs and outputs across hosts."""

from __future__ import annotations

import pytest

from tests.fleet.harness import agents, finished, options
from vmrunner.errors import ConfigError
from vmrunner.fleet.store import FleetStore

CHAIN = """
on: push
jobs:
  a:
    runs-on: linux
    outputs:
      value: ${{ steps.s.outputs.value }}
    steps:
      - id: s
        run: echo "value=from-a" >> "$GITHUB_OUTPUT"
  b:
    runs-on: [linux, kvm]
    needs: a
    outputs:
      got: ${{ steps.s.outputs.got }}
    steps:
      - id: s
        run: echo "got=${{ needs.a.outputs.value }}" >> "$GITHUB_OUTPUT"
  c:
    runs-on: linux
    needs: b
    steps:
      - run: echo "c saw ${{ needs.b.outputs.got }}"
"""


async def test_a_chain_runs_across_hosts_with_outputs(database: str) -> None:
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux,kvm")) as started,
        FleetStore(database) as store,
    ):
        run_id = await store.submit(CHAIN, ".github/workflows/chain.yml", options(started))
        run = await finished(store, run_id)
        assert run.conclusion == "success", run
        assert run.job("b").host == "h2"
        assert run.job("b").outputs == {"got": "from-a"}
        assert [line for _, job, _, line in await store.logs(run_id) if job == "c"] == [
            "c saw from-a"
        ]
        assert all(result == "success" for _, _, _, result in await store.attempts(run_id))


async def test_a_job_no_agent_serves_is_rejected_at_enqueue(database: str) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        with pytest.raises(
            ConfigError,
            match=r"job 'b' runs-on kvm,linux: no live agent serves these labels \(agents: h1 "
            r"\[linux\]\)",
        ):
            await store.submit(CHAIN, "chain.yml", options(started))
        async with store.pool.connection() as connection:
            assert await (
                await connection.execute("SELECT count(*) FROM vmrunner_runs")
            ).fetchone() == (0,)


async def test_a_redelivered_webhook_makes_one_run(database: str) -> None:
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux,kvm")) as started,
        FleetStore(database) as store,
    ):
        first = await store.submit(CHAIN, "chain.yml", options(started), delivery_id="d-1")
        again = await store.submit(CHAIN, "chain.yml", options(started), delivery_id="d-1")
        assert first == again
        await finished(store, first)
        async with store.pool.connection() as connection:
            assert await (
                await connection.execute("SELECT count(*) FROM vmrunner_runs")
            ).fetchone() == (1,)
