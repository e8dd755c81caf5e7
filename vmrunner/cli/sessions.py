"""``vmrunner sessions``: see the sessions in the state database, reclaim leftovers of dead
runners."""

from __future__ import annotations

import time
from typing import Any

import click

from vmrunner.config import DEFAULT_PROVIDER, ENV_PROVIDER


@click.group("sessions")
def command() -> None:
    """Sessions (one job, one machine) recorded under VMRUNNER_HOME."""


@command.command("list")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include released sessions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def list_sessions(show_all: bool, as_json: bool) -> None:
    """List sessions: id, state, machine, provider, vm_type, age and idle time."""
    from vmrunner.cli import terminal
    from vmrunner.store import Store

    with Store.open() as store:
        rows = store.sessions(include_released=show_all)
    now = time.time()
    records: list[dict[str, Any]] = [
        {
            "id": row.id,
            "state": row.state,
            "machine": row.machine_id,
            "provider": row.provider,
            "vm_type": row.vm_type,
            "owner_pid": row.owner_pid,
            "created_at": row.created_at,
            "last_activity": row.last_activity,
            "age": round(now - row.created_at, 3),
            "idle": round(now - row.last_activity, 3),
            "labels": dict(row.labels),
            "note": row.note,
        }
        for row in rows
    ]
    if as_json:
        terminal.print_json({"sessions": records})
        return
    if not records:
        terminal.info("no sessions" if show_all else "no live sessions (--all shows released ones)")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("Session", "State", "Machine", "Provider", "VM type", "Age", "Idle"):
        table.add_column(title, overflow="fold")
    for record in records:
        table.add_row(
            record["id"],
            record["state"],
            record["machine"] or "-",
            record["provider"],
            record["vm_type"],
            _duration(record["age"]),
            _duration(record["idle"]),
        )
    terminal.console().print(table)


@command.command("reclaim")
@click.option(
    "-p",
    "--provider",
    "providers",
    multiple=True,
    envvar=ENV_PROVIDER,
    help=f"Also scan this provider's machines on disk (repeatable) [env: {ENV_PROVIDER}; default: "
    f"{DEFAULT_PROVIDER}].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def reclaim(providers: tuple[str, ...], as_json: bool) -> None:
    """Release machines and close sessions left by runner processes that are gone.

    Machines of a runner that still runs are left alone. Runs those runners left unfinished are
    recorded as interrupted for good.
    """
    import asyncio

    from vmrunner.cli import terminal
    from vmrunner.machines.base import Provider
    from vmrunner.machines.providers import get_provider
    from vmrunner.reports.storage import RunHistory
    from vmrunner.sessions import named_provider, reclaim_orphans
    from vmrunner.store import Store

    names = set(providers or (DEFAULT_PROVIDER,))
    # Providers asked for by name must exist; those named by records are best effort.
    cache: dict[str, Provider | None] = {name: get_provider(name) for name in sorted(names)}

    def resolve(name: str) -> Provider | None:
        if name not in cache:
            cache[name] = named_provider(name)
        return cache[name]

    async def run() -> tuple[list[Any], list[str]]:
        with Store.open() as store:
            names.update(row.provider for row in store.machines())
            scan = [p for p in (resolve(n) for n in sorted(names)) if p is not None]
            try:
                return await reclaim_orphans(store, resolve, scan), RunHistory(
                    store
                ).mark_interrupted()
            finally:
                for provider in scan:
                    await provider.aclose()

    actions, interrupted = asyncio.run(run())
    if as_json:
        terminal.print_json(
            {"actions": [_action(a) for a in actions], "interrupted_runs": interrupted}
        )
    elif not actions and not interrupted:
        terminal.info("nothing to reclaim: no machine or session of a dead runner")
    if not as_json:
        for run_id in interrupted:
            terminal.info(f"marked run {run_id} interrupted: its runner is gone")
    for action in actions:
        if not as_json:
            verb = "reclaimed" if action.ok else "FAILED to reclaim"
            terminal.info(
                f"{verb} {action.kind} {action.id} ({action.provider}, runner pid "
                f"{action.owner_pid}): {action.note}"
            )
    if any(not a.ok for a in actions):
        raise SystemExit(1)


def _action(action: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(action)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
