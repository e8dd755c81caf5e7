"""Dotenv files for secrets, variables and env."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmrunner.cli.dotenv import parse_dotenv
from vmrunner.errors import ConfigError


def test_forms() -> None:
    text = (
        '# comment\n\nA=1\nexport B = two words\nC="foo\\nbar"\nD=\'lit\\n\'\nJ={"foo": '
        '"bar"}\nM="x\ny"\n'
    )
    assert parse_dotenv(text) == {
        "A": "1",
        "B": "two words",
        "C": "foo\nbar",
        "D": "lit\\n",
        "J": '{"foo": "bar"}',
        "M": "x\ny",
    }


@pytest.mark.parametrize("text", ["no equals", 'A="open'])
def test_errors_name_the_line(text: str) -> None:
    with pytest.raises(ConfigError, match=":1:"):
        parse_dotenv(text, "f.env")


@given(st.text(max_size=100))
def test_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_dotenv(text)
