"""The live view of `vmrunner run`, rendered to real Rich consoles writing to strings."""

from __future__ import annotations

import io
import json

import jsonschema
import pytest
from rich.console import Console

from tests.reports.events_builder import RunBuilder, failing_matrix_run, simple_run
from vmrunner.cli.progress import QUIET_TAIL, JsonView, ProgressView
from vmrunner.reports.events import Progress, StepStarted
from vmrunner.reports.results import RUN_RESULT_SCHEMA


def plain_console() -> tuple[Console, io.StringIO]:
    """What a pipe or CI sees: not a terminal."""
    out = io.StringIO()
    return Console(file=out, width=160, force_terminal=False), out


def test_plain_output_has_a_line_per_job_and_step_with_durations_and_indented_logs() -> None:
    console, out = plain_console()
    view = ProgressView(console)
    simple_run(view)
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "▶ CI on push refs/heads/main  run run-0001"
    body = lines[1 : lines.index("")]
    assert all(line.startswith("[CI/build] ") for line in body)
    assert [line.removeprefix("[CI/build] ") for line in body] == [
        "● started on sandbox m-build (0.1s to allocate)",
        "  ▸ Set up job (setup)",
        "    machine ready",
        "  ✓ Set up job (setup) 0.2s",
        "  ▸ Checkout",
        "    Fetched 12 files",
        "  ✓ Checkout 0.8s",
        "    snapshot snap-build-1 (0.1s)",
        "  ▸ Test",
        "    collected 3 items",
        "    3 passed",
        "    ▾ pytest",
        "      a ok",
        "      b ok",
        "  ✓ Test 1m 15s",
        "✓ job success 1m 16s",
    ]
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["Job", "Result", "Steps", "Duration", "Machine"]
    assert table[1].split() == ["✓", "build", "success", "2/2", "1m", "16s", "sandbox", "m-build"]
    assert table[-1] == "✓ CI: success in 1m 17s  (run run-0001)"
    assert view.result().conclusion == "success"


def test_parallel_jobs_are_prefixed_and_failures_rollbacks_and_annotations_show() -> None:
    console, out = plain_console()
    failing_matrix_run(ProgressView(console))
    lines = out.getvalue().splitlines()
    body = lines[1 : lines.index("")]
    assert all(
        line.startswith(("[Matrix/test (small)] ", "[Matrix/test (large)] ", "[Matrix/deploy] "))
        for line in body
    )
    assert "[Matrix/test (large)]     AssertionError: 1 != 2" in body
    assert "[Matrix/test (large)]     Error: src/app.py:3: test_size failed" in body
    assert "[Matrix/test (large)]   ✗ Test 1.5s (failure, exit code 1)" in body
    assert "[Matrix/test (large)]   ↷ Upload 0.0s (skipped)" in body
    assert "[Matrix/test (large)]   ↩ rolled back to snapshot snap-test_(large)-0 (0.1s)" in body
    assert "[Matrix/test (large)] ↩ job failure, rolled back 8.3s" in body
    assert "[Matrix/deploy] ↷ job skipped 0.0s (a job it needs failed)" in body
    # Parallel: the two matrix jobs' lines interleave.
    owners = [line.split("]")[0] for line in body if "▸" in line]
    assert owners[:3] == ["[Matrix/test (small)", "[Matrix/test (large)", "[Matrix/test (small)"]
    rows = {line.split()[1]: line for line in lines[lines.index("") + 2 : -1]}
    assert rows["deploy"].split()[:3] == ["↷", "deploy", "skipped:"]
    assert lines[-1] == "✗ Matrix: failure in 9.3s  (run run-0002)"


def test_quiet_shows_only_what_failed_with_the_failing_steps_output() -> None:
    console, out = plain_console()
    failing_matrix_run(ProgressView(console, quiet=True))
    lines = out.getvalue().splitlines()
    body = lines[1 : lines.index("")]
    assert body == [
        "[Matrix/test (large)]   ✗ Test 1.5s (failure, exit code 1)",
        "[Matrix/test (large)]     AssertionError: 1 != 2",
        "[Matrix/test (large)]     Error: src/app.py:3: test_size failed",
        "[Matrix/test (large)]   ↩ rolled back to snapshot snap-test_(large)-0 (0.1s)",
        "[Matrix/test (large)] ↩ job failure, rolled back 8.3s",
    ]
    table = lines[lines.index("") + 1 :]
    assert len(table) == 5  # header, every job (as -q's help says), the total
    assert [row.split()[1] for row in table[1:4]] == ["test", "test", "deploy"]


def test_quiet_keeps_the_tail_of_a_long_failing_step_and_flags_errors_in_green_steps() -> None:
    console, out = plain_console()
    run = RunBuilder(sink=ProgressView(console, quiet=True)).start()
    job = run.job("build").begin()
    job.step("Green", lines=["hidden"])
    job.step("Noisy", lines=["fine"], annotations=[("error", "looked bad")])
    job.step("Long", lines=[f"line {n}" for n in range(QUIET_TAIL + 5)], exit_code=1).finish()
    run.finish()
    text = out.getvalue()
    assert "hidden" not in text
    assert "Green" not in text
    assert "  ✓ Noisy 1.5s" in text
    assert "Error: src/app.py:3: looked bad" in text
    assert "... 5 earlier lines" in text
    assert "line 4\n" not in text
    assert "line 5\n" in text
    assert f"line {QUIET_TAIL + 4}\n" in text


def test_text_is_never_markup_and_ansi_codes_are_dropped_off_a_terminal() -> None:
    console, out = plain_console()
    run = RunBuilder(workflow="[bold]W[/bold]", sink=ProgressView(console)).start()
    job = run.job("build").begin()
    job.step(
        "[red]step[/red]",
        lines=["\x1b[31mred text\x1b[0m", "[link=x]not a link[/link]", "token=***"],
    )
    job.finish()
    run.finish()
    text = out.getvalue()
    assert "\x1b" not in text
    assert "[[bold]W[/bold]/build]   ▸ [red]step[/red]" in text
    assert "    red text\n" in text
    assert "[link=x]not a link[/link]" in text
    assert "    token=***\n" in text


def test_logs_can_be_left_out() -> None:
    console, out = plain_console()
    simple_run(ProgressView(console, logs=False))
    text = out.getvalue()
    assert "collected 3 items" not in text
    assert "✓ Test 1m 15s" in text


def test_on_a_terminal_there_are_colours_and_a_live_region_with_spinners_and_elapsed_time() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system="standard")
    now = [0.0]
    view = ProgressView(console, clock=lambda: now[0])
    run = RunBuilder(sink=view).start()
    assert view._live is not None
    job = run.job("build").begin()
    run.add(StepStarted(run.run_id, "build", 0, "step", "Compile", run.tick()))
    now[0] = run.now + 2.0
    recording = Console(width=120, record=True, force_terminal=False)
    recording.print(view._live_rows())
    live_text = recording.export_text()
    assert "[CI/build]" in live_text
    assert "Compile" in live_text
    assert "2.0s" in live_text
    job.next_index = 1
    job.step("Test", lines=["ok"]).finish()
    run.finish()
    assert view._live is None  # stopped at the end of the run
    text = out.getvalue()
    assert "\x1b[" in text
    assert "success" in text
    assert "CI" in text


def test_a_long_operation_shows_as_a_bar_that_fits_80_columns_until_it_finishes() -> None:
    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    view = ProgressView(console, clock=lambda: 0.0)
    run = RunBuilder(sink=view).start()
    run.job("build").begin()
    run.add(StepStarted(run.run_id, "build", 0, "step", "Run actions/setup-node@v4", run.tick()))

    def live() -> list[str]:
        recording = Console(width=80, record=True, force_terminal=False)
        recording.print(view._live_rows())
        return recording.export_text().splitlines()

    task = "fetching actions/setup-node@v4 from a rather slow mirror: receiving objects"
    run.add(Progress(run.run_id, "build", task, 9, 20, run.tick()))
    [row] = live()
    assert len(row) <= 80
    assert "━" * 5 in row
    assert " 45% fetching actions/setup-node@v4" in row
    run.add(Progress(run.run_id, "build", "exporting", 3, None, run.tick()))
    assert "exporting (3)" in live()[0]  # no total yet: a count, no bar
    run.add(Progress(run.run_id, "build", "exporting", 0, None, run.tick(), finished=True))
    [row] = live()
    assert "Run actions/setup-node@v4" in row
    assert "━" not in row
    run.finish()


def test_leaving_the_view_stops_the_live_region_even_on_errors() -> None:
    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    view = ProgressView(console)

    def engine() -> None:
        with view:
            RunBuilder(sink=view).start().job("build").begin()
            assert view._live is not None
            raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        engine()
    assert view._live is None
    view.close()  # idempotent


class Unwritable(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(5, "Input/output error")


def test_a_closed_stdout_does_not_break_the_run() -> None:
    view = ProgressView(Console(file=Unwritable(), force_terminal=False))
    simple_run(view)  # no exception
    assert view.result().conclusion == "success"


def test_json_view_prints_one_document_at_the_end() -> None:
    out = io.StringIO()
    with JsonView(out) as view:
        simple_run(view)
        run = RunBuilder("run-0003", sink=view).start()
        run.job("build").begin().step("One", lines=["hello"]).finish()
        run.finish()
        assert out.getvalue() == ""
    data = json.loads(out.getvalue())
    assert [r["run_id"] for r in data["runs"]] == ["run-0001", "run-0003"]
    for document in data["runs"]:
        jsonschema.validate(document, RUN_RESULT_SCHEMA)
    assert data["runs"][1]["jobs"][0]["steps"][0]["name"] == "One"
    assert view.result().run_id == "run-0003"
    view.close()
    assert out.getvalue().count('"runs"') == 1  # printed once


def test_one_view_follows_several_runs_at_once() -> None:
    console, out = plain_console()
    view = ProgressView(console)
    ci = RunBuilder("run-a", workflow="CI", sink=view).start()
    lint = RunBuilder("run-b", workflow="Lint", start=ci.now, sink=view).start()
    build = ci.job("build").begin()
    check = lint.job("check").begin()
    build.step("Compile", lines=["cc"])
    check.step("Ruff", exit_code=1)
    lint.now = ci.now
    check.finish()
    lint.finish()
    build.finish()
    ci.finish()
    text = out.getvalue()
    assert "[CI/build]   ✓ Compile 1.5s" in text
    assert "[Lint/check]   ✗ Ruff 1.5s (failure, exit code 1)" in text
    assert "✗ Lint: failure" in text
    assert "✓ CI: success" in text
    assert [r.conclusion for r in view.results()] == ["success", "failure"]


def test_the_live_region_lasts_until_every_run_finished() -> None:
    view = ProgressView(Console(file=io.StringIO(), width=80, force_terminal=True))
    first = RunBuilder("run-a", sink=view).start()
    second = RunBuilder("run-b", sink=view).start()
    first.finish()
    assert view._live is not None
    second.finish()
    assert view._live is None


def test_plain_output_drops_every_control_sequence_of_program_output() -> None:
    console, out = plain_console()
    run = RunBuilder(sink=ProgressView(console)).start()
    noisy = [
        "\x1b[1;32mgreen\x1b[0m done",
        "\x1b]8;;http://x\x07link\x1b]8;;\x07",
        "50%\r100%\x07",
        "tab\tkept",
    ]
    run.job("build").begin().step("Build", lines=noisy).finish()
    run.finish()
    text = out.getvalue()
    assert "    green done\n" in text
    assert "    link\n" in text
    assert "    50%100%\n" in text
    assert "    tab\tkept\n" in text
    assert not any(c in text for c in "\x1b\x07\r")


def test_on_a_terminal_program_colours_are_kept() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system="standard")
    view = ProgressView(console, live=False)
    run = RunBuilder(sink=view).start()
    run.job("build").begin().step("Build", lines=["\x1b[32mgreen\x1b[0m"]).finish()
    run.finish()
    assert "\x1b[32mgreen" in out.getvalue()


def test_quiet_shows_a_failed_jobs_own_output() -> None:
    console, out = plain_console()
    run = RunBuilder(sink=ProgressView(console, quiet=True)).start()
    run.job("ok").begin().log("fine job line").finish()
    run.job("bad").begin().log("could not allocate: no space").finish(
        "failure", reason="allocation failed"
    )
    run.finish()
    text = out.getvalue()
    assert "fine job line" not in text
    assert "[CI/bad]     could not allocate: no space\n[CI/bad] ✗ job failure" in text


def test_on_a_terminal_output_lines_carry_their_prefix_indent_and_stderr_colour() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system="standard")
    run = RunBuilder(sink=ProgressView(console, live=False)).start()
    run.job("build").begin().step("Build", lines=["plain line"], stderr=["bad\x07 line"]).finish()
    run.finish()
    text = out.getvalue()
    assert "\x1b[34m[CI/build] \x1b[0m    plain line\n" in text
    assert "\x1b[34m[CI/build] \x1b[0m    \x1b[31mbad line\x1b[0m\n" in text
    assert (
        "\x1b[34m[CI/build] \x1b[0m  \x1b[32m✓ \x1b[0mBuild\x1b[2m 1.5s\x1b[0m\n" in text
    )  # only the prefix is blue


def test_nested_groups_indent_their_titles_and_lines() -> None:
    from vmrunner.reports.events import GroupEnded, GroupStarted, LogLine, StepFinished

    console, out = plain_console()
    run = RunBuilder(sink=ProgressView(console)).start()
    run.job("build").begin()
    rid = run.run_id
    run.add(StepStarted(rid, "build", 0, "step", "Build", run.tick()))
    run.add(GroupStarted(rid, "build", 0, "outer", run.tick()))
    run.add(LogLine(rid, "build", 0, "stdout", "in outer", run.tick(), group_depth=1))
    run.add(GroupStarted(rid, "build", 0, "inner", run.tick()))
    run.add(LogLine(rid, "build", 0, "stdout", "in inner", run.tick(), group_depth=2))
    run.add(GroupEnded(rid, "build", 0, run.tick()))
    run.add(GroupEnded(rid, "build", 0, run.tick()))
    run.add(GroupStarted(rid, "build", 0, "again", run.tick()))
    run.add(StepFinished(rid, "build", 0, "success", "success", run.tick(), 1.0, 0))
    body = [line.removeprefix("[CI/build] ") for line in out.getvalue().splitlines()[3:8]]
    assert body == [
        "    ▾ outer",
        "      in outer",
        "      ▾ inner",
        "        in inner",
        "    ▾ again",
    ]


def test_steps_running_at_once_keep_their_output_apart() -> None:
    from vmrunner.reports.events import LogLine, StepFinished

    console, out = plain_console()
    view = ProgressView(console)
    run = RunBuilder("run-par", sink=view).start()
    job = run.job("build").begin()

    def started(index: int, name: str) -> None:
        run.add(StepStarted(run.run_id, "build", index, "step", name, run.tick()))

    def line(index: int, text: str) -> None:
        run.add(LogLine(run.run_id, "build", index, "stdout", text, run.tick()))

    def finished(index: int) -> None:
        now = run.tick()
        run.add(StepFinished(run.run_id, "build", index, "success", "success", now, 1.0))

    started(0, "front")
    started(1, "back")
    started(2, "docs")
    line(1, "back 1")
    line(0, "front 1")
    line(2, "docs 1")
    line(1, "back 2")
    finished(1)  # not the first: its held lines come out as one block
    line(0, "front 2")
    finished(0)  # the first: the next one (docs) shows what it held, then streams
    line(2, "docs 2")
    finished(2)
    job.finish()
    run.finish()
    body = [
        line.removeprefix("[CI/build] ")
        for line in out.getvalue().splitlines()
        if line.startswith("[CI/build] ")
    ]
    assert body[1:-1] == [
        "  ▸ front",
        "  ▸ back",
        "  ▸ docs",
        "  ▸ front",  # its name again: another step's came last
        "    front 1",
        "  ▸ back",
        "    back 1",
        "    back 2",
        "  ✓ back 1.0s",
        "  ▸ front",
        "    front 2",
        "  ✓ front 1.0s",
        "  ▸ docs",
        "    docs 1",
        "    docs 2",
        "  ✓ docs 1.0s",
    ]
