"""Jobs a workflow serialises without need: advice read from the workflow itself, not from runs.

Two cases, both with a modest confidence because a workflow may serialise on purpose:
- a job ``needs`` another but uses none of its outputs (no ``needs.<id>`` anywhere in it), has
  no ``if:`` of its own, and neither side passes artifacts: the dependency may be habit (then
  both could start at once), or a gate (deploy only after tests pass: keep it);
- a matrix with ``max-parallel: 1`` runs its combinations one after another.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from vmrunner.reports.insights import Suggestion
from vmrunner.workflow.models import Job, Workflow

#: Confidence of "drop a needs": low, since a needs that only orders jobs is often a gate.
HABIT_CONFIDENCE = 0.3
#: Confidence of "raise max-parallel": a limit of 1 is sometimes there for a shared resource.
SERIAL_MATRIX_CONFIDENCE = 0.5
_ARTIFACTS = re.compile(r"actions/(?:upload|download)-artifact@")


def parallel_suggestions(workflow: Workflow) -> list[Suggestion]:
    """What in ``workflow`` could run in parallel, with the reason."""
    suggestions: list[Suggestion] = []
    for job in workflow.jobs.values():
        suggestions += _habits(workflow, job)
        strategy = job.strategy
        if (
            strategy is not None
            and strategy.max_parallel == 1
            and isinstance(strategy.matrix, Mapping)
            and strategy.matrix
        ):
            suggestions.append(
                Suggestion(
                    "parallel",
                    f"job `{job.id}` runs its matrix one combination at a time: raise "
                    f"max-parallel if they share nothing",
                    SERIAL_MATRIX_CONFIDENCE,
                    "strategy.max-parallel is 1",
                    job=job.id,
                )
            )
    return suggestions


def _habits(workflow: Workflow, job: Job) -> Iterator[Suggestion]:
    if not job.needs or job.if_ or job.calls_workflow:
        return
    text = "\n".join(_strings(job))
    for need in job.needs:
        needed = workflow.jobs.get(need)
        if needed is None or needed.calls_workflow or _uses_needs(text, need):
            continue
        if _ARTIFACTS.search(text) or _ARTIFACTS.search("\n".join(_strings(needed))):
            continue
        yield Suggestion(
            "parallel",
            f"job `{job.id}` needs `{need}` but uses none of its outputs: if it waits only out of "
            f"habit,"
            " drop it from needs and both start at once",
            HABIT_CONFIDENCE,
            f"no needs.{need} in job {job.id}, no artifacts passed, no if: condition",
            job=job.id,
        )


def _uses_needs(text: str, need: str) -> bool:
    quoted = re.escape(need)
    return (
        re.search(rf"needs\s*(?:\.\s*{quoted}\b|\[\s*['\"]{quoted}['\"]\s*\])", text) is not None
        or "toJSON(needs)" in text
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a workflow model value (dataclasses, mappings, sequences)."""
    if isinstance(value, str):
        yield value
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from _strings(getattr(value, f.name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
