"""Digging the ELF kernel Firecracker boots out of compressed kernels, real and made up."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from pathlib import Path

import pytest

from vmrunner.errors import ImageError
from vmrunner.machines.vmlinux import LZ4_LEGACY_MAGIC, extract_elf, lz4_block, vmlinux

ELF = b"\x7fELF" + bytes(range(256)) * 16


def bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A kernel image as the boot protocol lays it out: setup sectors, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 100, len(payload))
    return bytes(setup) + b"\x00" * 100 + payload + b"trailing code"


def test_lz4_block_literals_and_overlapping_matches() -> None:
    out = bytearray()
    # "ab", then a match 2 back of length 8 (it overlaps what it writes), then "!" alone.
    lz4_block(bytes([0x24]) + b"ab" + b"\x02\x00" + bytes([0x10]) + b"!", out)
    assert out == b"ababababab!"
    long = bytearray()
    # 20 literals (15 + 5 in an extra byte), then a 23-byte match (4 + 15 + 4) 1 back.
    lz4_block(bytes([0xFF, 5]) + b"x" * 19 + b"y" + b"\x01\x00" + bytes([4]) + bytes([0x00]), long)
    assert long == b"x" * 19 + b"y" * 24
    with pytest.raises(ValueError, match="before the start"):
        lz4_block(bytes([0x10]) + b"a" + b"\x05\x00" + bytes([0x00]), bytearray())


def lz4_literals(data: bytes) -> bytes:
    """A valid LZ4 block holding ``data`` as literals only (enough to make test kernels)."""
    length = len(data) - 15
    extra = b"\xff" * (length // 255) + bytes([length % 255])
    return bytes([0xF0]) + extra + data


@pytest.mark.parametrize(
    "pack",
    [
        gzip.compress,
        lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
        lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
        bz2.compress,
        lambda data: (
            struct.pack("<II", LZ4_LEGACY_MAGIC, len(lz4_literals(data)))
            + lz4_literals(data)
            + struct.pack("<I", len(data))
        ),
    ],
    ids=["gzip", "xz", "lzma", "bzip2", "lz4"],
)
def test_the_payload_the_header_names_is_unpacked(pack) -> None:
    assert extract_elf(bzimage(pack(ELF))) == ELF


def test_a_payload_is_found_without_a_header() -> None:
    assert extract_elf(b"MZ" + os.urandom(300) + gzip.compress(ELF) + b"\x00" * 40) == ELF
    assert extract_elf(b"MZ" + b"\x00" * 300) is None
    assert extract_elf(bzimage(gzip.compress(b"not an ELF"))) is None


def test_vmlinux_is_kept_and_an_elf_is_used_as_it_is(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(lzma.compress(ELF, format=lzma.FORMAT_XZ)))
    cache = tmp_path / "cache"
    unpacked = vmlinux(kernel, cache)
    assert unpacked.read_bytes() == ELF
    assert vmlinux(kernel, cache) == unpacked
    assert vmlinux(unpacked, cache) == unpacked
    kernel.write_bytes(b"MZ" + b"\x00" * 100)
    with pytest.raises(ImageError, match="holds no ELF kernel"):
        vmlinux(kernel, cache)
    with pytest.raises(ImageError, match="cannot read the kernel"):
        vmlinux(tmp_path / "missing", cache)


def test_the_kernel_of_the_shared_test_image(tmp_path: Path) -> None:
    """Debian's cloud kernel (LZ4 inside), as the images module builds it."""
    from tests.machines.qemu_fixtures import qemu_image

    image = qemu_image()
    unpacked = vmlinux(image.kernel, tmp_path)
    with open(unpacked, "rb") as file:
        header = file.read(64)
    assert header[:4] == b"\x7fELF"
    assert header[4] == 2  # 64-bit
    assert struct.unpack_from("<H", header, 18)[0] == 62  # x86-64
