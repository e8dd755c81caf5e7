"""Hypothesis strategies for expressions and contexts shaped like GitHub's."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

#: Context names the generated expressions use (mixed case on purpose: lookups ignore it).
CONTEXT_NAMES = ("github", "Matrix", "env", "needs")
#: Object keys. No integer-like ones: JavaScript objects list those first, GitHub's runner
#: keeps insertion order, and the oracle is JavaScript.
KEYS = ("a", "A", "b", "foo", "Foo", "bar-baz", "x_1", "sha", "event", "")
ACCESS_KEYS = (*KEYS, "0", "1", "missing")

_string_chars = st.sampled_from(list("abAB xyz019.-_'\"{}\\/ıİßé\u00a0\t\n😊"))
short_strings = st.text(_string_chars, max_size=8) | st.sampled_from(
    [
        "",
        " ",
        "0",
        "1",
        "-1",
        "1.5",
        "0x1F",
        " 2 ",
        "true",
        "null",
        "NaN",
        "Infinity",
        "1e3",
        "abc",
        "ABC",
        "{}",
        "[1]",
    ]
)
numbers = st.one_of(
    st.integers(-1000, 1000).map(float),
    st.sampled_from(
        [
            0.5,
            -0.5,
            0.1,
            1.25,
            1e21,
            1.5e-7,
            123456789.123,
            2**53 + 2.0,
            1e-20,
            -0.0,
            0.30000000000000004,
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | numbers | short_strings,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=6,
)

_containers = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), json_values, min_size=1, max_size=3),
    st.lists(json_values, min_size=1, max_size=3),
    json_values,
)
#: Mostly every context present (so names resolve), sometimes one missing.
contexts = st.fixed_dictionaries(
    {name: _containers for name in CONTEXT_NAMES[:3]}, optional={CONTEXT_NAMES[3]: _containers}
)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


number_literals = st.one_of(
    st.integers(0, 10**6).map(str),
    st.integers(-1000, -1).map(str),
    st.sampled_from(
        [
            "0",
            "-0",
            "1.5",
            ".5",
            "-.5",
            "+1",
            "1e3",
            "1E-2",
            "0x1f",
            "0xFF",
            "0o17",
            "0b101",
            "NaN",
            "Infinity",
            "-Infinity",
            "1.",
            "007",
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
string_literals = short_strings.map(_quote)
literals = st.one_of(
    st.sampled_from(["null", "true", "false"]),
    number_literals,
    string_literals,
    st.sampled_from(
        [
            'fromJSON(\'[1, "a", [true], {"b": null}]\')',
            'fromJSON(\'{"a": {"b": [1, 2]}, "A": 3}\')',
        ]
    ),
)


@st.composite
def accessors(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        parts.append(
            draw(
                st.one_of(
                    st.sampled_from(KEYS[:-1]).map(lambda key: "." + key),
                    st.sampled_from(ACCESS_KEYS).map(lambda key: "[" + _quote(key) + "]"),
                    st.integers(0, 3).map(lambda index: f"[{index}]"),
                    st.sampled_from([".*", "[*]", "[null]", "[true]", "['1']", "[-1]", "[1.7]"]),
                )
            )
        )
    return "".join(parts)


named_values = st.builds(
    lambda name, access: name + access, st.sampled_from(CONTEXT_NAMES), accessors()
)

_OPERATORS = ["==", "!=", "<", "<=", ">", ">=", "&&", "||"]


def _spell(name: str, variant: int) -> str:
    return [name, name.lower(), name.upper()][variant]


def _compound(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def call(name: str, arity: int) -> st.SearchStrategy[str]:
        return st.builds(
            lambda variant, args: f"{_spell(name, variant)}({', '.join(args)})",
            st.integers(0, 2),
            st.lists(children, min_size=arity, max_size=arity),
        )

    predicates = children | st.builds(
        lambda left, op, right: f"{left} {op} {right}",
        children,
        st.sampled_from(["==", "!=", "<", ">="]),
        children,
    )
    format_strings = st.sampled_from(
        [
            "'{0}'",
            "'{0}-{1}'",
            "'{{0}}'",
            "'}}{0}{{'",
            "'{1}'",
            "'{'",
            "'}'",
            "'{x}'",
            "'{0:x}'",
            "'a{0}b{0}'",
            "''",
        ]
    )
    return st.one_of(
        children.map(lambda inner: f"({inner})"),
        children.map(lambda inner: f"!{inner}"),
        st.builds(
            lambda left, op, right, space: f"{left}{space}{op}{space}{right}",
            children,
            st.sampled_from(_OPERATORS),
            children,
            st.sampled_from(["", " ", "  "]),
        ),
        call("contains", 2),
        call("startsWith", 2),
        call("endsWith", 2),
        call("join", 1),
        call("join", 2),
        call("toJSON", 1),
        call("fromJSON", 1),
        children.map(lambda inner: f"fromJSON(toJSON({inner}))"),
        st.builds(
            lambda template, args: f"format({', '.join([template, *args])})",
            format_strings,
            st.lists(children, min_size=1, max_size=2),
        ),
        st.builds(
            lambda pairs, default: "case("
            + ", ".join(f"{p}, {v}" for p, v in pairs)
            + f", {default})",
            st.lists(st.tuples(predicates, children), min_size=1, max_size=2),
            children,
        ),
        st.builds(lambda inner, access: f"({inner}){access}", children, accessors()),
        st.builds(lambda inner, access: f"fromJSON({inner}){access}", children, accessors()),
    )


expressions: st.SearchStrategy[str] = st.recursive(
    st.one_of(literals, named_values), _compound, max_leaves=8
)
