"""Normalisation and truncation for learning: the same command matches across runs, any text is
safe."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmrunner.learning.history import signature
from vmrunner.learning.normalise import clean, command_key, noise_free, truncate

ANY_TEXT = st.text(alphabet=st.characters(codec=None), max_size=300)
LIMITS = st.integers(min_value=1, max_value=600)


@given(ANY_TEXT, LIMITS)
def test_normalisation_never_raises_and_is_bounded_valid_utf8_and_idempotent(
    text: str, limit: int
) -> None:
    for normalise in (command_key, noise_free, clean):
        once = normalise(text, limit)
        assert len(once.encode("utf-8")) <= limit
        assert once.encode("utf-8").decode("utf-8") == once
        if normalise is not clean:
            assert normalise(once, limit) == once


@given(st.text(alphabet=st.characters(codec=None)), st.integers(min_value=0, max_value=50))
def test_truncate_cuts_on_character_boundaries(text: str, limit: int) -> None:
    cut = truncate(text, limit)
    data = cut.encode("utf-8")
    assert len(data) <= limit
    replaced = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    assert replaced.startswith(cut)
    assert len(replaced.encode("utf-8")) <= limit or len(data) > limit - 4, (
        "the cut keeps as much as fits"
    )


def test_truncation_of_multibyte_text_keeps_whole_characters() -> None:
    assert truncate("héllo wörld ✓", 3) == "hé"
    assert truncate("✓✓", 4) == "✓"
    assert truncate("\ud800abc", 10) == "\ufffdabc"
    assert clean("a\x1b[31mb\udfff", 100) == "a [31mb\ufffd"


def test_the_same_command_matches_across_runs() -> None:
    one = command_key("pytest  -q   '/tmp/pytest-of-me/run-123/tests'  --run-id 1795696351361")
    two = command_key('pytest -q "/tmp/pytest-of-me/run-987/tests" --run-id 1795696399999')
    assert one == two
    assert command_key("curl https://x/5f0c6d1e-3b2a-4c1d-9e8f-0a1b2c3d4e5f") == command_key(
        "curl https://x/00000000-1111-2222-3333-444444444444"
    )
    assert command_key("git checkout 3f9a1c2d7e") == command_key("git checkout 0b77aa91ff")
    assert command_key("sleep 1") != command_key("sleep 9"), "short numbers are part of the command"
    assert command_key("make build") != command_key("make test")


def test_failure_signatures_survive_noise_and_tell_failures_apart() -> None:
    first = signature(
        "./run-tests.sh",
        ["2024-05-01T10:11:12Z test 17 failed at 0x7f3a9b1c", "exit 1 after 1234 ms"],
    )
    again = signature(
        "./run-tests.sh",
        ["2025-01-09T00:00:59Z test 21 failed at 0x9b01ffee", "exit 1 after 99 ms"],
    )
    other = signature("./run-tests.sh", ["error: disk full"])
    assert first[0] == again[0]
    assert first[0] != other[0]
    assert "<n>" in first[1]
    assert "17" not in first[1]
