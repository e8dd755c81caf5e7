"""Concurrency groups: jobs and runs in one group never overlap, newer arrivals replace the
pending one, cancel-in-progress stops the running one; the registry on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runner.engine import check_contract, run
from vmrunner.errors import ConcurrencyCancelled, ConfigError
from vmrunner.machines.providers import get_provider
from vmrunner.machines.testing import CountingProvider
from vmrunner.reports.events import (
    AllocationRequested,
    Annotation,
    Event,
    JobFinished,
    LogLine,
    MachineReleased,
    Recorder,
)
from vmrunner.reports.results import RUN_RESULT_SCHEMA, ResultCollector
from vmrunner.runner.concurrency import JOB_CONTEXTS, Claim, ConcurrencyGroups, evaluate_claim
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import RunOutcome, run_workflow
from vmrunner.sessions import SessionManager
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.models import Concurrency


def index_of(events: list[Event], kind: type, job_key: str, run_id: str | None = None) -> int:
    return next(
        i
        for i, e in enumerate(events)
        if isinstance(e, kind)
        and getattr(e, "job_key", None) == job_key
        and (run_id is None or getattr(e, "run_id", None) == run_id)
    )


def annotations(events: list[Event], job_key: str, level: str) -> list[str]:
    return [
        e.message
        for e in events
        if isinstance(e, Annotation) and e.job_key == job_key and e.level == level
    ]


# In one run

THREE_JOBS = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    concurrency: deploy
    steps:
      - run: echo a
  b:
    runs-on: ubuntu-latest
    concurrency: DEPLOY
    steps:
      - run: echo b
  c:
    runs-on: ubuntu-latest
    concurrency: Deploy
    steps:
      - run: echo c
"""


async def test_two_jobs_of_one_group_run_one_after_the_other() -> None:
    ran = await run(THREE_JOBS.split("  c:")[0])
    assert ran.outcome.conclusion == "success"
    events = ran.events
    # b asks for a machine only after a's machine was released: never both at once
    assert index_of(events, MachineReleased, "a") < index_of(events, AllocationRequested, "b")
    assert any(
        "waiting for concurrency group 'deploy'" in m and "job 'a'" in m
        for m in annotations(events, "b", "notice")
    )
    assert ran.provider.allocation_count == ran.provider.release_count == 2


async def test_a_newer_job_replaces_the_pending_one_in_a_case_insensitive_group() -> None:
    ran = await run(THREE_JOBS, cleanup_commands=("echo cleaned",))
    assert (ran.result("a"), ran.result("b"), ran.result("c")) == (
        "success",
        "cancelled",
        "success",
    )
    assert "replaced by job 'c'" in ran.finished("b").reason
    assert any("replaced by job 'c'" in m for m in annotations(ran.events, "b", "error"))
    assert index_of(ran.events, MachineReleased, "a") < index_of(
        ran.events, AllocationRequested, "c"
    )
    assert ran.provider.allocation_count == 2  # b never had a machine
    assert ran.outcome.conclusion == "cancelled"


async def test_a_matrix_with_a_group_per_combination_runs_them_all() -> None:
    ran = await run(
        """
on: push
jobs:
  m:
    runs-on: ubuntu-latest
    concurrency: m-${{ matrix.n }}
    strategy:
      matrix:
        n: [1, 2, 3]
    steps:
      - run: echo ${{ matrix.n }}
"""
    )
    assert ran.outcome.conclusion == "success"
    assert ran.outcome.results("m") == ["success"] * 3
    assert not [e for e in ran.of(Annotation) if "concurrency" in e.message]


async def test_a_matrix_sharing_one_group_keeps_the_first_and_the_newest() -> None:
    ran = await run(
        """
on: push
jobs:
  m:
    runs-on: ubuntu-latest
    concurrency: shared-${{ github.workflow }}
    strategy:
      matrix:
        n: [1, 2, 3]
    steps:
      - run: echo ${{ strategy.job-index }}
"""
    )
    assert (ran.result("m (1)"), ran.result("m (2)"), ran.result("m (3)")) == (
        "success",
        "cancelled",
        "success",
    )
    assert ran.outcome.conclusion == "cancelled"


async def test_cancel_in_progress_within_a_run_cancels_the_earlier_combination() -> None:
    ran = await run(
        """
on: push
jobs:
  m:
    runs-on: ubuntu-latest
    concurrency:
      group: one
      cancel-in-progress: ${{ matrix.n == 2 }}
    strategy:
      fail-fast: false
      matrix:
        n: [1, 2]
    steps:
      - run: sleep 300
        if: matrix.n == 1
      - run: echo done
"""
    )
    assert (ran.result("m (1)"), ran.result("m (2)")) == ("cancelled", "success")
    assert "with cancel-in-progress" in ran.finished("m (1)").reason
    assert index_of(ran.events, JobFinished, "m (1)") < index_of(
        ran.events, AllocationRequested, "m (2)"
    )


async def test_a_broken_group_expression_fails_that_job_clearly() -> None:
    ran = await run(
        """
on: push
jobs:
  bad:
    runs-on: ubuntu-latest
    concurrency: g-${{ fromJSON('{not json') }}
    steps:
      - run: echo never
  empty:
    runs-on: ubuntu-latest
    concurrency: ${{ vars.MISSING }}
    steps:
      - run: echo never
  good:
    runs-on: ubuntu-latest
    steps:
      - run: echo fine
"""
    )
    assert (ran.result("bad"), ran.result("empty"), ran.result("good")) == (
        "failure",
        "failure",
        "success",
    )
    assert "concurrency" in ran.finished("bad").reason
    assert "fromJSON" in ran.finished("bad").reason
    assert "Traceback" not in ran.finished("bad").reason
    assert "the group is empty" in ran.finished("empty").reason
    assert "never" not in ran.logs()
    assert ran.provider.allocation_count == 1


async def test_a_broken_workflow_group_fails_the_run() -> None:
    ran = await run(
        """
on: push
concurrency:
  group: ${{ fromJSON(inputs.nothing) }}
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo never
"""
    )
    assert ran.outcome.conclusion == "failure"
    assert any("concurrency" in m for m in annotations(ran.events, "", "error"))
    assert ran.provider.allocation_count == 0


# Across runs that share a registry


@dataclass
class Watch:
    """A recorder that sets ``seen`` once a log line equal to ``text`` (or an annotation
    containing it) arrives."""

    text: str
    recorder: Recorder = field(default_factory=Recorder)
    seen: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, event: Event) -> None:
        self.recorder.emit(event)
        if (isinstance(event, LogLine) and event.text == self.text) or (
            isinstance(event, Annotation) and self.text in event.message
        ):
            self.seen.set()


async def two_runs(
    first: str, second: str, *, started: str, **options: object
) -> tuple[RunOutcome, RunOutcome, list[Event], list[Event], CountingProvider]:
    """Run ``first``; once it logged ``started``, run ``second`` with the same registry."""
    provider = CountingProvider(get_provider("sandbox"))
    groups = ConcurrencyGroups()
    watch, later = Watch(started), Recorder()
    try:
        async with SessionManager(provider, limit=4) as sessions:
            run_options = RunOptions(repository="octo/repo", **options)  # type: ignore[arg-type]
            task = asyncio.create_task(
                run_workflow(
                    load_workflow_text(first, "first.yml"), run_options, sessions, watch, groups
                )
            )
            await watch.seen.wait()
            second_outcome = await run_workflow(
                load_workflow_text(second, "second.yml"), run_options, sessions, later, groups
            )
            first_outcome = await task
    finally:
        await provider.aclose()
    check_contract(watch.recorder.events)
    check_contract(later.events)
    assert not groups.statistics()  # every holder left
    return first_outcome, second_outcome, watch.recorder.events, later.events, provider


LONG_JOB = """
on: push
jobs:
  deploy:
    runs-on: ubuntu-latest
    concurrency: {group: prod, cancel-in-progress: true}
    steps:
      - run: echo started; sleep 300
"""


async def test_cancel_in_progress_cancels_a_running_job_of_another_run() -> None:
    first, second, events, later, provider = await two_runs(
        LONG_JOB, LONG_JOB.replace("echo started; sleep 300", "echo second"), started="started",
        cleanup_commands=("echo cleaned",),
    )
    assert first.conclusion == "cancelled"
    assert second.conclusion == "success"
    stopped = next(e for e in events if isinstance(e, JobFinished))
    assert stopped.result == "cancelled"
    assert f"job 'deploy' of run {second.run_id}" in stopped.reason
    assert "cleaned" in [e.text for e in events if isinstance(e, LogLine)]  # its cleanup ran
    assert any("cancel-in-progress" in m for m in annotations(events, "deploy", "error"))
    assert any(
        "waiting for concurrency group 'prod'" in m for m in annotations(later, "deploy", "notice")
    )
    # the second job asked for a machine only after the first one's was released
    released = next(e.time for e in events if isinstance(e, MachineReleased))
    asked = next(e.time for e in later if isinstance(e, AllocationRequested))
    assert released <= asked
    assert provider.allocation_count == provider.release_count == 2


WORKFLOW_GROUP = """
on: push
concurrency:
  group: ci-${{ github.ref }}
  cancel-in-progress: true
jobs:
  build:
    runs-on: ubuntu-latest
    strategy:
      max-parallel: 1
      matrix:
        n: [1, 2]
    steps:
      - run: echo started; sleep 300
  after:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - run: echo never
"""


async def test_a_workflow_group_with_cancel_in_progress_cancels_the_earlier_run() -> None:
    first, second, events, later, provider = await two_runs(
        WORKFLOW_GROUP,
        WORKFLOW_GROUP.replace("echo started; sleep 300", "echo quick"),
        started="started",
        ref="refs/heads/main",
    )
    assert first.conclusion == "cancelled"
    assert second.conclusion == "success"
    # build (2) was queued behind max-parallel, build (1) running; after never started
    assert sorted((e.job_key, e.result) for e in events if isinstance(e, JobFinished)) == [
        ("build (1)", "cancelled"),
        ("build (2)", "cancelled"),
    ]
    assert all("with cancel-in-progress" in e.reason for e in events if isinstance(e, JobFinished))
    assert any(
        f"run {second.run_id} entered concurrency group 'ci-refs/heads/main'" in m
        for m in annotations(events, "", "error")
    )
    assert any("waiting for concurrency group" in m for m in annotations(later, "", "notice"))
    assert "never" not in [e.text for e in events if isinstance(e, LogLine)]
    released = max(e.time for e in events if isinstance(e, MachineReleased))
    assert released <= min(e.time for e in later if isinstance(e, AllocationRequested))
    assert provider.allocation_count == provider.release_count == 4
    for recorded in (events, later):
        collector = ResultCollector()
        for event in recorded:
            collector.emit(event)
        jsonschema.validate(collector.result().to_json(), RUN_RESULT_SCHEMA)


async def test_a_newer_run_replaces_the_pending_run_of_a_workflow_group() -> None:
    provider = CountingProvider(get_provider("sandbox"))
    groups = ConcurrencyGroups()
    first, second, third = Watch("started"), Watch("waiting for concurrency group"), Recorder()
    waiting = WORKFLOW_GROUP.replace("cancel-in-progress: true", "cancel-in-progress: false")
    quick = WORKFLOW_GROUP.replace("echo started; sleep 300", "echo quick")
    try:
        async with SessionManager(provider, limit=4) as sessions:
            options = RunOptions(repository="octo/repo", ref="refs/heads/main")
            running = asyncio.create_task(
                run_workflow(
                    load_workflow_text(WORKFLOW_GROUP, "w.yml"), options, sessions, first, groups
                )
            )
            await first.seen.wait()
            pending = asyncio.create_task(
                run_workflow(
                    load_workflow_text(waiting, "w.yml"), options, sessions, second, groups
                )
            )
            await second.seen.wait()
            newest = await run_workflow(
                load_workflow_text(quick, "w.yml"), options, sessions, third, groups
            )
            stopped, replaced = await running, await pending
    finally:
        await provider.aclose()
    assert (stopped.conclusion, replaced.conclusion, newest.conclusion) == (
        "cancelled",
        "cancelled",
        "success",
    )
    assert not replaced.jobs
    assert not [e for e in second.recorder.events if isinstance(e, AllocationRequested)]
    assert any(
        f"replaced by run {newest.run_id}" in m
        for m in annotations(second.recorder.events, "", "error")
    )
    check_contract(second.recorder.events)
    collector = ResultCollector()
    for event in second.recorder.events:
        collector.emit(event)
    result = collector.result()
    assert result.conclusion == "cancelled"
    jsonschema.validate(result.to_json(), RUN_RESULT_SCHEMA)


# The registry on its own


def claim(group: str = "g", cancel: bool = False, queue: int = 1) -> Claim:
    return Claim(group, cancel, queue, "octo/repo")


class Holders:
    """Tasks that enter one registry; each records what happened to it."""

    def __init__(self, groups: ConcurrencyGroups) -> None:
        self.groups = groups
        self.log: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def enter(self, name: str, c: Claim) -> None:
        self.release[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(self._hold(name, c))

    async def _hold(self, name: str, c: Claim) -> None:
        task = asyncio.current_task()
        assert task is not None

        def stop(reason: str) -> None:
            self.log.append(f"{name} stopped")
            task.cancel()

        try:
            async with self.groups.hold(
                c, name, stop, lambda message: self.log.append(f"{name} waits")
            ):
                self.log.append(f"{name} runs")
                await self.release[name].wait()
            self.log.append(f"{name} done")
        except ConcurrencyCancelled:
            self.log.append(f"{name} replaced")
        except asyncio.CancelledError:
            self.log.append(f"{name} cancelled")
            raise

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


async def test_the_registry_replaces_pending_and_hands_on_in_order() -> None:
    holders = Holders(ConcurrencyGroups())
    holders.enter("a", claim("Prod"))
    holders.enter("b", claim("prod"))
    holders.enter("c", claim("PROD"))
    await holders.settle()
    assert holders.log == ["a runs", "b waits", "b replaced", "c waits"] or holders.log == [
        "a runs",
        "b waits",
        "c waits",
        "b replaced",
    ]
    holders.release["a"].set()
    await holders.settle()
    assert holders.log[-2:] == ["a done", "c runs"]
    holders.release["c"].set()
    await asyncio.gather(*holders.tasks.values(), return_exceptions=True)
    assert not holders.groups.statistics()


async def test_a_cancelled_waiter_frees_its_place_and_a_granted_one_hands_on() -> None:
    holders = Holders(ConcurrencyGroups())
    holders.enter("a", claim())
    holders.enter("b", claim(queue=100))
    holders.enter("c", claim(queue=100))
    await holders.settle()
    holders.tasks["b"].cancel()
    await holders.settle()
    assert holders.groups.statistics()[0].pending == ("c",)
    holders.release["a"].set()
    await asyncio.sleep(0)  # a leaves and grants c; c has not resumed yet
    assert holders.log[-1] == "a done"
    holders.tasks[
        "c"
    ].cancel()  # granted, then cancelled before it could run: it hands the group on
    await asyncio.gather(*holders.tasks.values(), return_exceptions=True)
    assert "c runs" not in holders.log
    assert not holders.groups.statistics()


async def test_a_newcomer_may_replace_a_waiter_whose_cancellation_is_still_on_its_way() -> None:
    holders = Holders(ConcurrencyGroups())
    holders.enter("a", claim())
    holders.enter("b", claim())
    await holders.settle()
    holders.enter("c", claim())
    holders.tasks["b"].cancel()  # c's first step runs before this cancellation reaches b
    await holders.settle()
    assert holders.log[-2:] == ["b cancelled", "c waits"] or holders.log[-2:] == [
        "c waits",
        "b cancelled",
    ]
    assert holders.groups.statistics()[0].pending == ("c",)
    holders.release["a"].set()
    holders.release["c"].set()
    await asyncio.gather(*holders.tasks.values(), return_exceptions=True)
    assert holders.log[-2:] == ["c runs", "c done"]
    assert not holders.groups.statistics()


async def test_cancel_in_progress_stops_the_holder_once_and_the_newcomer_waits_for_it() -> None:
    holders = Holders(ConcurrencyGroups())
    holders.enter("a", claim())
    await holders.settle()
    holders.enter("b", claim(cancel=True))
    holders.enter(
        "c", claim(cancel=True)
    )  # a is already stopping: not stopped twice; b is replaced
    await asyncio.gather(holders.tasks["a"], holders.tasks["b"], return_exceptions=True)
    await holders.settle()
    assert holders.log.count("a stopped") == 1
    assert holders.log.index("a cancelled") < holders.log.index("c runs")
    assert "b replaced" in holders.log
    assert "b runs" not in holders.log
    holders.release["c"].set()
    await holders.tasks["c"]


async def test_a_full_queue_refuses_the_newcomer() -> None:
    holders = Holders(ConcurrencyGroups())
    holders.enter("a", claim())
    for name in ("b", "c", "d"):
        holders.enter(name, claim(queue=2))
    await holders.settle()
    assert "d replaced" in holders.log
    assert holders.groups.statistics()[0].pending == ("b", "c")
    for name in "abc":
        holders.release[name].set()
    await asyncio.gather(*holders.tasks.values(), return_exceptions=True)
    assert [line for line in holders.log if line.endswith("runs")] == ["a runs", "b runs", "c runs"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["enter", "enter", "finish", "cancel"]),
            st.sampled_from(["x", "X", "y"]),
            st.booleans(),
            st.booleans(),
            st.integers(0, 4),
        ),
        max_size=25,
    )
)
def test_the_registry_never_lets_two_hold_one_group(
    script: list[tuple[str, str, bool, bool, int]],
) -> None:
    """Any interleaving of arrivals, finishes and cancellations (some not yet delivered when the
    next comes)."""
    asyncio.run(_play(script))


async def _play(script: list[tuple[str, str, bool, bool, int]]) -> None:
    groups = ConcurrencyGroups()
    inside: dict[str, set[int]] = {}
    release: dict[int, asyncio.Event] = {}
    tasks: dict[int, asyncio.Task[None]] = {}
    peak: list[int] = []

    async def hold(n: int, group: str, cancel: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        stop: Callable[[str], None] = lambda _: task.cancel()  # noqa: E731
        try:
            async with groups.hold(claim(group, cancel), str(n), stop):
                members = inside.setdefault(group.casefold(), set())
                members.add(n)
                peak.append(len(members))
                try:
                    await release[n].wait()
                finally:
                    members.discard(n)
        except ConcurrencyCancelled:
            pass

    for step, (action, group, flag, settle, which) in enumerate(script):
        live = [n for n, t in tasks.items() if not t.done()]
        if action == "enter":
            release[step] = asyncio.Event()
            tasks[step] = asyncio.create_task(hold(step, group, flag))
        elif live and action == "finish":
            release[live[which % len(live)]].set()
        elif live:
            tasks[live[which % len(live)]].cancel()
        if settle:
            for _ in range(3):
                await asyncio.sleep(0)
            for stats in groups.statistics():
                assert len(stats.pending) <= 1
    for event in release.values():
        event.set()
    ended = await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert all(end is None or isinstance(end, asyncio.CancelledError) for end in ended), ended
    assert max(peak, default=1) == 1
    assert not groups.statistics()


def test_claims_use_only_the_allowed_contexts() -> None:
    contexts = {
        "github": {"repository": "octo/repo", "ref": "refs/heads/x"},
        "matrix": {"n": 1},
        "env": {"E": "1"},
    }
    made = evaluate_claim(
        Concurrency("ci-${{ github.ref }}-${{ matrix.n }}", "${{ matrix.n == 1 }}"),
        contexts,
        JOB_CONTEXTS,
    )
    assert made == Claim("ci-refs/heads/x-1", True, 1, "octo/repo")
    assert made.key == Claim("CI-REFS/HEADS/X-1", scope="octo/repo").key
    with pytest.raises(ConfigError, match="concurrency"):
        evaluate_claim(Concurrency("${{ env.E }}"), contexts, JOB_CONTEXTS)
    with pytest.raises(ConfigError, match="queue: max"):
        evaluate_claim(Concurrency("g", True, "max"), contexts, JOB_CONTEXTS)
