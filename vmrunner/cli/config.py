"""``vmrunner config [COMMAND]``: the effective settings of a command, and where each came from.

A setting comes from the command's default, the user's or the project's config file, one of
act's dotfiles (``.secrets``, ``.vars``, ``.env``, ``.input``) or an environment variable
(``cli/defaults.py`` says which wins). Secrets' values are never shown: only the files.
"""

from __future__ import annotations

import json
from typing import Any

import click
from click.core import ParameterSource

from vmrunner.errors import ConfigError


@click.command("config")
@click.argument("command_name", metavar="COMMAND", default="run")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def command(ctx: click.Context, command_name: str, as_json: bool) -> None:
    """Show COMMAND's (default: run) settings: value and source of each flag."""
    from vmrunner.cli import COMMANDS, LazyGroup
    from vmrunner.cli.defaults import load_defaults, user_config_path

    parent = ctx.parent
    if command_name not in COMMANDS or parent is None or not isinstance(parent.command, LazyGroup):
        raise ConfigError(
            f"no command {command_name!r}; expected one of: {', '.join(sorted(COMMANDS))}"
        )
    target = parent.command.get_command(parent, command_name)
    assert target is not None
    defaults = load_defaults()
    settings = defaults.for_command(command_name, target, ctx)
    # click resolves the values itself, as it would for a real invocation of the command
    resolved = target.make_context(command_name, [], parent=parent, resilient_parsing=True)
    rows: list[dict[str, Any]] = []
    for param in target.params:
        if not isinstance(param, click.Option) or not param.name or param.name == "help":
            continue
        origin = resolved.get_parameter_source(param.name)
        if origin is ParameterSource.ENVIRONMENT:
            source = f"environment {param.envvar}"
        elif origin is ParameterSource.DEFAULT_MAP and param.name in settings:
            source = settings[param.name].source
        else:
            source = "default"
        flag = max(param.opts, key=len)
        rows.append({"flag": flag, "value": resolved.params.get(param.name), "source": source})
    if as_json:
        click.echo(
            json.dumps(
                {
                    "command": command_name,
                    "repository": defaults.root,
                    "files": defaults.files,
                    "user_file": user_config_path(),
                    "settings": rows,
                },
                indent=2,
                default=list,
            )
        )
        return
    click.echo(f"repository: {defaults.root or '(none: not inside a git repository)'}")
    files = defaults.files or ["(none)"]
    click.echo(f"config files: {', '.join(files)}")
    click.echo(f"  (user: {user_config_path()}; project: .vmrunner.toml or vmrunner.toml)")
    if not rows:
        click.echo(f"`vmrunner {command_name}` has no flags of its own (its subcommands do)")
        return
    width = max(len(row["flag"]) for row in rows)
    for row in rows:
        shown = _shown(row["value"])
        click.echo(f"{row['flag']:<{width}}  {shown:<24}  {row['source']}")


def _shown(value: Any) -> str:
    if value is None or value == () or value == []:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
