"""Test doubles that speak real HTTP: a fake GitHub REST API, and a helper to serve any app.

``FakeGitHub`` is a small Starlette app on 127.0.0.1 that checks each request as GitHub
documents it (method and path, ``Authorization`` header, required JSON fields and enums for
commit statuses and issue comments, check runs against the JSON Schema of GitHub's "Create a
check run" and "Update a check run" bodies (only with App auth, as on GitHub), a valid App JWT
for installation tokens) and answers bad
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
_TEXT = {"type": "string", "maxLength": 65535}
_ANNOTATION = {
    "type": "object",
    "required": ["path", "start_line", "end_line", "annotation_level", "message"],
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "start_line": {"type": "integer", "minimum": 1},
        "end_line": {"type": "integer", "minimum": 1},
        "start_column": {"type": "integer", "minimum": 1},
        "end_column": {"type": "integer", "minimum": 1},
        "annotation_level": {"enum": ["notice", "warning", "failure"]},
        "message": {"type": "string", "minLength": 1},
        "title": {"type": "string"},
        "raw_details": {"type": "string"},
    },
    "additionalProperties": False,
}


def _check_run_schema(create: bool) -> dict[str, Any]:
    """The request body of "Create a check run" (``create``) or "Update a check run", as GitHub's
    REST reference describes it (stricter in one way: unknown top-level keys are refused)."""
    output_required = ["title", "summary"] if create else ["summary"]
    return {
        "type": "object",
        "required": ["name", "head_sha"] if create else [],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            **({"head_sha": {"type": "string", "pattern": "^[0-9a-f]{40}$"}} if create else {}),
            "details_url": {"type": "string"},
            "external_id": {"type": "string"},
            "status": {
                "enum": ["queued", "in_progress", "completed", "waiting", "requested", "pending"]
            },
            "started_at": {"type": "string", "pattern": _ISO},
            "conclusion": {"enum": ["action_required", "cancelled", "failure", "neutral",
                                    "success", "skipped", "stale", "timed_out"]},
            "completed_at": {"type": "string", "pattern": _ISO},
            "output": {
                "type": "object",
                "required": output_required,
                "properties": {
                    "title": {"type": "string"}, "summary": _TEXT, "text": _TEXT,
                    "annotations": {"type": "array", "maxItems": 50, "items": _ANNOTATION},
                    "images": {"type": "array"},
                },
                "additionalProperties": False,
            },
            "actions": {"type": "array", "maxItems": 3},
        },
        "additionalProperties": False,
        # A conclusion is required with completed_at or the status completed, and the other way.
        "allOf": [
            {"if": {"required": ["completed_at"]}, "then": {"required": ["conclusion"]}},
            {"if": {"properties": {"status": {"const": "completed"}}, "required": ["status"]},
             "then": {"required": ["conclusion"]}},
        ],
    }


_ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
CREATE_CHECK_RUN_SCHEMA = _check_run_schema(create=True)
UPDATE_CHECK_RUN_SCHEMA = _check_run_schema(create=False)
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
    #: Check runs by id: the last body sent, with ``annotations`` accumulated over the requests.
    check_runs: dict[int, dict[str, Any]] = field(default_factory=dict)
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
            Route("/repos/{owner}/{repo}/check-runs", self._create_check, methods=["POST"]),
            Route(
                "/repos/{owner}/{repo}/check-runs/{check_run_id:int}",
                self._update_check,
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

    def check_run_calls(self) -> list[Call]:
        return [call for call in self.calls if "/check-runs" in call.path]

    async def _check_body(
        self, request: Request, schema: dict[str, Any]
    ) -> dict[str, Any] | JSONResponse:
        """The JSON body if it fits ``schema``; else GitHub's answer to it."""
        import jsonschema  # a test dependency

        if not self._authorized(request):
            return self._reject(401, "Requires authentication")
        if not self.app_public_key:
            return self._reject(403, "Resource not accessible by integration (checks need an App)")
        data = await self._json(request)
        if data is None:
            return self._reject(400, "Problems parsing JSON")
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: e.path
        )
        for annotation in (data.get("output") or {}).get("annotations") or []:
            if isinstance(annotation, dict) and "start_column" in annotation and (
                annotation.get("start_line") != annotation.get("end_line")
            ):
                return self._reject(422, "start_column needs start_line == end_line")
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(body)"
            return self._reject(422, f"Invalid request: {where}: {errors[0].message}")
        return data

    async def _create_check(self, request: Request) -> JSONResponse:
        data = await self._check_body(request, CREATE_CHECK_RUN_SCHEMA)
        if isinstance(data, JSONResponse):
            return data
        check_id = next(self._ids)
        self.check_runs[check_id] = self._merge({"id": check_id, "annotations": []}, data)
        self.calls.append(Call("POST", request.url.path, data))
        return JSONResponse(self._public(self.check_runs[check_id]), status_code=201)

    async def _update_check(self, request: Request) -> JSONResponse:
        check = self.check_runs.get(request.path_params["check_run_id"])
        if check is None:
            return self._reject(404, "Not Found")
        data = await self._check_body(request, UPDATE_CHECK_RUN_SCHEMA)
        if isinstance(data, JSONResponse):
            return data
        self._merge(check, data)
        self.calls.append(Call("PATCH", request.url.path, data))
        return JSONResponse(self._public(check))

    @staticmethod
    def _merge(check: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        output = dict(data.get("output") or {})
        check["annotations"] = check["annotations"] + output.pop("annotations", [])
        check.update({k: v for k, v in data.items() if k != "output"})
        if output:
            check["output"] = {**check.get("output", {}), **output}
        return check

    @staticmethod
    def _public(check: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in check.items() if k != "annotations"} | {
            "output": {**check.get("output", {}), "annotations_count": len(check["annotations"])}
        }

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
