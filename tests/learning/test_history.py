"""Learning from runs on a real SQLite store: lessons, averages, predictions, suggestions, the
sink."""

from __future__ import annotations

import statistics
from pathlib import Path

import jsonschema
import pytest

from vmrunner.errors import ConfigError
from vmrunner.learning.history import (
    ENV_LESSON_THRESHOLD,
    CommandRecord,
    Learning,
    LearningConfig,
    LearningSink,
    load_config,
)
from vmrunner.reports.events import (
    JobQueued,
    LogLine,
    Recorder,
    RunFinished,
    RunInsights,
    RunStarted,
    StepFinished,
    StepStarted,
)
from vmrunner.reports.insights import INSIGHTS_SCHEMA
from vmrunner.reports.results import RUN_RESULT_SCHEMA, ResultCollector
from vmrunner.reports.summary import render_summary

REPO = "octo/app"


def failure(
    command: str = "pytest -q",
    tail: tuple[str, ...] = ("E assert 1 == 2", "1 failed in 0.12s"),
    **fields: object,
) -> CommandRecord:
    values: dict[str, object] = {
        "repository": REPO,
        "workflow": "ci.yml",
        "job_id": "test",
        "run_id": "r",
        "command": command,
        "outcome": "failure",
        "duration": 1.0,
        "sha": "abc",
        "exit_code": 1,
        "tail": tail,
    }
    values.update(fields)
    return CommandRecord(**values)  # type: ignore[arg-type]


def success(command: str = "pytest -q", duration: float = 1.0, **fields: object) -> CommandRecord:
    return failure(command, (), outcome="success", duration=duration, exit_code=0, **fields)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def test_three_identical_failures_make_one_lesson_that_survives_a_restart(db: Path) -> None:
    with Learning.open(db, LearningConfig(lesson_threshold=3)) as learning:
        made = [
            learning.record(failure(run_id="r1", tail=("E assert 1 == 2", "1 failed in 0.12s"))),
            learning.record(failure(run_id="r2", tail=("E assert 7 == 2", "1 failed in 3.40s"))),
            learning.record(failure(run_id="r3", tail=("E assert 9 == 2", "1 failed in 0.01s"))),
            learning.record(failure(run_id="r4")),
        ]
    assert made[0] is None
    assert made[1] is None
    assert made[3] is None
    assert made[2] is not None
    assert made[2].occurrences == 3
    with Learning.open(db) as reopened:
        lessons = reopened.lessons(REPO)
        assert [(lesson.id, lesson.occurrences, lesson.command) for lesson in lessons] == [
            (made[2].id, 4, "pytest -q")
        ]
        assert "1 failed" in lessons[0].excerpt
        assert reopened.dismiss(lessons[0].id)
        assert not reopened.dismiss(lessons[0].id), "dismissing twice is refused"
        assert reopened.lessons(REPO) == []
        assert [lesson.dismissed for lesson in reopened.lessons(REPO, include_dismissed=True)] == [
            True
        ]
        assert reopened.lessons("someone/else", include_dismissed=True) == []


def test_different_failures_make_no_lesson(db: Path) -> None:
    with Learning.open(db, LearningConfig(lesson_threshold=2)) as learning:
        assert learning.record(failure(tail=("error: disk full",))) is None
        assert learning.record(failure(tail=("error: connection refused",))) is None
        assert learning.record(failure("make test", tail=("error: disk full",))) is None
        assert learning.lessons() == []
        assert learning.record(failure("make test", tail=("error: disk full",))) is not None


def test_the_threshold_comes_from_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "vmrunner.toml"
    assert load_config(path=file).lesson_threshold == 3
    file.write_text("[learning]\nlesson_threshold = 5\nslow_seconds = 2.5\n")
    assert load_config(path=file) == LearningConfig(lesson_threshold=5, slow_seconds=2.5)
    monkeypatch.setenv(ENV_LESSON_THRESHOLD, "2")
    assert load_config(path=file).lesson_threshold == 2
    assert load_config(7, path=file).lesson_threshold == 7
    monkeypatch.setenv(ENV_LESSON_THRESHOLD, "zero")
    with pytest.raises(ConfigError, match=ENV_LESSON_THRESHOLD):
        load_config(path=file)
    monkeypatch.delenv(ENV_LESSON_THRESHOLD)
    file.write_text("[learning]\nlesson_treshold = 5\n")
    with pytest.raises(ConfigError, match=r"learning\.lesson_treshold: unknown setting"):
        load_config(path=file)
    file.write_text("[learning\n")
    with pytest.raises(ConfigError, match=r"vmrunner\.toml"):
        load_config(path=file)


def test_home_config_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMRUNNER_HOME", str(tmp_path))
    (tmp_path / "vmrunner.toml").write_text("[learning]\nlesson_threshold = 4\n")
    assert load_config().lesson_threshold == 4


def test_one_success_and_nine_failures_predict_below_one_half(db: Path) -> None:
    with Learning.open(db) as learning:
        assert learning.predict(REPO, "npm test").probability == 0.5, "nothing seen: even odds"
        learning.record(success("npm test", previous="npm ci"))
        for n in range(9):
            learning.record(failure("npm test", tail=(f"failure {n}",), previous="npm ci"))
        odds = learning.predict(REPO, "npm test")
        after = learning.predict(REPO, "npm test", after="npm ci")
        first = learning.predict(REPO, "npm test", after="")
    assert (odds.successes, odds.failures) == (1, 9)
    assert odds.probability == pytest.approx(2 / 12)
    assert odds.probability < 0.5
    assert after == odds
    assert first.probability == 0.5, "npm test never ran first in its job"


def test_running_averages_follow_welford(db: Path) -> None:
    durations = [12.0, 15.5, 9.25, 30.0, 11.0]
    with Learning.open(db) as learning:
        for duration in durations:
            learning.record(success("pip install -r requirements.txt", duration))
        learning.record(failure("pip install -r requirements.txt", duration=99.0))
        pattern = learning.pattern(REPO, "pip   install -r  'requirements.txt'")
    assert pattern is not None
    assert (pattern.successes, pattern.failures) == (5, 1)
    assert pattern.mean == pytest.approx(statistics.fmean(durations))
    assert pattern.stdev == pytest.approx(statistics.stdev(durations))


@pytest.mark.parametrize(
    ("command", "tool", "paths"),
    [
        ("pip install -r requirements.txt", "pip", ["~/.cache/pip"]),
        ("npm ci", "npm", ["~/.npm"]),
        ("cargo build --release", "cargo", ["~/.cargo/registry", "target"]),
        ("go mod download", "go", ["~/go/pkg/mod", "~/.cache/go-build"]),
        ("mvn -B verify", "maven", ["~/.m2/repository"]),
        ("./gradlew build", "gradle", ["~/.gradle/caches"]),
    ],
)
def test_slow_repeated_dependency_steps_get_a_cache_suggestion(
    db: Path, command: str, tool: str, paths: list[str]
) -> None:
    with Learning.open(db, LearningConfig(slow_seconds=10)) as learning:
        learning.record(success(command, 40.0))
        assert [s for s in learning.insights(REPO).suggestions if s.kind == "cache"] == [], (
            "seen once: not repeated"
        )
        learning.record(success(command, 44.0))
        learning.record(success("echo slow but not a dependency step", 50.0))
        learning.record(success("echo slow but not a dependency step", 50.0))
        cache = [s for s in learning.insights(REPO).suggestions if s.kind == "cache"]
    assert len(cache) == 1
    assert list(cache[0].paths) == paths
    assert tool in cache[0].message
    assert "2 successful runs took 42.0 s on average" in cache[0].evidence
    assert 0 < cache[0].confidence < 1


def test_fast_dependency_steps_get_no_cache_suggestion(db: Path) -> None:
    with Learning.open(db, LearningConfig(slow_seconds=10)) as learning:
        for _ in range(5):
            learning.record(success("npm ci", 2.0))
        assert learning.insights(REPO).suggestions == ()


def test_a_step_that_failed_and_succeeded_on_one_commit_is_flaky(db: Path) -> None:
    with Learning.open(db) as learning:
        learning.record(failure("make e2e", sha="c1"))
        learning.record(success("make e2e", sha="c2"))
        assert learning.insights(REPO).suggestions == (), "different commits: a fix, not flakiness"
        learning.record(success("make e2e", sha="c1"))
        flaky = learning.insights(REPO).suggestions
    assert [(s.kind, s.job) for s in flaky] == [("flaky", "test")]
    assert "on commit c1 it succeeded 1 and failed 1 times" in flaky[0].evidence


def test_a_lesson_gives_an_avoid_suggestion_and_insights_match_the_schema(db: Path) -> None:
    with Learning.open(db) as learning:
        for _ in range(3):
            learning.record(failure("terraform apply", tail=("Error: lock held",)))
        insights = learning.insights(REPO, commands=["terraform  apply"])
        assert learning.insights(REPO, commands=["terraform plan"]).lessons == ()
    assert [s.kind for s in insights.suggestions] == ["avoid"]
    assert insights.suggestions[0].confidence == pytest.approx(1 - 1 / 5)
    jsonschema.validate(insights.to_json(), INSIGHTS_SCHEMA)


def _run_events(outcome: str, run_id: str) -> list[object]:
    failed = outcome == "failure"
    return [
        RunStarted(run_id, "ci", "ci.yml", "push", 1.0, sha="c0ffee"),
        JobQueued(run_id, "test (1)", "test", "test", 1.0),
        StepStarted(
            run_id, "test (1)", 0, "setup", "setup command: make deps", 1.0, command="make deps"
        ),
        StepFinished(run_id, "test (1)", 0, "success", "success", 2.0, 1.0, exit_code=0),
        StepStarted(run_id, "test (1)", 1, "step", "Run ./check", 2.0, command="./check"),
        LogLine(run_id, "test (1)", 1, "stderr", f"check failed at {run_id}", 2.5),
        StepFinished(
            run_id, "test (1)", 1, outcome, outcome, 3.0, 1.0, exit_code=1 if failed else 0
        ),  # type: ignore[arg-type]
        StepStarted(run_id, "test (1)", 2, "step", "Untitled", 3.0),
        StepFinished(run_id, "test (1)", 2, "skipped", "skipped", 3.0, 0.0),
        RunFinished(run_id, "failure" if failed else "success", 4.0, 3.0),
    ]


def test_the_sink_learns_from_events_and_reports_insights_before_the_run_finishes(db: Path) -> None:
    with Learning.open(db, LearningConfig(lesson_threshold=2)) as learning:
        recorder = Recorder()
        sink = LearningSink(learning, repository=REPO, then=recorder)
        for run_id in ("1795696351", "1795696399"):
            for event in _run_events("failure", run_id):
                sink.emit(event)  # type: ignore[arg-type]
        assert [lesson.command for lesson in sink.new_lessons] == ["./check"]
        assert isinstance(recorder.events[-2], RunInsights)
        assert isinstance(recorder.events[-1], RunFinished)
        assert len(recorder.events) == 2 * 10 + 1, "every event passed on, and one RunInsights"
        edges = {(e.before, e.after): (e.successes, e.failures) for e in learning.graph(REPO)}
        assert edges == {("", "make deps"): (2, 0), ("make deps", "./check"): (0, 2)}
        for event in _run_events("success", "1795696400"):
            sink.emit(event)  # type: ignore[arg-type]
        assert {s.kind for s in sink.insights.suggestions} == {"avoid", "flaky"}
    collector = ResultCollector()
    for event in recorder.events:
        collector.emit(event)
    result = collector.result()
    assert result.insights is not None
    assert result.insights.lessons[0].occurrences == 2
    jsonschema.validate(result.to_json(), RUN_RESULT_SCHEMA)
    summary = render_summary(result)
    assert "## Learned from earlier runs" in summary
    assert "lesson 1: `./check` failed 2 times the same way" in summary
    assert "flaky" in summary


def test_without_learning_the_result_has_no_insights() -> None:
    collector = ResultCollector()
    for event in _run_events("success", "r"):
        collector.emit(event)  # type: ignore[arg-type]
    data = collector.result().to_json()
    assert data["insights"] is None
    jsonschema.validate(data, RUN_RESULT_SCHEMA)
    assert "Learned from earlier runs" not in render_summary(collector.result())


def test_the_sink_never_raises_and_keeps_store_errors(db: Path) -> None:
    learning = Learning.open(db)
    learning.close()
    recorder = Recorder()
    sink = LearningSink(learning, repository=REPO).chain(recorder)
    for event in _run_events("failure", "r"):
        sink.emit(event)  # type: ignore[arg-type]
    assert sink.errors, "a closed database is reported, not raised"
    assert len(recorder.events) == 10


def test_a_run_read_back_gets_its_insights_and_the_workflow_adds_parallel_advice(db: Path) -> None:
    from vmrunner.workflow.loader import load_workflow_text

    workflow = load_workflow_text(
        "on: push\njobs:\n  a: {runs-on: x, steps: [{run: a}]}\n  b: {runs-on: x, needs: a, "
        "steps: [{run: b}]}\n"
    )
    with Learning.open(db, LearningConfig(lesson_threshold=1)) as learning:
        recorder = Recorder()
        sink = LearningSink(learning, repository=REPO, then=recorder, workflow=workflow)
        for event in _run_events("failure", "r1"):
            sink.emit(event)  # type: ignore[arg-type]
        assert [s.job for s in sink.insights.suggestions if s.kind == "parallel"] == ["b"]
        collector = ResultCollector()
        for event in _run_events("failure", "r1"):
            collector.emit(event)  # type: ignore[arg-type]
        read_back = learning.with_insights(collector.result(), REPO)
        assert read_back.insights is not None
        assert [lesson.command for lesson in read_back.insights.lessons] == ["./check"]
        assert learning.run_insights(REPO, "no-such-run") == learning.insights(REPO, [])
