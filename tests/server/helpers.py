"""Helpers for the server tests: local git repositories, signed deliveries, a live server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import shared_dir
from vmrunner.server.app import create_app
from vmrunner.server.config import RepositoryConfig, ServerConfig
from vmrunner.server.signatures import sign
from vmrunner.server.testing import serve_app
from vmrunner.server.tokens import TokenStore
from vmrunner.store import Store

SECRET = b"it's a secret to everybody"
FIXTURES = shared_dir() / "fixtures" / "github-webhooks"


def git(root: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "HOME": str(root), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_repo(root: Path, files: Mapping[str, str], branch: str = "master") -> str:
    """A git repository at ``root`` with ``files`` committed on ``branch``; the commit's sha."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", branch)
    return commit(root, files)


def commit(root: Path, files: Mapping[str, str], message: str = "change") -> str:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", message)
    return git(root, "rev-parse", "HEAD")


def fixture(event: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / event / name).read_text())


def headers(
    event: str, body: bytes, delivery: str | None = None, secret: bytes = SECRET
) -> dict[str, str]:
    return {
        "X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body), "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
    }


def config(repos: Mapping[str, Path | str], **settings: Any) -> ServerConfig:
    repositories = {name: RepositoryConfig(name, str(where)) for name, where in repos.items()}
    settings.setdefault("concurrent_runs", 2)
    settings.setdefault("drain_seconds", 5.0)
    return ServerConfig(webhook_secret=SECRET, repositories=repositories, **settings)


def api_token(name: str = "tests", scope: str = "admin") -> str:
    """A new API token in this test's store (VMRUNNER_HOME)."""
    with Store.open() as store:
        return TokenStore(store).create(name, scope)


@contextlib.asynccontextmanager
async def live_server(
    server_config: ServerConfig, *, scope: str | None = "admin", **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app under uvicorn on a free loopback port; an httpx client for it, sending a token of
    ``scope`` (None: no token)."""
    name = f"tests-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {api_token(name, scope)}"} if scope is not None else None
    async with (
        serve_app(create_app(server_config, **options)) as url,
        httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as client,
    ):
        yield client


async def run_logs(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """The run's log lines, from the streamed NDJSON of ``GET /api/runs/{id}/logs``."""
    response = await client.get(f"/api/runs/{run_id}/logs")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


async def deliver(
    client: httpx.AsyncClient,
    event: str,
    payload: Mapping[str, Any] | bytes,
    delivery: str | None = None,
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await client.post("/webhook", content=body, headers=headers(event, body, delivery))


async def settled(client: httpx.AsyncClient, delivery: str, patience: float = 60) -> dict[str, Any]:
    """The delivery once the dispatcher decided (its runs queued or none)."""
    async with asyncio.timeout(patience):
        while True:
            response = await client.get(f"/api/deliveries/{delivery}")
            if response.status_code == 200 and response.json()["status"] != "received":
                return response.json()
            await asyncio.sleep(0.05)


async def finished(client: httpx.AsyncClient, run_id: str, patience: float = 120) -> dict[str, Any]:
    """The run once it completed (or was interrupted)."""
    async with asyncio.timeout(patience):
        while True:
            response = await client.get(f"/api/runs/{run_id}")
            data = response.json()
            if response.status_code == 200 and data["server"]["state"] in (
                "completed",
                "interrupted",
            ):
                return {**data, "logs": await run_logs(client, run_id)}
            await asyncio.sleep(0.05)
