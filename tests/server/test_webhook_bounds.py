"""Webhooks under attack, on a real server on 127.0.0.1: nested JSON is a 400, forged bodies cost
bounded memory, slow senders time out without stopping ``/healthz``, a full disk is a 503 and
the delivery can be redelivered, a live session is listed, each delivery logs one line."""

from __future__ import annotations

import asyncio
import copy
import errno
import json
import logging
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_full_disk import small_disk  # noqa: F401 - a fixture
from tests.server.helpers import (
    SECRET,
    config,
    deliver,
    fixture,
    headers,
    live_server,
    make_repo,
    settled,
)
from vmrunner.errors import RequestRejected
from vmrunner.server.bodies import MAX_JSON_DEPTH, parse_payload, read_signed
from vmrunner.server.signatures import sign

HANG = (
    "name: CI\non: push\njobs:\n  hang:\n    runs-on: ubuntu-latest\n    steps:\n      - "
    "run: sleep 120\n"
)
SKIPPED = (
    "on: push\njobs:\n  skipped:\n    if: false\n    runs-on: ubuntu-latest\n    steps:\n"
    "      - run: 'true'\n"
)


def _push(sha: str, **extra: Any) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("push", "04-event.json"))
    payload["after"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    return {**payload, **extra}


def _deliveries(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(record.getMessage().removeprefix("delivery "))
        for record in caplog.records
        if record.name == "vmrunner.server.deliveries"
    ]


async def test_nested_json_is_a_400_never_a_500() -> None:
    async with live_server(config({})) as client:
        for depth in (200_000, MAX_JSON_DEPTH + 1):
            body = b"[" * depth + b"]" * depth
            body = b'{"a":' + body + b"}"
            answer = await client.post("/webhook", content=body, headers=headers("issues", body))
            assert answer.status_code == 400, depth
            assert "nested deeper" in answer.json()["error"]
        fine = json.dumps({"a": [[[{"b": 1}]]], "repository": {"full_name": "x/y"}}).encode()
        ok = await client.post("/webhook", content=fine, headers=headers("issues", fine))
        assert ok.status_code == 202


def test_payload_depth_limit_and_shapes() -> None:
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]  # with the object around it: one level too many
    assert parse_payload(json.dumps({"x": deep[0]}).encode())
    with pytest.raises(RequestRejected, match="nested deeper"):
        parse_payload(json.dumps({"x": deep}).encode())
    for bad in (b"[1]", b"not json", b"\xff"):
        with pytest.raises(RequestRejected) as rejected:
            parse_payload(bad)
        assert rejected.value.status == 400


async def _chunks(count: int, size: int = 65536) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * size


async def test_a_forged_24_mb_body_is_spooled_not_held_in_memory() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(RequestRejected) as forged:
            await read_signed(_chunks(384), SECRET, "sha256=" + "0" * 64, limit=25 << 20,
                              timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert forged.value.status == 401
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB held for a forged 24 MiB body"

    started = False

    async def unsigned() -> AsyncIterator[bytes]:
        nonlocal started
        started = True
        yield b"{}"

    with pytest.raises(RequestRejected) as missing:
        await read_signed(unsigned(), SECRET, None, limit=100, timeout=1)
    assert missing.value.status == 401
    assert not started  # refused before a byte of the body was read

    body = b'{"zen": "ok"}'
    assert await read_signed(_one(body), SECRET, sign(SECRET, body), limit=100, timeout=1) == body
    with pytest.raises(RequestRejected) as large:
        await read_signed(_chunks(2, 80), SECRET, sign(SECRET, b""), limit=100, timeout=1)
    assert large.value.status == 413


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def test_slow_clients_time_out_and_do_not_stop_healthz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vmrunner.server.deliveries")
    async with live_server(config({}, read_timeout=1.0)) as client:
        port = int(str(client.base_url).rsplit(":", 1)[1])
        slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for index in range(100):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if index % 5 == 0:  # a fifth never finish their headers
                writer.write(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
            else:  # the rest send headers and a trickle of the body
                writer.write(
                    b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                    b"X-GitHub-Event: push\r\nX-GitHub-Delivery: slow\r\n"
                    b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n\r\n{"
                )
            await writer.drain()
            slow.append((reader, writer))
        async with asyncio.timeout(10):
            assert (await client.get("/healthz")).status_code == 200
            ping = json.dumps({"zen": "hi"}).encode()
            answer = await client.post("/webhook", content=ping, headers=headers("ping", ping))
            assert answer.status_code == 200
        async with asyncio.timeout(30):
            answers = await asyncio.gather(
                *(reader.readuntil(b"\r\n") for index, (reader, _) in enumerate(slow)
                  if index % 5)
            )
        assert {line.split(b" ")[1] for line in answers} == {b"408"}
        for _, writer in slow:
            writer.close()
    outcomes = [entry["outcome"] for entry in _deliveries(caplog)]
    assert outcomes.count("rejected 408") == 80
    assert "pong" in outcomes


async def test_a_live_session_is_listed_and_deliveries_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vmrunner.server.deliveries")
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": HANG})
    async with live_server(config({"acme/widgets": root})) as client:
        delivery = str(uuid.uuid4())
        await deliver(client, "push", _push(sha), delivery)
        run_id = (await settled(client, delivery))["runs"][0]["run_id"]
        async with asyncio.timeout(60):
            while True:
                answer = await client.get("/api/sessions")
                assert answer.status_code == 200, answer.text
                live = answer.json()["sessions"]
                if live and live[0]["machine_id"]:
                    break
                await asyncio.sleep(0.05)
        assert live[0]["state"] in ("active", "executing")
        assert isinstance(live[0]["idle_for"], float)
        assert answer.json()["statistics"]["active"] == 1
        forged = b"{}"
        await client.post("/webhook", content=forged, headers=headers("push", b"other"))
        assert (await client.post(f"/api/runs/{run_id}/cancel")).status_code == 202
    logged = _deliveries(caplog)
    mine = [entry for entry in logged if entry["delivery"] == delivery]
    assert len(mine) == 1
    assert mine[0] | {"note": ""} == {
        "delivery": delivery, "event": "push", "repository": "acme/widgets",
        "outcome": "dispatched", "runs": [run_id], "note": "",
    }
    assert any(entry["outcome"] == "rejected 401" for entry in logged)


def _fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    with path.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(b"\0" * (1 << 16))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


@pytest.fixture
def full_home(small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:  # noqa: F811
    home = small_disk / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("VMRUNNER_HOME", str(home))
    return home


async def test_a_full_disk_answers_503_and_the_delivery_can_be_redelivered(
    tmp_path: Path, full_home: Path
) -> None:
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": SKIPPED})
    async with live_server(config({"acme/widgets": root})) as client:
        filler = full_home.parent / "filler"
        _fill(filler)
        delivery = str(uuid.uuid4())
        payload = _push(sha, padding="p" * 400_000)  # needs new pages in the database
        refused = await deliver(client, "push", payload, delivery)
        assert refused.status_code == 503, refused.text
        assert "redeliver" in refused.json()["error"]
        assert (await client.get("/healthz")).status_code == 200
        filler.unlink()
        again = await deliver(client, "push", payload, delivery)
        assert again.status_code == 202
        assert (await settled(client, delivery))["status"] == "dispatched"
