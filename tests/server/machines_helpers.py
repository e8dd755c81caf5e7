"""A real ``machines serve`` on 127.0.0.1 for tests: uvicorn in a thread of the test process,
so that the machines it starts are children of the test (and checked as such)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from vmrunner.server.machines_api import MachineServiceConfig, create_machines_app
from vmrunner.server.tokens import TokenStore
from vmrunner.store import Store


@dataclass
class LiveService:
    url: str
    store_path: Path
    app: Any

    def token(self, name: str, scope: str = "operate") -> str:
        with Store.open(self.store_path) as store:
            return TokenStore(store).create(name, scope)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread's to take
        return None


@contextlib.contextmanager
def machine_service(store_path: Path, **settings: Any) -> Iterator[LiveService]:
    """``machines serve`` with ``settings`` (``MachineServiceConfig`` fields) until the end of
    the ``with``; its store at ``store_path``."""
    settings.setdefault("network", "host")
    config = MachineServiceConfig(store=str(store_path), **settings)
    app = create_machines_app(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to the test
            failure.append(exc)

    thread = threading.Thread(target=serve, name="machine-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if failure or not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the machine service did not start: {failure}")
        time.sleep(0.01)
    try:
        yield LiveService(f"http://127.0.0.1:{port}", store_path, app)
    finally:
        server.should_exit = True
        thread.join(120)
        sock.close()
        if failure:
            raise failure[0]
