"""Learning from runs: every command kept with its outcome, turned into lessons and suggestions.

Wiring (``vmrunner run``)::

    with Learning.open() as learning:
        sink = LearningSink(learning, repository="octo/app", then=FanOut(view, keep))
        await run_workflow(workflow, options, sessions, sink)

``LearningSink`` passes every event on to ``then``; on the way it records each command that ran
(``StepStarted.command``: setup commands, ``run:`` scripts, ``uses:`` actions, cleanup
commands) with its outcome, duration, repository, workflow, job and commit, and just before
``RunFinished`` it sends a ``RunInsights`` event with what applies to the run's commands.

What is kept (tables of the store's migration, a connection of its own like the server's):
- ``learning_commands``: one row per command run; ``command_key`` (``normalise.command_key``)
  matches the same command across runs; failures carry a ``signature``, a hash of the
  noise-free command and the last lines of its output.
- ``learning_patterns``: per command, successes, failures and Welford's running mean and
  variance of successful durations.
- ``learning_edges``: the command graph, which command followed which in a job, with the
  outcome of the second; ``predict`` gives Laplace-smoothed success odds, (s + 1) / (s + f + 2).
- ``learning_lessons``: made once ``lesson_threshold`` identical failures were seen (default 3;
  ``--lesson-threshold``, ``VMRUNNER_LESSON_THRESHOLD``, or ``lesson_threshold`` in the
  ``[learning]`` table of ``VMRUNNER_HOME/vmrunner.toml``); kept until dismissed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sqlite3
import time
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError, StoreError
from vmrunner.learning.normalise import clean, command_key, noise_free
from vmrunner.learning.parallelism import parallel_suggestions
from vmrunner.reports.events import (
    Event,
    EventSink,
    JobQueued,
    LogLine,
    RunFinished,
    RunInsights,
    RunStarted,
    StepFinished,
    StepStarted,
)
from vmrunner.reports.insights import Insights, Lesson, Suggestion
from vmrunner.store import connect, fetch_all, immediate_transaction

if TYPE_CHECKING:
    from vmrunner.reports.results import RunResult
    from vmrunner.workflow.models import Workflow

logger = logging.getLogger(__name__)

ENV_LESSON_THRESHOLD = "VMRUNNER_LESSON_THRESHOLD"
CONFIG_FILE = "vmrunner.toml"
DEFAULT_LESSON_THRESHOLD = 3
#: A dependency step slower than this on average (seconds) is worth caching.
DEFAULT_SLOW_SECONDS = 10.0
#: Output lines of a failing command that go into its signature.
DEFAULT_TAIL_LINES = 5
#: Bytes kept of a command and of an excerpt.
COMMAND_LIMIT = 2048
EXCERPT_LIMIT = 400

#: Dependency tools recognised in a command, and the paths ``actions/cache`` should keep.
CACHE_PATHS: tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...] = (
    (
        "pip",
        re.compile(r"\b(?:pip3?|uv pip|python3? -m pip) install\b|\bpoetry install\b"),
        ("~/.cache/pip",),
    ),
    ("npm", re.compile(r"\bnpm (?:ci|install|i)\b"), ("~/.npm",)),
    (
        "cargo",
        re.compile(r"\bcargo (?:build|test|fetch|check|clippy|install)\b"),
        ("~/.cargo/registry", "target"),
    ),
    (
        "go",
        re.compile(r"\bgo (?:mod download|build|test|install|get)\b"),
        ("~/go/pkg/mod", "~/.cache/go-build"),
    ),
    ("maven", re.compile(r"\bmvnw? |\./mvnw\b"), ("~/.m2/repository",)),
    ("gradle", re.compile(r"\bgradlew?\b"), ("~/.gradle/caches",)),
)


@dataclass(frozen=True, slots=True)
class LearningConfig:
    lesson_threshold: int = DEFAULT_LESSON_THRESHOLD
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    tail_lines: int = DEFAULT_TAIL_LINES


def load_config(
    lesson_threshold: int | None = None, *, path: str | Path | None = None
) -> LearningConfig:
    """The learning settings: ``lesson_threshold`` if given, else the environment, else the file.

    The file is ``VMRUNNER_HOME/vmrunner.toml`` (or ``path``); its ``[learning]`` table may hold
    ``lesson_threshold``, ``slow_seconds`` and ``tail_lines``. ``ConfigError`` for a bad value.
    """
    config = LearningConfig()
    target = Path(path) if path is not None else vmrunner_home() / CONFIG_FILE
    if target.is_file():
        config = _from_file(target, config)
    env = os.environ.get(ENV_LESSON_THRESHOLD, "").strip()
    if env:
        config = replace(config, lesson_threshold=_positive(env, ENV_LESSON_THRESHOLD))
    if lesson_threshold is not None:
        config = replace(config, lesson_threshold=_positive(lesson_threshold, "--lesson-threshold"))
    return config


def _from_file(path: Path, config: LearningConfig) -> LearningConfig:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("learning", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the learning settings: {exc}") from exc
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [learning] must be a table")
    unknown = sorted(set(table) - {"lesson_threshold", "slow_seconds", "tail_lines"})
    if unknown:
        raise ConfigError(
            f"{path}: learning.{unknown[0]}: unknown setting (expected lesson_threshold, "
            f"slow_seconds, tail_lines)"
        )
    if "lesson_threshold" in table:
        config = replace(
            config,
            lesson_threshold=_positive(
                table["lesson_threshold"], f"{path}: learning.lesson_threshold"
            ),
        )
    if "tail_lines" in table:
        config = replace(
            config, tail_lines=_positive(table["tail_lines"], f"{path}: learning.tail_lines")
        )
    if "slow_seconds" in table:
        value = table["slow_seconds"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(
                f"{path}: learning.slow_seconds must be a number of seconds >= 0, got {value!r}"
            )
        config = replace(config, slow_seconds=float(value))
    return config


def _positive(value: object, where: str) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else 0
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{where} must be a whole number >= 1, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command that ran, as ``Learning.record`` takes it."""

    repository: str
    workflow: str
    job_id: str
    run_id: str
    command: str
    outcome: str
    duration: float
    sha: str = ""
    exit_code: int | None = None
    #: The last lines of its output (for a failure's signature).
    tail: tuple[str, ...] = ()
    #: The command that ran before it in the same job ("" for the first).
    previous: str = ""
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class Prediction:
    """Odds that a command succeeds: Laplace (Beta(1, 1)) smoothing of what was seen."""

    successes: int
    failures: int

    @property
    def probability(self) -> float:
        return (self.successes + 1) / (self.successes + self.failures + 2)


@dataclass(frozen=True, slots=True)
class Pattern:
    """A command's record: counts, and mean and standard deviation of successful durations."""

    command_key: str
    successes: int
    failures: int
    mean: float
    stdev: float


@dataclass(frozen=True, slots=True)
class Edge:
    before: str
    after: str
    successes: int
    failures: int


def signature(command: str, tail: Sequence[str]) -> tuple[str, str]:
    """A failure's identity (a hash) and its noise-free text: the command and its last lines."""
    text = (
        noise_free(command, COMMAND_LIMIT)
        + "\n"
        + "\n".join(noise_free(line, 512) for line in tail)
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24], text


class Learning:
    """What was learned, in the state database; ``Learning.open(path=None, config=None)``."""

    def __init__(self, connection: sqlite3.Connection, path: Path, config: LearningConfig) -> None:
        self._db = connection
        self.path = path
        self.config = config

    @classmethod
    def open(cls, path: str | Path | None = None, config: LearningConfig | None = None) -> Learning:
        connection, target = connect(path)
        return cls(connection, target, config or load_config())

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Learning:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, doing: str) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db, self.path, doing)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return fetch_all(self._db, self.path, sql, params, "read what was learned")

    # Recording

    def record(self, record: CommandRecord) -> Lesson | None:
        """Keep one command's run; the lesson it completed, if it was the threshold-th identical
        failure."""
        key = command_key(record.command, COMMAND_LIMIT)
        shown = clean(record.command, COMMAND_LIMIT)
        previous = command_key(record.previous, COMMAND_LIMIT) if record.previous else ""
        at = record.time or time.time()
        failed = record.outcome == "failure"
        sig, _ = signature(record.command, record.tail) if failed else ("", "")
        with self._write("record a command") as db:
            db.execute(
                "INSERT INTO learning_commands (repository, workflow, job_id, run_id, sha, "
                "command_key, command,"
                " outcome, exit_code, duration, time, signature) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.repository,
                    record.workflow,
                    record.job_id,
                    record.run_id,
                    record.sha,
                    key,
                    shown,
                    record.outcome,
                    record.exit_code,
                    record.duration,
                    at,
                    sig,
                ),
            )
            self._update_pattern(db, record.repository, key, failed, record.duration, at)
            db.execute(
                "INSERT INTO learning_edges (repository, before_key, after_key, successes, "
                "failures) VALUES (?,?,?,?,?)"
                " ON CONFLICT (repository, before_key, after_key) DO UPDATE SET"
                " successes = successes + excluded.successes, failures = failures + "
                "excluded.failures",
                (record.repository, previous, key, int(not failed), int(failed)),
            )
            if failed:
                return self._learn_failure(db, record, key, shown, sig, at)
        return None

    @staticmethod
    def _update_pattern(
        db: sqlite3.Connection, repository: str, key: str, failed: bool, duration: float, at: float
    ) -> None:
        row = db.execute(
            "SELECT successes, mean, m2 FROM learning_patterns WHERE repository = ? AND "
            "command_key = ?",
            (repository, key),
        ).fetchone()
        count, mean, m2 = row if row else (0, 0.0, 0.0)
        if not failed:  # Welford's update of the successful durations' mean and squared deviations
            count += 1
            delta = duration - mean
            mean += delta / count
            m2 += delta * (duration - mean)
        db.execute(
            "INSERT INTO learning_patterns (repository, command_key, successes, failures, mean, "
            "m2, last_seen)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT (repository, command_key) DO UPDATE SET"
            " successes = excluded.successes, failures = failures + excluded.failures,"
            " mean = excluded.mean, m2 = excluded.m2, last_seen = excluded.last_seen",
            (repository, key, count, int(failed), mean, m2, at),
        )

    def _learn_failure(
        self,
        db: sqlite3.Connection,
        record: CommandRecord,
        key: str,
        shown: str,
        sig: str,
        at: float,
    ) -> Lesson | None:
        (count, first) = db.execute(
            "SELECT COUNT(*), MIN(time) FROM learning_commands WHERE repository = ? AND signature "
            "= ?",
            (record.repository, sig),
        ).fetchone()
        if count < self.config.lesson_threshold:
            return None
        excerpt = clean(
            " / ".join(line.strip() for line in record.tail if line.strip()), EXCERPT_LIMIT
        )
        existed = db.execute(
            "SELECT 1 FROM learning_lessons WHERE repository = ? AND signature = ?",
            (record.repository, sig),
        ).fetchone()
        db.execute(
            "INSERT INTO learning_lessons (repository, signature, command, command_key, excerpt, "
            "occurrences,"
            " first_seen, last_seen) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (repository, signature) "
            "DO UPDATE SET"
            " occurrences = excluded.occurrences, last_seen = excluded.last_seen, excerpt = "
            "excluded.excerpt",
            (record.repository, sig, shown, key, excerpt, count, first, at),
        )
        if existed:
            return None
        row = db.execute(
            f"SELECT {_LESSON_COLUMNS} FROM learning_lessons"
            " WHERE repository = ? AND signature = ?",
            (record.repository, sig),
        ).fetchone()
        return _lesson(row)

    # Reading

    def lessons(
        self, repository: str | None = None, *, include_dismissed: bool = False
    ) -> list[Lesson]:
        """Lessons, newest first; only ``repository``'s if given; dismissed ones only if asked."""
        where, params = _where(repository, include_dismissed)
        rows = self._read(
            f"SELECT {_LESSON_COLUMNS} FROM learning_lessons{where} ORDER BY last_seen DESC, id "
            f"DESC",
            params,
        )
        return [_lesson(row) for row in rows]

    def dismiss(self, lesson_id: int) -> bool:
        """Dismiss a lesson (it stays known, and is no longer shown); False when there is none."""
        with self._write("dismiss a lesson") as db:
            cursor = db.execute(
                "UPDATE learning_lessons SET dismissed_at = ?"
                " WHERE id = ? AND dismissed_at IS NULL",
                (time.time(), lesson_id),
            )
            return cursor.rowcount > 0

    def pattern(self, repository: str, command: str) -> Pattern | None:
        key = command_key(command, COMMAND_LIMIT)
        rows = self._read(
            "SELECT command_key, successes, failures, mean, m2 FROM learning_patterns WHERE "
            "repository = ? AND command_key = ?",
            (repository, key),
        )
        return _pattern(rows[0]) if rows else None

    def predict(self, repository: str, command: str, *, after: str | None = None) -> Prediction:
        """The odds that ``command`` succeeds; right ``after`` another command if given (the
        graph)."""
        key = command_key(command, COMMAND_LIMIT)
        if after is None:
            rows = self._read(
                "SELECT successes, failures FROM learning_patterns WHERE repository = ? AND "
                "command_key = ?",
                (repository, key),
            )
        else:
            rows = self._read(
                "SELECT successes, failures FROM learning_edges WHERE repository = ? AND "
                "before_key = ? AND after_key = ?",
                (repository, command_key(after, COMMAND_LIMIT) if after else "", key),
            )
        return Prediction(*rows[0]) if rows else Prediction(0, 0)

    def graph(self, repository: str) -> list[Edge]:
        """The command graph of ``repository``: which command followed which, and how it went."""
        rows = self._read(
            "SELECT before_key, after_key, successes, failures FROM learning_edges WHERE "
            "repository = ?"
            " ORDER BY successes + failures DESC, before_key, after_key",
            (repository,),
        )
        return [Edge(*row) for row in rows]

    def repositories(self) -> list[str]:
        return [
            row[0]
            for row in self._read(
                "SELECT DISTINCT repository FROM learning_patterns ORDER BY repository"
            )
        ]

    def insights(
        self, repository: str | None = None, commands: Iterable[str] | None = None
    ) -> Insights:
        """Active lessons and suggestions for ``repository`` (all if None), about ``commands`` if
        given."""
        keys = None if commands is None else {command_key(c, COMMAND_LIMIT) for c in commands}
        lessons = [
            lesson
            for lesson in self.lessons(repository)
            if keys is None or command_key(lesson.command, COMMAND_LIMIT) in keys
        ]
        suggestions = [
            *self._flaky(repository, keys),
            *self._avoid(lessons),
            *self._cache(repository, keys),
        ]
        suggestions.sort(key=lambda s: -s.confidence)
        return Insights(tuple(lessons), tuple(suggestions))

    def run_insights(self, repository: str, run_id: str) -> Insights:
        """The insights about the commands run ``run_id`` ran (e.g. for a pull request comment)."""
        rows = self._read(
            "SELECT DISTINCT command FROM learning_commands WHERE repository = ? AND run_id = ?",
            (repository, run_id),
        )
        return self.insights(repository, [row[0] for row in rows])

    def with_insights(self, result: RunResult, repository: str) -> RunResult:
        """``result`` with the insights about its commands (a run read back from the store has
        none)."""
        return replace(result, insights=self.run_insights(repository, result.run_id))

    def _flaky(self, repository: str | None, keys: set[str] | None) -> Iterator[Suggestion]:
        where, params = _where(repository, True, column="repository", keys=keys)
        rows = self._read(
            "SELECT command_key, MIN(command), job_id, sha, SUM(outcome = 'success'), SUM(outcome "
            "= 'failure')"
            f" FROM learning_commands{where}{' AND' if where else ' WHERE'} sha != ''"
            " GROUP BY repository, command_key, job_id, sha HAVING SUM(outcome = 'success') > 0 "
            "AND SUM(outcome = 'failure') > 0",
            params,
        )
        seen: set[str] = set()
        for key, command, job_id, sha, successes, failures in rows:
            if (keys is not None and key not in keys) or key in seen:
                continue
            seen.add(key)
            both = min(successes, failures)
            yield Suggestion(
                "flaky", f"`{_first_line(command)}` is flaky: make it deterministic, or retry it",
                both / (both + 1),
                f"on commit {sha[:12]} it succeeded {successes} and failed {failures} times",
                command=command, job=job_id,
            )

    def _avoid(self, lessons: Sequence[Lesson]) -> Iterator[Suggestion]:
        for lesson in lessons:
            odds = self.predict(lesson.repository, lesson.command)
            yield Suggestion(
                "avoid",
                f"`{_first_line(lesson.command)}` keeps failing the same way: fix it before the "
                f"next run",
                1 - odds.probability,
                f"{lesson.occurrences} identical failures (lesson {lesson.id})"
                + (f": {lesson.excerpt}" if lesson.excerpt else "")
                + f"; {odds.successes} successes, {odds.failures} failures in all",
                command=lesson.command,
            )

    def _cache(self, repository: str | None, keys: set[str] | None) -> Iterator[Suggestion]:
        where, params = _where(repository, True, column="p.repository", keys=keys)
        rows = self._read(
            "SELECT p.command_key, p.successes, p.failures, p.mean, p.m2,"
            " (SELECT command FROM learning_commands c WHERE c.repository = p.repository AND "
            "c.command_key = p.command_key ORDER BY seq DESC LIMIT 1)"
            f" FROM learning_patterns p{where}{' AND' if where else ' WHERE'} p.successes >= 2 "
            f"AND p.mean >= ?",
            (*params, self.config.slow_seconds),
        )
        for key, successes, _failures, mean, m2, command in rows:
            if keys is not None and key not in keys:
                continue
            tool = next(
                ((name, paths) for name, pattern, paths in CACHE_PATHS if pattern.search(key)), None
            )
            if tool is None:
                continue
            stdev = math.sqrt(m2 / (successes - 1))
            name, paths = tool
            yield Suggestion(
                "cache",
                f"cache the {name} downloads of `{_first_line(command or key)}` with actions/cache",
                successes / (successes + 1) * (1 / (1 + stdev / mean) if mean else 0.0),
                f"{successes} successful runs took {mean:.1f} s on average (± {stdev:.1f} s)",
                command=command or key,
                paths=paths,
            )


def add_insights(
    results: Sequence[RunResult], repository: str, path: str | Path | None = None
) -> list[RunResult]:
    """``results`` with their insights; unchanged if the learning tables cannot be read (never
    raises)."""
    try:
        with Learning.open(path) as learning:
            return [learning.with_insights(result, repository) for result in results]
    except (StoreError, ConfigError) as exc:
        logger.warning("cannot read what was learned: %s", exc)
        return list(results)


_LESSON_COLUMNS = (
    "id, repository, command, excerpt, occurrences, first_seen, last_seen, signature, dismissed_at"
)


def _lesson(row: Sequence[Any]) -> Lesson:
    id_, repository, command, excerpt, occurrences, first_seen, last_seen, sig, dismissed_at = row
    return Lesson(
        id_,
        repository,
        command,
        excerpt,
        occurrences,
        first_seen,
        last_seen,
        sig,
        dismissed_at is not None,
    )


def _pattern(row: Sequence[Any]) -> Pattern:
    key, successes, failures, mean, m2 = row
    return Pattern(
        key, successes, failures, mean, math.sqrt(m2 / (successes - 1)) if successes > 1 else 0.0
    )


def _where(
    repository: str | None,
    include_dismissed: bool,
    column: str = "repository",
    keys: set[str] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause for one repository (``column``), active lessons, and only ``keys``
    (commands)."""
    clauses: list[str] = []
    params: list[Any] = []
    if repository is not None:
        clauses.append(f"{column} = ?")
        params.append(repository)
    if keys is not None:
        prefix = column.rpartition(".")[0]
        clauses.append(
            f"{prefix + '.' if prefix else ''}command_key IN ({', '.join('?' * len(keys))})"
        )
        params.extend(sorted(keys))
    if not include_dismissed:
        clauses.append("dismissed_at IS NULL")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _first_line(command: str) -> str:
    lines = [line for line in command.strip().splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    return clean(first + (" …" if len(lines) > 1 else ""), 120)


@dataclass
class _Running:
    command: str
    job_id: str
    tail: deque[str]


class LearningSink:
    """An ``EventSink`` that learns from a run's commands and passes every event on to ``then``.

    ``LearningSink(learning, *, repository, then=None, workflow=None)``; with ``workflow`` the
    insights also say which of its jobs could run in parallel. ``errors`` keeps the
    ``StoreError``s met (``emit`` never raises); ``insights`` is the last run's, once it finished.
    """

    def __init__(
        self,
        learning: Learning,
        *,
        repository: str,
        then: EventSink | None = None,
        workflow: Workflow | None = None,
    ) -> None:
        self.learning = learning
        self.repository = repository
        self.then = then
        self.workflow = workflow
        self.errors: list[StoreError] = []
        self.insights = Insights()
        self.new_lessons: list[Lesson] = []
        self._workflow = ""
        self._sha = ""
        self._jobs: dict[str, str] = {}
        self._running: dict[tuple[str, int], _Running] = {}
        self._previous: dict[str, str] = {}
        self._commands: list[str] = []

    def chain(self, then: EventSink) -> LearningSink:
        """This sink, passing events on to ``then`` (for wiring in one expression)."""
        self.then = then
        return self

    def emit(self, event: Event) -> None:
        try:
            self._learn(event)
        except StoreError as exc:
            if not self.errors:
                logger.warning("cannot learn from run %s: %s", event.run_id, exc)
            self.errors.append(exc)
        except Exception:  # emit must not raise: learning is a bonus, never a reason to fail a run
            logger.exception("learning from run %s failed", event.run_id)
        if self.then is not None:
            self.then.emit(event)

    def _learn(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._workflow = event.workflow_file or event.workflow_name
                self._sha = event.sha
                self._jobs, self._running, self._previous, self._commands = {}, {}, {}, []
                self.new_lessons = []
            case JobQueued():
                self._jobs[event.job_key] = event.job_id
            case StepStarted() if event.command:
                job_id = self._jobs.get(event.job_key, event.job_key)
                self._running[(event.job_key, event.index)] = _Running(
                    event.command, job_id, deque(maxlen=self.learning.config.tail_lines)
                )
            case LogLine():
                running = self._running.get((event.job_key, event.step_index))
                if running is not None and event.text.strip():
                    running.tail.append(event.text)
            case StepFinished():
                running = self._running.pop((event.job_key, event.index), None)
                if running is None or event.outcome not in ("success", "failure"):
                    return
                lesson = self.learning.record(
                    CommandRecord(
                        repository=self.repository,
                        workflow=self._workflow,
                        job_id=running.job_id,
                        run_id=event.run_id,
                        command=running.command,
                        outcome=event.outcome,
                        duration=event.duration,
                        sha=self._sha,
                        exit_code=event.exit_code,
                        tail=tuple(running.tail),
                        previous=self._previous.get(event.job_key, ""),
                        time=event.time,
                    )
                )
                self._previous[event.job_key] = running.command
                self._commands.append(running.command)
                if lesson is not None:
                    self.new_lessons.append(lesson)
            case RunFinished():
                insights = self.learning.insights(self.repository, self._commands)
                if self.workflow is not None:
                    insights = replace(
                        insights,
                        suggestions=(*insights.suggestions, *parallel_suggestions(self.workflow)),
                    )
                self.insights = insights
                if self.insights and self.then is not None:
                    self.then.emit(RunInsights(event.run_id, event.time, self.insights))
