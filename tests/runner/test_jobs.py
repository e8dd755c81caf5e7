"""Jobs in their sessions: results, cleanup, timeouts, unsupported jobs, runs-on, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.runner.engine import check_contract, run
from vmrunner.machines.providers import get_provider
from vmrunner.machines.testing import CountingProvider
from vmrunner.reports.events import (
    Annotation,
    Event,
    JobFinished,
    JobStarted,
    LogLine,
    Recorder,
    RunFinished,
    StepFinished,
    StepStarted,
)
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import run_workflow
from vmrunner.sessions import SessionManager
from vmrunner.workflow.loader import load_workflow_text


async def test_a_job_with_a_failing_step_is_never_a_success() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: exit 3
      - run: echo never
      - if: always()
        run: echo always
  b:
    runs-on: ubuntu-latest
    steps:
      - run: exit 1
        continue-on-error: true
      - run: echo after
"""
    )
    assert ran.result("a") == "failure"
    assert [s.outcome for s in ran.steps("a")] == ["failure", "skipped", "success"]
    assert ran.steps("a")[0].exit_code == 3
    assert "never" not in ran.logs("a")
    assert ran.result("b") == "success"
    first = ran.steps("b")[0]
    assert (first.outcome, first.conclusion) == ("failure", "success")
    assert ran.outcome.conclusion == "failure"


async def test_job_continue_on_error_keeps_the_run_green_but_the_job_failed() -> None:
    ran = await run(
        """
on: push
jobs:
  flaky:
    runs-on: ubuntu-latest
    continue-on-error: true
    steps:
      - run: exit 1
  after:
    needs: flaky
    runs-on: ubuntu-latest
    steps:
      - run: echo ran
"""
    )
    assert ran.result("flaky") == "failure"
    assert ran.result("after") == "success"
    assert ran.outcome.conclusion == "success"


async def test_setup_and_cleanup_commands_run_in_the_jobs_machine_also_after_failure() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo from-step > "$RUNNER_TEMP/mark"; exit 1
""",
        setup_commands=("echo setup-ran > $RUNNER_TEMP/setup",),
        cleanup_commands=("cat $RUNNER_TEMP/setup $RUNNER_TEMP/mark",),
    )
    kinds = [e.kind for e in ran.of(StepStarted)]
    assert kinds == ["setup", "step", "cleanup"]
    assert ran.logs("a")[-2:] == ["setup-ran", "from-step"]
    assert ran.result("a") == "failure"
    assert ran.provider.allocation_count == 1


async def test_job_timeout_fails_the_job_and_cleanup_still_runs() -> None:
    ran = await run(
        """
on: push
jobs:
  slow:
    runs-on: ubuntu-latest
    timeout-minutes: 0.01
    steps:
      - run: sleep 30
""",
        cleanup_commands=("echo cleaned",),
    )
    finished = ran.finished("slow")
    assert finished.result == "failure"
    assert "timeout" in finished.reason
    assert ran.logs("slow")[-1] == "cleaned"
    assert not ran.provider.alive


async def test_step_timeout_kills_the_whole_process_tree() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - timeout-minutes: 0.01
        run: |
          (sleep 300; echo leaked > "$RUNNER_TEMP/leak") &
          sleep 300
      - if: always()
        run: |
          for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f" 2>/dev/null; echo; done | grep -c '^sleep 300' || true
          test ! -e "$RUNNER_TEMP/leak"
"""  # noqa: E501
    )
    first, second = ran.steps("a")
    assert first.outcome == "failure"
    assert first.timed_out
    assert second.outcome == "success"
    assert ran.logs("a")[-1] == "0"


async def test_unsupported_jobs_fail_at_once_and_others_run(tmp_path: Path) -> None:
    """On a provider whose machines cannot run images (here ``host``; the sandbox can)."""
    host = get_provider("host")
    ran = await run(
        """
on: push
jobs:
  in-container:
    runs-on: ubuntu-latest
    container: node:20
    steps:
      - run: echo hi
  with-services:
    runs-on: ubuntu-latest
    services:
      db:
        image: postgres
    steps:
      - run: echo hi
  docker-step:
    runs-on: ubuntu-latest
    steps:
      - uses: docker://alpine:3
  fine:
    runs-on: ubuntu-latest
    steps:
      - run: echo fine
""",
        repo_root=tmp_path, provider=host, network="host",
    )
    await host.aclose()
    for job in ("in-container", "with-services", "docker-step"):
        finished = ran.finished(job)
        assert finished.result == "failure"
        assert f"job '{job}'" in finished.reason
        assert "not supported by the host provider" in finished.reason
    assert ran.result("fine") == "success"
    assert {e.job_key for e in ran.of(JobStarted)} == {"fine"}


async def test_unmapped_labels_run_on_the_default_type_with_a_notice() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: [self-hosted, gpu-box]
    steps:
      - run: echo ok
""",
    )
    notices = [a.message for a in ran.of(Annotation) if a.level == "notice"]
    assert any("labels gpu-box are not mapped" in n and "default" in n for n in notices)
    assert ran.of(JobStarted)[0].vm_type == "default"


async def test_standard_labels_are_silent_and_unmapped_ones_told_once_per_run() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps: [{run: echo a}]
  b:
    runs-on: [self-hosted, Linux, X64]
    steps: [{run: echo b}]
  c:
    runs-on: ubuntu-24.04-arm
    steps: [{run: echo c}]
  d:
    runs-on: ubuntu-24.04-arm
    steps: [{run: echo d}]
""",
    )
    notices = [a.message for a in ran.of(Annotation) if a.level == "notice"]
    assert len(notices) == 1, notices
    assert notices[0].startswith("runs-on labels ubuntu-24.04-arm are not mapped")
    assert {e.vm_type for e in ran.of(JobStarted)} == {"default"}


async def test_cancelling_the_run_releases_every_machine() -> None:
    workflow = load_workflow_text(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo started; sleep 300
  b:
    runs-on: ubuntu-latest
    steps:
      - run: echo started; sleep 300
""",
        "cancel.yml",
    )
    provider = CountingProvider(get_provider("sandbox"))
    recorder = Recorder()
    both_started = asyncio.Event()

    class Watch:
        def emit(self, event: Event) -> None:
            recorder.emit(event)
            if (
                sum(1 for e in recorder.events if isinstance(e, LogLine) and e.text == "started")
                == 2
            ):
                both_started.set()

    async with SessionManager(provider, limit=4) as sessions:
        task = asyncio.create_task(run_workflow(workflow, RunOptions(), sessions, Watch()))
        await both_started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the run should have been cancelled")
    await provider.aclose()
    check_contract(recorder.events)
    assert provider.allocation_count == provider.release_count == 2
    assert not provider.alive
    assert {e.result for e in recorder.events if isinstance(e, JobFinished)} == {"cancelled"}
    assert {e.reason for e in recorder.events if isinstance(e, JobFinished)} == {
        "the run was cancelled"
    }
    final = recorder.events[-1]
    assert isinstance(final, RunFinished)
    assert final.conclusion == "cancelled"
    assert {e.outcome for e in recorder.events if isinstance(e, StepFinished)} == {"cancelled"}
