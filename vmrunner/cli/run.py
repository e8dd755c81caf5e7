"""``vmrunner run [EVENT]``: run the workflows an event triggers, one isolated machine per job.

Like ``act``: ``-W`` picks the workflows, ``-j`` the jobs, ``-e`` the event payload, ``-s``/
``--secret-file`` the secrets, ``--var``/``--var-file`` the variables, ``--input`` the
``workflow_dispatch`` inputs, ``--offline`` and ``--local-repository`` where actions come from.
``github.repository`` (``GITHUB_REPOSITORY``) is the ``origin`` remote's ``owner/name``, as act
takes it; without one, ``local/<folder name>`` (actions such as upload-artifact need an owner and
a name); ``--repository OWNER/NAME`` chooses it.
Every run is kept in the store (``vmrunner runs``); ``--json``
prints the results for machines. The exit code is 1 when any job failed, or when the disk
holding the store was full or failing during the run (the last line says what was kept).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import click

from vmrunner.cli.agent import ENV_STORE
from vmrunner.cli.options import RepositoryName, jobs_option, limit_options, workflows_option
from vmrunner.config import (
    DEFAULT_PROVIDER,
    ENV_PROVIDER,
    NETWORKS,
    default_network,
    warn_host_network,
)
from vmrunner.errors import AllocationError, ConfigError, StoreDiskError, StoreError

if TYPE_CHECKING:
    from vmrunner.machines.base import NetworkMode
    from vmrunner.reports.storage import StoreSink
    from vmrunner.repository import RepositoryInfo
    from vmrunner.runner.options import RunOptions
    from vmrunner.workflow.models import Workflow


def _pairs(
    values: Sequence[str], what: str, *, from_environment: bool = False, separator: str = "="
) -> dict[str, str]:
    """``K=V`` options as a mapping; ``K`` alone takes the value from the environment."""
    result: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition(separator)
        if not key:
            raise ConfigError(f"{what}: expected KEY{separator}VALUE, got {value!r}")
        if not sep:
            if not from_environment:
                raise ConfigError(f"{what}: expected KEY{separator}VALUE, got {value!r}")
            if key not in os.environ:
                raise ConfigError(f"{what}: {key} is not set in the environment")
            rest = os.environ[key]
        result[key] = rest
    return result


@click.command("run")
@click.argument("event", required=False, default="push")
@workflows_option
@jobs_option
@click.option("-e", "--event-path", default=None, help="The event payload (JSON file).")
@click.option(
    "-s",
    "--secret",
    "secrets",
    multiple=True,
    help="A secret K=V, or K to take it from the environment (repeatable).",
)
@click.option(
    "--var", "variables", multiple=True, help="A configuration variable K=V (repeatable)."
)
@click.option(
    "--secret-file",
    default=None,
    help="Secrets from a dotenv file (default: .secrets, if present).",
)
@click.option(
    "--var-file", default=None, help="Variables from a dotenv file (default: .vars, if present)."
)
@click.option(
    "--env-file",
    default=None,
    help="Environment for every job, from a dotenv file (default: .env, if present).",
)
@click.option(
    "--input", "inputs", multiple=True, help="A workflow_dispatch input K=V (repeatable)."
)
@click.option(
    "--input-file",
    default=None,
    help="workflow_dispatch inputs from a dotenv file (default: .input, if present).",
)
@click.option(
    "--matrix",
    "matrix",
    multiple=True,
    help="Only matrix combinations with key:value (repeatable).",
)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would run; start nothing.")
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
    help="With --provider remote: the machine service (`vmrunner machines serve`), its token in "
    "$VMRUNNER_REMOTE_TOKEN [env: VMRUNNER_REMOTE_URL].",
)
@click.option(
    "--network",
    type=click.Choice(NETWORKS),
    default=None,
    help="The jobs' machines' network: private (their own, outbound NAT, the host unreachable; "
    "the default), host (the host's network, its loopback services included; the host "
    "provider's default), none (loopback only).",
)
@click.option(
    "--machine-type",
    "machine_types",
    multiple=True,
    help="Run jobs with this runs-on LABEL on machine TYPE: LABEL=TYPE (repeatable). A job "
    "asking for Windows or macOS (windows-latest, macos-14, [self-hosted, macOS]) fails unless "
    "one of its labels is mapped.",
)
@limit_options
@click.option(
    "--pool",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Machines kept started ahead (warm pool).",
)
@click.option(
    "--concurrent-jobs",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Jobs running at once, at most.",
)
@click.option(
    "--setup-command",
    "setup_commands",
    multiple=True,
    help="A command run in each job's machine before its steps (repeatable).",
)
@click.option(
    "--cleanup-command",
    "cleanup_commands",
    multiple=True,
    help="A command run in each job's machine after its steps, also on failure (repeatable).",
)
@click.option(
    "--snapshot", is_flag=True, help="Snapshot each job's machine after every successful step."
)
@click.option(
    "--rollback-on-failure",
    is_flag=True,
    help="Restore a failed job's machine to its last good snapshot.",
)
@click.option(
    "--lesson-threshold",
    type=click.IntRange(min=1),
    default=None,
    help="Identical failures that make a lesson (default: 3) [env: VMRUNNER_LESSON_THRESHOLD].",
)
@click.option(
    "--repo-root",
    default=None,
    help="The repository (default: git top-level of the workflows, else the current folder).",
)
@click.option(
    "--repository",
    type=RepositoryName(),
    default=None,
    help="github.repository and GITHUB_REPOSITORY (default: the origin remote's owner/name, "
    "as act takes it; local/FOLDER without one).",
)
@click.option("--actor", default=None, help="github.actor (default: $USER).")
@click.option(
    "--offline",
    is_flag=True,
    help="Use only actions already cached; fetch nothing (a missing one fails its step).",
)
@click.option(
    "--local-repository",
    "local_repositories",
    multiple=True,
    help="Use a local folder, as it is, for an action or reusable workflow: "
    "OWNER/REPO@REF=PATH (act's flag; repeatable).",
)
@click.option(
    "--repository-mirror",
    "repository_mirrors",
    multiple=True,
    help="actions/checkout fetches repository OWNER/REPO from this local git repository: "
    "OWNER/REPO=PATH (repeatable).",
)
@click.option("-q", "--quiet", is_flag=True, help="Show only what failed, and the final table.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--store",
    default=None,
    envvar=ENV_STORE,
    help=f"Run on a fleet: submit to its PostgreSQL store (postgresql://...) and follow the logs "
    f"[env: {ENV_STORE}]; see docs/fleet.md.",
)
@click.option(
    "--summary",
    "summary_file",
    default=None,
    help="Write the runs' Markdown summary (GitHub's job summary page) to this file.",
)
def command(
    event: str,
    workflows: str,
    jobs: tuple[str, ...],
    event_path: str | None,
    secrets: tuple[str, ...],
    secret_file: str | None,
    variables: tuple[str, ...],
    var_file: str | None,
    env_file: str | None,
    inputs: tuple[str, ...],
    matrix: tuple[str, ...],
    dry_run: bool,
    provider: str | None,
    remote_url: str | None,
    network: str | None,
    machine_types: tuple[str, ...],
    pool: int,
    concurrent_jobs: int,
    setup_commands: tuple[str, ...],
    cleanup_commands: tuple[str, ...],
    snapshot: bool,
    rollback_on_failure: bool,
    repo_root: str | None,
    actor: str | None,
    quiet: bool,
    summary_file: str | None,
    as_json: bool,
    store: str | None = None,
    lesson_threshold: int | None = None,
    cpus: int | None = None,
    memory_mib: int | None = None,
    pids: int | None = None,
    disk_mib: int | None = None,
    offline: bool = False,
    local_repositories: tuple[str, ...] = (),
    repository_mirrors: tuple[str, ...] = (),
    input_file: str | None = None,
    repository: str | None = None,
) -> None:
    """Run the workflows EVENT (default: push) triggers, each job in its own machine."""
    import asyncio
    import os

    if remote_url:  # where the remote provider (and a later `sessions reclaim`) looks
        os.environ["VMRUNNER_REMOTE_URL"] = remote_url

    from vmrunner.cli import terminal
    from vmrunner.cli.dotenv import read_dotenv
    from vmrunner.cli.options import read_payload, resolve_workflows, select, selected_jobs
    from vmrunner.config import find_root
    from vmrunner.repository import repository_info
    from vmrunner.runner.options import RunOptions

    payload = read_payload(event_path) or {}
    workflows = resolve_workflows(workflows)
    root = repo_root or find_root(workflows) or os.getcwd()
    info = asyncio.run(repository_info(os.path.abspath(root)))  # once: the run reuses it
    assumed: dict[str, str] | None = None
    if event == "push" and event_path is None:
        # Filter as GitHub would for a push of the checked-out ref (a tags-only workflow does not
        # run).
        assumed = {"ref": info.ref} if info.ref else None
    selection = select(workflows, event, event_path, jobs, assumed_payload=assumed)
    for error in selection.errors:
        for diagnostic in error.diagnostics:
            terminal.error(str(diagnostic))
    for workflow in selection.workflows:
        for warning in workflow.warnings:
            terminal.warn(str(dataclasses.replace(warning, severity="error")))  # one "warning:"
    secret_values = {
        **(read_dotenv(secret_file) if secret_file else {}),
        **_pairs(secrets, "-s/--secret", from_environment=True),
    }
    matrix_filter: dict[str, tuple[str, ...]] = {}
    for entry in matrix:
        key, value = next(iter(_pairs([entry], "--matrix", separator=":").items()))
        matrix_filter[key] = (*matrix_filter.get(key, ()), value)
    options = RunOptions(
        event_name=event, payload=payload, secrets=secret_values,
        vars={**(read_dotenv(var_file) if var_file else {}), **_pairs(variables, "--var")},
        env=read_dotenv(env_file) if env_file else {},
        inputs={**(read_dotenv(input_file) if input_file else {}), **_pairs(inputs, "--input")},
        matrix_filter=matrix_filter, concurrent_jobs=concurrent_jobs,
        machine_types=_pairs(machine_types, "--machine-type"),
        setup_commands=setup_commands, cleanup_commands=cleanup_commands, snapshot=snapshot,
        rollback_on_failure=rollback_on_failure, repo_root=os.path.abspath(root),
        actor=actor or os.environ.get("USER") or "vmrunner",
        cpus=cpus, memory_mib=memory_mib, pids=pids, disk_mib=disk_mib,
        network=cast("NetworkMode", network or default_network(provider or DEFAULT_PROVIDER)),
        offline=offline, local_repositories=_local_repositories(local_repositories),
        repository_mirrors=_mirrors(repository_mirrors), repository=repository or "",
    )
    if options.network == "host":
        warn_host_network(terminal.warn)
    chosen = [(w, selected_jobs(w, jobs)) for w in selection.workflows]
    if dry_run:
        from vmrunner.cli.dry_run import dry_run as show_plan

        considered = len(selection.files)
        ok = show_plan(
            chosen, options, provider or DEFAULT_PROVIDER, event=event, considered=considered,
            as_json=as_json,
        )
        sys.exit(0 if ok and not selection.errors else 1)
    if not chosen:
        terminal.info(f"no workflow runs for event {event}")
        sys.exit(1 if selection.errors else 0)
    if store:
        from vmrunner.cli.fleet import run_on_fleet

        if summary_file:
            raise ConfigError(
                "--summary is not available with --store (see `vmrunner runs show ID --store`)"
            )

        if run_on_fleet(chosen, options, store, as_json=as_json, quiet=quiet) or selection.errors:
            sys.exit(1)
        return
    failed = asyncio.run(
        _run_all(
            chosen,
            options,
            provider or DEFAULT_PROVIDER,
            pool,
            as_json,
            quiet,
            summary_file,
            lesson_threshold,
            info,
        )
    )
    if failed or selection.errors:
        sys.exit(1)


def _local_repositories(values: Sequence[str]) -> dict[str, str]:
    if not values:  # the actions' modules load only when asked for
        return {}
    from vmrunner.actions.sources import parse_local_repositories

    return dict(parse_local_repositories(values))


def _mirrors(values: Sequence[str]) -> dict[str, str]:
    if not values:
        return {}
    from vmrunner.actions.checkout import parse_mirrors

    return dict(parse_mirrors(values))


def disk_report(path: str, sinks: Sequence[StoreSink], other_errors: Sequence[StoreError]) -> str:
    """One line for a run met by a full or failing disk under the store (at ``path``): what
    was kept. Empty when the disk never failed."""
    first = next((e for e in other_errors if isinstance(e, StoreDiskError)), None)
    first = first or next((sink.disk_error for sink in sinks if sink.disk_error), None)
    if first is None:
        return ""
    kept = [sink for sink in sinks if sink.recorded]
    lost = sum(sink.lost for sink in sinks)
    if len(kept) == len(sinks):
        what = "the run was recorded" if len(sinks) == 1 else "the runs were recorded"
        what += f" without {lost} log lines" if lost else " whole"
    elif kept:
        what = f"{len(sinks) - len(kept)} of {len(sinks)} runs could not be recorded"
    else:
        what = (
            "the run could not be recorded" if len(sinks) == 1 else "the runs could not be recorded"
        )
    return (
        f"the disk holding {os.path.dirname(path)} was full or failing during the run: "
        f"{what}; {first}"
    )


async def _run_all(
    chosen: list[tuple[Workflow, list[str] | None]],
    options: RunOptions,
    provider_name: str,
    pool_size: int,
    as_json: bool,
    quiet: bool,
    summary_file: str | None,
    lesson_threshold: int | None = None,
    info: RepositoryInfo | None = None,
) -> bool:
    """Run every chosen workflow at once on one session manager; True when any failed."""
    import asyncio
    import dataclasses
    from contextlib import AsyncExitStack

    from vmrunner.cli import terminal
    from vmrunner.cli.progress import JsonView, ProgressView
    from vmrunner.learning.history import Learning, LearningSink, load_config
    from vmrunner.machines.providers import get_provider
    from vmrunner.reports.events import FanOut
    from vmrunner.reports.storage import RunHistory, StoreSink
    from vmrunner.repository import repository_info
    from vmrunner.runner.concurrency import ConcurrencyGroups
    from vmrunner.runner.options import machine_spec
    from vmrunner.runner.run import run_workflow
    from vmrunner.sessions import SessionManager
    from vmrunner.store import Store

    provider = get_provider(provider_name)
    try:  # a host that cannot give machines is told once, before any job, with the fix
        await provider.preflight()
    except AllocationError as exc:
        await provider.aclose()
        raise AllocationError(f"the {provider_name} provider cannot start machines: {exc}") from exc
    view: JsonView | ProgressView = (
        JsonView() if as_json else ProgressView(terminal.console(), quiet=quiet)
    )
    async with AsyncExitStack() as stack:
        stack.enter_context(view)
        if pool_size:
            from vmrunner.machines.pool import Reuse, WarmPool

            # A used machine is restored to its verified pristine state and reused: cheaper than a
            # cold start (bench runner --reuse), where the provider can snapshot.
            reuse: Reuse = "restore" if provider.capabilities.snapshots else "destroy"
            provider = await stack.enter_async_context(
                WarmPool(
                    provider,
                    {options.default_vm_type: pool_size},
                    specs={options.default_vm_type: machine_spec(options, options.default_vm_type)},
                    reuse=reuse,
                )
            )
        else:
            stack.push_async_callback(provider.aclose)
        sessions = await stack.enter_async_context(
            SessionManager(provider, limit=options.concurrent_jobs, wait_timeout=None)
        )
        store = stack.enter_context(Store.open())
        low: list[StoreError] = []
        try:
            store.keep_reserve()  # room for the runs' final records, should the disk fill up
            RunHistory(store).mark_interrupted()  # runs whose runner was killed: recorded for good
        except StoreDiskError as exc:  # nearly full already: the run goes on, and is told
            low.append(exc)
        learning = stack.enter_context(Learning.open(config=load_config(lesson_threshold)))
        info = info or await repository_info(options.repo_root)  # asked once per command
        repository = options.repository or info.repository
        # the workflows run here share their concurrency groups, as on GitHub
        groups = ConcurrencyGroups()
        sinks: list[StoreSink] = []

        async def one(workflow: Workflow, jobs: list[str] | None) -> bool:
            learn = LearningSink(learning, repository=repository, workflow=workflow)
            with StoreSink(store) as keep:
                sinks.append(keep)
                selected = dataclasses.replace(
                    options, jobs=tuple(jobs) if jobs is not None else None
                )
                outcome = await run_workflow(
                    workflow, selected, sessions, learn.chain(FanOut(view, keep)), groups, info
                )
            for error in keep.errors[:1]:
                if not isinstance(error, StoreDiskError):  # a full disk gets the last line
                    terminal.warn(f"the run could not be fully recorded: {error}")
            for error in learn.errors[:1]:
                if not isinstance(error, StoreDiskError):
                    terminal.warn(f"could not learn from the run: {error}")
            return outcome.failed

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(workflow, jobs)) for workflow, jobs in chosen]
    if summary_file:
        from vmrunner.reports.summary import write_summary

        write_summary(summary_file, view.results())
    report = disk_report(str(store.path), sinks, [*low, *sessions.store_errors])
    if report:
        raise StoreDiskError(report)
    return any(task.result() for task in tasks)
