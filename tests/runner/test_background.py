"""Background steps (GitHub's ``background``, ``wait``, ``wait-all``, ``cancel``), run in a real
sandbox: a background step starts and the job goes on; what it leaves counts from the control
step that ends it; a failed one fails that step; after the last step the job waits for the
rest (GitHub's implicit ``wait-all``); ``cancel`` kills the step's processes."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from tests.cli.helpers import vmrunner
from tests.runner.engine import Ran, run
from vmrunner.cli.progress import ProgressView
from vmrunner.reports.events import JobStarted, LogLine, SnapshotTaken, StepFinished, StepStarted
from vmrunner.runner import checkpoints


def job(steps: str, *, head: str = "") -> str:
    return f"on: push\njobs:\n  a:\n    runs-on: x\n{head}    steps:\n{steps}"


def by_name(ran: Ran) -> dict[str, StepFinished]:
    """Each step's end, by the name it started with."""
    names = {e.index: e.name for e in ran.of(StepStarted) if e.kind == "step"}
    return {names[e.index]: e for e in ran.steps("a") if e.index in names}


def lines(ran: Ran, name: str) -> list[str]:
    index = next(e.index for e in ran.of(StepStarted) if e.name == name)
    return [e.text for e in ran.of(LogLine) if e.step_index == index]


# The background step waits for a file the next step writes: run in order, it would hang.
SERVER = job("""\
      - name: server
        id: server
        background: true
        run: |
          cd "$RUNNER_TEMP" && echo hello > index.txt
          exec python3 -m http.server 8765 --bind 127.0.0.1
      - name: client
        run: |
          python3 - <<'EOF'
          import time, urllib.request
          for _ in range(200):
              try:
                  page = urllib.request.urlopen("http://127.0.0.1:8765/index.txt").read()
                  print(page.decode(), end="")
                  break
              except OSError:
                  time.sleep(0.05)
          EOF
      - name: stop
        cancel: server
      - name: after
        run: |
          python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8765))' 2>/dev/null \\
            && echo still serving || echo "stopped ${{ steps.server.outcome }}"
""")


async def test_a_background_server_is_reached_by_a_later_step_and_cancelled() -> None:
    ran = await run(SERVER)
    assert ran.result("a") == "success", ran.finished("a").reason
    assert len(ran.of(JobStarted)) == 1
    steps = by_name(ran)
    assert {n: steps[n].conclusion for n in steps} == {
        "server": "cancelled", "client": "success", "stop": "success", "after": "success",
    }
    assert lines(ran, "client") == ["hello"]
    assert lines(ran, "after") == ["stopped cancelled"]
    assert lines(ran, "stop") == ["Cancelling background steps: server", "  server: cancelled"]
    # The live view: each line under its own step's name, the server's between the client's.
    out = io.StringIO()
    with ProgressView(Console(file=out, width=200, force_terminal=False)) as view:
        for event in ran.events:
            view.emit(event)
    shown = [line.removeprefix("[test.yml/a] ") for line in out.getvalue().splitlines()]
    served = next(i for i, line in enumerate(shown) if "GET /index.txt" in line)
    assert shown[served - 1] == "  ▸ server"
    assert shown[shown.index("    hello") - 1] == "  ▸ client"


OUTPUTS = job("""\
      - run: echo "JOB=1" >> "$GITHUB_ENV"
      - name: build
        id: build
        background: true
        run: |
          until [ -e "$RUNNER_TEMP/go" ]; do sleep 0.05; done
          echo "v=42" >> "$GITHUB_OUTPUT"
          echo "BUILT=yes" >> "$GITHUB_ENV"
          echo "built with JOB=$JOB"
      - name: meanwhile
        run: |
          echo "[${{ steps.build.outputs.v }}] [${BUILT:-none}] [${{ steps.build.outcome }}]"
          touch "$RUNNER_TEMP/go"
      - name: the wait
        wait: build
      - name: then
        run: echo "[${{ steps.build.outputs.v }}] [${BUILT:-none}] [${{ steps.build.outcome }}]"
""")


async def test_outputs_outcome_and_env_of_a_background_step_count_from_its_wait() -> None:
    ran = await run(OUTPUTS)
    assert ran.result("a") == "success", ran.finished("a").reason
    assert lines(ran, "meanwhile") == ["[] [none] []"]
    assert lines(ran, "build") == ["built with JOB=1"]
    assert lines(ran, "then") == ["[42] [yes] [success]"]
    started = [e.name for e in ran.of(StepStarted)]
    assert started.index("build") < started.index("meanwhile")  # in the steps' order


WAIT_ALL = job("""\
      - {id: one, background: true, run: 'sleep 0.3; echo "v=1" >> "$GITHUB_OUTPUT"'}
      - {background: true, run: 'sleep 0.2; echo "TWO=2" >> "$GITHUB_ENV"'}
      - {id: skipped, background: true, if: 'false', run: exit 1}
      - name: all
        wait-all:
      - name: then
        run: echo "${{ steps.one.outputs.v }} $TWO ${{ steps.skipped.outcome }}"
      - name: nothing left
        wait-all: null
""")


async def test_wait_all_waits_for_every_running_background_step() -> None:
    ran = await run(WAIT_ALL)
    assert ran.result("a") == "success", ran.finished("a").reason
    assert lines(ran, "then") == ["1 2 skipped"]
    assert lines(ran, "nothing left") == ["No background step to wait for"]
    assert "Wait for all background steps" not in by_name(ran)  # nothing left for it


# The first step leaves SIGTERM to its trap, the second ignores it (SIGKILL after the grace).
CANCEL = job("""\
      - id: polite
        background: true
        run: |
          echo $$ > "$RUNNER_TEMP/polite"
          trap 'touch "$RUNNER_TEMP/got-term"; exit 0' TERM
          while :; do sleep 0.1; done
      - id: stubborn
        background: true
        run: |
          trap '' TERM
          sleep 600 & echo "$$ $!" > "$RUNNER_TEMP/stubborn"
          while :; do sleep 0.1; done
      - run: |
          until [ -e "$RUNNER_TEMP/polite" ] && [ -e "$RUNNER_TEMP/stubborn" ]; do sleep 0.05; done
      - cancel: polite
      - cancel: stubborn
      - name: check
        run: |
          for pid in $(cat "$RUNNER_TEMP/polite" "$RUNNER_TEMP/stubborn"); do
            if [ -d /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status; then
              echo "$pid alive $(tr '\\0' ' ' < /proc/$pid/cmdline) $(grep State /proc/$pid/status)"
            fi
          done
          [ -e "$RUNNER_TEMP/got-term" ] && echo "got SIGTERM first"
          echo "${{ steps.polite.outcome }} ${{ steps.stubborn.conclusion }}"
""")


async def test_cancel_stops_the_steps_processes_sigterm_then_sigkill() -> None:
    ran = await run(CANCEL)
    assert ran.result("a") == "success", ran.finished("a").reason
    assert lines(ran, "check") == ["got SIGTERM first", "cancelled cancelled"]


FAILING = job("""\
      - {name: bad, id: bad, background: true, run: 'touch "$RUNNER_TEMP/bad"; exit 3'}
      - {name: tolerated, id: tolerated, background: true, continue-on-error: true, run: exit 4}
      - name: meanwhile
        run: until [ -e "$RUNNER_TEMP/bad" ]; do sleep 0.05; done; sleep 0.3
      - name: still fine
        run: echo "${{ job.status }} [${{ steps.bad.outcome }}]"
      - name: wait for them
        wait: [bad, tolerated]
      - {name: skipped, run: echo never}
      - name: report
        if: failure()
        run: >-
          echo "${{ steps.bad.outcome }}/${{ steps.bad.conclusion }}
          ${{ steps.tolerated.outcome }}/${{ steps.tolerated.conclusion }}"
""")


async def test_a_failed_background_step_fails_the_job_at_its_wait() -> None:
    ran = await run(FAILING)
    assert ran.result("a") == "failure"
    steps = by_name(ran)
    assert lines(ran, "still fine") == ["success []"]
    assert (steps["bad"].outcome, steps["bad"].conclusion) == ("failure", "failure")
    assert (steps["tolerated"].outcome, steps["tolerated"].conclusion) == ("failure", "success")
    assert steps["wait for them"].conclusion == "failure"
    assert steps["skipped"].conclusion == "skipped"
    assert lines(ran, "report") == ["failure/failure failure/success"]


async def test_continue_on_error_on_the_wait_tolerates_the_failure() -> None:
    ran = await run(job("""\
      - {id: bad, background: true, run: exit 3}
      - {name: the wait, wait: bad, continue-on-error: true}
      - {name: after, run: 'echo "${{ steps.bad.conclusion }}"'}
"""))
    assert ran.result("a") == "success", ran.finished("a").reason
    wait = by_name(ran)["the wait"]
    assert (wait.outcome, wait.conclusion) == ("failure", "success")
    assert lines(ran, "after") == ["failure"]


# Nothing waits for `late`: the job does, after its last step, before outputs and post steps.
IMPLICIT = job(
    """\
      - {name: late, id: late, background: true, run: 'sleep 0.5; echo "v=late" >> "$GITHUB_OUTPUT"'}
      - {name: bad, background: true, run: 'sleep 0.2; exit 2'}
      - {name: last, run: echo last}
""",  # noqa: E501
    head="    outputs: {out: '${{ steps.late.outputs.v }}'}\n",
)


async def test_the_job_waits_for_its_background_steps_after_the_last_step() -> None:
    ran = await run(IMPLICIT)
    assert ran.result("a") == "failure"
    steps = list(by_name(ran))
    assert steps[-1] == "Wait for all background steps"
    implicit = by_name(ran)[steps[-1]]
    assert implicit.conclusion == "failure"
    assert lines(ran, steps[-1]) == [
        "Waiting for background steps: late, bad", "  late: success", "  bad: failure",
    ]
    ok = await run(IMPLICIT.replace("exit 2", "exit 0"))
    assert ok.result("a") == "success", ok.finished("a").reason
    assert ok.finished("a").outputs == {"out": "late"}


async def test_a_background_step_past_its_timeout_fails_at_its_wait() -> None:
    ran = await run(job("""\
      - {name: slow, id: slow, background: true, timeout-minutes: 0.01, run: sleep 60}
      - {name: the wait, wait: slow}
"""))
    assert ran.result("a") == "failure"
    slow = by_name(ran)["slow"]
    assert (slow.conclusion, slow.timed_out) == ("failure", True)
    assert by_name(ran)["the wait"].conclusion == "failure"


async def test_the_jobs_timeout_stops_its_background_steps() -> None:
    ran = await run(job(
        "      - {name: forever, id: forever, background: true, run: sleep 600}\n"
        "      - wait: forever\n",
        head="    timeout-minutes: 0.02\n",
    ))
    assert ran.result("a") == "failure"
    assert "timeout" in ran.finished("a").reason
    assert by_name(ran)["forever"].conclusion == "cancelled"
    assert ran.provider.release_count == ran.provider.allocation_count == 1


async def test_no_snapshot_while_a_background_step_runs() -> None:
    ran = await run(
        job("""\
      - {id: bg, background: true, run: 'sleep 0.3; echo done > bg.txt'}
      - run: echo meanwhile
      - wait: bg
      - run: cat bg.txt
"""),
        snapshot=True,
    )
    assert ran.result("a") == "success", ran.finished("a").reason
    assert ran.logs("a")[-1] == "done"
    # After set-up, after the wait, after the last step: none while bg ran.
    started = {e.index: e.name for e in ran.of(StepStarted)}
    assert [started.get(e.step_index, "set-up") for e in ran.of(SnapshotTaken)] == [
        "set-up", "Wait", "Run cat bg.txt",
    ]


RERUN = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - {id: bg, background: true, run: 'echo bg >> trail.txt; echo "v=from-bg" >> "$GITHUB_OUTPUT"'}
      - run: echo two >> trail.txt
      - wait: bg
      - run: |
          echo "trail: $(sort trail.txt | tr '\\n' ,) ${{ steps.bg.outputs.v }}"
          test "${{ vars.READY }}" = yes
"""  # noqa: E501


def test_a_job_with_background_steps_reruns_from_a_step_after_its_wait(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.yml").write_text(RERUN)
    first = vmrunner("run", "--json", "--snapshot", cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    original = str(json.loads(first.stdout)["runs"][0]["run_id"])
    kept = checkpoints.load(original, "build")
    assert kept is not None
    assert [c.step_number for c in kept.checkpoints] == [0, 3]  # set-up, the wait
    refused = vmrunner("rerun", original, "--from-step", "3", cwd=tmp_path)
    assert refused.returncode != 0
    assert "no snapshot was taken after step 2" in refused.stderr
    again = vmrunner(
        "rerun", original, "--from-step", "4", "--var", "READY=yes", "--json", cwd=tmp_path
    )
    assert again.returncode == 0, again.stdout + again.stderr
    logs = vmrunner("runs", "show", json.loads(again.stdout)["runs"][0]["run_id"], "--logs",
                    cwd=tmp_path)
    assert "trail: bg,two, from-bg" in logs.stdout, logs.stdout


async def test_at_most_ten_background_steps_run_at_once_the_others_queue() -> None:
    steps = "".join(
        f"      - {{name: s{i}, background: true, run: 'sleep 0.3'}}\n" for i in range(11)
    )
    ran = await run(job(steps + "      - {name: all, wait-all: }\n"))
    assert ran.result("a") == "success", ran.finished("a").reason
    order = [
        (type(e).__name__, e.name if isinstance(e, StepStarted) else "")
        for e in ran.events
        if isinstance(e, StepStarted | StepFinished)
    ]
    eleventh = order.index(("StepStarted", "s10"))
    assert ("StepFinished", "") in order[:eleventh]  # it waited for a slot
    assert order.index(("StepStarted", "all")) < eleventh  # and the job went on meanwhile
