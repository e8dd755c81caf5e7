"""GitHub's filter patterns: the cheat sheet's examples, ordering, escapes, invalid patterns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmrunner.workflow.filters import FilterPattern, compile_pattern, matches_any, validate_pattern

# (pattern, value, matches): the examples of GitHub's "Filter pattern cheat sheet".
CHEAT_SHEET = [
    ("feature/*", "feature/my-branch", True),
    ("feature/*", "feature/your-branch", True),
    ("feature/*", "feature/beta-a/my-branch", False),
    ("feature/**", "feature/beta-a/my-branch", True),
    ("feature/**", "feature/your-branch", True),
    ("feature/**", "feature/mona/the/octocat", True),
    ("main", "main", True),
    ("main", "mainline", False),
    ("releases/mona-the-octocat", "releases/mona-the-octocat", True),
    ("*", "main", True),
    ("*", "releases", True),
    ("*", "releases/v1", False),
    ("**", "all/the/branches", True),
    ("**", "every/tag", True),
    ("*feature", "mona-feature", True),
    ("*feature", "feature", True),
    ("*feature", "ver-10-feature", True),
    ("v2*", "v2", True),
    ("v2*", "v2.0", True),
    ("v2*", "v2.9", True),
    ("v2*", "v3", False),
    ("v[12].[0-9]+.[0-9]+", "v1.10.1", True),
    ("v[12].[0-9]+.[0-9]+", "v2.0.0", True),
    ("v[12].[0-9]+.[0-9]+", "v3.0.0", False),
    ("v[12].[0-9]+.[0-9]+", "v1..0", False),
    ("*", "README.md", True),
    ("*", "server.rb", True),
    ("*.jsx?", "page.js", True),
    ("*.jsx?", "page.jsx", True),
    ("*.jsx?", "page.jsxx", False),
    ("**", "all/the/files.md", True),
    ("*.js", "app.js", True),
    ("*.js", "index.js", True),
    ("*.js", "src/index.js", False),
    ("**.js", "index.js", True),
    ("**.js", "js/index.js", True),
    ("**.js", "src/js/app.js", True),
    ("docs/*", "docs/README.md", True),
    ("docs/*", "docs/file.txt", True),
    ("docs/*", "docs/mona/octocat.txt", False),
    ("docs/**", "docs/README.md", True),
    ("docs/**", "docs/mona/octocat.txt", True),
    ("docs/**", "src/docs/x.md", False),
    ("docs/**/*.md", "docs/README.md", True),
    ("docs/**/*.md", "docs/mona/hello-world.md", True),
    ("docs/**/*.md", "docs/a/markdown/file.md", True),
    ("**/docs/**", "docs/hello.md", True),
    ("**/docs/**", "dir/docs/my-file.txt", True),
    ("**/docs/**", "space/docs/plan/space.doc", True),
    ("**/README.md", "README.md", True),
    ("**/README.md", "js/README.md", True),
    ("**/README.md", "xREADME.md", False),
    ("**/*src/**", "a/src/app.js", True),
    ("**/*src/**", "my-src/code/js/app.js", True),
    ("**/*-post.md", "my-post.md", True),
    ("**/*-post.md", "path/their-post.md", True),
    ("**/migrate-*.sql", "migrate-10909.sql", True),
    ("**/migrate-*.sql", "db/migrate-v1.0.sql", True),
    ("**/migrate-*.sql", "db/sept/migrate-v1.sql", True),
    ("[CB]at", "Cat", True),
    ("[CB]at", "Bat", True),
    ("[CB]at", "Rat", False),
    ("[1-2]00", "100", True),
    ("[1-2]00", "200", True),
    ("[1-2]00", "300", False),
    ("[0-9a-z]", "q", True),
    ("[0-9a-z]", "Q", False),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), CHEAT_SHEET)
def test_cheat_sheet_examples(pattern: str, value: str, expected: bool) -> None:
    assert validate_pattern(pattern) is None
    assert compile_pattern(pattern).matches(value) is expected


@pytest.mark.parametrize(
    ("patterns", "value", "expected"),
    [
        (["*.md", "!README.md"], "hello.md", True),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README.md"], "docs/hello.md", False),
        (["*.md", "!README.md", "README*"], "hello.md", True),
        (["*.md", "!README.md", "README*"], "README.md", True),
        (["*.md", "!README.md", "README*"], "README.doc", True),
        (["releases/**", "!releases/**-alpha"], "releases/10", True),
        (["releases/**", "!releases/**-alpha"], "releases/beta/mona", True),
        (["releases/**", "!releases/**-alpha"], "releases/10-alpha", False),
        (["releases/**", "!releases/**-alpha"], "releases/beta/3-alpha", False),
        (["releases/**", "!releases/**-alpha"], "main", False),
        (["!main"], "main", False),  # a negation excludes only what was included before it
        (["!main"], "dev", False),
        ([], "main", False),
    ],
)
def test_ordered_negation(patterns: list[str], value: str, expected: bool) -> None:
    assert matches_any(patterns, value) is expected


def test_escapes_make_special_characters_literal() -> None:
    assert compile_pattern(r"release\*").matches("release*")
    assert not compile_pattern(r"release\*").matches("release-1")
    assert compile_pattern(r"v1\+build").matches("v1+build")
    assert compile_pattern(r"\!important").matches("!important")
    assert not compile_pattern(r"\!important").negated
    assert compile_pattern(r"what\?").matches("what?")
    assert compile_pattern(r"\[x]").matches("[x]")


def test_leading_bang_negates_and_is_literal_elsewhere() -> None:
    negated = compile_pattern("!docs/**")
    assert negated.negated
    assert negated.matches("docs/a.md")
    assert compile_pattern("a!b").matches("a!b")


def test_regex_characters_are_literal() -> None:
    pattern = compile_pattern("a.b(c)|d^$")
    assert pattern.matches("a.b(c)|d^$")
    assert not pattern.matches("axb(c)|d^$")


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("", "empty pattern"),
        ("!", "empty pattern"),
        ("release/[0-9", "unclosed [ at position 9"),
        ("!release/[0-9", "unclosed [ at position 10"),
        ("[]", "empty []"),
        ("[a-Z]", "invalid range a-Z"),
        ("[9-0]", "invalid range 9-0"),
        ("[._]", "'.' in [...]"),
        ("?abc", "'?' at position 1 has no character before it"),
        ("+abc", "'+' at position 1"),
        ("a??", "'?' at position 3"),
        ("abc\\", "ends with \\"),
    ],
)
def test_invalid_patterns_are_explained(pattern: str, fragment: str) -> None:
    message = validate_pattern(pattern)
    assert message is not None
    assert fragment in message
    assert repr(pattern) in message
    compiled = compile_pattern(pattern)
    assert compiled.regex is None
    assert not compiled.matches(pattern)


def test_quantifier_after_wildcard_changes_nothing() -> None:
    assert validate_pattern("v*+") is None
    assert compile_pattern("v*?").matches("v1.2")
    assert compile_pattern("v**+").matches("v1/2")


def test_compiled_patterns_are_cached() -> None:
    assert compile_pattern("releases/**") is compile_pattern("releases/**")


@given(st.text())
def test_any_text_yields_a_message_or_a_pattern(text: str) -> None:
    message = validate_pattern(text)
    compiled = compile_pattern(text)
    assert isinstance(compiled, FilterPattern)
    assert (message is None) == (compiled.regex is not None)
    if message is not None:
        assert isinstance(message, str)
    compiled.matches(text)
    matches_any([text, "!" + text], text)


_PLAIN = st.text(
    st.characters(blacklist_characters="*?+[]\\!", blacklist_categories=("Cs",)), min_size=1
)


@given(_PLAIN, st.text())
def test_plain_text_matches_only_itself(literal: str, other: str) -> None:
    pattern = compile_pattern(literal)
    assert pattern.matches(literal)
    assert pattern.matches(other) is (other == literal)


@given(st.text())
def test_star_stops_at_slash_and_double_star_does_not(value: str) -> None:
    assert compile_pattern("*").matches(value) is ("/" not in value)
    assert compile_pattern("**").matches(value)


@given(_PLAIN, st.text())
def test_a_later_negation_removes_what_a_pattern_added(literal: str, value: str) -> None:
    assert matches_any(["**", "!" + literal], value) is (value != literal)
    assert matches_any(["**", "!" + literal, literal], value)
