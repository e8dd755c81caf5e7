"""Defaults for any flag, from config files and act's dotfiles, with where each came from.

Read in this order, a later source overriding an earlier one, and every flag or environment
variable given overriding them all:

1. the user's ``~/.config/vmrunner/config.toml`` (``$XDG_CONFIG_HOME``);
2. the repository's ``.vmrunner.toml`` (or ``vmrunner.toml``) at its root;
3. act's dotfiles at the repository's root, when present: ``.secrets`` (``--secret-file``),
   ``.vars`` (``--var-file``), ``.env`` (``--env-file``), ``.input`` (``--input-file``), for
   ``run`` (and the first two for ``rerun``).

A config file has one table per command, keyed by the command's long flag names::

    [run]
    provider = "sandbox"
    concurrent-jobs = 2
    setup-command = ["echo ready"]

``vmrunner.cli`` hands a command's defaults to click as its ``default_map``, so the command
line and the environment still win. A key that is no flag of its command, or a value of the
wrong type, is an error naming the file. Relative paths in a project file are taken from the
file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmrunner.config import find_root
from vmrunner.errors import ConfigError

if TYPE_CHECKING:
    import click

PROJECT_FILES = (".vmrunner.toml", "vmrunner.toml")
USER_FILE = os.path.join("vmrunner", "config.toml")
#: act's dotfiles read from the repository's root: file -> the parameter it defaults.
DOTFILES = {
    ".secrets": "secret_file",
    ".vars": "var_file",
    ".env": "env_file",
    ".input": "input_file",
}
#: The commands that read them (``rerun`` needs the secrets again: runs keep them masked).
DOTFILE_COMMANDS = {"run": tuple(DOTFILES), "rerun": (".secrets", ".vars")}
#: Parameters naming a path: relative ones in a project file are taken from its folder.
PATH_PARAMETERS = frozenset(
    {"workflows", "event_path", "secret_file", "var_file", "env_file", "input_file",
     "summary_file", "repo_root"}
)


def user_config_path() -> str:
    """``$XDG_CONFIG_HOME/vmrunner/config.toml``, else under ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, USER_FILE)


@dataclass(frozen=True, slots=True)
class Setting:
    """One default: its value, where it came from (a file or ``.secrets``), and the key used."""

    value: Any
    source: str
    key: str


@dataclass(slots=True)
class FlagDefaults:
    """Every command's defaults (command -> key as written -> ``Setting``), and the files."""

    root: str | None
    files: list[str] = field(default_factory=list)
    tables: dict[str, dict[str, Setting]] = field(default_factory=dict)

    def for_command(
        self, name: str, command: click.Command, ctx: click.Context | None = None
    ) -> dict[str, Setting]:
        """``name``'s defaults keyed by parameter name; ``ConfigError`` for a key that is no
        flag of the command, or a value its flag would refuse."""
        import click

        by_key: dict[str, click.Parameter] = {}
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                by_key[param.name] = param
                by_key[param.name.replace("_", "-")] = param
                for opt in param.opts:
                    if opt.startswith("--"):
                        by_key[opt[2:]] = param
        result: dict[str, Setting] = {}
        for key, setting in self.tables.get(name, {}).items():
            found = by_key.get(key)
            if found is None or found.name is None:
                flags = sorted({k for k in by_key if "_" not in k})
                raise ConfigError(
                    f"{setting.source}: [{name}] {key}: no such flag of `vmrunner {name}`; "
                    f"expected one of: {', '.join(flags)}"
                )
            param = found
            if param.multiple and not isinstance(setting.value, list):
                setting = Setting([setting.value], setting.source, setting.key)
            try:
                param.type_cast_value(ctx or click.Context(command), setting.value)
            except (click.BadParameter, TypeError, ValueError) as exc:
                detail = exc.format_message() if isinstance(exc, click.ClickException) else exc
                raise ConfigError(f"{setting.source}: [{name}] {key}: {detail}") from exc
            result[param.name] = setting
        return result


def load_defaults(cwd: str | None = None) -> FlagDefaults:
    """The defaults for commands run in ``cwd`` (default: the current folder)."""
    root = find_root(cwd or os.getcwd())
    defaults = FlagDefaults(root)
    _read_file(defaults, user_config_path(), project=False)
    if root is not None:
        for name in PROJECT_FILES:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                _read_file(defaults, path, project=True)
                break
        for name, dotfiles in DOTFILE_COMMANDS.items():
            for dotfile in dotfiles:
                path = os.path.join(root, dotfile)
                flag = DOTFILES[dotfile].replace("_", "-")
                table = defaults.tables.get(name, {})
                if os.path.isfile(path) and not any(k.replace("_", "-") == flag for k in table):
                    defaults.tables.setdefault(name, {})[flag] = Setting(path, dotfile, flag)
    return defaults


def _read_file(defaults: FlagDefaults, path: str, *, project: bool) -> None:
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    import tomllib  # only once there is a file to read

    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    defaults.files.append(path)
    folder = os.path.dirname(os.path.abspath(path))
    for name, table in data.items():
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{path}: {name}: settings go in a table per command, e.g. [run] {name} = ..."
            )
        merged = defaults.tables.setdefault(name, {})
        for key, value in table.items():
            if project and key.replace("-", "_") in PATH_PARAMETERS and isinstance(value, str):
                value = os.path.join(folder, os.path.expanduser(value))
            # the same flag may be written two ways: the later file's spelling replaces it
            for old in [k for k in merged if k.replace("_", "-") == key.replace("_", "-")]:
                del merged[old]
            merged[key] = Setting(value, path, key)
