"""A step's output as lines: bytes from the machine in, decoded lines out, in linear time.

Output arrives in chunks cut anywhere, inside a line or inside a UTF-8 character. Each stream
has an incremental decoder (invalid bytes become U+FFFD) and keeps its unfinished line as a list
of pieces, so that a long line costs one join, not one per chunk (a 200 MB line once took
minutes and a gigabyte that way). A line longer than ``MAX_LINE`` characters is given out in
pieces of at most that many, as it arrives, so memory stays bounded whatever a step prints.
``cut`` may move the end of a piece earlier: the masker uses it so that a secret is never split
across two pieces, where masking each piece alone would miss it.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

#: The longest line kept whole (characters); longer ones become several lines.
MAX_LINE = 64 * 1024

#: ``cut(text, at)``: a position in ``text`` no later than ``at`` to end a piece at.
Cut = Callable[[str, int], int]


def _anywhere(text: str, at: int) -> int:
    return at


class LineSplitter:
    """``feed(stream, chunk)`` and, when the stream ends, ``flush(stream)`` return whole lines
    (without their ``\\n`` and trailing ``\\r``) or pieces of overlong ones."""

    def __init__(self, max_line: int = MAX_LINE, cut: Cut = _anywhere) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._cut = cut
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._pending: dict[str, list[str]] = {}
        self._sizes: dict[str, int] = {}

    def feed(self, stream: str, chunk: bytes) -> list[str]:
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        return self._lines(stream, decoder.decode(chunk))

    def flush(self, stream: str) -> list[str]:
        decoder = self._decoders.pop(stream, None)
        lines = self._lines(stream, decoder.decode(b"", final=True)) if decoder else []
        rest = "".join(self._pending.pop(stream, ())).rstrip("\r")
        self._sizes.pop(stream, None)
        if rest:
            tail, last = self._pieces(rest, self.max_line)
            lines += [*tail, last] if last else tail
        return lines

    def _lines(self, stream: str, text: str) -> list[str]:
        pending = self._pending.setdefault(stream, [])
        out: list[str] = []
        start = 0
        while (end := text.find("\n", start)) >= 0:
            pending.append(text[start:end])
            line = "".join(pending).rstrip("\r")
            pending.clear()
            pieces, last = self._pieces(line, self.max_line)
            out += pieces
            out.append(last)
            start = end + 1
        self._sizes[stream] = 0 if start else self._sizes.get(stream, 0)
        if start < len(text):
            pending.append(text[start:] if start else text)
            self._sizes[stream] += len(text) - start
            if self._sizes[stream] >= 2 * self.max_line:  # room to look past the cut
                pieces, rest = self._pieces("".join(pending), 2 * self.max_line - 1)
                out += pieces
                pending[:] = [rest]
                self._sizes[stream] = len(rest)
        return out

    def _pieces(self, text: str, keep: int) -> tuple[list[str], str]:
        """Pieces of at most ``max_line`` cut from the front of ``text`` until at most ``keep``
        characters are left; those are returned apart."""
        pieces: list[str] = []
        position = 0
        while len(text) - position > keep:
            limit = position + self.max_line
            cut = self._cut(text, limit)
            if not position < cut <= limit:
                cut = limit
            pieces.append(text[position:cut])
            position = cut
        return pieces, text[position:] if position else text
