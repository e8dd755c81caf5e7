"""Runs kept in the real SQLite store through StoreSink, and read back with RunHistory."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reports.events_builder import RunBuilder, collect, failing_matrix_run, simple_run
from vmrunner.errors import RunNotFound, StoreDiskError
from vmrunner.reports.events import LogLine, StepFinished, StepStarted
from vmrunner.reports.results import AnnotationResult, JobResult, RunResult, StepResult
from vmrunner.reports.storage import INTERRUPTED_NOTE, RunHistory, StoreSink
from vmrunner.reports.timeline import TimelineEntry
from vmrunner.sessions import Owner
from vmrunner.store import MIGRATIONS, RunRow, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db") as opened:
        yield opened


def dead_owner() -> Owner:
    process = subprocess.Popen(["true"])
    process.wait()
    return Owner(process.pid, 1)


def test_a_kept_run_reads_back_exactly_as_collected(store: Store) -> None:
    for build in (simple_run, failing_matrix_run):
        sink = StoreSink(store)
        run = build(sink)
        sink.close()
        assert sink.errors == []
        assert RunHistory(store).get_run(run.run_id) == collect(run)


def test_logs_keep_their_order_groups_and_filters(store: Store) -> None:
    sink = StoreSink(store)
    run = RunBuilder(sink=sink).start()
    job = run.job("build").begin()
    job.step("Test", lines=["one", "two"], group=("details", ["inside"]), stderr=["oops"])
    job.log("job-level line after the steps")
    job.finish()
    run.finish()
    history = RunHistory(store)
    logs = history.logs(run.run_id)
    assert [(r.kind, r.stream, r.text, r.group_depth) for r in logs] == [
        ("line", "stdout", "one", 0),
        ("line", "stdout", "two", 0),
        ("group", "stdout", "details", 0),
        ("line", "stdout", "inside", 1),
        ("endgroup", "stdout", "", 0),
        ("line", "stderr", "oops", 0),
        ("line", "stdout", "job-level line after the steps", 0),
    ]
    assert [r.text for r in history.logs(run.run_id, "build", 0) if r.kind == "line"] == [
        "one",
        "two",
        "inside",
        "oops",
    ]
    assert [r.text for r in history.logs(run.run_id, "build", -1)] == [
        "job-level line after the steps"
    ]
    assert history.logs(run.run_id, "nope") == []


def written_lines(path: Path) -> int:
    """Log rows visible to another connection (what a reader sees while the run goes on)."""
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT count(*) FROM run_logs").fetchone()[0])
    finally:
        connection.close()


def test_log_lines_are_batched_until_the_step_finishes(store: Store) -> None:
    clock = [0.0]
    sink = StoreSink(store, batch_size=1000, flush_interval=10.0, clock=lambda: clock[0])
    run = RunBuilder(sink=sink).start()
    job = run.job("build").begin()
    run.add(StepStarted(run.run_id, "build", 0, "step", "Test", run.tick()))
    for n in range(5):
        run.add(LogLine(run.run_id, "build", 0, "stdout", f"line {n}", run.tick()))
    assert written_lines(store.path) == 0
    clock[0] = 11.0
    run.add(LogLine(run.run_id, "build", 0, "stdout", "line 5", run.tick()))
    assert written_lines(store.path) == 6
    run.add(LogLine(run.run_id, "build", 0, "stdout", "line 6", run.tick()))
    assert written_lines(store.path) == 6
    run.add(StepFinished(run.run_id, "build", 0, "success", "success", run.tick(), 1.0, 0))
    assert written_lines(store.path) == 7
    assert job.key == "build"


def test_a_full_batch_is_written_at_once(store: Store) -> None:
    sink = StoreSink(store, batch_size=3, flush_interval=1e9)
    run = RunBuilder(sink=sink).start()
    run.job("build").begin()
    run.add(StepStarted(run.run_id, "build", 0, "step", "Test", run.tick()))
    counts = []
    for n in range(4):
        run.add(LogLine(run.run_id, "build", 0, "stdout", f"line {n}", run.tick()))
        counts.append(written_lines(store.path))
    assert counts == [0, 0, 3, 3]
    run.add(StepFinished(run.run_id, "build", 0, "success", "success", run.tick(), 1.0, 0))
    assert written_lines(store.path) == 4


def test_nothing_is_lost_at_the_end_of_a_run(store: Store) -> None:
    sink = StoreSink(store, batch_size=10_000, flush_interval=1e9)
    run = RunBuilder(sink=sink).start()
    job = run.job("build").begin().step("One", lines=["x"] * 3)
    job.log("after").finish()
    run.finish()
    assert written_lines(store.path) == 4
    run2 = RunBuilder("run-0002", sink=sink).start()
    run2.job("late").log("only a job line")  # no step, job or run end: close() writes it
    sink.close()
    assert written_lines(store.path) == 5


def test_a_sink_kept_for_a_second_run_starts_afresh(store: Store) -> None:
    with StoreSink(store) as sink:
        first = RunBuilder("run-a", sink=sink).start()
        first.job("build").begin().step("One", lines=["unfinished"])
        second = simple_run(sink, run_id="run-b")
    assert sink.errors == []
    history = RunHistory(store)
    assert history.get_run("run-b") == collect(second)
    assert history.get_run("run-a").conclusion == "interrupted"
    assert [r.text for r in history.logs("run-a")] == ["unfinished"]
    assert first.run_id == "run-a"


def test_a_run_without_run_finished_whose_runner_died_is_interrupted(store: Store) -> None:
    sink = StoreSink(store, owner=dead_owner())
    run = RunBuilder(sink=sink).start()
    run.job("build").begin().step("One", lines=["x"])
    sink.flush()
    history = RunHistory(store)
    [listed] = history.list_runs()
    assert (listed.status, listed.conclusion) == ("completed", "interrupted")
    assert listed.jobs[0].status == "in_progress"
    assert store.run(run.run_id, RunResult).run.status == "in_progress"  # type: ignore[union-attr]
    assert history.mark_interrupted(now=run.tick()) == [run.run_id]
    row = store.run(run.run_id, RunResult)
    assert row is not None
    assert (row.run.status, row.run.conclusion, row.run.finished_at) == (
        "completed", "interrupted", run.now
    )
    assert "is gone" in row.note
    assert history.mark_interrupted() == []


def test_a_run_whose_runner_lives_is_in_progress_until_closed(store: Store) -> None:
    sink = StoreSink(store)
    run = RunBuilder(sink=sink).start()
    run.job("build").begin()
    history = RunHistory(store)
    assert history.get_run(run.run_id).status == "in_progress"
    assert history.mark_interrupted() == []
    sink.close()
    result = history.get_run(run.run_id)
    assert (result.status, result.conclusion) == ("completed", "interrupted")
    assert store.run(run.run_id, RunResult).note == INTERRUPTED_NOTE  # type: ignore[union-attr]
    sink.close()  # a second close changes nothing
    assert sink.errors == []


def test_a_failed_write_is_rolled_back_whole_and_emit_does_not_raise(store: Store) -> None:
    store._db.execute(
        "CREATE TRIGGER refuse AFTER INSERT ON run_steps WHEN NEW.name = 'Bad'"
        " BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
    )
    sink = StoreSink(store, batch_size=1000, flush_interval=1e9)
    run = RunBuilder(sink=sink).start()
    job = run.job("build").begin()
    job.step("Good", lines=["kept"])
    job.step("Bad", lines=["never half-written"])
    assert len(sink.errors) >= 1
    assert "refused by test" in str(sink.errors[0])
    job.finish()
    run.finish()
    texts = [row.text for row in RunHistory(store).logs(run.run_id)]
    assert "kept" in texts
    assert "never half-written" not in texts  # rolled back with the step it belonged to
    steps = RunHistory(store).get_run(run.run_id).jobs[0].steps
    assert [s.name for s in steps] == ["Good"]


def test_prefixes_resolve_like_git_and_unknown_ids_fail_clearly(store: Store) -> None:
    for run_id in ("a1b2c3", "a1b2ff", "c0ffee"):
        sink = StoreSink(store)
        simple_run(sink, run_id=run_id)
        sink.close()
    history = RunHistory(store)
    assert history.get_run("c0").run_id == "c0ffee"
    assert history.get_run("a1b2c").run_id == "a1b2c3"
    with pytest.raises(RunNotFound, match="ambiguous: a1b2c3, a1b2ff"):
        history.get_run("a1b2")
    with pytest.raises(RunNotFound, match="no run 'zz'"):
        history.get_run("zz")
    with pytest.raises(RunNotFound):
        history.logs("")


def test_runs_are_listed_newest_first_with_limit_and_workflow_filter(store: Store) -> None:
    for n, workflow in enumerate(("CI", "Release", "CI")):
        sink = StoreSink(store)
        run = RunBuilder(
            f"run-{n}", workflow=workflow, start=1_700_000_000.0 + n * 100, sink=sink
        ).start()
        run.job("build").begin().step("One").finish()
        run.finish()
    history = RunHistory(store)
    assert [r.run_id for r in history.list_runs()] == ["run-2", "run-1", "run-0"]
    assert [r.run_id for r in history.list_runs(limit=1)] == ["run-2"]
    assert [r.run_id for r in history.list_runs(workflow="CI")] == ["run-2", "run-0"]
    assert [r.run_id for r in history.list_runs(workflow=".github/workflows/ci.yml")] == [
        "run-2",
        "run-1",
        "run-0",
    ]


def test_runs_survive_reopening_and_deleting_a_run_removes_everything(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        sink = StoreSink(store)
        run = failing_matrix_run(sink)
        sink.close()
    with Store.open(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert RunHistory(store).get_run(run.run_id) == collect(run)
        assert store.delete_run(run.run_id)
        for table in ("runs", "run_jobs", "run_steps", "run_logs", "run_annotations"):
            assert store._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


def test_masked_text_stays_masked_in_the_store(store: Store) -> None:
    sink = StoreSink(store)
    run = RunBuilder(sink=sink).start()
    run.job("deploy").begin().step(
        "Deploy", lines=["token=***"], annotations=[("warning", "used ***")]
    ).finish()
    run.finish()
    result = RunHistory(store).get_run(run.run_id)
    assert [r.text for r in RunHistory(store).logs(run.run_id)] == ["token=***"]
    assert result.annotations[0].message == "used ***"


any_text = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=any_text,
    lines=st.lists(any_text, max_size=4),
    outputs=st.dictionaries(any_text, any_text, max_size=3),
)
def test_any_text_round_trips_through_the_store(
    store: Store, name: str, lines: list[str], outputs: dict[str, str]
) -> None:
    sink = StoreSink(store)
    run_id = f"run-{len(store.runs(RunResult, limit=None))}"
    run = RunBuilder(run_id, workflow=name, sink=sink).start()
    job = run.job(f"{name} (x)", name=name, matrix={name: [1, None]}).begin()
    job.step(name, lines=lines, annotations=[("notice", line) for line in lines], outputs=outputs)
    job.finish(summary=name, outputs=outputs)
    run.finish()
    sink.close()
    assert sink.errors == []
    assert RunHistory(store).get_run(run.run_id) == collect(run)
    assert [row.text for row in RunHistory(store).logs(run.run_id)] == lines


class FullDisk(Store):
    """A store whose disk is full while ``full`` is set; giving up the reserve makes room."""

    full = False
    reserve = True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.full:
            raise StoreDiskError(f"{self.path}: cannot commit: database or disk is full")
        with super().transaction():
            yield

    def release_reserve(self) -> bool:
        if not self.reserve:
            return False
        self.reserve, self.full = False, False
        return True


def test_a_full_disk_costs_no_row_and_the_final_write_uses_the_reserve(tmp_path: Path) -> None:
    with FullDisk.open(tmp_path / "state.db") as store:
        assert isinstance(store, FullDisk)
        sink = StoreSink(store, batch_size=2)
        run = RunBuilder(sink=sink).start()
        job = run.job("build").begin()
        job.step("before", lines=["one", "two", "three"])
        store.full = True  # steps, job and logs from here on cannot be written ...
        job.step("during", lines=[f"line {n}" for n in range(10)], exit_code=1)
        job.finish()
        assert store.run_steps(run.run_id, StepResult)[-1][1].name != "during"
        run.finish()  # ... until the final write gives up the reserve
        assert not store.reserve
        assert sink.recorded
        assert sink.lost == 0
        assert sink.disk_error is not None
        assert RunHistory(store).get_run(run.run_id) == collect(run)
        assert [r.text for r in store.run_logs(run.run_id)][-1] == "line 9"


def test_a_disk_that_stays_full_leaves_whole_rows_and_close_tries_again(tmp_path: Path) -> None:
    with FullDisk.open(tmp_path / "state.db") as store:
        assert isinstance(store, FullDisk)
        store.reserve = False
        sink = StoreSink(store)
        run = RunBuilder(sink=sink).start()
        job = run.job("build").begin()
        store.full = True
        job.step("during", lines=["kept in memory"])
        job.finish()
        run.finish()
        assert not sink.recorded
        [row] = store.runs(RunResult)
        # as last written, whole: the job row says queued or in progress
        assert row.run.status == "in_progress"
        assert all(j.status != "completed" for j in store.run_jobs(run.run_id, JobResult))
        store.full = False  # room again: what waited is written when the sink closes
        sink.close()
        assert sink.recorded
        assert RunHistory(store).get_run(run.run_id) == collect(run)


@pytest.mark.parametrize(
    ("table", "kind", "keys"),
    [
        ("runs", RunResult, {"owner_pid", "owner_start", "note"}),
        ("run_jobs", JobResult, {"run_id", "seq"}),
        ("run_steps", StepResult, {"run_id", "job_key"}),
        ("run_annotations", AnnotationResult, {"run_id", "seq"}),
        ("run_timeline", TimelineEntry, {"run_id", "seq"}),
    ],
)
def test_a_runs_tables_are_the_fields_of_the_reports_records(
    tmp_path: Path, table: str, kind: type[Any], keys: set[str]
) -> None:
    """The store keeps the reports' records themselves: a table's columns are its keys plus the
    record's fields (renamed or left out only as the field's metadata says), no restated row."""
    with Store.open(tmp_path / "state.db"):
        pass
    with sqlite3.connect(tmp_path / "state.db") as db:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    fields_ = {
        f.metadata.get("column", f.name) for f in dataclasses.fields(kind)
    } - {None}
    assert columns == keys | fields_


def test_words_of_a_newer_writer_read_back_as_the_fields_say(tmp_path: Path) -> None:
    """A Literal field holding a word this code does not know reads back as its ``unknown``
    metadata (or its default): the fallbacks are part of the record's definition."""
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        store.put_run(RunRow(RunResult("r", "w", "f", "push", "in_progress", 1.0), 1, None))
        store.put_run_job("r", 0, JobResult("j", "j", "J", "completed", conclusion="success"))
        store.put_run_step("r", "j", StepResult(0, "post", "s", "completed", 1.0))
        store.add_run_annotations("r", [AnnotationResult("j", 0, "error", "m", 1.0)])
        store.add_run_timeline("r", [TimelineEntry(1.0, "j", "machine_allocated")])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET status = 'new', conclusion = 'new'")
        db.execute("UPDATE run_jobs SET status = 'new', conclusion = 'new'")
        db.execute("UPDATE run_steps SET kind = 'new', status = 'new', outcome = 'new'")
        db.execute("UPDATE run_annotations SET level = 'new'")
        db.execute("UPDATE run_timeline SET kind = 'new'")
    with Store.open(path) as store:
        row = store.run("r", RunResult)
        assert row is not None
        assert (row.run.status, row.run.conclusion) == ("in_progress", None)
        [job] = store.run_jobs("r", JobResult)
        assert (job.status, job.conclusion) == ("queued", None)
        [(_, step)] = store.run_steps("r", StepResult)
        assert (step.kind, step.status, step.outcome) == ("step", "in_progress", None)
        assert [a.level for a in store.run_annotations("r", AnnotationResult)] == ["notice"]
        assert [e.kind for e in store.run_timeline("r", TimelineEntry)] == ["session_state"]
