"""One job, in one session: set up, steps in order, then always post steps and cleanup.

Order (DESIGN.md): allocate → set up job (workspace, ``RUNNER_TEMP``, event file, setup
commands) → steps → post steps (reverse order) → rollback when asked → cleanup commands →
final state → release (the session manager releases exactly once, whatever happens). The job's
``timeout-minutes`` bounds set-up and steps; post steps and cleanup still run after it expired.

A job that uses images its provider cannot run (``container:``, ``services:``, Docker steps and
actions), background steps, or that asks for Windows or macOS without a machine type mapped to
one of its labels, fails at once with the reason, without allocating a machine (the checks are
``actions/blockers.py``'s, shared with ``run -n`` and ``python -m bench coverage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import io
import json
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vmrunner.actions.blockers import other_system_reason, unsupported_reason
from vmrunner.errors import (
    ConfigError,
    ExpressionError,
    MachineError,
    SessionError,
    StoreError,
    VmrunnerError,
)
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.local import shielded
from vmrunner.machines.snapshot_tar import remove_tree
from vmrunner.reports.events import (
    AllocationRequested,
    JobFinished,
    JobStarted,
    Result,
    SnapshotRestored,
    SnapshotTaken,
    StepFinished,
    StepKind,
    StepStarted,
)
from vmrunner.runner import checkpoints
from vmrunner.runner.containers import container_spec, services_spec
from vmrunner.runner.context import RunContext
from vmrunner.runner.contexts import default_env, runner_context, workspaces
from vmrunner.runner.options import machine_spec, options_data
from vmrunner.runner.steps import JobRuntime, Scope, ScriptOutcome, StepOutcome
from vmrunner.runner.uses import ActionSteps
from vmrunner.services.host import job_grant
from vmrunner.sessions import Session, SessionState
from vmrunner.workflow import background as bg
from vmrunner.workflow.evaluation import (
    as_text,
    render,
    render_env,
    render_flag,
    render_minutes,
    render_text,
)
from vmrunner.workflow.expressions import EvaluationHooks, evaluate_if, hash_files
from vmrunner.workflow.models import Job, Step, unmapped_labels
from vmrunner.workflow.shells import resolve_shell

#: The fields of the ``github`` context that differ between the steps of a job.
_ACTION_FIELDS = ("action_path", "action_repository", "action_ref", "workspace", "event_path")
#: GitHub's limit of background steps running at once in a job (the others wait their turn).
MAX_BACKGROUND = 10
#: Bound on post steps and cleanup after a job was cancelled or timed out (seconds).
CLEANUP_GRACE = 60.0
#: A host copy of the workspace while a step calling ``hashFiles`` is evaluated (per task: the
#: steps of a ``parallel`` group are evaluated at the same time).
_HASH_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("hash_root", default=None)


@dataclass(frozen=True, slots=True)
class JobInstance:
    """One concrete job: a job, or one combination of its matrix."""

    job: Job
    job_key: str
    name: str
    matrix: Mapping[str, Any]
    strategy: Mapping[str, Any]
    needs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Resume:
    """Continue a job from a kept checkpoint: its exported snapshot is in ``folder``."""

    checkpoint: checkpoints.Checkpoint
    folder: Path


@dataclass(slots=True)
class JobOutcome:
    result: Result
    outputs: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    continue_on_error: bool = False
    #: The machine was restored to its last good snapshot (the result stays failure).
    rolled_back: bool = False


def _extract(data: bytes, folder: str) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(f"hashFiles: cannot copy the workspace: {exc}") from exc


class JobExecution:
    """Runs one ``JobInstance`` from allocation to release and reports it."""

    def __init__(
        self, run: RunContext, instance: JobInstance, contexts: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> None:
        self.run = run
        self.instance = instance
        self.job = instance.job
        self.job_key = instance.job_key
        #: Contexts known before the machine (github without workspace, needs, matrix, ...).
        self.base_contexts = dict(contexts)
        #: The workflow-level env (options.env + workflow env), evaluated.
        self.workflow_env = dict(env)
        self.job_env: dict[str, str] = {}
        self.cancelled = False
        #: Set (with ``cancelled``) when the run cancels this job on purpose, e.g. fail-fast.
        self.cancel_reason = ""
        #: Set once the job's machine is set up (see ``live_runtime``).
        self.runtime: JobRuntime | None = None
        self.index = -1
        self.github: dict[str, Any] = {}
        self.runner: dict[str, Any] = {}
        self.event_path = ""
        self.started = False
        self.actions = ActionSteps(self)
        self.action_env: dict[str, str] = {}
        #: ``job.services``: each service container's id, network and ports.
        self.services_context: dict[str, Any] = {}
        self._default_env: dict[tuple[str, ...], dict[str, str]] = {}
        #: Job steps started so far (1-based numbers, as ``vmrunner rerun --from-step`` counts).
        self.step_number = 0
        #: The job's state at each snapshot, kept when the job fails (``runner.checkpoints``).
        self.checkpoints: list[checkpoints.Checkpoint] = []
        #: Set to continue a failed job from a kept checkpoint (``vmrunner rerun``).
        self.resume: Resume | None = None
        #: Background steps started and not yet waited for or cancelled, in start order, the
        #: task group they run in, and the slots they share with ``parallel`` groups.
        self.in_flight: dict[str, tuple[Step, asyncio.Task[StepOutcome]]] = {}
        self.background_tasks = asyncio.TaskGroup()
        self.slots = asyncio.Semaphore(MAX_BACKGROUND)

    # Contexts

    @property
    def live_runtime(self) -> JobRuntime:
        """The job's runtime (its machine, paths and what its steps set), once it is set up."""
        if self.runtime is None:
            raise MachineError(f"job {self.job_key}: its machine is not set up")
        return self.runtime

    def next_index(self) -> int:
        self.index += 1
        return self.index

    def hooks(self, scope: Scope | None) -> EvaluationHooks:
        failed: Callable[[], bool] = (
            (lambda: scope.any_failed()) if scope is not None else (lambda: False)
        )
        root = _HASH_ROOT.get()
        return EvaluationHooks(
            success=lambda: not failed() and not self.cancelled, failure=failed,
            cancelled=lambda: self.cancelled,
            hash_files=None if root is None else functools.partial(hash_files, root),
        )

    @contextlib.asynccontextmanager
    async def workspace_for_hash_files(self, step: Step) -> AsyncIterator[None]:
        """While a step that calls ``hashFiles`` is evaluated, a host copy of the workspace."""
        if _HASH_ROOT.get() is not None or not step.calls_hash_files or self.runtime is None:
            yield
            return
        workspace = str(self.github.get("workspace") or self.runtime.paths.workspace)
        with tempfile.TemporaryDirectory(prefix="vmrunner-hashfiles-") as folder:
            data = await self.runtime.machine.get(workspace)
            await asyncio.to_thread(_extract, data, folder)
            token = _HASH_ROOT.set(Path(folder) / PurePosixPath(workspace).name)
            try:
                yield
            finally:
                _HASH_ROOT.reset(token)

    def contexts(
        self, scope: Scope, env: Mapping[str, str], *, github: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        contexts = dict(self.base_contexts)
        contexts["github"] = dict(github or self.github or contexts["github"])
        contexts["env"] = dict(env)
        contexts["steps"] = scope.steps
        contexts["runner"] = self.runner
        contexts["job"] = {
            "status": "failure" if scope.any_failed() else "success", "container": {},
            "services": self.services_context,
        }
        contexts["inputs"] = (
            scope.inputs if scope.action is not None else self.base_contexts.get("inputs", {})
        )
        return contexts

    def env_context(self, scope: Scope) -> dict[str, str]:
        """workflow env < job env < GITHUB_ENV < enclosing composite steps' env."""
        runtime_env = self.runtime.env if self.runtime else {}
        chain: list[Scope] = []
        current: Scope | None = scope
        while current is not None:
            chain.append(current)
            current = current.parent
        merged = {**self.workflow_env, **self.job_env, **runtime_env}
        for item in reversed(chain):
            merged.update(item.env)
        return merged

    # The whole job

    async def execute(self) -> JobOutcome:
        """Run the job; emits JobStarted (once it has a machine) and always one JobFinished."""
        run = self.run
        started = time.time()
        outcome = JobOutcome("failure")
        summary = ""
        try:
            contexts = self.contexts(Scope(), self.workflow_env)
            hooks = self.hooks(None)
            try:
                outcome.continue_on_error = render_flag(self.job.continue_on_error, contexts, hooks)
                minutes = render_minutes(
                    self.job.timeout_minutes, contexts, f"jobs.{self.job.id}.timeout-minutes"
                )
            except VmrunnerError as exc:
                outcome.reason = f"job '{self.job.id}': {exc}"
                return outcome
            try:
                labels = self.labels(contexts)
            except VmrunnerError as exc:
                outcome.reason = f"job '{self.job.id}': runs-on: {exc}"
                return outcome
            reason = unsupported_reason(
                self.job, run.options.repo_root, run.provider_name,
                run.sessions.provider.capabilities.containers,
            ) or other_system_reason(self.job.id, labels, run.options.machine_types)
            if reason:
                outcome.reason = reason
                run.annotate(self.job_key, "error", reason)
                return outcome
            vm_type, notice = self.machine_type(labels)
            if notice:
                run.annotate(self.job_key, "notice", notice)
            spec = machine_spec(run.options, vm_type, {"run": run.run_id, "job": self.job_key})
            if self.job.container is not None or self.job.services:
                try:
                    if self.job.container is not None:
                        spec = container_spec(spec, self.job.id, self.job.container, contexts)
                    spec, self.services_context = services_spec(
                        spec, self.job.id, self.job.services, contexts
                    )
                except VmrunnerError as exc:
                    outcome.reason = str(exc)
                    run.annotate(self.job_key, "error", outcome.reason)
                    return outcome
            timeout = (minutes if minutes is not None else run.options.job_timeout_minutes) * 60
            outcome, summary = await self.in_session(spec, timeout, outcome)
        except asyncio.CancelledError:
            if (
                not (outcome.reason or self.cancel_reason) and run.cancel_reason
            ):  # e.g. the run's concurrency group
                run.annotate(self.job_key, "error", run.cancel_reason)
            reason = (
                outcome.reason or self.cancel_reason or run.cancel_reason or "the run was cancelled"
            )
            outcome = JobOutcome(
                "cancelled", reason=reason, continue_on_error=outcome.continue_on_error
            )
            raise
        finally:
            if self.cancelled and outcome.result != "success":
                outcome.result = "cancelled"
            run.emit(
                JobFinished(
                    run.run_id, self.job_key, outcome.result, time.time(), time.time() - started,
                    outputs={k: run.masker.mask(v) for k, v in outcome.outputs.items()},
                    rolled_back=outcome.rolled_back, reason=run.masker.mask(outcome.reason),
                    summary=summary,
                )
            )
        return outcome

    def labels(self, contexts: Mapping[str, Any]) -> list[str]:
        runs_on = self.job.runs_on
        if runs_on is None:
            return []
        if runs_on.expression:
            value = render(runs_on.expression, contexts)
            return [as_text(v) for v in value] if isinstance(value, list) else [as_text(value)]
        return [render_text(label, contexts) for label in runs_on.labels]

    def machine_type(self, labels: list[str]) -> tuple[str, str]:
        """The machine type for ``labels``, and a notice naming the labels that have no mapping
        and were not named yet in this run (GitHub's standard Linux labels need none)."""
        options = self.run.options
        for label in labels:
            if label in options.machine_types:
                return options.machine_types[label], ""
        told = self.run.unmapped_told
        fresh = [label for label in unmapped_labels(labels) if label not in told]
        told.update(fresh)
        notice = (
            f"runs-on labels {', '.join(fresh)} are not mapped to a machine type (--machine-type "
            f"LABEL=TYPE): running on '{options.default_vm_type}'"
        )
        return options.default_vm_type, notice if fresh else ""

    async def in_session(
        self, spec: MachineSpec, limit: float, outcome: JobOutcome
    ) -> tuple[JobOutcome, str]:
        """The job in its session; the outcome and the job's summary Markdown."""
        run = self.run
        asked = time.monotonic()
        run.emit(
            AllocationRequested(
                run.run_id, self.job_key, time.time(), run.provider_name, spec.vm_type
            )
        )
        try:
            async with run.sessions.open(spec) as session, self.services(session):
                machine = session.machine
                run.emit(
                    JobStarted(
                        run.run_id, self.job_key, time.time(), session.id, machine.id,
                        machine.provider_name, spec.vm_type, machine.from_pool,
                        time.monotonic() - asked,
                    )
                )
                self.started = True
                runtime = self.runtime = JobRuntime(
                    run_id=run.run_id, job_key=self.job_key, session=session, sink=run,
                    masker=run.masker,
                )
                scope = Scope()
                timed_out = False
                try:
                    async with asyncio.timeout(limit):
                        if await self.set_up(scope):
                            skipped = self.resume.checkpoint.step_number if self.resume else 0
                            await self.run_main_steps(self.job.steps[skipped:], scope)
                except TimeoutError:
                    timed_out = True
                    scope.failed = True
                    outcome.reason = f"the job exceeded its timeout of {limit / 60:g} minutes"
                    run.annotate(self.job_key, "error", outcome.reason)
                except VmrunnerError as exc:
                    scope.failed = True
                    outcome.reason = str(exc)
                    run.annotate(self.job_key, "error", outcome.reason)
                except asyncio.CancelledError:
                    self.cancelled = True
                    raise
                finally:
                    runtime.end_groups(-1)
                    await shielded(self.finish(session, scope, outcome, timed_out))
                return outcome, "\n".join(runtime.summary)
        # StoreError: the machine could not be recorded
        except (SessionError, MachineError, StoreError) as exc:
            outcome.result = "failure"
            what = "releasing the machine of" if self.started else "cannot get a machine for"
            outcome.reason = outcome.reason or f"{what} job '{self.job.id}': {exc}"
            return outcome, ""

    async def finish(
        self, session: Session, scope: Scope, outcome: JobOutcome, timed_out: bool
    ) -> None:
        """Outputs, post steps, rollback, cleanup: bounded, and run even after a timeout."""
        run = self.run
        try:
            async with asyncio.timeout(CLEANUP_GRACE if timed_out or self.cancelled else None):
                await self.actions.run_posts(scope)
                outcome.result = "failure" if scope.failed else "success"
                outcome.outputs = self.job_outputs(scope, quiet=scope.failed)
                if scope.failed and run.options.snapshot and self.checkpoints:
                    await self.keep_checkpoints()
                if scope.failed and run.options.rollback_on_failure and session.snapshots:
                    last = session.snapshots[-1]
                    began = time.monotonic()
                    await session.restore(last.snapshot_id)
                    run.emit(
                        SnapshotRestored(
                            run.run_id, self.job_key, last.snapshot_id, time.time(),
                            time.monotonic() - began,
                        )
                    )
                    outcome.rolled_back = True
                for command in run.options.cleanup_commands:
                    await self.run_hook("cleanup", command, scope)
        except TimeoutError:
            outcome.result = "failure"
            outcome.reason = outcome.reason or "post steps and cleanup exceeded their time"
        except VmrunnerError as exc:
            outcome.result = "failure"
            outcome.reason = outcome.reason or str(exc)
        if scope.failed:
            outcome.result = "failure"
        if outcome.result == "failure" and self.runtime is not None and self.runtime.limits_hit:
            # The plainest reason first: the limit the job ran into, then what else went wrong.
            hit = "; ".join(self.runtime.limits_hit)
            outcome.reason = f"{hit} ({outcome.reason})" if outcome.reason else hit
        if outcome.result == "failure" and session.state is SessionState.ACTIVE:
            with contextlib.suppress(VmrunnerError):  # its final state: failed, not completed
                session.set_state(SessionState.FAILED, note="the job failed")

    def job_outputs(self, scope: Scope, *, quiet: bool = False) -> dict[str, str]:
        contexts = self.contexts(scope, self.env_context(scope))
        outputs: dict[str, str] = {}
        for name, value in self.job.outputs.items():
            try:
                outputs[name] = render_text(value, contexts, self.hooks(scope))
            except VmrunnerError as exc:
                if not quiet:
                    self.run.annotate(self.job_key, "warning", f"output '{name}': {exc}")
        return outputs

    @contextlib.asynccontextmanager
    async def services(self, session: Session) -> AsyncIterator[None]:
        """The artifact and cache services reachable from the job's machine while it runs."""
        run, host = self.run, self.run.services
        if host is None:
            yield
            return
        grant = job_grant(run.run_id, self.job_key, self.base_contexts["github"])
        warn = functools.partial(run.annotate, self.job_key, "warning")
        async with host.for_job(session.machine, grant, warn) as env:
            run.masker.add(env.get("ACTIONS_RUNTIME_TOKEN", ""))
            self.action_env = env
            yield

    # Set up and hooks

    async def set_up(self, scope: Scope) -> bool:
        """Prepare the machine; False when the steps cannot run (a setup command failed)."""
        run = self.run
        runtime = self.live_runtime
        paths = runtime.paths
        self.event_path = f"{paths.temp}/_github_workflow/event.json"
        if self.resume is not None:
            await runtime.machine.import_snapshot(str(self.resume.folder))
        github = self.base_contexts["github"]
        parent, workspace = workspaces(paths.work, github["repository"], run.options.repo_root)
        await runtime.probe(
            self.event_path, json.dumps(run.options.payload, indent=2).encode(), workspace
        )
        self.github = {**github, "workspace": workspace, "event_path": self.event_path}
        self.runner = runner_context(
            name=runtime.machine.id, temp=paths.temp, tool_cache=paths.tool_cache,
            workspace=parent,
        )
        contexts = self.contexts(scope, self.workflow_env)
        try:
            self.job_env = render_env(self.job.env, contexts, self.hooks(scope))
        except VmrunnerError as exc:
            scope.failed = True
            run.annotate(self.job_key, "error", f"jobs.{self.job.id}.env: {exc}")
            return False
        if self.resume is not None:
            self.restore_state(self.resume.checkpoint, scope)
            if run.options.snapshot:
                self.keep_state(await self.take_snapshot(-1), scope)
            return True
        for command in run.options.setup_commands:
            if not await self.run_hook("setup", command, scope):
                scope.failed = True
                return False
        await self.actions.run_pres(self.job.every_step, scope)
        if run.options.snapshot and not scope.failed:
            self.keep_state(await self.take_snapshot(-1), scope)
        return True

    # Checkpoints (vmrunner rerun)

    def keep_state(self, snapshot_id: str, scope: Scope) -> None:
        """Remember what the job knows at a snapshot, to continue from it later."""
        runtime = self.live_runtime
        self.checkpoints.append(
            checkpoints.Checkpoint(
                snapshot_id, self.step_number, self.index, dict(runtime.env),
                tuple(runtime.path_entries), json.loads(json.dumps(scope.steps)),
            )
        )

    def restore_state(self, checkpoint: checkpoints.Checkpoint, scope: Scope) -> None:
        runtime = self.live_runtime
        runtime.env.update(checkpoint.env)
        runtime.path_entries[:0] = checkpoint.path_entries
        scope.steps.update(json.loads(json.dumps(checkpoint.steps)))
        self.index, self.step_number = checkpoint.index, checkpoint.step_number

    async def keep_checkpoints(self) -> None:
        """Export the job's snapshots so that ``vmrunner rerun`` can continue from one."""
        run, runtime = self.run, self.live_runtime
        folder = checkpoints.job_folder(run.run_id, self.job_key)
        try:
            await asyncio.to_thread(remove_tree, folder)
            with run.progress(self.job_key, "exporting snapshots") as progress:
                for number, checkpoint in enumerate(self.checkpoints):
                    progress("", number, len(self.checkpoints))
                    await runtime.machine.export_snapshot(
                        checkpoint.snapshot_id, str(folder / str(checkpoint.step_number))
                    )
                progress("", len(self.checkpoints), len(self.checkpoints))
            kept = {
                "run_id": run.run_id, "workflow_file": run.workflow.path, "job_id": self.job.id,
                "job_key": self.job_key, "matrix": dict(self.instance.matrix),
                "strategy": dict(self.instance.strategy), "needs": dict(self.instance.needs),
                "options": options_data(run.options),
            }
            await asyncio.to_thread(checkpoints.write_state, folder, kept, self.checkpoints)
        except VmrunnerError as exc:
            run.annotate(
                self.job_key, "warning",
                f"cannot keep the job's snapshots for vmrunner rerun: {exc}",
            )

    async def run_hook(self, kind: StepKind, command: str, scope: Scope) -> bool:
        runtime = self.live_runtime
        index = self.next_index()
        name = f"{kind} command: {command.splitlines()[0] if command.strip() else ''}"
        machine_id = runtime.machine.id
        self.run.emit(
            StepStarted(
                self.run.run_id, self.job_key, index, kind, self.run.masker.mask(name), time.time(),
                machine_id=machine_id, command=self.run.masker.mask(command),
            )
        )
        began = time.monotonic()
        env = runtime.process_env(self.default_env(), self.env_context(scope))
        cwd = str(self.github.get("workspace") or runtime.paths.workspace)
        result = await runtime.run_command(index, command, env=env, cwd=cwd)
        if result.error:
            runtime.annotate(index, "error", result.error)
        outcome: Result = "success" if result.ok else "failure"
        runtime.end_groups(index)
        self.run.emit(
            StepFinished(
                self.run.run_id, self.job_key, index, outcome, outcome, time.time(),
                time.monotonic() - began, exit_code=result.exit_code, machine_id=machine_id,
            )
        )
        return result.ok

    def default_env(self, github: Mapping[str, Any] | None = None) -> dict[str, str]:
        """GitHub's default variables for a step (cached: only ``GITHUB_ACTION*`` vary)."""
        github = github or self.github
        key = tuple(str(github.get(name, "")) for name in _ACTION_FIELDS)
        env = self._default_env.get(key)
        if env is None:
            env = default_env(github, self.runner)
            env["GITHUB_EVENT_PATH"] = self.event_path
            self._default_env[key] = env
        return {**env, "GITHUB_ACTION": str(github.get("action", ""))}

    async def take_snapshot(self, step_index: int) -> str:
        runtime = self.live_runtime
        began = time.monotonic()
        info = await runtime.session.snapshot(f"{self.job_key} step {step_index}")
        self.run.emit(
            SnapshotTaken(
                self.run.run_id, self.job_key, step_index, info.snapshot_id, time.time(),
                time.monotonic() - began,
            )
        )
        return info.snapshot_id

    # Steps

    async def run_main_steps(self, steps: tuple[Step, ...], scope: Scope) -> None:
        """The job's steps, then a wait for the background steps still running (GitHub's
        implicit ``wait-all``); a timeout, a cancellation or a machine error stops them."""
        try:
            async with asyncio.TaskGroup() as self.background_tasks:
                await self.run_steps(steps, scope, None)
                if self.in_flight:
                    await self.run_job_step(bg.IMPLICIT_WAIT, scope)
        except ExceptionGroup as errors:  # a background step's machine failed
            raise errors.exceptions[0] from None

    async def run_steps(
        self, steps: tuple[Step, ...], scope: Scope, parent_index: int | None
    ) -> None:
        """Job steps (each reported as a step) or a composite's steps (logged under its step)."""
        for step in steps:
            if parent_index is None:
                await self.run_job_step(step, scope)
            else:
                result = await self.run_step(step, scope, parent_index)
                self.record(step, scope, result)

    def record(self, step: Step, scope: Scope, result: StepOutcome) -> None:
        scope.steps[bg.step_key(step)] = {
            "outputs": dict(result.outputs), "outcome": result.outcome,
            "conclusion": result.conclusion,
        }
        if result.conclusion == "failure":
            scope.failed = True

    async def run_job_step(
        self, step: Step, scope: Scope, *, background: bool = False
    ) -> StepOutcome:
        """One job step, reported as a step; ``background``: running in the background (alone
        or in a ``parallel`` group): its result is recorded when it is waited for, no snapshot
        follows it, and a cancellation ends it as cancelled."""
        if step.parallel:
            return await self.run_parallel(step, scope)
        if step.background and not background:
            return await self.start_background(step, scope)
        run = self.run
        index = self.next_index()
        contexts = self.contexts(scope, self.env_context(scope))
        try:
            name = render_text(step.display_name, contexts)
        except VmrunnerError:
            name = step.display_name
        machine_id = self.runtime.machine.id if self.runtime else ""
        command = step.run if step.run is not None else f"uses: {step.uses}"
        command = bg.command(step) if step.is_control else command
        run.emit(
            StepStarted(
                run.run_id, self.job_key, index, "step", run.masker.mask(name), time.time(),
                step_id=step.id or "", machine_id=machine_id, command=run.masker.mask(command),
            )
        )
        began = time.monotonic()
        self.step_number += 0 if background else 1
        result = StepOutcome("failure", "failure")
        snapshot_id = ""
        try:
            if background:
                self.live_runtime.held[index] = ({}, [])
            if step.is_control:
                result = await self.run_control(step, scope, index)
            else:
                result = await self.run_step(step, scope, index)
            if result.outcome == "success" and run.options.snapshot and not (
                background or self.in_flight
            ):  # a snapshot never catches a background step half done
                snapshot_id = await self.take_snapshot(index)
        except asyncio.CancelledError:
            result = StepOutcome("cancelled", "cancelled")
            if not background:
                raise
        finally:
            self.live_runtime.end_groups(index)
            result.index = index
            if not background:
                self.record(step, scope, result)
            if snapshot_id:
                self.keep_state(snapshot_id, scope)
            run.emit(
                StepFinished(
                    run.run_id, self.job_key, index, result.outcome, result.conclusion, time.time(),
                    time.monotonic() - began, exit_code=result.exit_code,
                    timed_out=result.timed_out, snapshot_id=snapshot_id,
                    outputs={k: run.masker.mask(v) for k, v in result.outputs.items()},
                    machine_id=machine_id,
                )
            )
        return result

    async def start_background(self, step: Step, scope: Scope) -> StepOutcome:
        """Start a ``background: true`` step (once one of ``MAX_BACKGROUND`` slots is free)
        and go on with the next step."""
        self.step_number += 1

        async def one() -> StepOutcome:
            async with self.slots:
                return await self.run_job_step(step, scope, background=True)

        self.in_flight[bg.step_key(step)] = (step, self.background_tasks.create_task(one()))
        await asyncio.sleep(0)  # it takes its index (and a free slot) now, in the steps' order
        return StepOutcome("success", "success")

    async def run_control(self, step: Step, scope: Scope, index: int) -> StepOutcome:
        """``wait``, ``wait-all``, ``cancel`` (SIGTERM, the machine's grace, SIGKILL): what the
        steps it ends left counts from now on, and a failed one fails it (``continue-on-error``
        on the control step tolerates that)."""
        runtime = self.live_runtime
        keys, missing = bg.targets(step, self.in_flight)
        ended = [self.in_flight.pop(key) for key in keys]
        for line in bg.announce(step, [target.display_name for target, _ in ended], missing):
            runtime.log(index, line)
        for _, task in ended if step.cancel else []:
            task.cancel()
        if ended:
            await asyncio.wait([task for _, task in ended])
        failed, scope_failed = False, scope.failed
        for target, task in ended:
            result = StepOutcome("cancelled", "cancelled") if task.cancelled() else task.result()
            runtime.release(result.index)
            self.record(target, scope, result)
            runtime.log(index, f"  {target.display_name}: {result.conclusion}")
            failed = failed or result.conclusion == "failure"
        scope.failed = scope_failed  # a failed step fails the control step, which fails the job
        contexts = self.contexts(scope, self.env_context(scope))
        tolerated = failed and render_flag(step.continue_on_error, contexts, self.hooks(scope))
        return StepOutcome(
            "failure" if failed else "success", "failure" if failed and not tolerated else "success"
        )

    async def run_parallel(self, group: Step, scope: Scope) -> StepOutcome:
        """``parallel:`` as GitHub documents it: each step a background step (at most
        ``MAX_BACKGROUND`` at once, the others queued), then an implicit wait for them all.

        The steps start from the same state and cannot see each other: their outputs,
        outcomes and environment changes count from the wait on, in the group's order, and a
        failed one fails the job there. The group is one step for snapshots and reruns.
        """
        self.step_number += 1
        results: dict[int, StepOutcome] = {}

        async def one(step: Step) -> None:
            async with self.slots:
                results[step.index] = await self.run_job_step(step, scope, background=True)

        try:
            async with asyncio.TaskGroup() as tasks:
                for step in group.parallel:
                    tasks.create_task(one(step))
        except ExceptionGroup as errors:  # a step's machine failed: the job fails as it would
            raise errors.exceptions[0] from None
        finally:
            for step in group.parallel:
                result = results.get(step.index, StepOutcome("cancelled", "cancelled"))
                self.live_runtime.release(result.index)
                self.record(step, scope, result)
        ok = not any(r.conclusion == "failure" for r in results.values())
        if ok and results and self.run.options.snapshot and not self.in_flight:
            self.keep_state(await self.take_snapshot(max(r.index for r in results.values())), scope)
        return StepOutcome("success" if ok else "failure", "success" if ok else "failure")

    async def run_step(self, step: Step, scope: Scope, index: int) -> StepOutcome:
        """Evaluate ``if``, env and options, run the step; outcome and conclusion as GitHub's."""
        async with self.workspace_for_hash_files(step):
            return await self._run_step(step, scope, index)

    async def _run_step(self, step: Step, scope: Scope, index: int) -> StepOutcome:
        runtime = self.live_runtime
        hooks = self.hooks(scope)
        env = self.env_context(scope)
        contexts = self.contexts(scope, env, github=self.step_github(step, scope))
        try:
            if not evaluate_if(step.if_ or "", contexts, hooks):
                return StepOutcome("skipped", "skipped")
        except ExpressionError as exc:
            runtime.annotate(index, "error", f"step if: {exc}")
            return StepOutcome("failure", "failure")
        continue_on_error = False
        try:
            continue_on_error = render_flag(step.continue_on_error, contexts, hooks)
            step_env = render_env(step.env, contexts, hooks)
            minutes = render_minutes(step.timeout_minutes, contexts, "timeout-minutes")
            env = {**env, **step_env}
            contexts["env"] = env
            if step.run is not None:
                result = await self.run_run(
                    step, step.run, scope, index, contexts, hooks, env, minutes
                )
            else:
                result = await self.actions.run_uses(
                    step, scope, index, contexts, hooks, step_env, minutes
                )
        except (ConfigError, ExpressionError) as exc:
            runtime.annotate(index, "error", str(exc))
            result = StepOutcome("failure", "failure")
        if result.outcome == "failure" and continue_on_error:
            result.conclusion = "success"
        return result

    def step_github(self, step: Step, scope: Scope) -> dict[str, Any]:
        github = dict(self.github)
        github["action"] = step.id or f"__run_{step.position}"
        if scope.action is not None:
            github["action_path"] = scope.action.path
            github["action_repository"] = scope.action.repository
            github["action_ref"] = scope.action.ref
        return github

    def working_directory(self, step: Step, scope: Scope, contexts: Mapping[str, Any]) -> str:
        workspace = self.github.get("workspace") or "/"
        chosen = step.working_directory
        if chosen is None and scope.action is None:
            chosen = (
                self.job.defaults.working_directory or self.run.workflow.defaults.working_directory
            )
        if not chosen:
            return str(workspace)
        directory = render_text(chosen, contexts)
        return directory if directory.startswith("/") else f"{workspace}/{directory}"

    async def run_run(
        self, step: Step, text: str, scope: Scope, index: int, contexts: dict[str, Any],
        hooks: EvaluationHooks, env: dict[str, str], minutes: float | None,
    ) -> StepOutcome:
        """Run ``step``, whose ``run:`` is ``text``."""
        runtime = self.live_runtime
        script = render_text(text, contexts, hooks)
        shell_text = step.shell
        if shell_text is None and scope.action is None:
            shell_text = self.job.defaults.shell or self.run.workflow.defaults.shell
        shell = resolve_shell(
            render_text(shell_text, contexts) if shell_text else None,
            has_bash=runtime.has_bash, has_python=runtime.has_python,
        )
        github = self.step_github(step, scope)
        process_env = runtime.process_env(self.default_env(github), env)
        if scope.action is not None:
            process_env["GITHUB_ACTION_PATH"] = scope.action.path
        cwd = self.working_directory(step, scope, contexts)
        result = await runtime.run_script(
            index, shell.argv, script, shell.extension, env=process_env, cwd=cwd,
            timeout=minutes * 60 if minutes else None,
        )
        return self.script_outcome(index, result)

    def script_outcome(self, index: int, result: ScriptOutcome) -> StepOutcome:
        runtime = self.live_runtime
        if result.error:
            runtime.annotate(index, "error", result.error)
        elif result.timed_out:
            runtime.annotate(
                index, "error", "the step exceeded its timeout-minutes and was stopped"
            )
        elif result.exit_code != 0:
            code = "a signal" if result.exit_code is None else f"exit code {result.exit_code}"
            runtime.annotate(index, "error", f"process completed with {code}")
        outcome: Result = "success" if result.ok else "failure"
        return StepOutcome(
            outcome, outcome, result.exit_code, result.timed_out, dict(result.outputs)
        )
