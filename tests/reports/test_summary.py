"""The Markdown summary: icons, durations, annotations, job summaries, and escaping of any text."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reports.events_builder import RunBuilder, collect, failing_matrix_run, simple_run
from vmrunner.errors import ConfigError
from vmrunner.reports.summary import inline, render_summary, write_summary


def table_rows(markdown: str) -> list[str]:
    """The lines of the jobs table (the first block of lines starting with a pipe)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def cells(row: str) -> list[str]:
    """A table row's cells, honouring backslash escapes (as a GFM reader does)."""
    unescaped = re.sub(r"\\.", "xx", row)
    bounds = [i for i, char in enumerate(unescaped) if char == "|"]
    return [row[a + 1 : b].strip() for a, b in itertools.pairwise(bounds)]


def test_a_green_run_has_a_header_a_table_with_durations_and_the_job_summary() -> None:
    markdown = render_summary(collect(simple_run()))
    assert markdown.startswith("# ✅ CI: success\n")
    assert "Run `run-0001` on push `refs/heads/main` at `0123abcd`" in markdown
    rows = [cells(row) for row in table_rows(markdown)]
    assert rows[0] == ["", "Job / step", "Result", "Duration", "Machine"]
    assert rows[2][:3] == ["✅", "**build**", "success"]
    assert rows[2][4] == "sandbox m-build"
    assert rows[3] == ["✅", "↳ Set up job (setup)", "success", "0.2s", ""]
    assert rows[4] == ["✅", "↳ Checkout", "success", "0.8s", ""]
    assert rows[5] == ["✅", "↳ Test", "success", "1m 15s", ""]
    assert markdown.endswith("## build\n\n### Tests\n3 passed\n")
    assert "## Annotations" not in markdown


def test_failures_rollbacks_skips_and_annotations() -> None:
    markdown = render_summary(collect(failing_matrix_run()))
    assert markdown.startswith("# ❌ Matrix: failure\n")
    rows = {
        cells(row)[1]: cells(row)
        for row in table_rows(markdown)[2:]
        if cells(row)[1].startswith("**")
    }
    assert rows["**test (small)**"][0] == "✅"
    assert rows["**test (large)**"][0] == "↩️"
    assert rows["**test (large)**"][2] == "failure, rolled back"
    assert rows["**deploy**"][0] == "⏭️"
    assert rows["**deploy**"][2] == "skipped: a job it needs failed"
    steps = [cells(row) for row in table_rows(markdown) if "↳" in row]
    assert ["❌", "↳ Test", "failure (exit 1)", "1.5s", ""] in steps
    assert ["⏭️", "↳ Upload", "skipped", "0.0s", ""] in steps
    assert ["✅", "↳ Post Build (post)", "success", "1.5s", ""] in steps
    assert (
        "## Annotations\n\n- ❌ error in test (large) (src/app.py:3): test\\_size failed\n"
        in markdown
    )


def test_continue_on_error_cancelled_and_interrupted_icons() -> None:
    run = RunBuilder().start()
    run.job("lint").begin().step(
        "Lint", exit_code=1, outcome="failure", conclusion="success"
    ).finish()
    run.job("slow").begin().step(
        "Sleep", exit_code=None, outcome="cancelled", timed_out=True
    ).finish("cancelled")
    result = collect(run.finish())
    markdown = render_summary(result)
    assert markdown.startswith("# 🚫 CI: cancelled")
    assert "| ⚠️ | ↳ Lint | failure (continue-on-error) (exit 1) |" in markdown
    assert "| 🚫 | ↳ Sleep | cancelled (timed out) |" in markdown
    interrupted = render_summary(replace(result, conclusion="interrupted"))
    assert interrupted.startswith("# ⚠️ CI: interrupted")


def test_a_run_in_progress_and_a_run_without_jobs() -> None:
    run = RunBuilder().start()
    run.job("build").begin().step("One")
    markdown = render_summary(collect(run))
    assert markdown.startswith("# ⏳ CI: in progress")
    assert "| ⏳ | **build** | in progress | - |" in markdown
    assert "No jobs ran." in render_summary(collect(RunBuilder().start().finish()))


def test_masked_secrets_stay_masked() -> None:
    run = RunBuilder().start()
    run.job("deploy").begin().step("Use token ***", lines=["token=***"]).finish(
        summary="deployed with ***"
    )
    markdown = render_summary(collect(run.finish()))
    assert "Use token \\*\\*\\*" in markdown
    assert "deployed with ***" in markdown


def test_summaries_of_several_runs_go_to_one_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    first, second = collect(simple_run()), collect(failing_matrix_run())
    write_summary(target, [first, second])
    assert target.read_text(encoding="utf-8") == render_summary(
        first
    ) + "\n---\n\n" + render_summary(second)
    with pytest.raises(ConfigError, match=r"cannot write the summary to .*missing"):
        write_summary(tmp_path / "missing" / "summary.md", [first])


def test_inline_escapes_markup_pipes_html_and_newlines() -> None:
    assert inline("a|b") == "a\\|b"
    assert inline("x\ny\r\nz") == "x<br>y<br>z"
    assert inline("<script>&") == "&lt;script>&amp;"
    assert (
        inline("**bold** [link](u) `code` $x$")
        == "\\*\\*bold\\*\\* \\[link\\](u) \\`code\\` \\$x\\$"
    )


text = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=80, deadline=None)
@given(
    workflow=text,
    jobs=st.lists(st.tuples(text, text, text, text), min_size=1, max_size=4),
    summary=text,
)
def test_any_text_keeps_the_table_whole(
    workflow: str, jobs: list[tuple[str, str, str, str]], summary: str
) -> None:
    run = RunBuilder(workflow=workflow).start()
    for n, (name, step, message, reason) in enumerate(jobs):
        job = run.job(f"job{n}", name=name).begin()
        job.step(step, exit_code=n % 2, annotations=[("warning", message)])
        job.finish(reason=reason, summary=summary)
    markdown = render_summary(collect(run.finish()))
    rows = table_rows(markdown)
    assert len(rows) == 2 + 2 * len(jobs)
    assert all(len(cells(row)) == 5 for row in rows)
    names = [cells(row)[1] for row in rows[2::2]]
    assert names == [f"**{inline(name or f'job{n}')}**" for n, (name, *_rest) in enumerate(jobs)]
    header = markdown.splitlines()[0]
    assert header.startswith("# ")
    assert "<" not in header.replace("<br>", "")
