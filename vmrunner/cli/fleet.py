"""``vmrunner fleet``: submit, follow and cancel runs on a fleet of ``vmrunner agent`` hosts.

Every subcommand talks to the fleet's PostgreSQL store (``--store`` or ``$VMRUNNER_STORE``);
any host that reaches the database can use them.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vmrunner.cli.agent import ENV_STORE

if TYPE_CHECKING:
    from vmrunner.runner.options import RunOptions
    from vmrunner.workflow.models import Workflow

T = TypeVar("T")
#: Seconds to wait for the fleet's database to answer a command.
REACH_TIMEOUT = 10

store_option = click.option(
    "--store",
    required=True,
    envvar=ENV_STORE,
    help=f"The fleet's PostgreSQL URL [env: {ENV_STORE}].",
)


def _with_store(url: str, body: Callable[[Any], Awaitable[T]]) -> T:
    import asyncio

    from vmrunner.fleet.store import FleetStore

    reach_store(url)

    async def main() -> T:
        async with FleetStore(url) as store:
            return await body(store)

    return asyncio.run(main())


def reach_store(url: str) -> None:
    """Fail at once, with the reason, when the fleet's database cannot be reached (instead of a
    connection pool waiting for it)."""
    from vmrunner.errors import ConfigError, StoreError

    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            "a fleet store needs the fleet extra: pip install 'vmrunner[fleet]'"
        ) from exc
    try:
        psycopg.connect(url, connect_timeout=REACH_TIMEOUT).close()
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot reach the fleet store: {str(exc).strip() or type(exc).__name__}"
        ) from exc


@click.group("fleet")
def command() -> None:
    """Runs on a fleet of hosts (PostgreSQL with procrastinate)."""


@command.command("submit")
@click.argument("workflow_file", type=click.Path(exists=True, dir_okay=False))
@store_option
@click.option(
    "-e", "--event", default="push", show_default=True, help="The event name (github.event_name)."
)
@click.option(
    "-C", "--repo-root", default=".", help="The repository, at the same path on every agent host."
)
@click.option("--priority", default=0, show_default=True, type=int, help="Higher runs first.")
@click.option(
    "--delivery-id", default=None, help="A webhook delivery id: a redelivery makes no second run."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def submit(
    workflow_file: str,
    store: str,
    event: str,
    repo_root: str,
    priority: int,
    delivery_id: str | None,
    as_json: bool,
) -> None:
    """Queue a run of WORKFLOW_FILE; its jobs go to the agents serving their runs-on labels."""
    from vmrunner.cli import terminal
    from vmrunner.errors import ConfigError
    from vmrunner.runner.options import RunOptions

    try:
        with open(workflow_file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {workflow_file}: {exc.strerror}") from exc
    options = RunOptions(
        event_name=event,
        repo_root=os.path.abspath(repo_root),
        actor=os.environ.get("USER") or "vmrunner",
    )
    run_id = _with_store(
        store,
        lambda fleet: fleet.submit(
            text, workflow_file, options, delivery_id=delivery_id, priority=priority
        ),
    )
    if as_json:
        terminal.print_json({"run_id": run_id})
    else:
        terminal.info(f"run {run_id} queued")


@command.command("show")
@click.argument("run_id")
@store_option
@click.option(
    "-f", "--follow", is_flag=True, help="Print the run's log lines as they arrive, until it ends."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def show(run_id: str, store: str, follow: bool, as_json: bool) -> None:
    """Show a fleet run: its jobs, where they ran, their attempts and steps; --follow tails its
    logs."""
    show_run(run_id, store, follow=follow, as_json=as_json)


def show_run(
    run_id: str, store: str, *, follow: bool = False, as_json: bool = False, with_logs: bool = False
) -> None:
    """``vmrunner fleet show`` and ``vmrunner runs show --store``: ``with_logs`` prints the log
    lines kept so far (``follow`` prints them as they arrive, until the run ends)."""
    from rich.table import Table

    from vmrunner.cli import terminal
    from vmrunner.fleet.queue import QueuedRun
    from vmrunner.fleet.store import Attempt, CombinationRow, FleetStore, StepRow

    Shown = tuple[
        QueuedRun,
        dict[str, list[StepRow]],
        dict[str, list[dict[str, Any]]],
        dict[str, CombinationRow],
        list[Attempt],
    ]

    logs: list[tuple[int, str, int, str]] = []

    async def body(fleet: FleetStore) -> Shown:
        if follow:
            async for job_id, attempt, line in fleet.follow(run_id):
                click.echo(log_line(job_id, attempt, line))
        elif with_logs:
            logs.extend(await fleet.logs(run_id))
        run = await fleet.run(run_id)
        return (
            run,
            await fleet.steps(run_id),
            await fleet.annotations(run_id),
            await fleet.combinations(run_id),
            await fleet.attempts(run_id),
        )

    run, steps, annotations, combinations, attempts = _with_store(store, body)
    if as_json:
        terminal.print_json(
            {
                "run_id": run.id,
                "status": run.status,
                "conclusion": run.conclusion,
                "attempts": [
                    {"job_id": j, "attempt": a, "host": h, "result": r} for j, a, h, r in attempts
                ],
                **(
                    {"logs": [{"job_id": j, "attempt": a, "line": line} for _, j, a, line in logs]}
                    if with_logs
                    else {}
                ),
                "jobs": [
                    {
                        "job_id": j.job_id,
                        "status": j.status,
                        "attempt": j.attempt,
                        "host": j.host,
                        "labels": list(j.labels),
                        "outputs": dict(j.outputs),
                        "reason": j.reason,
                        **(
                            {
                                "matrix_job": combinations[j.job_id][0],
                                "matrix": combinations[j.job_id][1],
                            }
                            if j.job_id in combinations
                            else {}
                        ),
                        "steps": [
                            {
                                "index": s.index,
                                "kind": s.kind,
                                "name": s.name,
                                "status": s.status,
                                "outcome": s.outcome,
                                "conclusion": s.conclusion,
                                "duration": s.duration,
                            }
                            for s in steps.get(j.job_id, [])
                        ],
                        "annotations": annotations.get(j.job_id, []),
                    }
                    for j in run.jobs
                ],
            }
        )
        return
    for _, job_id, attempt, line in logs:
        click.echo(log_line(job_id, attempt, line))
    table = Table(title=f"run {run.id}: {run.conclusion or run.status}")
    for column in ("job", "status", "attempt", "host", "labels", "reason"):
        table.add_column(column)
    for job in run.jobs:
        table.add_row(
            job.job_id,
            job.status,
            str(job.attempt),
            job.host or "",
            ",".join(job.labels),
            job.reason,
        )
    terminal.console().print(table)
    if any(steps.values()):
        table = Table(title="steps")
        for column in ("job", "step", "status", "duration"):
            table.add_column(column)
        for job in run.jobs:
            for step in steps.get(job.job_id, []):
                name = step.name if step.kind == "step" else f"{step.name} ({step.kind})"
                duration = "" if step.duration is None else f"{step.duration:.2f}s"
                table.add_row(job.job_id, name, step.status, duration)
        terminal.console().print(table)
    for job_id, found in annotations.items():
        for note in found:
            terminal.console().print(
                f"{job_id}: {note['level']}: {note['message']}", markup=False, highlight=False
            )
    retried = [
        (j, a, h, r)
        for j, a, h, r in attempts
        if any(a2 > 1 for j2, a2, _, _ in attempts if j2 == j)
    ]
    if retried:
        table = Table(title="attempts")
        for column in ("job", "attempt", "host", "result"):
            table.add_column(column)
        for job_id, attempt, host, result in retried:
            table.add_row(job_id, str(attempt), host, result or "running")
        terminal.console().print(table)


def run_on_fleet(
    chosen: Sequence[tuple[Workflow, list[str] | None]],
    options: RunOptions,
    store: str,
    *,
    as_json: bool,
    quiet: bool,
) -> bool:
    """``vmrunner run --store``: submit each workflow, print its log lines as they arrive (unless
    ``as_json`` or ``quiet``), then its jobs; True when any run did not succeed. Interrupted
    (Ctrl-C), the runs are cancelled, as a local run would be."""
    import asyncio
    import dataclasses

    from rich.table import Table

    from vmrunner.cli import terminal
    from vmrunner.fleet.queue import QueuedRun, run_json, workflow_text
    from vmrunner.fleet.store import FleetStore

    async def body(fleet: FleetStore) -> list[QueuedRun]:
        submitted: list[tuple[str, str]] = []

        async def tail(name: str, run_id: str) -> None:
            async for job_id, attempt, line in fleet.follow(run_id):
                if not (as_json or quiet):
                    click.echo(f"[{name}] {log_line(job_id, attempt, line)}")

        try:
            for workflow, jobs in chosen:
                selected = dataclasses.replace(
                    options, jobs=tuple(jobs) if jobs is not None else None
                )
                submitted.append(
                    (
                        workflow.name or workflow.path,
                        await fleet.submit(workflow_text(workflow), workflow.path, selected),
                    )
                )
                if not as_json:
                    terminal.info(f"{workflow.path}: run {submitted[-1][1]} queued on the fleet")
            async with asyncio.TaskGroup() as group:
                for name, run_id in submitted:
                    group.create_task(tail(name, run_id))
        except BaseException:
            await asyncio.shield(
                asyncio.gather(
                    *(fleet.cancel(run_id) for _, run_id in submitted), return_exceptions=True
                )
            )
            raise
        return [await fleet.run(run_id) for _, run_id in submitted]

    if options.secrets:
        terminal.warn(
            "secrets are not sent to the fleet (they would be written into its database): jobs "
            "see the secrets of their agent's --secret-file"
        )
    runs = _with_store(store, body)
    if as_json:
        terminal.print_json({"runs": [run_json(run) for run in runs]})
    else:
        for run in runs:
            table = Table(title=f"run {run.id}: {run.conclusion or run.status}")
            for column in ("job", "status", "attempt", "host", "reason"):
                table.add_column(column)
            for job in run.jobs:
                table.add_row(job.job_id, job.status, str(job.attempt), job.host or "", job.reason)
            terminal.console().print(table)
    return any(run.conclusion != "success" for run in runs)


def log_line(job_id: str, attempt: int, line: str) -> str:
    """One fleet log line as the CLI prints it."""
    return f"{job_id}#{attempt} | {line}"


@command.command("cancel")
@click.argument("run_id")
@store_option
def cancel(run_id: str, store: str) -> None:
    """Cancel a run: its running jobs' machines are torn down on their hosts."""
    cancel_run(run_id, store)


def cancel_run(run_id: str, store: str) -> None:
    """``vmrunner fleet cancel`` and ``vmrunner runs cancel --store``."""
    from vmrunner.cli import terminal

    if _with_store(store, lambda fleet: fleet.cancel(run_id)):
        terminal.info(f"run {run_id} cancelled")
    else:
        terminal.info(f"run {run_id} had already finished")


@command.command("agents")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def agents(store: str, as_json: bool) -> None:
    """List the agents and how long ago each was heard from."""
    from rich.table import Table

    from vmrunner.cli import terminal

    rows = _with_store(store, lambda fleet: fleet.agents())
    if as_json:
        terminal.print_json(
            [
                {"name": n, "labels": list(labels), "capacity": c, "heartbeat_age": age}
                for n, labels, c, age in rows
            ]
        )
        return
    table = Table()
    for column in ("agent", "labels", "capacity", "last heard"):
        table.add_column(column)
    for name, labels, capacity, age in rows:
        table.add_row(name, ",".join(labels), str(capacity), f"{age:.1f}s ago")
    terminal.console().print(table)
