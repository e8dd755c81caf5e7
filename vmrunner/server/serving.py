"""Running the app under uvicorn, with a drain on SIGTERM.

uvicorn's own SIGTERM handling stops accepting connections at once. We want GitHub to be told
(503) while the server drains, and running jobs to get a grace period: the first SIGTERM (or
SIGINT) starts the drain — new webhooks get 503, running runs get ``drain_seconds`` to finish —
and only then is uvicorn asked to stop; leaving the lifespan cancels what still runs (jobs run
their cleanup commands and release their machines). A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn

from vmrunner.server.app import create_app
from vmrunner.server.config import ServerConfig
from vmrunner.server.service import Service

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the service before stopping."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        service = self._service()
        if self._draining or service is None or self._loop is None:
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        log.warning("draining: new webhooks get 503; running jobs have %ss", self.drain_seconds)
        self._loop.call_soon_threadsafe(self._start_drain, service)

    def _start_drain(self, service: Service) -> None:
        service.begin_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(service))

    async def _drain(self, service: Service) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_seconds):
                await service.wait_idle()
        self.should_exit = True

    def _service(self) -> Service | None:
        app: Any = self.config.app
        service = getattr(getattr(app, "state", None), "service", None)
        return service if isinstance(service, Service) else None


def make_server(
    config: ServerConfig, *, log_level: str = "warning", **app_options: Any
) -> DrainingServer:
    app = create_app(config, **app_options)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, lifespan="on",
        access_log=False, timeout_graceful_shutdown=max(1, int(config.drain_seconds) + 5),
    )
    return DrainingServer(uv_config, config.drain_seconds)
