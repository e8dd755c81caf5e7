"""The services served for a test: on their real unix socket, plus a TCP listener on 127.0.0.1
that pipes each connection to it (what a machine's forward does), for node on the host."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from vmrunner.services.host import ServiceHost, serve_services
from vmrunner.services.settings import ServiceSettings
from vmrunner.services.tokens import JobGrant


@dataclass
class Served:
    host: ServiceHost
    port: int

    def client(self, grant: JobGrant | None = None) -> httpx.AsyncClient:
        """An HTTP client on the unix socket, with the grant's token (if any)."""
        headers = {"authorization": f"Bearer {self.host.signer.token(grant)}"} if grant else {}
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.host.socket)),
            base_url=f"http://127.0.0.1:{self.port}", headers=headers, timeout=60,
        )

    def env(self, grant: JobGrant) -> dict[str, str]:
        return self.host.action_env(grant, self.port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def tcp_to_unix(socket: Path) -> AsyncIterator[int]:
    """A 127.0.0.1 listener whose connections are piped to ``socket``; its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(str(socket))
        both = [
            asyncio.create_task(_pipe(reader, upstream_writer)),
            asyncio.create_task(_pipe(upstream_reader, writer)),
        ]
        tasks.update(both)
        await asyncio.gather(*both)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def settings_in(folder: Path, **changes: int) -> ServiceSettings:
    return ServiceSettings(folder / "artifacts", folder / "cache", **changes)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve_services(settings_in(tmp_path)) as host:
        assert host is not None
        async with tcp_to_unix(host.socket) as port:
            yield Served(host, port)

