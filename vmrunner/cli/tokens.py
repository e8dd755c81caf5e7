"""``vmrunner tokens``: the bearer tokens of ``vmrunner serve``'s REST API.

A token is printed once, when it is created; the state database keeps only its hash. Scopes:
``read`` (runs, logs, sessions, pool), ``operate`` (also cancel and re-run), ``admin`` (also
tokens and configuration). See docs/server.md.
"""

from __future__ import annotations

import click

_SCOPES = ("read", "operate", "admin")


@click.group("tokens")
def command() -> None:
    """Create, list and revoke the REST API's tokens (kept under VMRUNNER_HOME)."""


@command.command("create")
@click.argument("name")
@click.option(
    "--scope", type=click.Choice(_SCOPES), default="read", show_default=True,
    help="read: look; operate: also cancel and re-run; admin: also tokens and configuration.",
)
def create(name: str, scope: str) -> None:
    """Create the token NAME and print it (only now: a hash of it is kept)."""
    import sys

    from vmrunner.server.tokens import TokenStore
    from vmrunner.store import Store

    with Store.open() as store:
        token = TokenStore(store).create(name, scope)
    sys.stdout.write(token + "\n")
    if sys.stdout.isatty():
        from vmrunner.cli import terminal

        terminal.info(f"token {name!r} ({scope}): shown once; send it as Authorization: Bearer")


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def list_tokens(as_json: bool) -> None:
    """List the tokens: name, scope, when created and last used (never the tokens)."""
    from vmrunner.cli import terminal
    from vmrunner.server.tokens import TokenStore
    from vmrunner.store import Store

    with Store.open() as store:
        rows = TokenStore(store).list()
    if as_json:
        terminal.print_json({"tokens": [
            {"name": r.name, "scope": r.scope, "created_at": r.created_at,
             "last_used_at": r.last_used_at}
            for r in rows
        ]})
        return
    if not rows:
        terminal.info("no tokens (`vmrunner tokens create NAME --scope read` makes one)")
        return
    from datetime import datetime

    def when(stamp: float | None) -> str:
        return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M") if stamp else "never"

    width = max(len(r.name) for r in rows)
    terminal.info(f"{'NAME':<{width}}  {'SCOPE':<8} {'CREATED':<17} LAST USED")
    for r in rows:
        created, used = when(r.created_at), when(r.last_used_at)
        terminal.info(f"{r.name:<{width}}  {r.scope:<8} {created:<17} {used}")


@command.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the token NAME: requests bearing it are refused from now on."""
    from vmrunner.cli import terminal
    from vmrunner.server.tokens import TokenStore
    from vmrunner.store import Store

    with Store.open() as store:
        TokenStore(store).revoke(name)
    terminal.info(f"token {name!r} revoked")
