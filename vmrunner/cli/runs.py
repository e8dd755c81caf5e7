"""``vmrunner runs``: the workflow runs kept under VMRUNNER_HOME (what ``vmrunner run`` recorded).

A run id may be abbreviated to any unique prefix, as git does with commits. A run whose runner
was killed before it finished is shown as ``interrupted``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from rich.text import Text

    from vmrunner.reports.results import RunResult
    from vmrunner.reports.timeline import TimelineEntry
    from vmrunner.services.artifacts import Artifact
    from vmrunner.store import LogRow


#: Seconds between two reads of a followed run's output.
FOLLOW_INTERVAL = 0.5


@click.group("runs")
def command() -> None:
    """Workflow runs kept under VMRUNNER_HOME: list them, show one with its logs."""


@command.command("list")
@click.option(
    "-n",
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Show at most this many runs, newest first.",
)
@click.option(
    "-w", "--workflow", default=None, help="Only runs of this workflow (its name or file)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON for machines (each run in the shape of `runs show --json`).",
)
def list_runs(limit: int, workflow: str | None, as_json: bool) -> None:
    """List runs: id, workflow, event, conclusion, start time and duration."""
    from vmrunner.cli import terminal
    from vmrunner.reports.storage import RunHistory
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

    from vmrunner.reports.results import human_duration

    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("Run", "Workflow", "Event", "Conclusion", "Started", "Duration"):
        table.add_column(title, overflow="fold")
    for run in runs:
        conclusion = run.conclusion or run.status.replace("_", " ")
        table.add_row(
            run.run_id,
            Text(run.workflow_name or run.workflow_file),
            Text(run.event_name),
            Text(conclusion, style=_style(conclusion)),
            _when(run.started_at),
            human_duration(run.duration),
        )
    terminal.console().print(table)


@command.command("rm")
@click.argument("run_ids", nargs=-1, required=True)
@click.option(
    "--snapshots-only",
    is_flag=True,
    help="Keep the runs; free only the snapshots they kept for `vmrunner rerun`.",
)
def remove(run_ids: tuple[str, ...], snapshots_only: bool) -> None:
    """Forget runs (RUN_ID or a unique prefix): their records, logs, artifacts and kept
    snapshots."""
    from vmrunner.cli import terminal
    from vmrunner.reports.storage import RunHistory
    from vmrunner.runner.checkpoints import remove_checkpoints
    from vmrunner.services.artifacts import ArtifactStore
    from vmrunner.services.settings import ServiceSettings
    from vmrunner.store import Store

    settings = ServiceSettings.from_env()
    artifacts = ArtifactStore(settings.artifacts_dir, settings.retention_days)
    with Store.open() as store:
        history = RunHistory(store)
        for run_id in [history.resolve(run_id) for run_id in run_ids]:
            freed = remove_checkpoints(run_id)
            if not snapshots_only:
                # The artifacts first: a failure leaves the record, so `runs rm` can be retried.
                removed = artifacts.remove_run(run_id)
                store.delete_run(run_id)
                with_artifacts = f" and its {removed} artifact(s)" if removed else ""
                terminal.info(f"removed run {run_id}{with_artifacts}")
            else:
                terminal.info(
                    f"removed the snapshots of run {run_id}"
                    if freed
                    else f"run {run_id} kept no snapshots"
                )


@command.command("cancel")
@click.argument("run_id")
@click.option(
    "--store",
    required=True,
    envvar="VMRUNNER_STORE",
    help="The fleet's PostgreSQL URL [env: VMRUNNER_STORE]; see docs/fleet.md.",
)
def cancel(run_id: str, store: str) -> None:
    """Cancel a fleet run: running jobs lose their machines on their hosts, nothing is retried."""
    from vmrunner.cli.fleet import cancel_run

    cancel_run(run_id, store)


@command.command("show", context_settings={"ignore_unknown_options": True})  # -1: a run
@click.argument("run_id")
@click.option("--logs", "with_logs", is_flag=True, help="Include every step's output.")
@click.option(
    "-j", "--job", "job_key", default=None, help="Only this job (its job key, e.g. 'test (small)')."
)
@click.option(
    "--markdown",
    is_flag=True,
    help="Print the run's Markdown summary instead (as `vmrunner run --summary` writes it).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON for machines: the run result, plus `logs` with --logs.",
)
@click.option(
    "--timeline",
    is_flag=True,
    help="Print the machine lifecycle timeline (T+ms from the run's start) and the counts that "
    "prove one machine per job.",
)
@click.option(
    "--svg",
    "svg_file",
    default=None,
    type=click.Path(dir_okay=False, writable=True),
    help="With --timeline: also draw it as an SVG picture in this file (one lane per machine).",
)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Print the run's output as it is written, until the run ends; then show the run.",
)
@click.option(
    "--store",
    default=None,
    envvar="VMRUNNER_STORE",
    help="Show a fleet run from its PostgreSQL store (any host) [env: VMRUNNER_STORE]; see "
    "docs/fleet.md.",
)
def show(
    run_id: str,
    with_logs: bool,
    job_key: str | None,
    markdown: bool,
    as_json: bool,
    timeline: bool,
    svg_file: str | None,
    follow: bool,
    store: str | None,
) -> None:
    """Show one run (RUN_ID, a unique prefix of it, `latest`, or -N: the N-th newest): its
    jobs, steps and results."""
    from dataclasses import replace

    from vmrunner.cli import terminal
    from vmrunner.errors import ConfigError
    from vmrunner.reports.storage import RunHistory
    from vmrunner.store import Store

    if store:
        from vmrunner.cli.fleet import show_run

        given = [
            flag
            for flag, value in (
                ("-j", job_key),
                ("--markdown", markdown),
                ("--timeline", timeline),
                ("--svg", svg_file),
            )
            if value
        ]
        if given:
            raise ConfigError(f"{given[0]} is not available for fleet runs (--store)")
        show_run(run_id, store, follow=follow, as_json=as_json, with_logs=with_logs)
        return
    if follow:
        run_id = _follow(run_id, job_key)
        with_logs = False  # printed already
    with Store.open() as kept:  # open while printing: logs are read a page at a time
        history = RunHistory(kept)
        result = history.get_run(run_id)
        if job_key is not None and result.job(job_key) is None:
            known = ", ".join(repr(j.job_key) for j in result.jobs) or "none"
            raise ConfigError(f"run {result.run_id} has no job {job_key!r} (its jobs: {known})")
        if job_key is not None:
            result = replace(result, jobs=tuple(j for j in result.jobs if j.job_key == job_key))
        if svg_file is not None:
            if not timeline:
                raise ConfigError("--svg draws the timeline: use it with --timeline")
            _write_svg(result, svg_file)
        if timeline and not (markdown or as_json):
            _print_timeline(result)
        elif markdown:
            from vmrunner.reports.summary import render_summary

            terminal.console().out(render_summary(result), end="", highlight=False)
        elif as_json and with_logs:
            _print_json_with_logs(
                result.to_json(), (row for _, row in history.iter_logs(result.run_id, job_key))
            )
        elif as_json:
            terminal.print_json(result.to_json())
        else:

            def step_logs(job: str, step: int) -> Iterator[LogRow]:
                return (row for _, row in history.iter_logs(result.run_id, job, step))

            _print_run(result, step_logs if with_logs else None)


def _print_json_with_logs(data: dict[str, Any], rows: Iterator[LogRow]) -> None:
    """The run as JSON with its ``logs`` written row by row as they are read (bounded memory)."""
    import json
    import sys
    from dataclasses import asdict

    head = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write(head[:-2] + ',\n  "logs": [')
    for index, row in enumerate(rows):
        line = {k: v for k, v in asdict(row).items() if k != "run_id"}
        sys.stdout.write(("," if index else "") + "\n    " + json.dumps(line, ensure_ascii=False))
    sys.stdout.write("\n  ]\n}\n")
    sys.stdout.flush()


def _follow(run_id: str, job_key: str | None) -> str:
    """Print a kept run's output as its runner writes it (read again twice a second) until the run
    ends; its full id."""
    import time

    from rich.text import Text

    from vmrunner.cli import terminal
    from vmrunner.reports.storage import RunHistory
    from vmrunner.store import Store

    console = terminal.console()
    shown = 0  # the sequence number of the last line printed
    with Store.open() as store:
        history = RunHistory(store)
        run_id = history.resolve(run_id)
        while True:
            ended = history.get_run(run_id).status == "completed"
            for seq, row in history.iter_logs(run_id, job_key, after=shown):
                shown = seq
                text = _log_text(row, indent="")
                if text is not None:
                    console.print(
                        Text(f"[{row.job_key}] ", style="blue") + text,
                        soft_wrap=True,
                        highlight=False,
                    )
            if ended:
                return run_id
            time.sleep(FOLLOW_INTERVAL)


def _print_run(
    result: RunResult, step_logs: Callable[[str, int], Iterable[LogRow]] | None
) -> None:
    from rich.text import Text

    from vmrunner.cli import terminal
    from vmrunner.cli.progress import SYMBOLS, annotation_line, job_line, step_line
    from vmrunner.reports.results import human_duration

    console = terminal.console()

    def say(text: Text | None) -> None:
        if text is not None:
            console.print(text, soft_wrap=True, highlight=False)

    conclusion = result.conclusion or result.status.replace("_", " ")
    symbol, style = SYMBOLS.get(result.conclusion or result.status, ("?", ""))
    say(
        Text.assemble(
            ("Run ", "bold"),
            (result.run_id, "bold"),
            "  ",
            (result.workflow_name, "bold"),
            (f" ({result.workflow_file})", "dim"),
        )
    )
    where = " ".join(part for part in (result.event_name, result.ref, result.sha[:12]) if part)
    say(
        Text.assemble(
            (f"{symbol} {conclusion}", style),
            f"  {where}  started {_when(result.started_at)}, "
            f"took {human_duration(result.duration)}",
        )
    )
    for annotation in result.run_annotations:
        say(annotation_line(annotation))

    def logs_of(job_key: str, step: int) -> Iterable[LogRow]:
        return step_logs(job_key, step) if step_logs is not None else ()
    for job in result.jobs:
        say(Text())
        machine = f"{job.provider} {job.machine_id}".strip() + (" (pool)" if job.from_pool else "")
        say(
            Text.assemble(
                (f"[{job.job_key}] ", "blue"),
                job_line(job),
                (f"  {machine}" if machine else "", "dim"),
            )
        )
        for step in job.steps:
            say(Text("  ") + step_line(step))
            if step.snapshot_id:
                say(Text(f"    snapshot {step.snapshot_id}", style="dim"))
            for row in logs_of(job.job_key, step.index):
                say(_log_text(row))
            for annotation in (a for a in job.annotations if a.step_index == step.index):
                say(Text("    ").append_text(annotation_line(annotation)))
        for row in logs_of(job.job_key, -1):
            say(_log_text(row, indent="  "))
        for annotation in (a for a in job.annotations if a.step_index < 0):
            say(Text("  ").append_text(annotation_line(annotation)))
    artifacts = _artifacts(result.run_id)
    if artifacts:
        say(Text())
        say(Text("Artifacts", style="bold"))
    for artifact in artifacts:
        say(Text(f"  {artifact.name}  {artifact.size} bytes  from job {artifact.job_key}"))


def _artifacts(run_id: str) -> list[Artifact]:
    from vmrunner.services.artifacts import ArtifactStore
    from vmrunner.services.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    return ArtifactStore(settings.artifacts_dir, settings.retention_days).list(run_id)


def _print_timeline(result: RunResult) -> None:
    """The lifecycle table (one row per event, jobs interleaved by time) and its counts."""
    from rich.table import Table
    from rich.text import Text

    from vmrunner.cli import terminal
    from vmrunner.reports.timeline import relative_ms, state_during, visible

    console = terminal.console()
    entries = result.timeline
    console.print(
        Text.assemble(
            ("Machine lifecycle timeline ", "bold"),
            (f"run {result.run_id}", "bold"),
            f"  {result.workflow_name}",
        ),
        highlight=False,
    )
    if not entries:
        terminal.info(
            "no lifecycle events recorded for this run (no job got a machine, or it ran before "
            "vmrunner kept them)"
        )
        return
    shown = {id(entry) for entry in visible(entries)}
    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("Time", "Job", "Event", "Machine", "Session"):
        table.add_column(title, overflow="fold", no_wrap=title == "Time")
    for position, entry in enumerate(entries):
        if id(entry) in shown:
            event, style = _timeline_event(entry)
            table.add_row(
                relative_ms(entry.time, result.started_at),
                Text(entry.job_key, "blue"),
                Text(event, style),
                entry.machine_id or "-",
                state_during(entries, position) or "-",
            )
    console.print(table)
    _print_proof(result)


def _timeline_event(entry: TimelineEntry) -> tuple[str, str]:
    """What an entry says in the table, and its style."""
    kind = entry.kind
    if kind == "allocation_requested":
        return f"allocation requested ({entry.detail})", ""
    if kind == "machine_allocated":
        return (
            f"machine allocated in {round((entry.seconds or 0) * 1000)}ms ({entry.detail})",
            "bold",
        )
    if kind == "session_state":
        return f"session {entry.state}" + (
            f": {entry.detail}"
            if entry.detail and entry.state not in ("terminating", "released")
            else ""
        ), "dim"
    if kind == "command_started":
        return f"{entry.step_kind} started: {entry.name}", ""
    if kind == "command_finished":
        code = "no exit code" if entry.exit_code is None else f"exit {entry.exit_code}"
        return (
            f"{entry.step_kind} finished: {entry.name} ({code}, {entry.outcome})",
            "red" if entry.outcome == "failure" else "green",
        )
    if kind == "snapshot_taken":
        return f"snapshot taken {entry.detail}", "cyan"
    if kind == "snapshot_restored":
        return f"snapshot restored {entry.detail}", "magenta"
    if kind == "release_requested":
        return "release requested", ""
    if entry.outcome == "failure":
        return f"machine release FAILED: {entry.detail}", "bold red"
    return "machine released", "bold"


def _print_proof(result: RunResult) -> None:
    from rich.text import Text

    from vmrunner.cli import terminal

    proof = result.lifecycle()
    console = terminal.console()

    def line(label: str, value: str, ok: bool | None = None) -> None:
        style = "" if ok is None else ("green" if ok else "bold red")
        console.print(Text.assemble(f"  {label:<38}", (value, style)), highlight=False)

    console.print()
    console.print(Text("Counts from the recorded events", style="bold"), highlight=False)
    line("Jobs given a machine:", str(proof.jobs))
    line(
        "Machines allocated:", str(proof.machines_allocated), proof.machines_allocated == proof.jobs
    )
    line(
        "Machines released:",
        f"{proof.machines_released} (each exactly once: {_yes(proof.released_once)})",
        proof.released_once and proof.machines_released == proof.machines_allocated,
    )
    for use in proof.machines:
        line(f"Commands in {use.machine_id}:", f"{use.commands} ({use.job_key})")
    own = proof.commands - proof.stray_commands
    line(
        "Every command in its job's machine:",
        f"{_yes(proof.commands_in_own_machine)} ({own} of {proof.commands})",
        proof.commands_in_own_machine,
    )
    overlapping = [
        f"{a.job_key} / {b.job_key}"
        for i, a in enumerate(proof.machines)
        for b in proof.machines[i + 1 :]
        if a.overlaps(b)
    ]
    line("Most machines alive at once:", str(proof.peak_machines))
    if overlapping:
        line("Overlapping machines (in parallel):", ", ".join(overlapping))
    console.print(
        Text(f"Total machines used: {proof.total_machines}", style="bold"), highlight=False
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _write_svg(result: RunResult, path: str) -> None:
    from vmrunner.cli import terminal
    from vmrunner.errors import ConfigError
    from vmrunner.reports.svg import render_svg

    svg = render_svg(
        result.timeline,
        result.started_at,
        title=f"{result.workflow_name or result.workflow_file} — run {result.run_id}",
    )
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(svg)
    except OSError as exc:
        raise ConfigError(f"--svg: cannot write {path}: {exc.strerror or exc}") from exc
    terminal.console(stderr=True).print(
        f"timeline drawn in {path}", markup=False, highlight=False, soft_wrap=True
    )


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
