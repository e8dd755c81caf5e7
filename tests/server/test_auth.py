"""The REST API's tokens on a real server on 127.0.0.1: 401 without a valid token, 403 past
its scope, 200 within it; only hashes kept; a non-loopback server refuses to start without
tokens; ``/healthz`` and ``/docs`` stay open and work offline."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.helpers import api_token, config, live_server
from vmrunner.errors import AccessDenied, ConfigError
from vmrunner.server.config import check_exposure, is_loopback
from vmrunner.server.tokens import SCOPES, TokenStore, bearer, grants
from vmrunner.store import Store

READS = ["/api/runs", "/api/runs/1", "/api/runs/1/logs", "/api/runs/1/artifacts",
         "/api/deliveries/x", "/api/sessions", "/api/pool"]
OPERATES = ["/api/runs/1/cancel", "/api/runs/1/rerun"]


async def test_every_api_route_needs_a_token_of_its_scope() -> None:
    tokens = {scope: api_token(scope, scope) for scope in SCOPES}
    async with live_server(config({}), scope=None) as client:

        async def status(method: str, path: str, token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return (await client.request(method, path, headers=headers)).status_code

        for path in READS:
            none = await client.get(path)
            assert none.status_code == 401, path
            assert none.headers["www-authenticate"].startswith("Bearer")
            assert "error" in none.json()
            assert await status("GET", path, "vmr_forged") == 401
            assert await status("GET", path, tokens["read"]) in (200, 404), path
        assert await status("GET", "/api/runs", tokens["read"]) == 200
        assert await status("GET", "/api/sessions", tokens["read"]) == 200
        for path in OPERATES:
            assert await status("POST", path, None) == 401
            assert await status("POST", path, tokens["read"]) == 403, path
            assert await status("POST", path, tokens["operate"]) == 404, path  # no such run
            assert await status("POST", path, tokens["admin"]) == 404, path
        for method, path in [("GET", "/api/tokens"), ("GET", "/api/config"),
                             ("POST", "/api/tokens?name=x"), ("DELETE", "/api/tokens/x")]:
            assert await status(method, path, tokens["operate"]) == 403, path
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        listed = await client.get("/api/tokens", headers=admin)
        assert {t["name"] for t in listed.json()["tokens"]} >= set(SCOPES)
        assert "hash" not in listed.json()["tokens"][0]
        shown = (await client.get(
            "/api/config", headers={"Authorization": f"Bearer {tokens['admin']}"})).json()
        assert "webhook_secret" not in shown
        assert shown["host"] == "127.0.0.1"

        # created and revoked through the API: the new token works, then stops working
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        made = await client.post("/api/tokens", params={"name": "ci", "scope": "read"},
                                 headers=admin)
        assert made.status_code == 201
        assert await status("GET", "/api/runs", made.json()["token"]) == 200
        assert (await client.delete("/api/tokens/ci", headers=admin)).status_code == 204
        assert await status("GET", "/api/runs", made.json()["token"]) == 401

        # open routes
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "/api/runs/{run_id}/logs" in docs.text
        assert "<script" not in docs.text
        assert "cdn" not in docs.text.lower()


async def test_metrics_can_need_a_token() -> None:
    token = api_token("metrics", "read")
    async with live_server(config({}, metrics_auth=True), scope=None) as client:
        assert (await client.get("/metrics")).status_code == 401
        got = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200
        assert "vmrunner_webhooks" in got.text


def test_only_a_hash_of_each_token_is_kept() -> None:
    with Store.open() as store:
        tokens = TokenStore(store)
        token = tokens.create("deploy", "operate")
        assert token.startswith("vmr_")
        assert len(token) > 40
        with pytest.raises(ConfigError, match="exists"):
            tokens.create("deploy", "read")
        with pytest.raises(ConfigError, match="scope"):
            tokens.create("other", "root")
        with pytest.raises(ConfigError, match="token name"):
            tokens.create("bad name", "read")
        assert tokens.check(token, "operate").name == "deploy"
        with pytest.raises(AccessDenied) as denied:
            tokens.check(token, "admin")
        assert denied.value.status == 403
        path = store.path
    raw = sqlite3.connect(path).execute("SELECT * FROM api_tokens").fetchall()
    assert token not in repr(raw)
    assert token[4:] not in Path(path).read_bytes().decode("latin-1")
    with Store.open() as store:
        TokenStore(store).revoke("deploy")
        with pytest.raises(AccessDenied):
            TokenStore(store).check(token, "read")
        with pytest.raises(ConfigError, match="no token"):
            TokenStore(store).revoke("deploy")


def test_scopes_and_bearer_headers() -> None:
    assert grants("admin", "read")
    assert grants("operate", "operate")
    assert not grants("read", "operate")
    assert not grants("bogus", "read")
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer(None) is None
    assert bearer("Bearer ") is None


def test_a_server_beyond_loopback_needs_a_token() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("ci.example.com")
    check_exposure("127.0.0.1", False)
    check_exposure("0.0.0.0", True)
    check_exposure("0.0.0.0", False, allow=True)
    with pytest.raises(ConfigError, match="vmrunner tokens create"):
        check_exposure("0.0.0.0", False)
    env = {**os.environ, "VMRUNNER_WEBHOOK_SECRET": "s"}
    done = subprocess.run(
        [sys.executable, "-m", "vmrunner", "serve", "--host", "0.0.0.0", "--port", "1",
         "--repo", "a/b=/nowhere"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "no API token exists" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_tokens_command_creates_lists_and_revokes() -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmrunner", "tokens", *args],
                              capture_output=True, text=True, timeout=60)

    made = cli("create", "ci", "--scope", "operate")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    with Store.open() as store:
        assert TokenStore(store).check(token, "operate").scope == "operate"
    listed = cli("list")
    assert "ci" in listed.stdout
    assert "operate" in listed.stdout
    assert token not in listed.stdout
    assert cli("create", "ci").returncode == 1
    assert cli("revoke", "ci").returncode == 0
    gone = cli("revoke", "ci")
    assert gone.returncode == 1
    assert "no token named 'ci'" in gone.stderr
    assert cli("list", "--json").stdout.strip().endswith("}")
