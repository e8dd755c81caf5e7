"""``StoreSink`` keeps at most ``max_step_log`` bytes of each step's output, then one mark; the
store reads logs back a page at a time."""

from __future__ import annotations

import time

import pytest

from vmrunner.reports import events as ev
from vmrunner.reports.storage import (
    DEFAULT_MAX_STEP_LOG,
    ENV_MAX_STEP_LOG,
    RunHistory,
    StoreSink,
    max_step_log_default,
    truncation_mark,
)
from vmrunner.store import LOG_PAGE, Store


def _run(sink: StoreSink, lines: dict[int, list[str]]) -> None:
    now = time.time()
    sink.emit(ev.RunStarted("r", "CI", "ci.yml", "push", now))
    sink.emit(ev.JobQueued("r", "build", "build", "build", now))
    for index, texts in lines.items():
        sink.emit(ev.StepStarted("r", "build", index, "run", f"step {index}", now))
        for text in texts:
            sink.emit(ev.LogLine("r", "build", index, "stdout", text, now))
        sink.emit(ev.StepFinished("r", "build", index, "success", "success", now, 0.1))
    sink.emit(ev.RunFinished("r", "success", now, 1.0))


def test_each_step_keeps_its_bytes_up_to_the_cap_then_one_mark() -> None:
    with Store.open() as store, StoreSink(store, max_step_log=100) as sink:
        _run(sink, {0: ["é" * 10] * 20, 1: ["short"], 2: ["x" * 100, "y"]})
        kept = RunHistory(store)
        first = [row.text for row in kept.logs("r", "build", 0)]
        assert first == ["é" * 10] * 5 + [truncation_mark(100)]  # 20 bytes a line (UTF-8)
        assert [row.text for row in kept.logs("r", "build", 1)] == ["short"]
        assert [row.text for row in kept.logs("r", "build", 2)] == ["x" * 100, truncation_mark(100)]
        assert sink.truncated_lines == 16
        assert kept.get_run("r").conclusion == "success"
    assert truncation_mark(DEFAULT_MAX_STEP_LOG).startswith("[log truncated: ")
    assert "64 MiB" in truncation_mark(DEFAULT_MAX_STEP_LOG)


def test_the_default_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_step_log_default() == DEFAULT_MAX_STEP_LOG
    monkeypatch.setenv(ENV_MAX_STEP_LOG, "4096")
    assert max_step_log_default() == 4096
    monkeypatch.setenv(ENV_MAX_STEP_LOG, "lots")
    assert max_step_log_default() == DEFAULT_MAX_STEP_LOG


def test_logs_are_read_back_in_pages_in_order() -> None:
    texts = [f"line {i}" for i in range(LOG_PAGE * 3 + 7)]
    with Store.open() as store, StoreSink(store) as sink:
        _run(sink, {0: texts[:LOG_PAGE], 1: texts[LOG_PAGE:]})
        pairs = list(RunHistory(store).iter_logs("r"))
        assert [row.text for _, row in pairs] == texts
        numbers = [seq for seq, _ in pairs]
        assert numbers == sorted(numbers)
        after = [row.text for _, row in RunHistory(store).iter_logs("r", after=numbers[9])]
        assert after == texts[10:]
        assert len(store.run_log_page("r", limit=5)) == 5
        assert [row.text for _, row in store.iter_run_logs("r", "build", 1)] == texts[LOG_PAGE:]
