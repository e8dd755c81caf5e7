"""``LineSplitter``: lines from chunks cut anywhere, overlong lines in bounded pieces, secrets
never split across pieces."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from vmrunner.runner.masking import Masker
from vmrunner.workflow.lines import MAX_LINE, LineSplitter


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _split(splitter: LineSplitter, chunks: list[bytes], stream: str = "stdout") -> list[str]:
    out: list[str] = []
    for chunk in chunks:
        out += splitter.feed(stream, chunk)
    return out + splitter.flush(stream)


def _expected(data: bytes) -> list[str]:
    *lines, rest = data.decode(errors="replace").split("\n")
    lines = [line.rstrip("\r") for line in lines]
    return lines + ([rest.rstrip("\r")] if rest.rstrip("\r") else [])


_text = st.text(alphabet=st.sampled_from("ab\r\né€"), max_size=200).map(str.encode)


@given(_text, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_short_lines_come_out_whole_however_the_chunks_are_cut(data, cuts):
    assert _split(LineSplitter(), _chunks(data, cuts)) == _expected(data)


#: Text whose carriage returns all end lines (CRLF): a lone ``\r`` inside an overlong line is
#: its content, given out with the piece it falls in, where the short-line oracle would strip it.
_crlf_text = st.lists(st.sampled_from(["a", "b", "\r\n", "\n", "é", "€"]), max_size=100).map(
    lambda parts: "".join(parts).encode()
)


@given(_crlf_text, st.lists(st.integers(min_value=0, max_value=400), max_size=12),
       st.integers(min_value=1, max_value=7))
def test_long_lines_become_bounded_pieces_that_join_back(data, cuts, limit):
    pieces = _split(LineSplitter(max_line=limit), _chunks(data, cuts))
    assert all(len(piece) <= limit for piece in pieces)
    assert "".join(pieces) == "".join(_expected(data))


def test_invalid_utf8_and_characters_cut_between_chunks():
    splitter = LineSplitter()
    euro = "€".encode()
    assert splitter.feed("stdout", b"x" + euro[:1]) == []
    assert splitter.feed("stdout", euro[1:] + b"\xff\n") == ["x€\ufffd"]
    assert splitter.feed("stderr", b"err") == []  # streams are apart
    assert splitter.flush("stdout") == []
    assert splitter.flush("stderr") == ["err"]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["SECRET", "SEC", "x", "xy", "S"]), max_size=60),
       st.integers(min_value=7, max_value=12),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_a_secret_is_never_split_across_pieces(parts, limit, cuts):
    masker = Masker(["SECRET"])
    data = "".join(parts).encode()
    pieces = _split(LineSplitter(max_line=limit, cut=masker.cut), _chunks(data, cuts))
    assert "".join(pieces) == data.decode()
    assert "SECRET" not in "".join(masker.mask(piece) for piece in pieces)


def test_a_20_mb_line_is_given_out_as_it_arrives_in_bounded_pieces():
    splitter = LineSplitter(cut=Masker(["hidden"]).cut)
    chunk = b"y" * 65536
    total = 0
    for _ in range(320):  # 20 MiB, no newline
        pieces = splitter.feed("stdout", chunk)
        assert all(len(piece) <= MAX_LINE for piece in pieces)
        total += sum(map(len, pieces))
    assert total >= 320 * 65536 - 2 * MAX_LINE  # never more than two pieces' worth held back
    total += sum(map(len, splitter.flush("stdout")))
    assert total == 320 * 65536
