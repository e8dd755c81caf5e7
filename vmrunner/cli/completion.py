"""``vmrunner completion bash|zsh|fish``: the shell completion script, completing commands,
flags and, for ``-j``, the job names of the workflows (read when the shell asks:
``cli.options.complete_jobs``).

Install it with, e.g., ``vmrunner completion bash > ~/.local/share/bash-completion/completions/
vmrunner`` (zsh: a file ``_vmrunner`` on ``$fpath``; fish: ``~/.config/fish/completions/
vmrunner.fish``).
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")
#: The variable click's completion scripts set when they ask ``vmrunner`` for candidates.
COMPLETE_VAR = "_VMRUNNER_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def command(shell: str) -> None:
    """Print the completion script for SHELL."""
    from click.shell_completion import get_completion_class

    from vmrunner.cli import cli

    completion = get_completion_class(shell)
    assert completion is not None  # one of click's own shells
    click.echo(completion(cli, {}, "vmrunner", COMPLETE_VAR).source())
