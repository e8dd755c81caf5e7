"""`vmrunner runs` as a real process, on runs kept in a real store (VMRUNNER_HOME) by StoreSink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema

from tests.cli.helpers import ROOT, vmrunner
from tests.reports.events_builder import RunBuilder, failing_matrix_run, simple_run
from vmrunner.reports.results import RUN_RESULT_SCHEMA
from vmrunner.reports.storage import RunHistory, StoreSink
from vmrunner.store import Store


def keep(*builders: object) -> None:
    """Run each builder function into the store under VMRUNNER_HOME."""
    with Store.open() as store:
        for build in builders:
            with StoreSink(store) as sink:
                build(sink)  # type: ignore[operator]


def test_list_shows_runs_newest_first() -> None:
    keep(
        lambda sink: simple_run(sink, run_id="4f1c0a"),
        lambda sink: (
            RunBuilder("9b2e77", workflow="Matrix", start=1_700_000_500.0, sink=sink)
            .start()
            .finish("failure")
        ),
    )
    done = vmrunner("runs", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["Run", "Workflow", "Event", "Conclusion", "Started", "Duration"]
    assert lines[1].split()[:4] == ["9b2e77", "Matrix", "push", "failure"]
    assert lines[2].split()[:4] == ["4f1c0a", "CI", "push", "success"]
    assert lines[2].split()[-2:] == ["1m", "17s"]
    assert "\x1b" not in done.stdout
    one = vmrunner("runs", "list", "--limit", "1", "--json")
    data = json.loads(one.stdout)
    assert [run["run_id"] for run in data["runs"]] == ["9b2e77"]
    jsonschema.validate(data["runs"][0], RUN_RESULT_SCHEMA)
    filtered = vmrunner("runs", "list", "--workflow", "CI", "--json")
    assert [run["run_id"] for run in json.loads(filtered.stdout)["runs"]] == ["4f1c0a"]


def test_list_without_runs_says_so() -> None:
    done = vmrunner("runs", "list")
    assert done.returncode == 0
    assert "no runs kept yet" in done.stdout


def test_show_by_prefix_lists_jobs_steps_and_logs() -> None:
    keep(lambda sink: failing_matrix_run(sink, run_id="c0ffee12"))
    done = vmrunner("runs", "show", "c0f")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(
        "Run c0ffee12  Matrix (.github/workflows/ci.yml)\n✗ failure  push refs/heads/main 0123abcd"
    )
    assert "[test (large)] ↩ job failure, rolled back 8.3s  sandbox m-test_(large) (pool)" in out
    assert (
        "  ✗ Test 1.5s (failure, exit code 1)\n    Error: src/app.py:3: test_size failed\n" in out
    )
    assert "[deploy] ↷ job skipped 0.0s (a job it needs failed)" in out
    assert "  ✓ Build 1.5s\n    snapshot snap-test_(large)-0\n" in out
    assert "AssertionError" not in out  # logs only with --logs
    with_logs = vmrunner("runs", "show", "c0ffee12", "--logs", "--job", "test (large)").stdout
    assert "  ✗ Test 1.5s (failure, exit code 1)\n    AssertionError: 1 != 2\n" in with_logs
    assert "[test (small)]" not in with_logs
    assert "building large" in with_logs


def test_show_json_is_the_kept_result_and_its_logs() -> None:
    keep(lambda sink: simple_run(sink, run_id="abc123"))
    done = vmrunner("runs", "show", "abc", "--json", "--logs")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    logs = data.pop("logs")
    jsonschema.validate(data, RUN_RESULT_SCHEMA)
    with Store.open() as store:
        assert data == RunHistory(store).get_run("abc123").to_json()
    assert [(row["kind"], row["text"]) for row in logs if row["step_index"] == 2] == [
        ("line", "collected 3 items"), ("line", "3 passed"), ("group", "pytest"), ("line", "a ok"),
        ("line", "b ok"), ("endgroup", ""),
    ]


def test_unknown_ambiguous_ids_and_jobs_are_clear_errors() -> None:
    keep(lambda sink: simple_run(sink, run_id="aa11"), lambda sink: simple_run(sink, run_id="aa22"))
    unknown = vmrunner("runs", "show", "zz")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: no run 'zz'")
    assert "Traceback" not in unknown.stderr
    ambiguous = vmrunner("runs", "show", "aa")
    assert ambiguous.returncode == 1
    assert "ambiguous: aa11, aa22" in ambiguous.stderr
    job = vmrunner("runs", "show", "aa11", "--job", "nope")
    assert job.returncode == 1
    assert "run aa11 has no job 'nope' (its jobs: 'build')" in job.stderr


def test_a_killed_runner_leaves_an_interrupted_run() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from tests.reports.events_builder import RunBuilder
        from vmrunner.reports.storage import StoreSink
        from vmrunner.store import Store

        store = Store.open()
        sink = StoreSink(store)
        run = RunBuilder("dead0001", sink=sink).start()
        run.job("build").begin().step("Compile", lines=["compiling"])
        sink.flush()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    listed = vmrunner("runs", "list")
    assert listed.stdout.splitlines()[1].split()[:4] == ["dead0001", "CI", "push", "interrupted"]
    shown = vmrunner("runs", "show", "dead", "--logs").stdout
    assert "! interrupted" in shown
    assert "    compiling" in shown
    with Store.open() as store:
        assert RunHistory(store).mark_interrupted() == ["dead0001"]


def test_masked_values_stay_masked_through_store_cli_and_summary() -> None:
    def masked_run(sink: StoreSink) -> None:
        run = RunBuilder("sec001", sink=sink).start()
        job = run.job("deploy").begin()
        job.step(
            "Deploy with ***", lines=["token=***", "done"], annotations=[("warning", "rotated ***")]
        )
        job.finish(summary="Deployed with `***`")
        run.finish()

    keep(masked_run)
    outputs = [
        vmrunner("runs", "show", "sec001", "--logs").stdout,
        vmrunner("runs", "show", "sec001", "--logs", "--json").stdout,
        vmrunner("runs", "show", "sec001", "--markdown").stdout,
        vmrunner("runs", "list", "--json").stdout,
    ]
    text, as_json, markdown, listed = outputs
    assert "    token=***\n" in text
    assert "Warning: src/app.py:3: rotated ***" in text
    assert any(row["text"] == "token=***" for row in json.loads(as_json)["logs"])
    assert "↳ Deploy with \\*\\*\\*" in markdown
    assert "Deployed with `***`" in markdown
    assert markdown.startswith("# ✅ CI: success\n")
    assert json.loads(listed)["runs"][0]["jobs"][0]["summary"] == "Deployed with `***`"


WORKFLOW = """\
name: Demo
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - name: Hello
        run: |
          echo "hello"
          echo "::group::details"
          echo "inside"
          echo "::endgroup::"
          echo "::warning file=a.py,line=2::careful"
          echo "### Built" >> "$GITHUB_STEP_SUMMARY"
      - name: Secret
        run: echo "token=$TOKEN"
        env:
          TOKEN: ${{ secrets.TOKEN }}
  test:
    needs: build
    strategy:
      fail-fast: false
      matrix:
        n: [1, 2]
    runs-on: ubuntu-latest
    steps:
      - run: exit ${{ matrix.n == 2 && 1 || 0 }}
"""


def test_a_real_run_is_kept_and_shown_with_its_secret_masked(tmp_path: Path) -> None:
    """`vmrunner run` on the sandbox, then `vmrunner runs`: the engine's real events, kept and read
    back."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "demo.yml").write_text(WORKFLOW, encoding="utf-8")
    secret = "hunter2-5ecret"
    ran = vmrunner("run", "-W", str(workflows / "demo.yml"), "-s", f"TOKEN={secret}", cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr  # test (2) fails
    assert "[Demo/build]     token=***" in ran.stdout
    listed = json.loads(vmrunner("runs", "list", "--json").stdout)["runs"]
    assert len(listed) == 1
    run = listed[0]
    jsonschema.validate(run, RUN_RESULT_SCHEMA)
    assert (run["workflow_name"], run["status"], run["conclusion"]) == (
        "Demo",
        "completed",
        "failure",
    )
    assert {job["job_key"]: job["conclusion"] for job in run["jobs"]} == {
        "build": "success", "test (1)": "success", "test (2)": "failure",
    }
    assert all(job["machine_id"] and job["provider"] == "sandbox" for job in run["jobs"])
    shown = vmrunner("runs", "show", run["run_id"][:6], "--logs").stdout
    assert "    token=***\n" in shown
    assert "    ▾ details\n      inside\n" in shown
    assert "Warning: a.py:2: careful" in shown
    markdown = vmrunner("runs", "show", run["run_id"], "--markdown").stdout
    assert markdown.startswith("# ❌ Demo: failure\n")
    assert "### Built" in markdown
    for out in (ran.stdout, ran.stderr, shown, markdown, json.dumps(listed)):
        assert secret not in out
