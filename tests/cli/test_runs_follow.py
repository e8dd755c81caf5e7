"""`vmrunner runs show --follow` on a local run that is still being written by another process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.cli.helpers import ROOT, vmrunner

#: A runner that keeps run "live0001" in the store: one step, then waits for a line on stdin
#: before its second step and its end.
WRITER = textwrap.dedent(
    """
    import sys
    from tests.reports.events_builder import RunBuilder
    from vmrunner.reports.storage import StoreSink
    from vmrunner.store import Store

    with Store.open() as store, StoreSink(store) as sink:
        run = RunBuilder("live0001", sink=sink).start()
        job = run.job("build").begin().step("Compile", lines=["compiling"])
        sink.flush()
        print("ready", flush=True)
        sys.stdin.readline()
        job.step("Test", lines=["testing after the follower started"]).finish()
        run.finish()
    """
)


def _popen(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_follow_prints_a_running_run_s_output_until_it_ends() -> None:
    writer = _popen([sys.executable, "-c", WRITER])
    follower: subprocess.Popen[str] | None = None
    try:
        assert writer.stdout is not None
        assert writer.stdin is not None
        assert writer.stdout.readline() == "ready\n"
        follower = _popen([sys.executable, "-m", "vmrunner", "runs", "show", "live", "--follow"])
        assert follower.stdout is not None
        assert (
            follower.stdout.readline() == "[build] compiling\n"
        )  # printed while the run still runs
        writer.stdin.write("go\n")
        writer.stdin.flush()
        out, _ = follower.communicate(timeout=60)
        assert follower.returncode == 0
        lines = out.splitlines()
        assert lines[0] == "[build] testing after the follower started"
        assert "Run live0001" in out
        assert "success" in out
    finally:
        for process in (writer, follower):
            if process is not None and process.poll() is None:
                process.kill()
            if process is not None:
                process.communicate(timeout=30)


def test_follow_of_an_unknown_run_is_a_clear_error() -> None:
    result = vmrunner("runs", "show", "nope", "--follow")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no run")
    assert "Traceback" not in result.stderr
