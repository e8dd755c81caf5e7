"""How a ``run`` step's script is executed: GitHub's shells, and custom ``{0}`` templates.

The script is written to a file under ``RUNNER_TEMP`` with the shell's extension; ``{0}`` in the
command template is replaced by that file's path.
"""

from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass

from vmrunner.errors import ConfigError

#: GitHub's shells on Linux: the command template and the script file's extension.
SHELLS: dict[str, tuple[str, str]] = {
    "bash": ("bash --noprofile --norc -eo pipefail {0}", ".sh"), "sh": ("sh -e {0}", ".sh"),
    "python": ("python {0}", ".py"),
}
#: Used when a step names no shell: bash when the machine has it, else sh.
DEFAULT_BASH = "bash -e {0}"
DEFAULT_SH = "sh -e {0}"
UNSUPPORTED = {"pwsh": "PowerShell", "powershell": "Windows PowerShell", "cmd": "cmd"}
_EXTENSIONS = {"bash": ".sh", "sh": ".sh", "python": ".py", "python3": ".py", "node": ".js"}


@dataclass(frozen=True, slots=True)
class Shell:
    """A resolved shell: the argv to run (with the script path in place of ``{0}``)."""

    template: str
    extension: str

    def argv(self, script: str) -> list[str]:
        return [
            script if word == "{0}" else word.replace("{0}", script)
            for word in _words(self.template)
        ]


@functools.lru_cache(maxsize=256)
def _words(template: str) -> tuple[str, ...]:
    return tuple(shlex.split(template))


def resolve_shell(shell: str | None, *, has_bash: bool = True, has_python: bool = True) -> Shell:
    """The shell for a step's ``shell:`` value (``None`` or empty: GitHub's default).

    ``python`` falls back to ``python3`` when the machine has no ``python``. Raises
    ``ConfigError`` for shells this platform cannot run and templates without ``{0}``.
    """
    name = (shell or "").strip()
    if not name:
        return Shell(DEFAULT_BASH if has_bash else DEFAULT_SH, ".sh")
    if name in UNSUPPORTED:
        raise ConfigError(
            f"shell '{name}' ({UNSUPPORTED[name]}) is not supported on Linux machines"
        )
    if name in SHELLS:
        template, extension = SHELLS[name]
        if name == "python" and not has_python:
            template = "python3 {0}"
        return Shell(template, extension)
    if "{0}" not in name:
        raise ConfigError(
            f"shell '{name}' is not one of bash, sh, python, and has no {{0}} for the script path"
        )
    try:
        program = shlex.split(name)[0]
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"shell '{name}' cannot be parsed: {exc}") from exc
    if program in UNSUPPORTED:
        raise ConfigError(
            f"shell '{program}' ({UNSUPPORTED[program]}) is not supported on Linux machines"
        )
    return Shell(name, _EXTENSIONS.get(program.rsplit("/", 1)[-1], ""))
