"""The run: needs and outputs, the DAG, matrices, fail-fast, max-parallel, job if."""

from __future__ import annotations

from collections.abc import Sequence

from tests.runner.engine import run
from vmrunner.reports.events import Event, JobFinished, JobQueued, JobStarted


def most_at_once(events: Sequence[Event], prefix: str = "") -> int:
    """The most jobs (whose key starts with ``prefix``) holding a machine at the same time."""
    running = peak = 0
    for event in events:
        if isinstance(event, JobStarted) and event.job_key.startswith(prefix):
            running += 1
            peak = max(peak, running)
        elif isinstance(event, JobFinished) and event.job_key.startswith(prefix):
            running -= (
                1
                if any(isinstance(e, JobStarted) and e.job_key == event.job_key for e in events)
                else 0
            )
    return peak


async def test_needs_outputs_and_results_across_jobs() -> None:
    ran = await run(
        """
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    outputs:
      version: ${{ steps.v.outputs.version }}
      greeting: hello-${{ steps.v.outputs.version }}
    steps:
      - id: v
        run: echo "version=1.2.3" >> "$GITHUB_OUTPUT"
  test:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - run: |
          test "${{ needs.build.result }}" = success
          test "${{ needs.build.outputs.version }}" = 1.2.3
          test "${{ needs.build.outputs.greeting }}" = hello-1.2.3
  broken:
    runs-on: ubuntu-latest
    steps:
      - run: exit 1
  skipped:
    needs: [broken]
    runs-on: ubuntu-latest
    steps:
      - run: echo no
  reports:
    needs: [broken, test]
    if: always()
    runs-on: ubuntu-latest
    steps:
      - run: |
          test "${{ needs.broken.result }}" = failure
          test "${{ needs.test.result }}" = success
  chained-skip:
    needs: skipped
    runs-on: ubuntu-latest
    steps:
      - run: echo no
"""
    )
    assert ran.result("test") == "success"
    assert ran.finished("build").outputs == {"version": "1.2.3", "greeting": "hello-1.2.3"}
    assert ran.result("skipped") == "skipped"
    assert ran.result("chained-skip") == "skipped"
    assert ran.result("reports") == "success"
    assert {e.job_key for e in ran.of(JobStarted)} == {"build", "test", "broken", "reports"}


async def test_a_job_starts_as_soon_as_its_own_needs_are_done() -> None:
    ran = await run(
        """
on: push
jobs:
  slow:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 4
  fast:
    runs-on: ubuntu-latest
    steps:
      - run: true
  after-fast:
    needs: fast
    runs-on: ubuntu-latest
    steps:
      - run: true
"""
    )
    order = [
        (type(e).__name__, e.job_key) for e in ran.events if isinstance(e, JobStarted | JobFinished)
    ]
    assert order.index(("JobStarted", "after-fast")) < order.index(("JobFinished", "slow"))


async def test_matrix_from_needs_and_aggregated_result() -> None:
    ran = await run(
        """
on: push
jobs:
  prepare:
    runs-on: ubuntu-latest
    outputs:
      sizes: ${{ steps.s.outputs.sizes }}
    steps:
      - id: s
        run: echo 'sizes=["small", "large"]' >> "$GITHUB_OUTPUT"
  test:
    needs: prepare
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        size: ${{ fromJSON(needs.prepare.outputs.sizes) }}
        n: [1, 2]
        exclude:
          - size: large
            n: 2
    steps:
      - run: |
          echo "${{ matrix.size }}-${{ matrix.n }} ${{ strategy.job-index }}/${{ strategy.job-total }}"
          test "${{ matrix.size }}" != large
  after:
    needs: test
    if: always()
    runs-on: ubuntu-latest
    steps:
      - run: test "${{ needs.test.result }}" = failure
"""  # noqa: E501
    )
    keys = [e.job_key for e in ran.of(JobQueued) if e.job_id == "test"]
    assert keys == ["test (small, 1)", "test (small, 2)", "test (large, 1)"]
    assert ran.result("test (small, 1)") == "success"
    assert ran.result("test (large, 1)") == "failure"
    assert ran.result("after") == "success"
    assert "small-2 1/3" in ran.logs("test (small, 2)")


async def test_fail_fast_cancels_running_and_pending_siblings() -> None:
    ran = await run(
        """
on: push
jobs:
  m:
    runs-on: ubuntu-latest
    strategy:
      max-parallel: 2
      matrix:
        n: [1, 2, 3, 4]
    steps:
      - run: |
          if [ "${{ matrix.n }}" = 1 ]; then sleep 0.5; exit 1; fi
          sleep 300
"""
    )
    results = {e.job_key: e.result for e in ran.of(JobFinished)}
    assert results["m (1)"] == "failure"
    assert {results["m (2)"], results["m (3)"], results["m (4)"]} == {"cancelled"}
    reasons = {e.job_key: e.reason for e in ran.of(JobFinished)}
    assert {reasons["m (2)"], reasons["m (3)"], reasons["m (4)"]} == {
        "cancelled by fail-fast: a matrix sibling failed"
    }
    assert ran.outcome.conclusion == "failure"
    started = {e.job_key for e in ran.of(JobStarted)}
    assert "m (3)" not in started or "m (4)" not in started
    assert not ran.provider.alive


async def test_without_fail_fast_siblings_finish() -> None:
    ran = await run(
        """
on: push
jobs:
  m:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        n: [1, 2, 3]
    steps:
      - run: test "${{ matrix.n }}" != 1
"""
    )
    assert [ran.result(f"m ({n})") for n in (1, 2, 3)] == ["failure", "success", "success"]


async def test_max_parallel_and_the_run_limit_are_respected() -> None:
    ran = await run(
        """
on: push
jobs:
  m:
    runs-on: ubuntu-latest
    strategy:
      max-parallel: 2
      matrix:
        n: [1, 2, 3, 4, 5]
    steps:
      - run: sleep 0.3
  other:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        n: [1, 2, 3, 4]
    steps:
      - run: sleep 0.3
""",
        limit=3,
    )
    assert most_at_once(ran.events, "m (") == 2
    assert most_at_once(ran.events) == 3
    assert ran.outcome.conclusion == "success"


async def test_matrix_filter_and_job_if_and_name() -> None:
    ran = await run(
        """
on: push
jobs:
  m:
    name: build ${{ matrix.os }}
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        os: [linux, mac]
        v: [1, 2]
    steps:
      - run: echo ${{ matrix.os }}
  never:
    if: github.event_name == 'pull_request'
    runs-on: ubuntu-latest
    steps:
      - run: exit 1
""",
        matrix_filter={"os": ("linux",)},
    )
    queued = {e.job_key: e.name for e in ran.of(JobQueued)}
    assert queued["m (linux, 1)"] == "build linux"
    assert "m (mac, 1)" not in queued
    assert ran.result("never") == "skipped"
    assert ran.outcome.conclusion == "success"


async def test_a_matrix_filter_that_keeps_nothing_skips_the_job() -> None:
    ran = await run(
        "on: push\njobs:\n  m:\n    runs-on: x\n    strategy:\n      matrix:\n        os: "
        "[linux]\n    steps:\n      - run: exit 1\n",
        matrix_filter={"os": ("plan9",)},
    )
    assert ran.result("m") == "skipped"
    assert "--matrix" in ran.finished("m").reason
    assert not ran.of(JobStarted)


async def test_jobs_take_machines_from_a_warm_pool() -> None:
    from vmrunner.machines.base import MachineSpec
    from vmrunner.machines.pool import WarmPool
    from vmrunner.machines.providers import get_provider
    from vmrunner.reports.events import Recorder, RunStarted
    from vmrunner.runner.options import RunOptions
    from vmrunner.runner.run import run_workflow
    from vmrunner.sessions import SessionManager
    from vmrunner.workflow.loader import load_workflow_text

    workflow = load_workflow_text(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo pooled\n", "pool.yml"
    )
    recorder = Recorder()
    # The pool's machines must fit the run's (private) network to be handed out.
    specs = {"default": MachineSpec(network="private")}
    async with (
        WarmPool(get_provider("sandbox"), {"default": 1}, specs=specs) as pool,
        SessionManager(pool, limit=1) as sessions,
    ):
        await pool.wait_filled()
        outcome = await run_workflow(
            workflow,
            RunOptions(payload={"ref": "refs/tags/v1", "after": "f00"}),
            sessions,
            recorder,
        )
    assert outcome.conclusion == "success"
    started = [e for e in recorder.events if isinstance(e, JobStarted)]
    assert [e.from_pool for e in started] == [True]
    run_started = recorder.events[0]
    assert isinstance(run_started, RunStarted)
    assert (run_started.ref, run_started.sha) == ("refs/tags/v1", "f00")
