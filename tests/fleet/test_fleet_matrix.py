"""Matrix jobs across hosts: one fleet job per combination, routed by its own runs-on, expanded
when ready (from ``needs`` outputs), aggregated as GitHub does, with fail-fast and max-parallel."""

from __future__ import annotations

import tempfile

import pytest

from tests.fleet.harness import agents, finished, options
from vmrunner.errors import ConfigError
from vmrunner.fleet.store import FleetStore
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import FAIL_FAST_REASON

#: The matrix comes from the first job's output; each combination adds its own label to linux,
#: writes an output of its own name (GitHub combines a matrix job's outputs), and one failure
#: is tolerated by continue-on-error.
ACROSS_HOSTS = """
on: push
jobs:
  setup:
    runs-on: linux
    outputs:
      matrix: ${{ steps.m.outputs.matrix }}
    steps:
      - id: m
        run: echo 'matrix={"include":[{"name":"plain","extra":"linux"},{"name":"virt","extra":"kvm"},{"name":"flaky","extra":"linux","experimental":true}]}' >> "$GITHUB_OUTPUT"
  test:
    needs: setup
    runs-on: [linux, '${{ matrix.extra }}']
    continue-on-error: ${{ matrix.experimental == true }}
    strategy:
      matrix: ${{ fromJSON(needs.setup.outputs.matrix) }}
    outputs:
      plain: ${{ steps.s.outputs.plain }}
      virt: ${{ steps.s.outputs.virt }}
    steps:
      - id: s
        run: |
          if [ "${{ matrix.name }}" = flaky ]; then exit 1; fi
          echo "${{ matrix.name }}=${{ strategy.job-index }}/${{ strategy.job-total }}" >> "$GITHUB_OUTPUT"
  after:
    needs: test
    runs-on: linux
    steps:
      - run: echo "test ${{ needs.test.result }} plain=${{ needs.test.outputs.plain }} virt=${{ needs.test.outputs.virt }}"
"""  # noqa: E501

#: With max-parallel 1 the first combination fails while the others still wait: fail-fast
#: cancels them before they start; the dependent is skipped.
FAIL_FAST = """
on: push
jobs:
  test:
    runs-on: linux
    strategy:
      max-parallel: 1
      matrix:
        case: [bad, good, later]
    steps:
      - run: test "${{ matrix.case }}" != bad
  after:
    needs: test
    runs-on: linux
    steps:
      - run: echo after
"""

#: Two combinations at once on two hosts: the good one is still queued or running when the
#: bad one fails, and is cancelled (aborted on its host when running).
FAIL_FAST_RUNNING = """
on: push
jobs:
  test:
    runs-on: linux
    strategy:
      matrix:
        case: [bad, good]
    steps:
      - run: if [ "${{ matrix.case }}" = bad ]; then sleep 1; exit 1; fi; sleep 120
"""


async def test_combinations_run_on_the_hosts_of_their_labels(database: str) -> None:
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux,kvm")) as started,
        FleetStore(database) as store,
    ):
        run_id = await store.submit(ACROSS_HOSTS, "matrix.yml", options(started))
        run = await finished(store, run_id)
        assert run.conclusion == "success", run
        combinations = await store.combinations(run_id)
        assert combinations == {
            "test (plain, linux)": ("test", {"name": "plain", "extra": "linux"}),
            "test (virt, kvm)": ("test", {"name": "virt", "extra": "kvm"}),
            "test (flaky, linux, true)": (
                "test",
                {"name": "flaky", "extra": "linux", "experimental": True},
            ),
        }
        rows = {job.job_id: job for job in run.jobs}
        assert rows["test (virt, kvm)"].labels == ("kvm", "linux")
        assert rows["test (virt, kvm)"].host == "h2"
        assert rows["test (plain, linux)"].labels == ("linux",)
        assert rows["test (plain, linux)"].host in ("h1", "h2")
        assert {key: rows[key].status for key in combinations} == {
            "test (plain, linux)": "success",
            "test (virt, kvm)": "success",
            "test (flaky, linux, true)": "failure",
        }
        # The matrix job's own row: the aggregate (a tolerated failure does not fail it) and
        # the outputs of all its combinations combined.
        assert (rows["test"].status, rows["test"].host) == ("success", None)
        assert rows["test"].reason == "test (flaky, linux, true): failure (continue-on-error)"
        assert rows["test"].outputs == {"plain": "0/3", "virt": "1/3"}
        after = [line for _, job, _, line in await store.logs(run_id) if job == "after"]
        assert after == ["test success plain=0/3 virt=1/3"]
        attempts = {(job, host) for job, _, host, _ in await store.attempts(run_id)}
        assert ("test (virt, kvm)", "h2") in attempts
        assert not any(job == "test" for job, _ in attempts)  # the matrix job itself never runs


async def test_fail_fast_cancels_the_pending_combinations(database: str) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        run_id = await store.submit(FAIL_FAST, "failfast.yml", options(started))
        run = await finished(store, run_id)
        assert run.conclusion == "failure"
        assert {job.job_id: (job.status, job.reason) for job in run.jobs} == {
            "test": (
                "failure",
                "test (bad): failure; test (good): cancelled; test (later): cancelled",
            ),
            "test (bad)": ("failure", ""),
            "test (good)": ("cancelled", FAIL_FAST_REASON),
            "test (later)": ("cancelled", FAIL_FAST_REASON),
            "after": ("skipped", ""),
        }
        assert [job for job, _, _, _ in await store.attempts(run_id)] == ["after", "test (bad)"]


async def test_fail_fast_aborts_a_running_sibling_on_its_host(database: str) -> None:
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux")) as started,
        FleetStore(database) as store,
    ):
        run_id = await store.submit(FAIL_FAST_RUNNING, "failfast.yml", options(started))
        run = await finished(store, run_id)
        assert run.conclusion == "failure"
        assert run.job("test (good)").status == "cancelled"
        assert run.job("test (good)").reason == FAIL_FAST_REASON
        # If it had started, its attempt ended cancelled and nothing it wrote later counted.
        assert [
            result for job, _, _, result in await store.attempts(run_id) if job == "test (good)"
        ] in ([], ["cancelled"])


@pytest.mark.parametrize(("runs_on", "matrix"), [
    ("${{ github.ref_name }}", "{os: [a]}"),
    ("[linux, '${{ matrix.os }}-${{ vars.X }}']", "{os: [a]}"),
    ("${{ matrix.os }}", None),
])
async def test_runs_on_may_use_only_the_matrix(
    database: str, runs_on: str, matrix: str | None
) -> None:
    strategy = f"\n    strategy:\n      matrix: {matrix}" if matrix else ""
    workflow = (
        f"on: push\njobs:\n  j:\n    runs-on: {runs_on}{strategy}\n    steps:\n      - "
        f"run: 'true'\n"
    )
    async with FleetStore(database) as store:
        with pytest.raises(
            ConfigError,
            match=r"job 'j': a fleet routes jobs by their runs-on labels, which must be plain "
            r"labels or expressions of the job's matrix only",
        ):
            await store.submit(workflow, "bad.yml", RunOptions(repository="octo/fleet"))


MAX_PARALLEL = """
on: push
jobs:
  test:
    runs-on: linux
    strategy:
      max-parallel: 2
      fail-fast: false
      matrix:
        n: [1, 2, 3]
    steps:
      - run: 'true'
"""


async def test_max_parallel_and_combined_outputs_driven_through_the_store(database: str) -> None:
    """As agents drive the store (no agent processes), to choose the order combinations end in."""
    async with FleetStore(database) as store:
        await store.register_agent("h1", ["linux"], 3)
        run_id = await store.submit(
            MAX_PARALLEL, "mp.yml", RunOptions(repo_root=tempfile.gettempdir())
        )

        async def statuses() -> dict[str, str]:
            return {job.job_id: job.status for job in (await store.run(run_id)).jobs}

        assert await statuses() == {
            "test": "matrix",
            "test (1)": "queued",
            "test (2)": "queued",
            "test (3)": "pending",
        }
        assert await store.start(run_id, "test (2)", 1, "h1") is not None
        assert await store.finish(run_id, "test (2)", 1, "failure", {"v": "two"})
        # One ended: the third may start; without fail-fast nothing is cancelled.
        assert await statuses() == {
            "test": "matrix",
            "test (1)": "queued",
            "test (2)": "failure",
            "test (3)": "queued",
        }
        assert await store.start(run_id, "test (3)", 1, "h1") is not None
        assert await store.finish(run_id, "test (3)", 1, "success", {"v": "three", "w": ""})
        assert await store.start(run_id, "test (1)", 1, "h1") is not None
        assert await store.finish(run_id, "test (1)", 1, "success", {"v": "", "w": "one"})
        run = await store.run(run_id)
        assert (run.status, run.conclusion) == ("completed", "failure")
        # Outputs: the last combination to complete wins, but an empty value replaces nothing.
        assert (run.job("test").status, run.job("test").outputs) == (
            "failure",
            {"v": "three", "w": "one"},
        )


NOT_EXPANDED = """
on: push
jobs:
  first:
    runs-on: linux
    steps:
      - run: 'true'
  skipped:
    needs: first
    runs-on: linux
    strategy:
      matrix:
        n: [1, 2]
    steps:
      - run: 'true'
  broken:
    needs: first
    if: always()
    runs-on: linux
    strategy:
      matrix: ${{ fromJSON(needs.first.outputs.missing) }}
    steps:
      - run: 'true'
"""


async def test_a_matrix_job_skipped_or_broken_when_ready_makes_no_combination(
    database: str,
) -> None:
    async with FleetStore(database) as store:
        await store.register_agent("h1", ["linux"], 1)
        run_id = await store.submit(
            NOT_EXPANDED, "ne.yml", RunOptions(repo_root=tempfile.gettempdir())
        )
        assert await store.start(run_id, "first", 1, "h1") is not None
        assert await store.finish(run_id, "first", 1, "failure", {})
        run = await store.run(run_id)
        assert (run.status, run.conclusion) == ("completed", "failure")
        assert (
            run.job("skipped").status == "skipped"
        )  # its if: (success()) is false: never expanded
        assert run.job("broken").status == "failure"
        assert "job 'broken'" in run.job("broken").reason
        assert "fromJSON" in run.job("broken").reason
        assert await store.combinations(run_id) == {}
