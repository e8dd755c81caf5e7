"""What the jobs of one run share (``RunContext``), and what an action needs of its job
(``JobHandle``).

Both live here, below ``run.py``, ``job.py`` and ``uses.py``, so that each of those imports
only what is below it: ``run.py`` makes a ``RunContext`` and runs ``JobExecution``s, a
``JobExecution`` gets the ``RunContext`` and hands itself to ``ActionSteps`` as a
``JobHandle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import time
from collections import ChainMap
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from vmrunner.actions.origin import Origin, workflow_origin
from vmrunner.errors import ConfigError, VmrunnerError
from vmrunner.reports.events import (
    Annotation,
    AnnotationLevel,
    Event,
    EventSink,
    MachineReleased,
    Progress,
    ReleaseRequested,
    SessionStateChanged,
)
from vmrunner.repository import FetchProgress as ProgressReport
from vmrunner.repository import RepositoryInfo
from vmrunner.runner.concurrency import ConcurrencyGroups
from vmrunner.runner.contexts import github_context, new_run_id
from vmrunner.runner.masking import Masker
from vmrunner.runner.options import RunOptions
from vmrunner.runner.steps import JobRuntime, Scope, ScriptOutcome, StepOutcome
from vmrunner.sessions import RELEASE_FAILED, Session, SessionManager, SessionState, Transition
from vmrunner.workflow.expressions import EvaluationHooks
from vmrunner.workflow.models import Step, Workflow
from vmrunner.workflow.triggers import resolve_dispatch_inputs

if TYPE_CHECKING:
    from vmrunner.services.host import ServiceHost


class RunContext:
    """What every job of one run shares: options, sessions, sink, masker, identity."""

    def __init__(
        self, workflow: Workflow, options: RunOptions, sessions: SessionManager, sink: EventSink,
        info: RepositoryInfo, groups: ConcurrencyGroups | None = None,
        services: ServiceHost | None = None,
    ) -> None:
        self.workflow = workflow
        self.options = options
        self.sessions = sessions
        self.sink = sink
        self.info = info
        self.run_id = options.run_id or new_run_id()
        self.provider_name = sessions.provider.name
        self.masker = Masker(options.secrets.values())
        self.limit = asyncio.Semaphore(max(1, options.concurrent_jobs))
        #: Whether, and why, the run was stopped on purpose (a called workflow's jobs see it, and
        #: their own caller's stop: ``calling``).
        self.stopped: MutableMapping[str, object] = {"cancelled": False, "reason": ""}
        self.warnings: list[str] = []
        self.inputs = self._inputs()
        #: Concurrency groups, shared with the other runs of the same registry.
        self.groups = groups if groups is not None else ConcurrencyGroups()
        #: The artifact and cache services the jobs' actions reach (``vmrunner/services/``).
        self.services = services
        #: ``runs-on`` labels a notice already named: one notice per label and run.
        self.unmapped_told: set[str] = set()
        #: The ``secrets`` context of this workflow's jobs.
        self.secrets = {"GITHUB_TOKEN": "", **options.secrets}
        #: The repository this workflow file is from (where its ``./`` and ``$/`` calls resolve).
        self.origin = workflow_origin(workflow.path, options.repo_root, options.commit)
        #: The top-level workflow (the ``github`` context is its, in called workflows too), the
        #: workflow files from it down to this one, and the reusable workflows of the run.
        self.top = workflow
        self.chain: tuple[str, ...] = (os.path.realpath(workflow.path),)
        self.called: dict[str, Any] = {}

    @property
    def cancelled(self) -> bool:
        return bool(self.stopped["cancelled"])

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        self.stopped["cancelled"] = value

    @property
    def cancel_reason(self) -> str:
        """Why the whole run was stopped on purpose (its concurrency group)."""
        return str(self.stopped["reason"])

    @cancel_reason.setter
    def cancel_reason(self, value: str) -> None:
        self.stopped["reason"] = value

    def calling(
        self, workflow: Workflow, origin: Origin, identity: str, inputs: dict[str, Any],
        secrets: dict[str, str],
    ) -> RunContext:
        """What the jobs of a workflow this one calls share: the same run (sessions, sink,
        masker, limits, cancellation), with the called file, its origin, inputs and secrets."""
        called = copy.copy(self)
        called.workflow, called.origin, called.inputs, called.secrets = (
            workflow, origin, inputs, secrets,
        )
        called.chain = (*self.chain, identity)
        called.stopped = ChainMap({}, self.stopped)
        return called

    def emit(self, event: Event) -> None:
        with contextlib.suppress(Exception):
            self.sink.emit(event)

    @contextlib.contextmanager
    def progress(self, job_key: str, task: str) -> Iterator[ProgressReport]:
        """Report a long operation of a job as ``Progress`` events: one per phase or percent
        changed (a bar needs no more), and a last one, ``finished``, if any was sent."""
        seen: list[tuple[str, int]] = []

        def report(phase: str, done: int, total: int) -> None:
            step = (phase, done * 100 // total if total > 0 else done)
            if not seen or seen[-1] != step:
                seen[:] = [step]
                what = f"{task}: {phase}" if phase else task
                self.emit(Progress(self.run_id, job_key, what, done, total or None, time.time()))

        try:
            yield report
        finally:
            if seen:
                self.emit(Progress(self.run_id, job_key, task, 0, None, time.time(), True))

    def annotate(self, job_key: str, level: AnnotationLevel, message: str) -> None:
        self.emit(
            Annotation(self.run_id, job_key, -1, level, self.masker.mask(message), time.time())
        )

    def session_changed(self, session: Session, transition: Transition) -> None:
        """The session manager's observer: this run's session transitions become events
        (the lifecycle timeline); terminating and released also as release events."""
        labels = session.spec.labels
        if labels.get("run") != self.run_id or "job" not in labels:
            return
        job_key, at, note = labels["job"], transition.at, self.masker.mask(transition.note)
        try:
            machine_id = session.machine.id
        except VmrunnerError:
            machine_id = ""
        self.emit(
            SessionStateChanged(
                self.run_id, job_key, session.id, machine_id, transition.state.value, at, note
            )
        )
        if not machine_id:
            return
        if transition.state is SessionState.TERMINATING:
            self.emit(ReleaseRequested(self.run_id, job_key, session.id, machine_id, at))
        elif transition.state is SessionState.RELEASED:
            ok = RELEASE_FAILED not in transition.note
            self.emit(MachineReleased(self.run_id, job_key, session.id, machine_id, at, ok, note))

    def _inputs(self) -> dict[str, Any]:
        """The ``inputs`` context: typed by the workflow's definitions when they fit, else as
        given."""
        trigger = self.workflow.triggers.get(self.options.event_name)
        given = dict(self.options.inputs)
        payload_inputs = self.options.payload.get("inputs")
        if isinstance(payload_inputs, Mapping):
            given = {**payload_inputs, **given}
        if trigger is None or not trigger.inputs:
            return given
        try:
            return resolve_dispatch_inputs(trigger, given)
        except ConfigError as exc:
            self.warnings.append(f"inputs: {exc}; using the inputs as given")
            defaults = {
                spec.name: spec.default
                for spec in trigger.inputs.values()
                if spec.default is not None
            }
            return {**defaults, **given}

    def base_contexts(self, job_id: str) -> dict[str, Any]:
        github = github_context(
            self.options, self.info, workflow_name=self.top.display_name,
            workflow_file=self.top.path, run_id=self.run_id, job_id=job_id,
        )
        return {
            "github": github, "vars": dict(self.options.vars),
            "secrets": dict(self.secrets), "inputs": self.inputs,
            "matrix": {}, "strategy": {}, "needs": {}, "steps": {}, "job": {}, "runner": {},
            "env": {},
        }


class JobHandle(Protocol):
    """What ``ActionSteps`` (``uses.py``) needs of the job whose ``uses:`` steps it runs
    (``JobExecution`` in ``job.py``)."""

    run: RunContext
    job_key: str
    runtime: JobRuntime | None
    github: dict[str, Any]
    #: What GitHub gives actions only: the services' URLs and the job's runtime token.
    action_env: dict[str, str]

    @property
    def live_runtime(self) -> JobRuntime:
        """``runtime`` once the job is set up; ``MachineError`` before."""
        ...

    def next_index(self) -> int: ...

    def hooks(self, scope: Scope | None) -> EvaluationHooks: ...

    def contexts(
        self, scope: Scope, env: Mapping[str, str], *, github: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...

    def env_context(self, scope: Scope) -> dict[str, str]: ...

    def step_github(self, step: Step, scope: Scope) -> dict[str, Any]: ...

    def default_env(self, github: Mapping[str, Any] | None = None) -> dict[str, str]: ...

    def script_outcome(self, index: int, result: ScriptOutcome) -> StepOutcome: ...

    async def run_steps(
        self, steps: tuple[Step, ...], scope: Scope, parent_index: int | None
    ) -> None: ...
