"""GitHub's shells and custom templates."""

from __future__ import annotations

import pytest

from vmrunner.errors import ConfigError
from vmrunner.workflow.shells import resolve_shell


@pytest.mark.parametrize(
    ("shell", "argv", "extension"),
    [
        (None, ["bash", "-e", "/t/s"], ".sh"),
        ("bash", ["bash", "--noprofile", "--norc", "-eo", "pipefail", "/t/s"], ".sh"),
        ("sh", ["sh", "-e", "/t/s"], ".sh"),
        ("python", ["python", "/t/s"], ".py"),
        ("cp {0} action.yml", ["cp", "/t/s", "action.yml"], ""),
        ("bash -l {0}", ["bash", "-l", "/t/s"], ".sh"),
    ],
)
def test_shells(shell: str | None, argv: list[str], extension: str) -> None:
    resolved = resolve_shell(shell)
    assert resolved.argv("/t/s") == argv
    assert resolved.extension == extension


def test_fallbacks() -> None:
    assert resolve_shell(None, has_bash=False).argv("x") == ["sh", "-e", "x"]
    assert resolve_shell("python", has_python=False).argv("x") == ["python3", "x"]


@pytest.mark.parametrize("shell", ["pwsh", "powershell", "cmd", "fish", "pwsh -c {0}"])
def test_unsupported(shell: str) -> None:
    with pytest.raises(ConfigError):
        resolve_shell(shell)
