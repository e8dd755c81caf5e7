"""The uncompressed kernel Firecracker boots, dug out of a distribution's ``vmlinuz``.

Firecracker on x86_64 loads an ELF ``vmlinux``; distributions ship a ``bzImage``: real-mode
setup code, then a compressed payload holding that ELF. The boot protocol's header says where
the payload is (``payload_offset``/``payload_length``, boot protocol 2.08+); its first bytes say
how it is compressed. gzip, xz, lzma and bzip2 come from the standard library; LZ4, which
Debian's cloud kernels use, is decoded here (the kernel writes LZ4's legacy frame: a magic,
then blocks of at most 8 MiB each behind its compressed size, then the uncompressed size).
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from vmrunner.errors import ImageError

ELF_MAGIC = b"\x7fELF"
LZ4_LEGACY_MAGIC = 0x184C2102
#: How many places holding a compression magic are tried when the header names none.
MAX_TRIES = 4


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)


def _lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def lz4_block(source: bytes, out: bytearray) -> None:
    """Append the decoding of one LZ4 block (sequences of literals and back-references)."""
    i, end = 0, len(source)
    while i < end:
        token = source[i]
        i += 1
        literals = token >> 4
        if literals == 15:
            while True:
                more = source[i]
                i += 1
                literals += more
                if more != 255:
                    break
        out += source[i : i + literals]
        i += literals
        if i >= end:  # the last sequence has literals only
            return
        offset = source[i] | source[i + 1] << 8
        i += 2
        length = token & 15
        if length == 15:
            while True:
                more = source[i]
                i += 1
                length += more
                if more != 255:
                    break
        length += 4
        start = len(out) - offset
        if offset == 0 or start < 0:
            raise ValueError("an LZ4 match reaches before the start of the output")
        while length > 0:  # a match may overlap what it produces: copy a period at a time
            chunk = out[start : start + min(length, offset)]
            out += chunk
            length -= len(chunk)


def _lz4_legacy(data: bytes) -> bytes:
    out = bytearray()
    i = 4
    while i + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, i)
        if size == LZ4_LEGACY_MAGIC:  # frames may follow one another
            i += 4
            continue
        if size == 0 or i + 4 + size > len(data):
            break  # the trailing uncompressed size, or the end
        lz4_block(data[i + 4 : i + 4 + size], out)
        i += 4 + size
    return bytes(out)


_UNPACKERS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\x1f\x8b\x08", _gzip),
    (b"\xfd7zXZ\x00", _xz),
    (b"\x5d\x00\x00", _lzma),
    (b"BZh", _bzip2),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), _lz4_legacy),
)


def extract_elf(data: bytes) -> bytes | None:
    """The ELF kernel inside a ``bzImage`` (or any blob holding a compressed one), or None."""
    for payload in _payloads(data):
        for magic, unpack in _UNPACKERS:
            if payload.startswith(magic):
                try:
                    unpacked = unpack(payload)
                except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError, IndexError):
                    continue
                if unpacked.startswith(ELF_MAGIC):
                    return unpacked
    return None


def _payloads(data: bytes) -> Iterator[bytes]:
    """Where the payload may start: where the header says first, then where a magic is."""
    if data[0x202:0x206] == b"HdrS" and len(data) >= 0x250:
        setup = ((data[0x1F1] or 4) + 1) * 512
        offset, length = struct.unpack_from("<II", data, 0x248)
        if length:
            yield data[setup + offset : setup + offset + length]
    for magic, _ in _UNPACKERS:
        start = data.find(magic)
        for _ in range(MAX_TRIES):
            if start == -1:
                break
            yield data[start:]
            start = data.find(magic, start + 1)


def vmlinux(kernel: Path, cache_dir: Path) -> Path:
    """An uncompressed ELF kernel for ``kernel`` (itself if it is one), kept in ``cache_dir``."""
    try:
        data = kernel.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read the kernel {kernel}: {exc.strerror}") from exc
    if data.startswith(ELF_MAGIC):
        return kernel
    target = cache_dir / f"vmlinux-{hashlib.sha256(data).hexdigest()[:24]}"
    if target.is_file():
        return target
    elf = extract_elf(data)
    if elf is None:
        raise ImageError(
            f"{kernel} holds no ELF kernel in a payload vmrunner can unpack (gzip, xz, lzma, "
            "bzip2, lz4): Firecracker on x86_64 boots an uncompressed vmlinux"
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = cache_dir / f".{target.name}.{os.getpid()}"
        staging.write_bytes(elf)
        os.replace(staging, target)
    except OSError as exc:
        raise ImageError(f"cannot keep the unpacked kernel in {cache_dir}: {exc}") from exc
    return target
