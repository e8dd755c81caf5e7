"""Results built from event sequences: GitHub's conclusion rules and the stable JSON shape."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reports.events_builder import RunBuilder, collect, failing_matrix_run, simple_run
from vmrunner.reports.events import FanOut, JobFinished, Recorder, StepFinished, StepStarted
from vmrunner.reports.results import (
    RUN_RESULT_SCHEMA,
    ResultCollector,
    human_duration,
)


def test_a_green_run_has_every_job_and_step_with_times_and_machine() -> None:
    run = simple_run()
    result = collect(run)
    assert (result.run_id, result.workflow_name, result.event_name) == ("run-0001", "CI", "push")
    assert result.status == "completed"
    assert result.conclusion == "success"
    assert result.duration is not None
    assert result.duration > 75
    [job] = result.jobs
    assert job.conclusion == "success"
    assert job.status == "completed"
    assert (job.session_id, job.machine_id, job.provider, job.from_pool) == (
        "sess-build",
        "m-build",
        "sandbox",
        False,
    )
    assert [s.name for s in job.steps] == ["Set up job", "Checkout", "Test"]
    assert [s.kind for s in job.steps] == ["setup", "step", "step"]
    test = job.steps[2]
    assert (test.step_id, test.outcome, test.conclusion, test.exit_code) == (
        "test",
        "success",
        "success",
        0,
    )
    assert test.duration == 75.0
    assert test.finished_at == test.started_at + 75.0
    assert dict(test.outputs) == {"count": "3"}
    assert dict(job.outputs) == {"count": "3"}
    assert job.steps[1].snapshot_id == "snap-build-1"
    assert [s.snapshot_id for s in job.snapshots] == ["snap-build-1"]
    assert job.summary == "### Tests\n3 passed"


def test_a_failed_matrix_job_fails_the_run_and_its_rollback_is_reported() -> None:
    result = collect(failing_matrix_run())
    assert result.conclusion == "failure"
    small, large, deploy = result.jobs
    assert (small.job_key, small.job_id, dict(small.matrix)) == (
        "test (small)",
        "test",
        {"size": "small"},
    )
    assert small.conclusion == "success"
    assert large.conclusion == "failure"
    assert large.rolled_back
    assert large.from_pool
    assert [s.conclusion for s in large.steps] == ["success", "failure", "skipped", "success"]
    assert large.steps[1].exit_code == 1
    assert [(s.snapshot_id, s.restored) for s in large.snapshots] == [
        ("snap-test_(large)-0", False),
        ("snap-test_(large)-0", True),
    ]
    assert large.snapshots[1].step_index == 0
    [annotation] = result.annotations
    assert (annotation.job_key, annotation.level, annotation.message) == (
        "test (large)",
        "error",
        "test_size failed",
    )
    assert deploy.conclusion == "skipped"
    assert deploy.started_at is None
    assert deploy.steps == ()
    assert deploy.reason == "a job it needs failed"
    assert deploy.needs == ("test",)


def test_a_failed_step_makes_the_job_a_failure_even_if_the_engine_says_success() -> None:
    run = RunBuilder().start()
    run.job("build").begin().step("Test", exit_code=2).finish("success")
    run.finish("success")
    result = collect(run)
    assert result.jobs[0].conclusion == "failure"
    assert result.conclusion == "failure"


def test_continue_on_error_keeps_the_job_green() -> None:
    run = RunBuilder().start()
    run.job("build").begin().step(
        "Lint", exit_code=1, outcome="failure", conclusion="success"
    ).finish()
    result = collect(run.finish())
    step = result.jobs[0].steps[0]
    assert (step.outcome, step.conclusion) == ("failure", "success")
    assert result.jobs[0].conclusion == "success"
    assert result.conclusion == "success"


def test_a_cancelled_job_makes_a_cancelled_run_and_a_timeout_is_kept() -> None:
    run = RunBuilder().start()
    job = run.job("slow").begin()
    job.step("Sleep", exit_code=None, outcome="cancelled", timed_out=True).finish(
        "cancelled", reason="timeout-minutes (1) reached"
    )
    result = collect(run.finish("success"))
    assert result.conclusion == "cancelled"
    step = result.jobs[0].steps[0]
    assert step.timed_out
    assert step.exit_code is None
    assert step.conclusion == "cancelled"
    assert result.jobs[0].reason == "timeout-minutes (1) reached"


def test_a_run_without_run_finished_is_in_progress_with_open_jobs_and_steps() -> None:
    run = RunBuilder().start()
    job = run.job("build").begin().step("One")
    run.add(StepStarted(run.run_id, "build", 1, "step", "Two", run.tick()))
    result = collect(run)
    assert result.status == "in_progress"
    assert result.conclusion is None
    assert result.finished_at is None
    [build] = result.jobs
    assert build.status == "in_progress"
    assert build.conclusion is None
    assert [s.status for s in build.steps] == ["completed", "in_progress"]
    assert job.key == "build"


def test_events_for_unannounced_jobs_and_steps_do_not_raise() -> None:
    collector = ResultCollector()
    collector.emit(StepFinished("r", "ghost", 3, "failure", "failure", 10.0, 1.0, 1))
    collector.emit(JobFinished("r", "ghost", "failure", 11.0, 2.0))
    result = collector.result()
    [ghost] = result.jobs
    assert ghost.conclusion == "failure"
    assert ghost.steps[0].index == 3


def test_the_json_matches_the_schema_and_round_trips_through_json() -> None:
    for builder in (simple_run(), failing_matrix_run()):
        data = collect(builder).to_json()
        jsonschema.validate(data, RUN_RESULT_SCHEMA)
        assert json.loads(json.dumps(data)) == data
    partial = RunBuilder().start()
    partial.job("build").begin().step("One")
    jsonschema.validate(collect(partial).to_json(), RUN_RESULT_SCHEMA)


def test_the_schema_rejects_a_missing_or_extra_key() -> None:
    data = collect(simple_run()).to_json()
    del data["jobs"][0]["steps"][0]["outcome"]
    with pytest.raises(jsonschema.ValidationError, match="'outcome' is a required property"):
        jsonschema.validate(data, RUN_RESULT_SCHEMA)
    data = collect(simple_run()).to_json()
    data["jobs"][0]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError, match="colour"):
        jsonschema.validate(data, RUN_RESULT_SCHEMA)


def test_the_collector_works_beside_other_sinks() -> None:
    collector, recorder = ResultCollector(), Recorder()
    run = simple_run(sink=FanOut(recorder, collector))
    assert recorder.events == run.events
    assert collector.result() == collect(run)


def test_human_durations() -> None:
    assert [human_duration(s) for s in (0, 0.04, 1.25, 59.9, 59.97, 123, 3599, 3725)] == [
        "0.0s", "0.0s", "1.2s", "59.9s", "1m 00s", "2m 03s", "59m 59s", "1h 02m",
    ]
    assert human_duration(None) == "-"
    assert human_duration(-3) == "0.0s"


masked_text = st.text(st.characters(codec="utf-8"), max_size=40).map(
    lambda s: s.replace("hunter2", "***")
)


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(masked_text, min_size=1, max_size=4),
    lines=st.lists(masked_text, max_size=5),
    summary=masked_text,
)
def test_any_text_gives_valid_json(names: list[str], lines: list[str], summary: str) -> None:
    run = RunBuilder(workflow=names[0]).start()
    for n, name in enumerate(names):
        job = run.job(f"{name} {n}", name=name).begin()
        job.step(
            name,
            lines=lines,
            annotations=[("warning", line) for line in lines],
            outputs={name: summary},
        )
        job.finish(summary=summary)
    data = collect(run.finish()).to_json()
    jsonschema.validate(data, RUN_RESULT_SCHEMA)
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
