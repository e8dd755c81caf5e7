"""Masking replaces secrets, their lines, and add-mask values with ***."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmrunner.runner.masking import MASK, Masker


def test_secret_and_its_lines() -> None:
    masker = Masker(["top-secret", "foo\nbar\nbaz"])
    assert masker.mask("a top-secret b") == f"a {MASK} b"
    assert masker.mask("bar") == MASK
    assert masker.mask("foo\nbar\nbaz") == f"{MASK}"


def test_longest_first_and_blank_ignored() -> None:
    masker = Masker(["abc", "abcdef", "  "])
    assert masker.mask("abcdefabc") == MASK + MASK
    assert masker.mask("  x  ") == "  x  "


@given(
    st.text(min_size=1, max_size=10).filter(
        lambda s: s.strip() == s and s.strip() and "\n" not in s and "\r" not in s
    ),
    st.text(max_size=20),
    st.text(max_size=20),
)
def test_a_secret_never_survives(secret: str, before: str, after: str) -> None:
    masker = Masker([secret])
    assert secret not in masker.mask(before + secret + after).replace(MASK, "\x00")
