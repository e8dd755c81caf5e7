"""The services served for a test: on their real unix socket, plus a TCP listener on 127.0.0.1
that pipes each connection to it (what a machine's forward does), for node on the host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.services.node import tcp_to_unix
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


def settings_in(folder: Path, **changes: int) -> ServiceSettings:
    return ServiceSettings(folder / "artifacts", folder / "cache", **changes)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve_services(settings_in(tmp_path)) as host:
        assert host is not None
        async with tcp_to_unix(host.socket) as port:
            yield Served(host, port)

