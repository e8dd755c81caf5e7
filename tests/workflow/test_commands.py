"""Workflow commands and file commands, as GitHub parses them."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmrunner.workflow.commands import (
    CommandReader,
    FileCommandError,
    WorkflowCommand,
    parse_command,
    parse_file_commands,
)


def test_command_with_properties_and_escapes() -> None:
    command = parse_command(
        "::error file=app.js,line=100,col=30,title=a%2Cb%3Ac::Hello%0Aworld %25"
    )
    assert command == WorkflowCommand(
        "error", {"file": "app.js", "line": "100", "col": "30", "title": "a,b:c"}, "Hello\nworld %"
    )


@pytest.mark.parametrize("line", ["plain text", ":: no name", "::", "echo ::set-output name=x::y"])
def test_not_commands(line: str) -> None:
    assert parse_command(line) is None


def test_command_without_properties() -> None:
    assert parse_command("::group::Build it") == WorkflowCommand("group", {}, "Build it")
    assert parse_command("::endgroup::") == WorkflowCommand("endgroup", {}, "")


def test_stop_commands_until_the_token() -> None:
    reader = CommandReader()
    assert reader.feed("::stop-commands::tok") is None
    assert reader.feed("::set-env name=a::b") is None
    assert reader.feed("::tok::") is None
    assert reader.feed("::set-env name=a::b") == WorkflowCommand("set-env", {"name": "a"}, "b")


def test_file_commands_lines_and_heredocs() -> None:
    text = "A=1\nB=x=y\nC<<EOF\nline 1\nline 2\nEOF\nD<<ghadelimiter_1\n\nghadelimiter_1\n"
    assert parse_file_commands(text) == {"A": "1", "B": "x=y", "C": "line 1\nline 2", "D": ""}


@pytest.mark.parametrize("text", ["A<<EOF\nno end\n", "just text\n", "=value\n"])
def test_malformed_file_commands(text: str) -> None:
    with pytest.raises(FileCommandError):
        parse_file_commands(text)


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
values = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
    ),
    max_size=20,
)


@given(st.dictionaries(names, values, max_size=5), st.booleans())
def test_file_commands_round_trip(env: dict[str, str], heredoc: bool) -> None:
    lines = []
    for key, value in env.items():
        if heredoc:
            lines += [f"{key}<<DELIM_x", value, "DELIM_x"]
        else:
            lines.append(f"{key}={value}")
    assert parse_file_commands("\n".join(lines) + "\n") == env


@given(st.text(max_size=200))
def test_parsers_never_raise_anything_else(text: str) -> None:
    parse_command(text)
    CommandReader().feed(text)
    with contextlib.suppress(FileCommandError):
        parse_file_commands(text)
