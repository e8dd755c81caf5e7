"""What vmrunner learned from past runs, as plain data: lessons and suggestions.

``learning/history.py`` computes them from the commands it recorded; this module only holds
their shape, their JSON form (``INSIGHTS_SCHEMA``, the ``insights`` section of a run result)
and nothing else, so that events, results and the summary can carry them without importing
the learning machinery.

- A ``Lesson`` is a failure seen ``threshold`` times with the same signature (the command and
  the last lines of its output, noise removed). It is kept until dismissed.
- A ``Suggestion`` is advice with a ``confidence`` in [0, 1] and the ``evidence`` behind it:
  ``cache`` (a slow, repeated dependency step), ``avoid`` (a known failure), ``flaky`` (the same
  command on the same commit both failed and succeeded), ``parallel`` (jobs serialised without
  need).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vmrunner.reports.schemas import dataclass_schema, record_json

SuggestionKind = Literal["cache", "avoid", "flaky", "parallel"]
SUGGESTION_KINDS: tuple[SuggestionKind, ...] = ("cache", "avoid", "flaky", "parallel")


@dataclass(frozen=True, slots=True)
class Lesson:
    id: int
    repository: str
    #: The normalised command that failed, and a short excerpt of its output (masked).
    command: str
    excerpt: str
    #: Identical failures seen so far (the lesson was made when this reached the threshold).
    occurrences: int = field(metadata={"minimum": 1})
    first_seen: float
    last_seen: float
    signature: str
    dismissed: bool = False

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


@dataclass(frozen=True, slots=True)
class Suggestion:
    kind: SuggestionKind
    #: What to do, in one sentence.
    message: str
    confidence: float = field(metadata={"minimum": 0, "maximum": 1})
    #: Why: the counts and durations the advice rests on.
    evidence: str
    command: str = ""
    job: str = ""
    #: For ``cache``: the ``actions/cache`` paths of the tool.
    paths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return record_json(self, extra={"confidence": round(self.confidence, 3)})


@dataclass(frozen=True, slots=True)
class Insights:
    lessons: tuple[Lesson, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.lessons or self.suggestions)

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


#: JSON Schema of ``Insights.to_json()`` (the optional ``insights`` key of a run result).
INSIGHTS_SCHEMA: dict[str, Any] = dataclass_schema(Insights)
