"""Blobs on disk, written the way the Azure Blob SDK writes them.

The artifact and cache clients upload through ``@azure/storage-blob`` to the signed URL they
are given: one ``Put Blob`` (the whole body at once), or ``Put Block`` for each chunk followed
by ``Put Block List``. A blob appears under its final name only once it is whole (written to a
temporary file, then renamed), so a reader never sees half of one. Bodies are streamed to disk,
never held in memory, and refused past a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from pathlib import Path

from vmrunner.errors import ServiceError

#: Azure's limit on the blocks of one blob.
MAX_BLOCKS = 50_000


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")


async def receive(body: AsyncIterator[bytes], target: Path, limit: int) -> int:
    """Stream ``body`` into ``target`` (replaced whole, or left as it was); its size.

    ``ServiceError`` (413) once the body passes ``limit`` bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _temporary(target)
    size = 0
    try:
        with partial.open("wb") as out:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise ServiceError(f"the body is larger than the limit of {limit} bytes", 413)
                out.write(chunk)
        partial.replace(target)
    except OSError as exc:
        raise ServiceError(f"cannot store the upload: {exc.strerror or exc}", 507) from exc
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return size


def blocks_folder(blob: Path) -> Path:
    return blob.with_name(f"{blob.name}.blocks")


def block_path(blob: Path, block_id: str) -> Path:
    """Where a staged block is kept; the id is the client's (base64), hashed into a name."""
    if not block_id or len(block_id) > 1024:
        raise ServiceError("Put Block needs a blockid of at most 1024 characters")
    return blocks_folder(blob) / hashlib.sha256(block_id.encode()).hexdigest()


def parse_block_list(data: bytes) -> list[str]:
    """The block ids of a ``Put Block List`` body, in order (``Latest``, ``Committed`` and
    ``Uncommitted`` all name staged blocks here)."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise ServiceError(f"the block list is not valid XML: {exc}") from exc
    if root.tag != "BlockList":
        raise ServiceError(f"expected a <BlockList>, got <{root.tag}>")
    ids = [item.text or "" for item in root if item.tag in ("Latest", "Committed", "Uncommitted")]
    if len(ids) > MAX_BLOCKS:
        raise ServiceError(f"a blob has at most {MAX_BLOCKS} blocks, the list names {len(ids)}")
    return ids


def _commit(blob: Path, ids: list[str], limit: int) -> int:
    parts = [block_path(blob, block_id) for block_id in ids]
    missing = [block_id for block_id, part in zip(ids, parts, strict=True) if not part.is_file()]
    if missing:
        raise ServiceError(f"the block list names blocks never uploaded: {missing[:3]}")
    total = sum(part.stat().st_size for part in parts)
    if total > limit:
        raise ServiceError(f"the blob would be {total} bytes, over the limit of {limit}", 413)
    partial = _temporary(blob)
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, 1024 * 1024)
        partial.replace(blob)
    except OSError as exc:
        raise ServiceError(f"cannot store the upload: {exc.strerror or exc}", 507) from exc
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    shutil.rmtree(blocks_folder(blob), ignore_errors=True)
    return total


async def commit(blob: Path, ids: list[str], limit: int) -> int:
    """Join the staged blocks ``ids`` into ``blob`` (whole, atomically); its size."""
    return await asyncio.to_thread(_commit, blob, ids, limit)


def remove(blob: Path) -> None:
    """The blob and any block staged for it, gone (nothing there is fine)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(blob)
    shutil.rmtree(blocks_folder(blob), ignore_errors=True)
