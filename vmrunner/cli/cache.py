"""``vmrunner cache``: the caches ``actions/cache`` saved, per repository and branch."""

from __future__ import annotations

import click


@click.group("cache")
def command() -> None:
    """Caches of actions/cache: list them, clear them."""


@command.command("list")
@click.option("--repository", "-R", default=None, help="Only this repository's (owner/name).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_entries(repository: str | None, as_json: bool) -> None:
    """List cache entries, most recently used first."""
    from dataclasses import asdict

    from vmrunner.cli import terminal
    from vmrunner.services.cache import CacheStore
    from vmrunner.services.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    entries = CacheStore(settings.cache_dir, settings.cache_size).entries(repository)
    if as_json:
        terminal.print_json([asdict(entry) for entry in entries])
        return
    console = terminal.console()
    if not entries:
        console.print("no cache entries")
    for entry in entries:
        console.print(
            f"{entry.repository}  {entry.scope}  {entry.key}  {entry.size} bytes",
            highlight=False, soft_wrap=True,
        )


@command.command("clear")
@click.option("--repository", "-R", default=None, help="Only this repository's (owner/name).")
@click.option("--key", "key_prefix", default="", help="Only entries whose key starts with this.")
def clear(repository: str | None, key_prefix: str) -> None:
    """Remove cache entries (all of them, unless narrowed)."""
    from vmrunner.cli import terminal
    from vmrunner.services.cache import CacheStore
    from vmrunner.services.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    removed = CacheStore(settings.cache_dir, settings.cache_size).clear(repository, key_prefix)
    terminal.console().print(f"removed {removed} cache entries")
