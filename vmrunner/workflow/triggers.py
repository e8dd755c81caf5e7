"""The ``on:`` section of a workflow, and deciding whether an event runs the workflow.

Works on plain values (what YAML loading gives) and reports ``Problem``s whose paths start at
``"on"``. Matching follows GitHub's documented rules for event names, activity types and the
branch, tag and path filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

InputType = Literal["string", "boolean", "number", "choice", "environment"]


@dataclass(frozen=True, slots=True)
class DispatchInput:
    """One input of ``workflow_dispatch`` or ``workflow_call``; ``default`` is already typed."""

    name: str
    description: str = ""
    required: bool = False
    type: InputType = "string"
    default: Any = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """One event under ``on:`` with its filters; ``None`` means the filter is absent.

    ``types`` is the configured activity types (``None``: GitHub's default for the event, see
    ``DEFAULT_TYPES``). ``inputs`` is for ``workflow_dispatch``/``workflow_call``, ``cron`` for
    ``schedule``, ``workflows`` for ``workflow_run``. ``raw`` keeps the event's configuration as
    written, for what this model does not interpret (e.g. ``workflow_call`` outputs/secrets).
    """

    event: str
    types: tuple[str, ...] | None = None
    branches: tuple[str, ...] | None = None
    branches_ignore: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    tags_ignore: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    paths_ignore: tuple[str, ...] | None = None
    inputs: Mapping[str, DispatchInput] = field(default_factory=dict)
    cron: tuple[str, ...] = ()
    workflows: tuple[str, ...] | None = None
    raw: Any = None


@dataclass(frozen=True, slots=True)
class Triggers:
    """Every event a workflow listens to, in the order written."""

    events: Mapping[str, EventTrigger] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.events)

    def get(self, event: str) -> EventTrigger | None:
        return self.events.get(event)
