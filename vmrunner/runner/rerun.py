"""Re-running a failed job from step N in a fresh machine, seeded with a kept checkpoint.

``plan_rerun`` checks the request against what the original run kept (``runner.checkpoints``)
and ``rerun_job`` runs it as a new run of one job: the machine is a new one, its writable state
is the snapshot taken after step N-1 (after set-up for N=1), and the job's ``steps`` context,
``GITHUB_ENV``, ``GITHUB_PATH``, matrix values and ``needs`` are those of the original at that
point. The jobs it needs are not run again. Step numbers count the job's own steps from 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vmrunner.errors import ConfigError
from vmrunner.reports.events import EventSink, JobQueued, Recorder, Result, RunFinished, RunStarted
from vmrunner.repository import repository_info
from vmrunner.runner import checkpoints
from vmrunner.runner.context import RunContext
from vmrunner.runner.contexts import event_refs
from vmrunner.runner.job import JobExecution, JobInstance, Resume
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import LOCAL_RUN_ENV, JobReport, RunOutcome
from vmrunner.services.host import ServiceHost, needs_services, serve_services
from vmrunner.sessions import SessionManager
from vmrunner.workflow.evaluation import as_text, render, render_env
from vmrunner.workflow.models import Workflow


@dataclass(frozen=True, slots=True)
class RerunPlan:
    kept: checkpoints.KeptJob
    from_step: int
    resume: Resume


def plan_rerun(kept: checkpoints.KeptJob, workflow: Workflow, from_step: int) -> RerunPlan:
    """Which checkpoint to start from; ``ConfigError`` saying why when there is none."""
    job = workflow.jobs.get(kept.job_id)
    if job is None:
        raise ConfigError(f"{workflow.path} has no job '{kept.job_id}' any more")
    count = len(job.steps)
    if not 1 <= from_step <= count:
        raise ConfigError(f"--from-step {from_step}: job '{kept.job_key}' has steps 1 to {count}")
    checkpoint = kept.checkpoint_before(from_step)
    if checkpoint is None:
        numbers = sorted(c.step_number + 1 for c in kept.checkpoints if c.step_number < count)
        shown = ", ".join(str(n) for n in numbers) or "none"
        raise ConfigError(
            f"--from-step {from_step}: no snapshot was taken after step {from_step - 1} of job "
            f"'{kept.job_key}'"
            f" (it did not succeed, or did not run); it can re-run from step {shown}"
        )
    return RerunPlan(kept, from_step, Resume(checkpoint, kept.snapshot_folder(checkpoint)))


async def rerun_job(
    workflow: Workflow, rerun: RerunPlan, options: RunOptions, sessions: SessionManager,
    sink: EventSink | None = None,
) -> RunOutcome:
    """Run the job of ``rerun`` from its step as a new run; job failures are results."""
    async with serve_services(enabled=needs_services(workflow)) as services:
        return await _rerun(workflow, rerun, options, sessions, sink, services)


async def _rerun(
    workflow: Workflow, rerun: RerunPlan, options: RunOptions, sessions: SessionManager,
    sink: EventSink | None, services: ServiceHost | None,
) -> RunOutcome:
    kept = rerun.kept
    job = workflow.jobs[kept.job_id]
    info = await repository_info(options.repo_root)
    context = RunContext(workflow, options, sessions, sink or Recorder(), info, services=services)
    started = time.time()
    ref, sha, _, _ = event_refs(options, info)
    context.emit(
        RunStarted(
            context.run_id, workflow.display_name, workflow.path, options.event_name, started,
            sha=sha, ref=ref,
        )
    )
    conclusion: Result = "failure"
    reports: list[JobReport] = []
    try:
        contexts = context.base_contexts(kept.job_id)
        contexts["needs"] = dict(kept.needs)
        workflow_env = {**LOCAL_RUN_ENV, **options.env}
        workflow_env.update(render_env(workflow.env, {**contexts, "env": workflow_env}))
        contexts.update(env=workflow_env, matrix=dict(kept.matrix), strategy=dict(kept.strategy))
        name = as_text(render(job.name, contexts)) if job.name else kept.job_key
        instance = JobInstance(
            job, kept.job_key, name, dict(kept.matrix), dict(kept.strategy), dict(kept.needs)
        )
        context.emit(
            JobQueued(
                context.run_id, kept.job_key, job.id, context.masker.mask(name), time.time(),
                matrix=dict(kept.matrix), needs=tuple(kept.needs),
            )
        )
        execution = JobExecution(context, instance, contexts, workflow_env)
        execution.resume = rerun.resume
        outcome = await execution.execute()
        reports.append(
            JobReport(
                job.id, kept.job_key, outcome.result, dict(outcome.outputs), outcome.reason,
                dict(kept.matrix),
            )
        )
        conclusion = (
            "success"
            if outcome.result == "success" or outcome.continue_on_error
            else outcome.result
        )
    finally:
        context.emit(RunFinished(context.run_id, conclusion, time.time(), time.time() - started))
    return RunOutcome(context.run_id, conclusion, tuple(reports))
