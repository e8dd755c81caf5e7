"""Snapshots exported out of and imported into the machine service's VMs, as tar streams; on a
real ``machines serve`` on 127.0.0.1 whose machines are real sandboxes."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.machines.provider_suite import eventually
from tests.server.machines_helpers import LiveService, machine_service
from tests.server.test_machines_api import client
from vmrunner.errors import AgentError, ArchiveRejected, SnapshotError
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.remote import RemoteMachine, RemoteProvider
from vmrunner.machines.snapshot_tar import untar_chunks

LIMIT = 1 << 18


@pytest.fixture
def transfer(tmp_path: Path) -> Path:
    folder = tmp_path / "transfer"
    folder.mkdir()
    return folder


@pytest.fixture
def service(tmp_path: Path, transfer: Path) -> Iterator[LiveService]:
    with machine_service(
        tmp_path / "service.db", max_vms=2, transfer_dir=str(transfer), max_import_bytes=LIMIT
    ) as live:
        yield live


# Files, a read-only folder, links (one absolute: a path of the machine), a hard link.
WRITE = """
set -e
cd "$HOME"
mkdir -p kept/deep locked
echo one > kept/a.txt
printf 'x%.0s' $(seq 1 5000) > kept/deep/b.txt
ln -s a.txt kept/relative
ln -s /etc/hostname kept/absolute
ln kept/a.txt kept/hard
echo frozen > locked/f
chmod 555 locked
"""
READ = """
cd "$HOME"
cat kept/a.txt; wc -c < kept/deep/b.txt; readlink kept/relative kept/absolute
cat kept/hard locked/f; stat -c %a locked; ls later.txt 2>&1 || true
"""


async def test_export_then_import_into_a_fresh_remote_machine(
    service: LiveService, transfer: Path, tmp_path: Path
) -> None:
    provider = RemoteProvider(service.url, service.token("runner"))
    assert provider.capabilities.snapshot_export
    kept = tmp_path / "kept" / "0"
    try:
        first = await provider.allocate(MachineSpec())
        try:
            assert (await first.exec(["sh", "-c", WRITE])).ok
            snapshot = await first.snapshot("after-write")
            assert (await first.exec(["sh", "-c", "echo later > $HOME/later.txt"])).ok
            await first.export_snapshot(snapshot, str(kept))
        finally:
            await provider.release(first)
        assert sorted(p.name for p in kept.parent.iterdir()) == ["0"]  # no partial folder left
        assert (kept / "home" / "kept" / "a.txt").read_text() == "one\n"

        second = await provider.allocate(MachineSpec())
        try:
            await second.import_snapshot(str(kept))
            got = (await second.exec(["sh", "-c", READ])).stdout
        finally:
            await provider.release(second)
    finally:
        await provider.aclose()
    *lines, missing, _ = got.decode().split("\n")
    assert lines == ["one", "5000", "a.txt", "/etc/hostname", "one", "frozen", "555"]
    assert "No such file" in missing  # the snapshot's state, not the machine's last
    assert left(transfer) == []


async def test_refusals_are_clear_and_leave_nothing(
    service: LiveService, transfer: Path, tmp_path: Path
) -> None:
    token = service.token("runner")
    provider = RemoteProvider(service.url, token)
    try:
        machine = await provider.allocate(MachineSpec())
        try:
            with pytest.raises(SnapshotError, match="no snapshot 'nope'"):
                await machine.export_snapshot("nope", str(tmp_path / "out" / "0"))
            assert list((tmp_path / "out").iterdir()) == []
            vm = f"/api/vms/{machine.vm_id}"  # type: ignore[attr-defined]
            async with client(service, token) as http:
                escaping = await http.post(f"{vm}/import", content=tar_of({"../evil": b"x"}))
                assert escaping.status_code == 422, escaping.text
                assert escaping.json()["kind"] == "ArchiveRejected"
                assert "leaves the folder" in escaping.json()["error"]
                linked = tar_of({"home": None, "home/out": "/tmp", "home/out/x": b"x"})
                below_link = await http.post(f"{vm}/import", content=linked)
                assert "below a symbolic link" in below_link.json()["error"]
                big = await http.post(f"{vm}/import", content=tar_of({"home/f": os.urandom(LIMIT)}))
                assert big.status_code == 413, big.text
                assert "larger than this service takes" in big.json()["error"]

                async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted
                    yield tar_of({"home/f": os.urandom(LIMIT)})

                streamed = await http.post(f"{vm}/import", content=chunked())
                assert streamed.status_code == 413, streamed.text
                assert (await http.get("/api/vms/vm-0/snapshots/x/export")).status_code == 404
                other = service.token("someone-else")
                theirs = await http.post(
                    f"{vm}/import", content=tar_of({"home": None}),
                    headers={"Authorization": f"Bearer {other}"},
                )
                assert theirs.status_code == 404
                reader = service.token("looker", "read")
                refused = await http.post(
                    f"{vm}/import", content=tar_of({"home": None}),
                    headers={"Authorization": f"Bearer {reader}"},
                )
                assert refused.status_code == 403
            with pytest.raises(SnapshotError, match="not an exported snapshot"):
                await machine.import_snapshot(str(tmp_path / "out"))  # no home/ in it
        finally:
            await provider.release(machine)
        with pytest.raises(AgentError):  # released: an unknown VM
            await machine.export_snapshot("x", str(tmp_path / "out" / "1"))
    finally:
        await provider.aclose()
    assert left(transfer) == []


async def test_a_client_that_goes_away_mid_export_leaves_nothing(
    service: LiveService, transfer: Path
) -> None:
    token = service.token("runner")
    async with remote_machine(service, token) as machine:
        big = "head -c 64000000 /dev/urandom > $HOME/big.bin"
        assert (await machine.exec(["sh", "-c", big])).ok
        snapshot = await machine.snapshot()
        path = f"/api/vms/{machine.vm_id}/snapshots/{snapshot}/export"
        async with client(service, token) as http, http.stream("GET", path) as response:
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                assert left(transfer)  # exported, being streamed
                break
        await eventually(lambda: not left(transfer), "the export folder removed")


async def test_unpacking_refuses_devices_and_links_out(tmp_path: Path) -> None:
    cases = {
        "a device": tar_of({"home": None, "home/null": ("char", "")}),
        "a hard link out": tar_of({"home": None, "home/h": ("hard", "../../etc/passwd")}),
        "a link at the top": tar_of({"home": "/home"}),
        "twice": tar_of({"home": None, "home/a": b"1", "home/a/": None}),
        "absolute": tar_of({"/home": None}),
    }
    for number, (case, data) in enumerate(cases.items()):
        with pytest.raises(ArchiveRejected):
            await untar_chunks(_one(data), str(tmp_path / str(number)))
        assert not (tmp_path / "etc").exists(), case


def left(folder: Path) -> list[Path]:
    return list(folder.iterdir())


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def tar_of(entries: dict[str, bytes | str | tuple[str, str] | None]) -> bytes:
    """A tar of ``entries``: bytes a file, a str a symbolic link, ("hard", target) a hard link,
    ("char", "") a device, None a folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, value in entries.items():
            info = tarfile.TarInfo(name)
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            elif isinstance(value, tuple):
                kind, info.linkname = value
                info.type = tarfile.LNKTYPE if kind == "hard" else tarfile.CHRTYPE
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return buffer.getvalue()


async def test_a_client_that_goes_away_mid_import_leaves_nothing(
    service: LiveService, transfer: Path
) -> None:
    token = service.token("runner")
    async with remote_machine(service, token) as machine:
        whole = tar_of({"home": None, "home/f": os.urandom(200_000)})

        async def cut_short() -> AsyncIterator[bytes]:
            yield whole[:100_000]
            await eventually(lambda: bool(left(transfer)), "the import folder made")
            raise ConnectionAbortedError("the runner went away")

        async with client(service, token) as http:
            with pytest.raises(ConnectionAbortedError):
                await http.post(f"/api/vms/{machine.vm_id}/import", content=cut_short())
        await eventually(lambda: not left(transfer), "the import folder removed")
        assert (await machine.exec(["true"])).ok  # the VM is still there and usable


@asynccontextmanager
async def remote_machine(service: LiveService, token: str) -> AsyncIterator[RemoteMachine]:
    provider = RemoteProvider(service.url, token)
    try:
        machine = await provider.allocate(MachineSpec())
        assert isinstance(machine, RemoteMachine)
        try:
            yield machine
        finally:
            await provider.release(machine)
    finally:
        await provider.aclose()
