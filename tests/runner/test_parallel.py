"""``parallel:`` steps (GitHub's "jobs.<job_id>.steps[*].parallel"), run in a real sandbox.

The steps of a group run at the same time in the job's one machine, as background steps with
an implicit wait at the end: they start from the same state, cannot see each other's outputs
or environment changes, and all of it counts from the end of the group on.
"""

from __future__ import annotations

from tests.runner.engine import run
from vmrunner.reports.events import (
    GroupEnded,
    GroupStarted,
    JobStarted,
    LogLine,
    SnapshotTaken,
    StepStarted,
)

# Each step waits (up to 20 s) for a file the other one writes: run one after the other, the
# first would give up and fail.
RENDEZVOUS = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo BEFORE=1 >> "$GITHUB_ENV"
      - parallel:
          - name: left
            id: left
            run: |
              echo "::group::left side"
              touch "$RUNNER_TEMP/left"
              for i in $(seq 200); do [ -e "$RUNNER_TEMP/right" ] && break; sleep 0.1; done
              [ -e "$RUNNER_TEMP/right" ]
              echo "saw ${{ steps.right.outputs.v }}-$BEFORE-${LEFT_ENV:-none}"
              echo "v=from-left" >> "$GITHUB_OUTPUT"
              echo "LEFT_ENV=set" >> "$GITHUB_ENV"
              echo "::endgroup::"
          - name: right
            id: right
            run: |
              touch "$RUNNER_TEMP/right"
              for i in $(seq 200); do [ -e "$RUNNER_TEMP/left" ] && break; sleep 0.1; done
              [ -e "$RUNNER_TEMP/left" ]
              sleep 0.5
              echo "right sees LEFT_ENV=${LEFT_ENV:-none}"
              echo "v=from-right" >> "$GITHUB_OUTPUT"
          - name: skipped
            if: steps.left.outputs.v == 'from-left'
            run: exit 1
      - run: echo "after ${{ steps.left.outputs.v }} ${{ steps.right.outputs.v }} $LEFT_ENV"
"""


async def test_steps_of_a_group_run_at_once_in_the_one_machine() -> None:
    ran = await run(RENDEZVOUS)
    assert ran.result("build") == "success", ran.finished("build").reason
    assert len(ran.of(JobStarted)) == 1
    steps = {e.index: e for e in ran.of(StepStarted) if e.kind == "step"}
    names = {e.name: e.index for e in steps.values()}
    finished = {e.index: e for e in ran.steps("build")}
    assert [finished[names[n]].conclusion for n in ("left", "right", "skipped")] == [
        "success", "success", "skipped",
    ]
    by_step: dict[int, list[str]] = {}
    for line in ran.of(LogLine):
        by_step.setdefault(line.step_index, []).append(line.text)
    assert by_step[names["left"]] == ["saw -1-none"]
    assert by_step[names["right"]] == ["right sees LEFT_ENV=none"]
    last = max(steps)
    assert by_step[last] == ["after from-left from-right set"]
    groups = [(type(e).__name__, e.step_index) for e in ran.of(GroupStarted) + ran.of(GroupEnded)]
    assert groups == [("GroupStarted", names["left"]), ("GroupEnded", names["left"])]
    left_line = next(e for e in ran.of(LogLine) if e.step_index == names["left"])
    assert left_line.group_depth == 1


FAILING = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - parallel:
          - {id: bad, run: 'exit 3'}
          - {id: slow, run: 'sleep 1; echo "v=done" >> "$GITHUB_OUTPUT"'}
          - {id: tolerated, continue-on-error: true, run: 'exit 4'}
      - id: after
        run: echo never
      - if: failure()
        run: >-
          echo "${{ steps.bad.outcome }} ${{ steps.slow.outputs.v }}
          ${{ steps.tolerated.outcome }}/${{ steps.tolerated.conclusion }}
          ${{ steps.after.conclusion }}"
"""


async def test_a_failed_step_fails_the_job_after_the_group_and_the_others_finish() -> None:
    ran = await run(FAILING)
    assert ran.result("build") == "failure"
    results = [(e.outcome, e.conclusion) for e in ran.steps("build")]
    assert sorted(results[:3]) == [
        ("failure", "failure"), ("failure", "success"), ("success", "success"),
    ]
    assert results[3:] == [("skipped", "skipped"), ("success", "success")]
    assert ran.logs("build")[-1] == "failure done failure/success skipped"


async def test_a_parallel_group_with_a_snapshot_after_it() -> None:
    ran = await run(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - parallel:\n"
        "          - run: echo one > one\n          - run: echo two > two\n"
        "      - run: cat one two\n",
        snapshot=True,
    )
    assert ran.result("a") == "success", ran.finished("a").reason
    assert ran.logs("a") == ["one", "two"]
    assert len(ran.of(SnapshotTaken)) == 3  # after set-up, after the group, after the last step

