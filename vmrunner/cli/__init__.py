"""The ``vmrunner`` command line.

Each subcommand lives in its own module and is imported only when it is invoked, so that
``vmrunner --help`` stays instant. Every module exposes a ``command`` (a click command).
Errors vmrunner raises on purpose are printed as messages, never as tracebacks.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from vmrunner import __version__
from vmrunner.errors import VmrunnerError

#: name -> (module, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("vmrunner.cli.list", "List the jobs of the workflows, like `act -l`."),
    "graph": ("vmrunner.cli.graph", "Show the job graph (needs) of the workflows."),
    "validate": ("vmrunner.cli.validate", "Check workflows and report every error."),
    "expr": ("vmrunner.cli.expr", "Evaluate a ${{ }} expression, for debugging."),
    "sessions": ("vmrunner.cli.sessions", "List sessions; reclaim machines of dead runners."),
    "runs": (
        "vmrunner.cli.runs",
        "List kept workflow runs; show one with its jobs, steps and logs.",
    ),
    "artifacts": ("vmrunner.cli.artifacts", "List and download the artifacts of kept runs."),
    "cache": ("vmrunner.cli.cache", "List and clear the caches that actions/cache saved."),
    "image": ("vmrunner.cli.image", "Build, list and remove guest images for VM providers."),
    "run": ("vmrunner.cli.run", "Run the workflows an event triggers, one machine per job."),
    "rerun": (
        "vmrunner.cli.rerun",
        "Re-run a failed job from step N in a new machine, from its snapshot.",
    ),
    "insights": ("vmrunner.cli.insights", "Lessons and suggestions learned from earlier runs."),
    "serve": (
        "vmrunner.cli.serve",
        "Serve GitHub webhooks: run workflows, report results to GitHub.",
    ),
    "dashboard": (
        "vmrunner.cli.dashboard",
        "Show the kept runs as web pages on 127.0.0.1 (live logs, timeline).",
    ),
    "tokens": ("vmrunner.cli.tokens", "Create, list and revoke tokens of the server's REST API."),
    "agent": (
        "vmrunner.cli.agent",
        "Serve a fleet's jobs on this host (PostgreSQL with procrastinate).",
    ),
    "machines": (
        "vmrunner.cli.machines",
        "Serve this host's machines over HTTP to runners elsewhere (the machine service).",
    ),
    "fleet": ("vmrunner.cli.fleet", "Submit, follow and cancel runs on a fleet of agent hosts."),
    "config": (
        "vmrunner.cli.config",
        "Show the effective settings of a command and where each came from.",
    ),
    "completion": (
        "vmrunner.cli.completion",
        "Print the shell completion script: vmrunner completion bash|zsh|fish.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        command: click.Command = module.command
        try:
            self.apply_defaults(ctx, cmd_name, command)
        except VmrunnerError:
            if not ctx.resilient_parsing:  # shell completion goes on past a broken config file
                raise
        return command

    @staticmethod
    def apply_defaults(ctx: click.Context, cmd_name: str, command: click.Command) -> None:
        """Give ``command`` the defaults of the config files and dotfiles (``cli/defaults.py``)
        as click's ``default_map``: flags and environment variables still win."""
        from vmrunner.cli.defaults import load_defaults

        defaults = ctx.meta.get("vmrunner.defaults")
        if defaults is None:
            defaults = ctx.meta["vmrunner.defaults"] = load_defaults()
        settings = defaults.for_command(cmd_name, command, ctx)
        if settings:
            values = {name: setting.value for name, setting in settings.items()}
            ctx.default_map = {**(ctx.default_map or {}), cmd_name: values}

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="vmrunner")  # no package metadata to read
def cli() -> None:
    """Run GitHub Actions workflows with one isolated machine per job."""


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning vmrunner's own errors into messages and exit code 1."""
    try:
        return cli.main(args=argv, prog_name="vmrunner", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except VmrunnerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        # the host's doing (a full disk, a file that cannot be written): no bug of ours
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except BaseExceptionGroup as group:  # from a task group: our errors are still messages
        first = _first_expected(group)
        if first is None:
            raise
        click.echo(f"error: {first}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


def _first_expected(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first leaf of ``group`` when every leaf is an error we print (ours, or the host's)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    if leaves and all(isinstance(leaf, VmrunnerError | OSError) for leaf in leaves):
        return leaves[0]
    return None
