"""A workflow run: jobs as a true DAG, matrix fan-out, fail-fast, max-parallel, results.

Every job of the plan gets a task at once (in one ``TaskGroup``); each waits only for the jobs
it ``needs``, so a job starts as soon as its own needs are done. Then its ``if`` is evaluated
(default ``success()``: every need succeeded), its matrix expanded (expressions may use the
``needs`` context), and each combination runs as one ``JobExecution`` under the matrix's
``max-parallel`` and the run's ``concurrent_jobs`` limit. With ``fail-fast`` (the default), a
failing combination cancels its running and pending siblings.

A matrix job's result, as its dependents see it in ``needs``, is aggregated as GitHub does:
failure if any combination failed, else cancelled if any was cancelled, else success if any
succeeded, else skipped. Its outputs come from the combinations in completion order.

Concurrency groups (``concurrency:``, see ``runner.concurrency``): a workflow-level group is
held by the whole run, from before its first job to after its last; a job-level group by one
job (or combination) from before it takes its matrix and run slots to its release. A job or run
stopped by its group ends cancelled, with an annotation saying why.

Cancellation (Ctrl-C) is safe: every job's session is released by the session manager, each
started job still reports one ``JobFinished``, and ``RunFinished`` always comes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from vmrunner.actions.workflows import CalledWorkflow, load_called_workflow
from vmrunner.errors import ConcurrencyCancelled, ConfigError, VmrunnerError
from vmrunner.reports.events import (
    EventSink,
    JobFinished,
    JobQueued,
    Recorder,
    Result,
    RunFinished,
    RunStarted,
    run_conclusion,
)
from vmrunner.repository import RepositoryInfo, repository_info
from vmrunner.runner.concurrency import (
    JOB_CONTEXTS,
    WORKFLOW_CONTEXTS,
    Claim,
    ConcurrencyGroups,
    evaluate_claim,
)
from vmrunner.runner.context import RunContext
from vmrunner.runner.contexts import event_refs
from vmrunner.runner.job import JobExecution, JobInstance, JobOutcome
from vmrunner.runner.options import RunOptions, action_sources
from vmrunner.services.host import needs_services, serve_services
from vmrunner.sessions import SessionManager
from vmrunner.workflow.calls import MAX_LEVELS, MAX_WORKFLOWS, call_inputs, call_secrets
from vmrunner.workflow.evaluation import as_text, render, render_env, render_flag, render_text
from vmrunner.workflow.expressions import EvaluationHooks, evaluate_if
from vmrunner.workflow.matrix import expand_matrix
from vmrunner.workflow.models import Job, Workflow
from vmrunner.workflow.planner import Plan, plan

FAIL_FAST_REASON = "cancelled by fail-fast: a matrix sibling failed"
#: Set in every job's ``env`` context so tools can tell a local run (act and Gitea do the same).
LOCAL_RUN_ENV = {"ACT": "true"}


@dataclass(frozen=True, slots=True)
class JobReport:
    """How one job (or matrix combination) ended."""

    job_id: str
    job_key: str
    result: Result
    outputs: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    matrix: Mapping[str, Any] = field(default_factory=dict)
    continue_on_error: bool = False


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    conclusion: Result
    jobs: tuple[JobReport, ...]

    @property
    def failed(self) -> bool:
        return self.conclusion != "success"

    def job(self, job_key: str) -> JobReport:
        return next(report for report in self.jobs if report.job_key == job_key)

    def results(self, job_id: str) -> list[Result]:
        """The results of a job's combinations (one entry for a job without a matrix)."""
        return [report.result for report in self.jobs if report.job_id == job_id]


def aggregate(results: list[Result]) -> Result:
    """A matrix job's result as ``needs`` shows it (GitHub's rule)."""
    if "failure" in results:
        return "failure"
    if "cancelled" in results:
        return "cancelled"
    if "success" in results:
        return "success"
    return "skipped"


@dataclass(slots=True)
class _Stopper:
    """Cancels one job's task on purpose (fail-fast, its concurrency group), once, with a reason."""

    task: asyncio.Task[Any]
    execution: JobExecution | None = None
    reason: str = ""
    #: A call's stop state, seen by the called jobs (``RunContext.calling``).
    called: MutableMapping[str, object] | None = None

    def stop(self, reason: str) -> None:
        if self.reason:
            return
        self.reason = reason
        if self.execution is not None:
            self.execution.cancelled = True
            self.execution.cancel_reason = reason
        if self.called is not None:
            self.called.update(cancelled=True, reason=reason)
        self.task.cancel()


@dataclass(slots=True)
class _MatrixGroup:
    fail_fast: bool
    limit: asyncio.Semaphore | None
    cancelled: bool = False
    running: dict[str, _Stopper] = field(default_factory=dict)


class Run:
    """One run of one workflow; ``await Run(...).execute()`` returns its ``RunOutcome``.

    A called workflow's jobs are a ``Run`` of their own inside the calling job (``call``),
    sharing its reports; their keys and names start with the caller's (``prefix``).
    """

    def __init__(
        self, context: RunContext, job_plan: Plan, prefix: tuple[str, str] = ("", ""),
        reports: list[JobReport] | None = None,
    ) -> None:
        self.context = context
        self.plan = job_plan
        self.done = {job_id: asyncio.Event() for job_id in job_plan.order}
        self.needs_results: dict[str, dict[str, Any]] = {}
        self.reports: list[JobReport] = [] if reports is None else reports
        self.prefix, self.name_prefix = prefix

    async def execute(self) -> RunOutcome:
        context = self.context
        started = time.time()
        ref, sha, _, _ = event_refs(context.options, context.info)
        context.emit(
            RunStarted(
                context.run_id, context.workflow.display_name, context.workflow.path,
                context.options.event_name, started, sha=sha, ref=ref,
            )
        )
        for warning in context.warnings:
            context.annotate("", "warning", warning)
        conclusion: Result = "cancelled"
        stop_observing = context.sessions.observe(
            context.session_changed, label=("run", context.run_id)
        )
        task = asyncio.current_task()
        if task is None:
            raise VmrunnerError("a run must be awaited in an asyncio task")
        stopped = ""

        def stop(reason: str) -> None:
            nonlocal stopped
            stopped = context.cancel_reason = context.masker.mask(f"the run was {reason}")
            context.cancelled = True
            context.annotate("", "error", stopped)
            task.cancel()

        try:
            claim = evaluate_claim(
                context.workflow.concurrency, context.base_contexts(""), WORKFLOW_CONTEXTS
            )
            async with self.workflow_group(claim, stop):
                await self.run_jobs()
                conclusion = self.conclusion()
        except ConfigError as exc:
            conclusion = "failure"
            context.annotate("", "error", f"workflow {exc}")
        except ConcurrencyCancelled as exc:
            context.annotate("", "error", f"the run was cancelled: {exc}")
        except asyncio.CancelledError:
            if not (stopped and task.uncancel() == 0):
                raise
        finally:
            stop_observing()
            context.emit(
                RunFinished(context.run_id, conclusion, time.time(), time.time() - started)
            )
        return RunOutcome(context.run_id, conclusion, tuple(self.reports))

    async def run_jobs(self) -> None:
        async with asyncio.TaskGroup() as group:
            for job_id in self.plan.order:
                group.create_task(self.job_group(job_id), name=f"job {self.prefix}{job_id}")

    def workflow_group(
        self, claim: Claim | None, stop: Callable[[str], None]
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The run's workflow-level concurrency group, held while its jobs run."""
        context = self.context
        if claim is None:
            return contextlib.nullcontext()
        return context.groups.hold(
            claim, f"run {context.run_id}", stop,
            lambda message: context.annotate("", "notice", message),
        )

    def conclusion(self) -> Result:
        """failure if a job failed (not continue-on-error), else cancelled if one was, else
        success."""
        return run_conclusion(
            r.result for r in self.reports if not (r.result == "failure" and r.continue_on_error)
        )

    async def job_group(self, job_id: str) -> None:
        try:
            for need in self.plan.dependencies(job_id):
                await self.done[need].wait()
            await self.run_job(job_id)
        finally:
            self.done[job_id].set()

    def finish_without_running(
        self, job: Job, needs: Mapping[str, Any], result: Result, reason: str = ""
    ) -> None:
        """A job that ends before any combination is queued: skipped, or failed at its ``if``."""
        context, key = self.context, self.prefix + job.id
        context.emit(
            JobQueued(
                context.run_id, key, key, self.name_prefix + job.display_name, time.time(),
                needs=tuple(self.prefix + need for need in needs),
            )
        )
        if result == "failure":
            context.annotate(key, "error", reason)
        context.emit(
            JobFinished(
                context.run_id, key, result, time.time(), 0.0, reason=context.masker.mask(reason)
            )
        )
        self.reports.append(JobReport(key, key, result, reason=reason))
        self.needs_results[job.id] = {"result": result, "outputs": {}}

    async def run_job(self, job_id: str) -> None:
        context = self.context
        job = context.workflow.jobs[job_id]
        needs = {need: self.needs_results[need] for need in self.plan.dependencies(job_id)}
        contexts = context.base_contexts(job_id)
        contexts["needs"] = needs
        need_results = [n["result"] for n in needs.values()]
        hooks = EvaluationHooks(
            success=lambda: all(r == "success" for r in need_results) and not context.cancelled,
            failure=lambda: any(r == "failure" for r in need_results),
            cancelled=lambda: context.cancelled,
        )
        try:
            workflow_env = {**LOCAL_RUN_ENV, **context.options.env}
            workflow_env.update(render_env(context.workflow.env, {**contexts, "env": workflow_env}))
            contexts["env"] = workflow_env
            if not evaluate_if(job.if_ or "", contexts, hooks):
                self.finish_without_running(job, needs, "skipped")
                return
            instances, group = self.instances(job, contexts)
        except VmrunnerError as exc:
            self.finish_without_running(job, needs, "failure", f"job '{job_id}': {exc}")
            return
        if not instances:  # --matrix kept no combination
            self.finish_without_running(
                job, needs, "skipped", "no matrix combination matches the --matrix filter"
            )
            return
        for instance in instances:
            context.emit(
                JobQueued(
                    context.run_id, instance.job_key, self.prefix + job_id,
                    context.masker.mask(instance.name), time.time(), matrix=dict(instance.matrix),
                    needs=tuple(self.prefix + need for need in needs),
                )
            )
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(self.run_instance(instance, group, contexts, workflow_env))
                for instance in instances
            ]
        outcomes = [task.result() for task in running]
        outputs: dict[str, str] = {}
        for outcome in outcomes:
            outputs.update({k: v for k, v in outcome.outputs.items() if v or k not in outputs})
        results: list[Result] = [
            ("success" if o.continue_on_error and o.result == "failure" else o.result)
            for o in outcomes
        ]
        self.needs_results[job_id] = {"result": aggregate(results), "outputs": outputs}

    def instances(
        self, job: Job, contexts: dict[str, Any]
    ) -> tuple[list[JobInstance], _MatrixGroup]:
        strategy = job.strategy
        combinations: list[dict[str, Any]] = [{}]
        fail_fast = True
        max_parallel: int | None = None
        if strategy is not None and strategy.matrix is not None:
            matrix = render(strategy.matrix, contexts, splice=True)
            if not isinstance(matrix, Mapping):
                raise ConfigError(
                    f"strategy.matrix must be a mapping, the expression gave {as_text(matrix)!r}"
                )
            combinations = self.filter(expand_matrix(matrix))
        if strategy is not None:
            fail_fast = render_flag(strategy.fail_fast, contexts)
            if strategy.max_parallel is not None:
                value = render(strategy.max_parallel, contexts)
                try:
                    max_parallel = max(1, int(float(value)))
                except (TypeError, ValueError) as exc:
                    raise ConfigError(
                        f"strategy.max-parallel must be a number, got {as_text(value)!r}"
                    ) from exc
        total = len(combinations)
        group = _MatrixGroup(fail_fast, asyncio.Semaphore(max_parallel) if max_parallel else None)
        instances: list[JobInstance] = []
        seen: set[str] = set()
        has_matrix = strategy is not None and strategy.matrix is not None
        for index, combination in enumerate(combinations):
            local = job.id
            if has_matrix and combination:
                local = f"{job.id} ({', '.join(as_text(v) for v in combination.values())})"
            while local in seen:
                local = f"{local}#{index}"
            seen.add(local)
            strategy_context = {
                "fail-fast": fail_fast, "job-index": index, "job-total": total,
                "max-parallel": max_parallel or total,
            }
            scoped = {**contexts, "matrix": combination, "strategy": strategy_context}
            name = as_text(render(job.name, scoped)) if job.name else local
            instances.append(
                JobInstance(
                    job, self.prefix + local, self.name_prefix + name, combination,
                    strategy_context, contexts["needs"],
                )
            )
        return instances, group

    def filter(self, combinations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        wanted = self.context.options.matrix_filter
        if not wanted:
            return combinations
        return [
            c for c in combinations
            if all(key in c and as_text(c[key]) in values for key, values in wanted.items())
        ]

    async def run_instance(
        self, instance: JobInstance, group: _MatrixGroup, contexts: dict[str, Any],
        workflow_env: dict[str, str],
    ) -> JobOutcome:
        context, key, began = self.context, instance.job_key, time.time()
        scoped = {**contexts, "matrix": dict(instance.matrix), "strategy": dict(instance.strategy)}
        task = asyncio.current_task()
        if task is None:
            raise VmrunnerError(f"job {key} must be awaited in an asyncio task")
        stopper = group.running[key] = _Stopper(task)
        try:
            claim = evaluate_claim(instance.job.concurrency, scoped, JOB_CONTEXTS)
            outcome = await self.in_job_group(claim, instance, group, scoped, workflow_env, stopper)
        except ConfigError as exc:
            outcome = JobOutcome("failure", reason=f"job '{instance.job.id}': {exc}")
            context.annotate(key, "error", outcome.reason)
        except ConcurrencyCancelled as exc:
            outcome = JobOutcome("cancelled", reason=f"cancelled: {exc}")
            context.annotate(key, "error", outcome.reason)
        except asyncio.CancelledError:
            if not (stopper.reason and task.uncancel() == 0):
                if (
                    stopper.execution is None and context.cancel_reason
                ):  # queued when its run was stopped
                    context.emit(
                        JobFinished(
                            context.run_id, key, "cancelled", time.time(), 0.0,
                            reason=context.cancel_reason,
                        )
                    )
                raise
            outcome = JobOutcome("cancelled", reason=stopper.reason)
        finally:
            group.running.pop(key, None)
        if stopper.execution is None:  # it never started: no JobExecution reported it
            spent = time.time() - began if instance.job.calls_workflow else 0.0
            context.emit(
                JobFinished(
                    context.run_id, key, outcome.result, time.time(), spent,
                    outputs={k: context.masker.mask(v) for k, v in outcome.outputs.items()},
                    reason=context.masker.mask(outcome.reason),
                )
            )
        self.reports.append(
            JobReport(
                self.prefix + instance.job.id, key, outcome.result, dict(outcome.outputs),
                outcome.reason, dict(instance.matrix), outcome.continue_on_error,
            )
        )
        if (
            outcome.result == "failure"
            and not outcome.continue_on_error
            and group.fail_fast
            and not group.cancelled
        ):
            group.cancelled = True
            for sibling in list(group.running.values()):
                sibling.stop(FAIL_FAST_REASON)
        return outcome

    async def in_job_group(
        self, claim: Claim | None, instance: JobInstance, group: _MatrixGroup,
        scoped: dict[str, Any], workflow_env: dict[str, str], stopper: _Stopper,
    ) -> JobOutcome:
        """The job inside its concurrency group (if it has one); it waits there holding no slot."""
        if claim is None:
            return await self.execute_instance(instance, group, scoped, workflow_env, stopper)
        context, key = self.context, instance.job_key

        def stop(reason: str) -> None:
            context.annotate(key, "error", reason)
            stopper.stop(reason)

        def waiting(message: str) -> None:
            context.annotate(key, "notice", message)

        async with context.groups.hold(
            claim, f"job '{key}' of run {context.run_id}", stop, waiting
        ):
            return await self.execute_instance(instance, group, scoped, workflow_env, stopper)

    async def execute_instance(
        self, instance: JobInstance, group: _MatrixGroup, scoped: dict[str, Any],
        workflow_env: dict[str, str], stopper: _Stopper,
    ) -> JobOutcome:
        calls = instance.job.calls_workflow  # its jobs take the run's slots, not the call
        async with _maybe(group.limit), _maybe(None if calls else self.context.limit):
            if group.cancelled:
                return JobOutcome("cancelled", reason=FAIL_FAST_REASON)
            if calls:
                return await self.call(instance, scoped, stopper)
            execution = stopper.execution = JobExecution(
                self.context, instance, scoped, workflow_env
            )
            return await execution.execute()

    async def call(
        self, instance: JobInstance, scoped: dict[str, Any], stopper: _Stopper
    ) -> JobOutcome:
        """A job that calls a reusable workflow: the called jobs run as jobs of this run, each
        in its own machine (``caller / callee``); the called ``outputs`` become the job's."""
        context, job = self.context, instance.job
        called = await self.load_called(job.uses or "")
        target = str(called.target)
        given = render(job.with_, scoped)
        if not isinstance(given, Mapping):
            raise ConfigError(f"with must be a mapping, the expression gave {as_text(given)!r}")
        inputs = call_inputs(
            called.interface, given, target, lambda text: render(text, {**scoped, "inputs": {}})
        )
        passed = job.secrets
        if isinstance(passed, Mapping):
            passed = {str(k): render_text(v, scoped) for k, v in passed.items()}
        secrets = call_secrets(called.interface, passed, context.secrets, target)
        for value in secrets.values():
            context.masker.add(value)
        inner = context.calling(called.workflow, called.origin, called.identity, inputs, secrets)
        stopper.called = inner.stopped
        run = Run(inner, plan(called.workflow), (f"{instance.job_key} / ", f"{instance.name} / "),
                  self.reports)
        await run.run_jobs()
        contexts = {**inner.base_contexts(""), "jobs": run.needs_results}
        outputs: dict[str, str] = {}
        for name, value in called.interface.outputs.items():
            try:
                outputs[name] = render_text(value, contexts)
            except VmrunnerError as exc:
                context.annotate(instance.job_key, "warning", f"output '{name}': {exc}")
        result = aggregate([r["result"] for r in run.needs_results.values()])
        failed = [run.prefix + k for k, r in run.needs_results.items() if r["result"] == "failure"]
        reason = f"{target}: {', '.join(failed)} failed" if result == "failure" else ""
        return JobOutcome(result, outputs, reason)

    async def load_called(self, uses: str) -> CalledWorkflow:
        """The called workflow, within GitHub's limits: no cycle, ten levels, 50 workflows."""
        context = self.context
        called = await load_called_workflow(uses, context.origin, action_sources(context.options))
        if called.identity in context.chain:
            cycle = [*context.chain[context.chain.index(called.identity):], called.identity]
            names = " → ".join(os.path.basename(step) for step in cycle)
            raise ConfigError(f"a cycle of reusable workflow calls: {names}")
        if len(context.chain) >= MAX_LEVELS:
            raise ConfigError(
                f"{uses}: more than {MAX_LEVELS} levels of workflows (GitHub connects the caller "
                f"and up to {MAX_LEVELS - 1} levels of reusable workflows)"
            )
        context.called[called.identity] = called
        if len(context.called) > MAX_WORKFLOWS:
            raise ConfigError(
                f"{uses}: more than {MAX_WORKFLOWS} unique reusable workflows in one run"
            )
        return called


@contextlib.asynccontextmanager
async def _maybe(semaphore: asyncio.Semaphore | None) -> AsyncIterator[None]:
    if semaphore is None:
        yield
    else:
        async with semaphore:
            yield


async def run_workflow(
    workflow: Workflow, options: RunOptions, sessions: SessionManager,
    sink: EventSink | None = None, groups: ConcurrencyGroups | None = None,
    info: RepositoryInfo | None = None,
) -> RunOutcome:
    """Run ``workflow`` for ``options.event_name`` with machines from ``sessions``.

    Raises ``PlanError`` for a broken job graph and ``ConfigError`` when the options ask for
    what the provider cannot do (snapshots); job failures are results, not exceptions.
    Runs that share ``groups`` share their concurrency groups (default: a registry of their own).
    ``info`` is the repository's, when the caller asked git already.
    """
    if (
        options.snapshot or options.rollback_on_failure
    ) and not sessions.provider.capabilities.snapshots:
        raise ConfigError(
            f"snapshots (--snapshot, --rollback-on-failure) need a provider that can take them; "
            f"{sessions.provider.name} cannot"
        )
    if options.rollback_on_failure and not options.snapshot:
        options = dataclasses.replace(options, snapshot=True)
    job_plan = plan(workflow, jobs=options.jobs)
    info = info or await repository_info(options.repo_root)
    if options.event_name == "workflow_dispatch" and options.inputs:
        payload = dict(options.payload)
        payload["inputs"] = {
            **dict(payload.get("inputs") or {}),
            **{k: as_text(v) for k, v in options.inputs.items()},
        }
        options = dataclasses.replace(options, payload=payload)
    async with serve_services(enabled=needs_services(workflow)) as services:
        sink = sink or Recorder()
        context = RunContext(workflow, options, sessions, sink, info, groups, services)
        return await Run(context, job_plan).execute()
