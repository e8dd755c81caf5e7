"""``vmrunner runs``: the workflow runs kept under VMRUNNER_HOME (what ``vmrunner run`` recorded).

A run id may be abbreviated to any unique prefix, as git does with commits. A run whose runner
was killed before it finished is shown as ``interrupted``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.text import Text

    from vmrunner.runner.results import RunResult
    from vmrunner.store import LogRow


@click.group("runs")
def command() -> None:
    """Workflow runs kept under VMRUNNER_HOME: list them, show one with its logs."""


@command.command("list")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Show at most this many runs, newest first.")
@click.option("-w", "--workflow", default=None, help="Only runs of this workflow (its name or file).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines (each run in the shape of `runs show --json`).")
def list_runs(limit: int, workflow: str | None, as_json: bool) -> None:
    """List runs: id, workflow, event, conclusion, start time and duration."""
    from vmrunner.cli import terminal
    from vmrunner.runner.storage import RunHistory
    from vmrunner.store import Store

    with Store.open() as store:
        runs = RunHistory(store).list_runs(limit=limit, workflow=workflow)
    if as_json:
        terminal.print_json({"runs": [run.to_json() for run in runs]})
        return
    if not runs:
        terminal.info("no runs kept yet (`vmrunner run` records them)")
        return
    from rich.table import Table
    from rich.text import Text

    from vmrunner.runner.results import human_duration

    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("Run", "Workflow", "Event", "Conclusion", "Started", "Duration"):
        table.add_column(title, overflow="fold")
    for run in runs:
        conclusion = run.conclusion or run.status.replace("_", " ")
        table.add_row(
            run.run_id, Text(run.workflow_name or run.workflow_file), Text(run.event_name),
            Text(conclusion, style=_style(conclusion)), _when(run.started_at), human_duration(run.duration),
        )
    terminal.console().print(table)


@command.command("rm")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--snapshots-only", is_flag=True, help="Keep the runs; free only the snapshots they kept for `vmrunner rerun`.")
def remove(run_ids: tuple[str, ...], snapshots_only: bool) -> None:
    """Forget runs (RUN_ID or a unique prefix): their records, logs and kept snapshots."""
    from vmrunner.cli import terminal
    from vmrunner.runner.checkpoints import remove_checkpoints
    from vmrunner.runner.storage import RunHistory
    from vmrunner.store import Store

    with Store.open() as store:
        history = RunHistory(store)
        for run_id in [history.resolve(run_id) for run_id in run_ids]:
            freed = remove_checkpoints(run_id)
            if not snapshots_only:
                store.delete_run(run_id)
            if not snapshots_only:
                terminal.info(f"removed run {run_id}")
            else:
                terminal.info(f"removed the snapshots of run {run_id}" if freed else f"run {run_id} kept no snapshots")


@command.command("show")
@click.argument("run_id")
@click.option("--logs", "with_logs", is_flag=True, help="Include every step's output.")
@click.option("-j", "--job", "job_key", default=None, help="Only this job (its job key, e.g. 'test (small)').")
@click.option("--markdown", is_flag=True, help="Print the run's Markdown summary instead (as `vmrunner run --summary` writes it).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines: the run result, plus `logs` with --logs.")
def show(run_id: str, with_logs: bool, job_key: str | None, markdown: bool, as_json: bool) -> None:
    """Show one run (RUN_ID or a unique prefix of it): its jobs, steps and results."""
    from dataclasses import asdict, replace

    from vmrunner.cli import terminal
    from vmrunner.errors import ConfigError
    from vmrunner.runner.storage import RunHistory
    from vmrunner.store import Store

    with Store.open() as store:
        history = RunHistory(store)
        result = history.get_run(run_id)
        if job_key is not None and result.job(job_key) is None:
            known = ", ".join(repr(j.job_key) for j in result.jobs) or "none"
            raise ConfigError(f"run {result.run_id} has no job {job_key!r} (its jobs: {known})")
        logs = history.logs(result.run_id, job_key) if with_logs else []
    if job_key is not None:
        result = replace(result, jobs=tuple(j for j in result.jobs if j.job_key == job_key))
    if markdown:
        from vmrunner.runner.summary import render_summary

        terminal.console().out(render_summary(result), end="", highlight=False)
    elif as_json:
        data = result.to_json()
        if with_logs:
            data["logs"] = [{k: v for k, v in asdict(row).items() if k != "run_id"} for row in logs]
        terminal.print_json(data)
    else:
        _print_run(result, logs if with_logs else None)


def _print_run(result: RunResult, logs: list[LogRow] | None) -> None:
    from rich.text import Text

    from vmrunner.cli import terminal
    from vmrunner.cli.progress import SYMBOLS, annotation_line, job_line, step_line
    from vmrunner.runner.results import human_duration

    console = terminal.console()

    def say(text: Text | None) -> None:
        if text is not None:
            console.print(text, soft_wrap=True, highlight=False)

    conclusion = result.conclusion or result.status.replace("_", " ")
    symbol, style = SYMBOLS.get(result.conclusion or result.status, ("?", ""))
    say(Text.assemble(("Run ", "bold"), (result.run_id, "bold"), "  ", (result.workflow_name, "bold"), (f" ({result.workflow_file})", "dim")))
    where = " ".join(part for part in (result.event_name, result.ref, result.sha[:12]) if part)
    say(Text.assemble((f"{symbol} {conclusion}", style), f"  {where}  started {_when(result.started_at)}, took {human_duration(result.duration)}"))
    by_step: dict[tuple[str, int], list[LogRow]] = {}
    for row in logs or []:
        by_step.setdefault((row.job_key, row.step_index), []).append(row)
    for job in result.jobs:
        say(Text())
        machine = f"{job.provider} {job.machine_id}".strip() + (" (pool)" if job.from_pool else "")
        say(Text.assemble((f"[{job.job_key}] ", "blue"), job_line(job), (f"  {machine}" if machine else "", "dim")))
        for step in job.steps:
            say(Text("  ") + step_line(step))
            if step.snapshot_id:
                say(Text(f"    snapshot {step.snapshot_id}", style="dim"))
            for row in by_step.get((job.job_key, step.index), []):
                say(_log_text(row))
            for annotation in (a for a in job.annotations if a.step_index == step.index):
                say(Text("    ").append_text(annotation_line(annotation)))
        for row in by_step.get((job.job_key, -1), []):
            say(_log_text(row, indent="  "))
        for annotation in (a for a in job.annotations if a.step_index < 0):
            say(Text("  ").append_text(annotation_line(annotation)))


def _log_text(row: LogRow, indent: str = "    ") -> Text | None:
    """A kept output line as the live view showed it; None for a group's end."""
    from rich.text import Text

    pad = indent + "  " * row.group_depth
    if row.kind == "group":
        return Text(f"{pad}▾ {row.text}", style="bold")
    if row.kind == "endgroup":
        return None
    return Text(pad) + Text.from_ansi(row.text, style="red" if row.stream == "stderr" else "")


def _style(word: str) -> str:
    return {
        "success": "green", "failure": "bold red", "error": "bold red", "cancelled": "yellow",
        "interrupted": "yellow", "warning": "yellow", "skipped": "dim", "in progress": "cyan",
    }.get(word, "")


def _when(timestamp: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
