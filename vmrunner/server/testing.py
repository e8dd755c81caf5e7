"""Test doubles that speak real HTTP: a fake GitHub REST API, and a helper to serve any app.

``FakeGitHub`` is a small Starlette app on 127.0.0.1 that checks each request as GitHub
documents it (method and path, ``Authorization`` header, required JSON fields and enums for
commit statuses and issue comments, a valid App JWT for installation tokens) and answers bad
ones as GitHub does (401, 404, 422), so tests of the reporting cannot pass by accident. It
records every accepted request in ``calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

STATUS_STATES = ("error", "failure", "pending", "success")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    json: Any


class _QuietServer(uvicorn.Server):
    """Leaves the process's signal handlers alone (it runs inside a test or a bench)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port for the ``async with``; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _QuietServer(
        uvicorn.Config(app, log_level="warning", lifespan="auto", access_log=False)
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        sock.close()


@dataclass
class FakeGitHub:
    """A fake api.github.com; ``token`` is the one token it accepts, ``app_public_key`` (PEM)
    enables App auth."""

    token: str = "ghs_test_token"
    app_id: str = ""
    app_public_key: str = ""
    calls: list[Call] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Where the API lives: "" as on api.github.com, "/api/v3" as on GitHub Enterprise Server.
    prefix: str = ""
    url: str = ""

    def __post_init__(self) -> None:
        self._ids = itertools.count(1001)
        routes = [
            Route("/repos/{owner}/{repo}/statuses/{sha}", self._status, methods=["POST"]),
            Route(
                "/repos/{owner}/{repo}/issues/{number:int}/comments",
                self._comments,
                methods=["GET", "POST"],
            ),
            Route(
                "/repos/{owner}/{repo}/issues/comments/{comment_id:int}",
                self._update,
                methods=["PATCH"],
            ),
            Route(
                "/app/installations/{installation}/access_tokens",
                self._installation_token,
                methods=["POST"],
            ),
        ]
        self.app = Starlette(routes=[Mount(self.prefix, routes=routes)] if self.prefix else routes)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeGitHub]:
        async with serve_app(self.app) as url:
            self.url = url + self.prefix
            yield self

    def statuses(self) -> list[dict[str, Any]]:
        return [call.json for call in self.calls if "/statuses/" in call.path]

    def _reject(self, status: int, message: str) -> JSONResponse:
        self.rejected.append((status, message))
        return JSONResponse(
            {"message": message, "documentation_url": "https://docs.github.com/rest"},
            status_code=status,
        )

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() in ("bearer", "token") and value == self.token

    async def _json(self, request: Request) -> dict[str, Any] | None:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            data = await request.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def _status(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._reject(401, "Requires authentication")
        if not _SHA.match(request.path_params["sha"]):
            return self._reject(422, "No commit found for SHA")
        data = await self._json(request)
        if data is None:
            return self._reject(400, "Problems parsing JSON")
        if data.get("state") not in STATUS_STATES:
            return self._reject(422, f"state must be one of {', '.join(STATUS_STATES)}")
        for key in ("target_url", "description", "context"):
            if key in data and data[key] is not None and not isinstance(data[key], str):
                return self._reject(422, f"{key} must be a string")
        if len(data.get("description") or "") > 140:
            return self._reject(422, "description is too long (maximum is 140 characters)")
        self.calls.append(Call("POST", request.url.path, data))
        return JSONResponse(
            {
                "id": next(self._ids),
                "state": data["state"],
                "context": data.get("context", "default"),
            },
            status_code=201,
        )

    async def _comments(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._reject(401, "Requires authentication")
        number = request.path_params["number"]
        if request.method == "GET":
            self.calls.append(Call("GET", request.url.path, None))
            return JSONResponse([c for c in self.comments.values() if c["issue"] == number])
        data = await self._json(request)
        if data is None or not isinstance(data.get("body"), str) or not data["body"]:
            return self._reject(422, "body is required")
        comment = {"id": next(self._ids), "issue": number, "body": data["body"]}
        self.comments[comment["id"]] = comment
        self.calls.append(Call("POST", request.url.path, data))
        return JSONResponse(comment, status_code=201)

    async def _update(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._reject(401, "Requires authentication")
        comment = self.comments.get(request.path_params["comment_id"])
        if comment is None:
            return self._reject(404, "Not Found")
        data = await self._json(request)
        if data is None or not isinstance(data.get("body"), str) or not data["body"]:
            return self._reject(422, "body is required")
        comment["body"] = data["body"]
        self.calls.append(Call("PATCH", request.url.path, data))
        return JSONResponse(comment)

    async def _installation_token(self, request: Request) -> JSONResponse:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.app_public_key:
            return self._reject(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(value, self.app_public_key, algorithms=["RS256"])
        except jwt.PyJWTError as exc:
            return self._reject(401, f"A JSON web token could not be decoded: {exc}")
        if (
            str(claims.get("iss")) != self.app_id
            or claims.get("exp", 0) - claims.get("iat", 0) > 600
        ):
            return self._reject(401, "'Issuer' claim ('iss') or expiry is invalid")
        self.calls.append(Call("POST", request.url.path, None))
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        return JSONResponse({"token": self.token, "expires_at": expires}, status_code=201)
