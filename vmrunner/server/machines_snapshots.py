"""Snapshots out of and into the service's VMs as tar streams: what ``--provider remote`` needs
for ``export_snapshot`` and ``import_snapshot`` (``vmrunner run --snapshot``, ``vmrunner rerun``).

Export: the machine's own ``export_snapshot`` writes into a private folder of the service (mode
0700, in ``transfer_dir``), streamed as a tar (``machines/snapshot_tar.py``) and removed when the
response ends, however it ends (finished, failed, the client gone). Import: the request body is
unpacked as it arrives into such a folder, refused past ``limit`` bytes (413) or when unsafe
(422), given to the machine's ``import_snapshot``, and removed.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from vmrunner.errors import ArchiveRejected, TransferError
from vmrunner.machines.base import Machine
from vmrunner.machines.local import shielded
from vmrunner.machines.snapshot_tar import remove_tree, tar_chunks, untar_chunks

#: The snapshot's folder inside the private one (``export_snapshot`` creates its destination).
SNAPSHOT = "snapshot"


class FolderResponse(StreamingResponse):
    """A tar of ``folder``'s snapshot, streamed; ``folder`` is removed when the response ends."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.chunks = tar_chunks(os.path.join(folder, SNAPSHOT))
        super().__init__(self.chunks, media_type="application/x-tar")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await shielded(self._clean())

    async def _clean(self) -> None:
        await self.chunks.aclose()  # its thread stops reading the folder first
        await asyncio.to_thread(remove_tree, self.folder)


async def exported(machine: Machine, snapshot_id: str, transfer_dir: str | None) -> FolderResponse:
    """``snapshot_id`` of ``machine`` exported, as a response that streams it."""
    folder = await asyncio.to_thread(tempfile.mkdtemp, prefix="vmr-export-", dir=transfer_dir)
    try:
        await machine.export_snapshot(snapshot_id, os.path.join(folder, SNAPSHOT))
    except BaseException:
        await shielded(asyncio.to_thread(remove_tree, folder))
        raise
    return FolderResponse(folder)


async def imported(
    machine: Machine, body: AsyncIterator[bytes], length: str | None, limit: int,
    transfer_dir: str | None,
) -> None:
    """Unpack the tar ``body`` (``length`` bytes, if said) and import it into ``machine``."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    folder = await asyncio.to_thread(tempfile.mkdtemp, prefix="vmr-import-", dir=transfer_dir)
    try:
        await untar_chunks(_bounded(body, limit), os.path.join(folder, SNAPSHOT))
        await machine.import_snapshot(os.path.join(folder, SNAPSHOT))
    finally:
        await shielded(asyncio.to_thread(remove_tree, folder))


async def _bounded(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            yield chunk
    except ClientDisconnect as exc:  # one of ours: answered (to no one), not logged as a crash
        raise TransferError("the client went away during the import") from exc


def _too_large(limit: int) -> ArchiveRejected:
    return ArchiveRejected(
        f"the snapshot is larger than this service takes ({limit} bytes: --max-import-mib)", 413
    )
