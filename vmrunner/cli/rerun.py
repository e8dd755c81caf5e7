"""``vmrunner rerun RUN --from-step N``: continue a failed job from step N in a fresh machine.

The job's machine starts from the snapshot taken after step N-1 of the original run (after
set-up for N=1), with the job's ``steps`` context, ``GITHUB_ENV``, ``GITHUB_PATH``, matrix values
and ``needs`` outputs as they were then; steps 1..N-1 do not run again. Only failed jobs of runs
made with ``--snapshot`` keep what this needs (``runner.checkpoints``). The workflow file is read
again, so a fixed step runs in its fixed form; the event, inputs, variables and other options
are the original run's, except that ``--var``/``--var-file`` override variables. Secrets are
never stored: pass them again with ``-s``/``--secret-file``. The re-run is kept as a new run
linked to the original (``rerun_of``, ``from_step``); the exit code is 1 when the job failed.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from vmrunner.config import DEFAULT_PROVIDER, ENV_PROVIDER

if TYPE_CHECKING:
    from vmrunner.runner.options import RunOptions
    from vmrunner.runner.rerun import RerunPlan
    from vmrunner.workflow.models import Workflow


@click.command("rerun")
@click.argument("run_id")
@click.option(
    "--from-step",
    "from_step",
    type=int,
    required=True,
    help="Continue from this step (the job's own steps, from 1).",
)
@click.option(
    "-j",
    "--job",
    "job_key",
    default=None,
    help="The failed job (its key, e.g. 'test (small)'); needed when several failed.",
)
@click.option(
    "-s",
    "--secret",
    "secrets",
    multiple=True,
    help="A secret K=V, or K to take it from the environment (repeatable); runs never store "
    "secrets: give them again.",
)
@click.option("--secret-file", default=None, help="Secrets from a dotenv file.")
@click.option(
    "--var", "variables", multiple=True, help="Override a configuration variable K=V (repeatable)."
)
@click.option("--var-file", default=None, help="Override variables from a dotenv file.")
@click.option(
    "-W",
    "--workflow",
    "workflow_file",
    default=None,
    help="The workflow file (default: the original run's).",
)
@click.option(
    "--provider",
    default=None,
    envvar=ENV_PROVIDER,
    help=f"The machine provider (default: {DEFAULT_PROVIDER}) [env: {ENV_PROVIDER}].",
)
@click.option(
    "--remote-url",
    default=None,
    envvar="VMRUNNER_REMOTE_URL",
    help="With --provider remote: the machine service, its token in $VMRUNNER_REMOTE_TOKEN "
    "[env: VMRUNNER_REMOTE_URL].",
)
@click.option(
    "--snapshot/--no-snapshot",
    default=True,
    show_default=True,
    help="Keep snapshots again, so the re-run can be re-run if it fails.",
)
@click.option("-q", "--quiet", is_flag=True, help="Show only what failed, and the final table.")
@click.option("--json", "as_json", is_flag=True, help="Print the new run's result as JSON.")
def command(
    run_id: str,
    from_step: int,
    job_key: str | None,
    secrets: tuple[str, ...],
    secret_file: str | None,
    variables: tuple[str, ...],
    var_file: str | None,
    workflow_file: str | None,
    provider: str | None,
    remote_url: str | None,
    snapshot: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Re-run the failed job of run RUN_ID (or a unique prefix) from step N, in a new machine.

    Steps before N do not run again: the machine starts from the snapshot taken after step N-1
    of the original run, with the job's steps outputs, GITHUB_ENV and GITHUB_PATH as they were.
    Needs a run made with --snapshot; the workflow file is read again (fix a step, re-run it).
    """
    import asyncio

    from vmrunner.cli.dotenv import read_dotenv
    from vmrunner.cli.run import _pairs
    from vmrunner.errors import ConfigError
    from vmrunner.reports.storage import RunHistory
    from vmrunner.runner import checkpoints
    from vmrunner.runner.contexts import new_run_id
    from vmrunner.runner.rerun import plan_rerun
    from vmrunner.store import Store
    from vmrunner.workflow.loader import load_workflow

    if remote_url:  # where the remote provider looks
        os.environ["VMRUNNER_REMOTE_URL"] = remote_url
    with Store.open() as store:
        original = RunHistory(store).get_run(run_id)
    kept_keys = checkpoints.kept_jobs(original.run_id)
    if job_key is None:
        if not kept_keys:
            raise ConfigError(
                f"run {original.run_id} kept no snapshots: only failed jobs of a run made with "
                f"--snapshot keep them"
            )
        if len(kept_keys) > 1:
            raise ConfigError(
                f"run {original.run_id} has several failed jobs: choose one with --job "
                f"({', '.join(map(repr, kept_keys))})"
            )
        job_key = kept_keys[0]
    if job_key not in kept_keys:
        job = original.job(job_key)
        if job is None:
            known = ", ".join(repr(j.job_key) for j in original.jobs) or "none"
            raise ConfigError(f"run {original.run_id} has no job {job_key!r} (its jobs: {known})")
        why = (
            "it did not fail"
            if job.conclusion != "failure"
            else "the run was not made with --snapshot"
        )
        raise ConfigError(f"job {job_key!r} of run {original.run_id} kept no snapshots: {why}")
    kept = checkpoints.load(original.run_id, job_key)
    if kept is None:
        raise ConfigError(f"job {job_key!r} of run {original.run_id} kept no snapshots")
    path = workflow_file or kept.workflow_file
    if not os.path.isfile(path):
        raise ConfigError(f"the workflow file {path} is gone: name it with -W")
    workflow = load_workflow(path)
    plan = plan_rerun(kept, workflow, from_step)
    base = kept.run_options()
    options = kept.run_options(
        secrets={
            **(read_dotenv(secret_file) if secret_file else {}),
            **_pairs(secrets, "-s/--secret", from_environment=True),
        },
        vars={
            **base.vars,
            **(read_dotenv(var_file) if var_file else {}),
            **_pairs(variables, "--var"),
        },
        run_id=new_run_id(),
        snapshot=snapshot,
        rollback_on_failure=False,
        jobs=None,
    )
    failed = asyncio.run(
        _rerun(workflow, plan, options, provider or DEFAULT_PROVIDER, as_json, quiet)
    )
    if failed:
        sys.exit(1)


async def _rerun(
    workflow: Workflow,
    plan: RerunPlan,
    options: RunOptions,
    provider_name: str,
    as_json: bool,
    quiet: bool,
) -> bool:
    from contextlib import AsyncExitStack

    from vmrunner.cli import terminal
    from vmrunner.cli.progress import ProgressView
    from vmrunner.machines.providers import get_provider
    from vmrunner.reports.events import EventSink, FanOut, Recorder
    from vmrunner.reports.storage import RunHistory, StoreSink
    from vmrunner.runner.rerun import rerun_job
    from vmrunner.sessions import SessionManager
    from vmrunner.store import Store

    provider = get_provider(provider_name)
    view: EventSink = Recorder() if as_json else ProgressView(terminal.console(), quiet=quiet)
    async with AsyncExitStack() as stack:
        if isinstance(view, ProgressView):
            stack.enter_context(view)
        stack.push_async_callback(provider.aclose)
        sessions = await stack.enter_async_context(
            SessionManager(provider, limit=1, wait_timeout=None)
        )
        store = stack.enter_context(Store.open())
        with StoreSink(store, rerun_of=plan.kept.run_id, from_step=plan.from_step) as keep:
            outcome = await rerun_job(workflow, plan, options, sessions, FanOut(view, keep))
        for error in keep.errors[:1]:
            terminal.warn(f"the run could not be fully recorded: {error}")
        if as_json:
            terminal.print_json({"runs": [RunHistory(store).get_run(outcome.run_id).to_json()]})
    return outcome.failed
