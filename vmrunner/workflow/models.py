"""Typed, immutable models of a workflow file, as the loader builds them after validation.

Values GitHub lets you write as an expression are kept as written: a field typed ``bool | str``
holds either the literal or the ``${{ }}`` text the runner evaluates later. Mappings are
read-only views that keep the file's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from vmrunner.workflow.matrix import Strategy
from vmrunner.workflow.triggers import Triggers

if TYPE_CHECKING:
    from vmrunner.errors import Diagnostic
    from vmrunner.workflow.yaml import Document

#: A literal number of minutes, or the expression that computes it.
Minutes = int | float | str
#: ``env:`` as written: names to scalars, or one expression producing the mapping.
Env = Mapping[str, Any] | str
#: ``permissions:`` as written: ``read-all``/``write-all``, or scope -> level.
Permissions = Mapping[str, str] | str | None

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return EMPTY


def frozen_map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy of ``value`` in its original order."""
    return MappingProxyType(dict(value)) if value else EMPTY


def is_expression(value: object) -> bool:
    """True when ``value`` is a string that is exactly one ``${{ }}`` expression."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.startswith("${{") and text.endswith("}}") and text.count("${{") == 1


@dataclass(frozen=True, slots=True)
class RunsOn:
    """Where a job runs: runner ``labels`` (all must match), optionally within a runner ``group``.

    ``expression`` is set when ``runs-on`` is one whole expression (e.g. ``${{ matrix.os }}``):
    the runner evaluates it and normalises the result with ``RunsOn.from_value``. Labels may
    still contain expressions (``[self-hosted, "${{ matrix.arch }}"]``).
    """

    labels: tuple[str, ...] = ()
    group: str | None = None
    expression: str | None = None

    @classmethod
    def from_value(cls, value: Any) -> RunsOn:
        """Normalise ``runs-on`` as written (string, list of strings, or group/labels mapping)."""
        if is_expression(value):
            return cls(expression=value.strip())
        if isinstance(value, str):
            return cls(labels=(value,))
        if isinstance(value, list):
            return cls(labels=tuple(str(label) for label in value))
        if isinstance(value, Mapping):
            labels = value.get("labels")
            group = value.get("group")
            found = (labels,) if isinstance(labels, str) else tuple(labels or ())
            return cls(
                labels=tuple(str(label) for label in found),
                group=None if group is None else str(group),
            )
        return cls()

    def __str__(self) -> str:
        if self.expression:
            return self.expression
        text = ", ".join(self.labels)
        return f"group {self.group}: {text}" if self.group else text


#: GitHub's standard Linux runner labels: they run on the default machine type without a word.
STANDARD_LINUX_LABELS = frozenset(
    {"ubuntu-latest", "ubuntu-24.04", "ubuntu-22.04", "ubuntu-slim", "self-hosted", "linux", "x64"}
)


def unmapped_labels(labels: Iterable[str], mapped: Iterable[str] = ()) -> list[str]:
    """The labels neither mapped to a machine type nor one of GitHub's standard Linux labels
    (compared as GitHub does, ignoring case)."""
    known = STANDARD_LINUX_LABELS | {label.lower() for label in mapped}
    return [label for label in labels if label.strip().lower() not in known]


def operating_system(labels: Iterable[str]) -> str:
    """``Windows`` or ``macOS`` when runner labels ask for that system (GitHub-hosted
    ``windows-latest``, ``macos-14``; self-hosted ``[self-hosted, macOS, ARM64]``), else ''."""
    for label in labels:
        name = label.strip().lower()
        for prefix, system in (("windows", "Windows"), ("macos", "macOS")):
            if name == prefix or name.startswith(f"{prefix}-"):
                return system
    return ""


@dataclass(frozen=True, slots=True)
class Defaults:
    """``defaults.run``: the shell and working directory for ``run`` steps."""

    shell: str | None = None
    working_directory: str | None = None


@dataclass(frozen=True, slots=True)
class Concurrency:
    """A concurrency group; ``cancel_in_progress`` may be an expression; ``queue`` is
    ``single`` (one pending, replaced by a newer one) or ``max`` (a first-in first-out queue)."""

    group: str
    cancel_in_progress: bool | str = False
    queue: str = "single"


@dataclass(frozen=True, slots=True)
class Environment:
    """The deployment environment a job targets; ``url`` is evaluated after the job."""

    name: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Container:
    """``container:`` of a job or one of its ``services:``."""

    image: str
    env: Env = field(default_factory=_empty)
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    options: str | None = None
    credentials: Mapping[str, str] | None = None
    entrypoint: str | None = None
    command: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One step: ``run``, ``uses``, a ``parallel`` group of steps, or a control step of
    background steps (``wait``, ``wait_all``, ``cancel``). ``index`` counts from 0, within the
    job's steps or, for a step of a group, within the group (whose index is ``group``)."""

    index: int
    id: str | None = None
    name: str | None = None
    if_: str | None = None
    run: str | None = None
    shell: str | None = None
    working_directory: str | None = None
    uses: str | None = None
    with_: Env = field(default_factory=_empty)
    env: Env = field(default_factory=_empty)
    continue_on_error: bool | str = False
    timeout_minutes: Minutes | None = None
    parallel: tuple[Step, ...] = ()
    group: int | None = None
    background: bool = False
    wait: tuple[str, ...] = ()
    wait_all: bool = False
    cancel: str | None = None

    @property
    def position(self) -> str:
        """Where the step is in its job: ``3``, or ``3_1`` for the second step of group 3."""
        return f"{self.group}_{self.index}" if self.group is not None else str(self.index)

    @property
    def is_control(self) -> bool:
        """A ``parallel`` group or a ``wait``/``wait-all``/``cancel``: it runs nothing itself."""
        return bool(self.parallel or self.wait or self.wait_all or self.cancel)

    @property
    def display_name(self) -> str:
        """The name GitHub shows: ``name``, else ``Run <first line>``, else ``Run <action>``
        (``Parallel group``, ``Wait``, ``Wait for all``, ``Cancel`` for control steps)."""
        if self.name:
            return self.name
        for made_up, given in (
            ("Parallel group", self.parallel), ("Wait", self.wait),
            ("Wait for all", self.wait_all), ("Cancel", self.cancel),
        ):
            if given:
                return made_up
        if self.run is not None:
            first = self.run.strip().splitlines()
            return f"Run {first[0] if first else ''}".rstrip()
        return f"Run {self.uses}"

    @property
    def calls_hash_files(self) -> bool:
        """Whether any of its expressions may call ``hashFiles`` (which reads the workspace)."""
        fields = (self.if_, self.run, self.name, self.working_directory, self.env, self.with_)
        return any("hashfiles(" in str(value).lower() for value in fields if value)


@dataclass(frozen=True, slots=True)
class Job:
    """One job: either runs ``steps`` on ``runs_on``, or calls a reusable workflow (``uses``)."""

    id: str
    name: str | None = None
    runs_on: RunsOn | None = None
    needs: tuple[str, ...] = ()
    if_: str | None = None
    strategy: Strategy | None = None
    env: Env = field(default_factory=_empty)
    defaults: Defaults = Defaults()
    timeout_minutes: Minutes | None = None
    continue_on_error: bool | str = False
    outputs: Mapping[str, str] = field(default_factory=_empty)
    steps: tuple[Step, ...] = ()
    services: Mapping[str, Container] = field(default_factory=_empty)
    container: Container | None = None
    concurrency: Concurrency | None = None
    environment: Environment | None = None
    permissions: Permissions = None
    uses: str | None = None
    with_: Env = field(default_factory=_empty)
    secrets: Mapping[str, Any] | Literal["inherit"] | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def calls_workflow(self) -> bool:
        return self.uses is not None

    @property
    def every_step(self) -> tuple[Step, ...]:
        """The job's steps with the steps of its ``parallel`` groups, in file order."""
        return tuple(s for step in self.steps for s in (step, *step.parallel))


@dataclass(frozen=True, slots=True)
class Workflow:
    """A whole workflow file. ``jobs`` keeps the file's order; ``source`` locates any value."""

    path: str
    name: str | None = None
    run_name: str | None = None
    triggers: Triggers = field(default_factory=Triggers)
    env: Env = field(default_factory=_empty)
    defaults: Defaults = Defaults()
    permissions: Permissions = None
    concurrency: Concurrency | None = None
    jobs: Mapping[str, Job] = field(default_factory=_empty)
    source: Document | None = field(default=None, compare=False, repr=False)
    #: What GitHub accepts but is most likely a mistake, with file, line and column.
    warnings: tuple[Diagnostic, ...] = field(default=(), compare=False)

    @property
    def display_name(self) -> str:
        """``name:``, else the file path, as GitHub shows it."""
        return self.name or self.path

    def locate(self, path: tuple[str | int, ...]) -> tuple[int, int]:
        """Line and column of the value at ``path`` (0, 0 when the source is not known)."""
        return self.source.locate(path) if self.source else (0, 0)
