"""The web app: ``POST /webhook``, the REST API, ``/healthz`` and ``/metrics``.

``create_app(config)`` declares the routes; its ``lifespan`` enters the ``Service`` (task group,
session manager, pool, reaper) for as long as the server runs. Every endpoint is ``async`` so
that it runs on the event loop that owns the service (the store is single-threaded).

A webhook is checked in this order, and nothing else happens when a check fails: draining
(503), ``Content-Length`` over the limit (413), no signature header (401), the body read as a
stream within ``read_timeout`` (408), cut off at the limit (413) and signed as it arrives (401),
JSON within the depth limit (400; see ``bodies``). Then ``ping`` is answered, and any other
event is recorded and acknowledged (202) while the dispatcher decides, later, what it runs; a
store that cannot record it (a full disk) answers 503 with the reason, so GitHub shows the
delivery as failed and it can be redelivered. One structured log line tells each delivery's
fate (``vmrunner.server.deliveries``).

Every ``/api/...`` route needs a bearer token (``tokens``, ``auth``): ``read`` to look,
``operate`` to cancel or re-run, ``admin`` for tokens and the configuration. ``/webhook`` has its
HMAC, ``/healthz`` and ``/docs`` are open, ``/metrics`` too unless ``metrics_auth``. A run's
logs are streamed (``GET /api/runs/{id}/logs``, NDJSON read a page at a time), never built whole
in memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from vmrunner.errors import (
    AccessDenied,
    ArtifactNotFound,
    ConfigError,
    RequestRejected,
    RunNotFound,
    SessionError,
    StoreError,
)
from vmrunner.machines.base import Provider
from vmrunner.runner.masking import Masker
from vmrunner.server.auth import access_denied, require
from vmrunner.server.bodies import parse_payload, read_signed
from vmrunner.server.config import ServerConfig
from vmrunner.server.dashboard import Dashboard, ServiceSource, add_dashboard
from vmrunner.server.docs import docs_page
from vmrunner.server.service import Service, log_delivery, repository_of
from vmrunner.server.tokens import TokenStore
from vmrunner.services.artifacts import Artifact, ArtifactStore
from vmrunner.services.settings import ServiceSettings
from vmrunner.sessions import Session

READ = [Depends(require("read"))]
OPERATE = [Depends(require("operate"))]
ADMIN = [Depends(require("admin"))]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _masked(value: Any, masker: Masker) -> Any:
    """``value`` with every string masked (the runner masked already; this also hides the server's
    own secrets)."""
    if isinstance(value, str):
        return masker.mask(value)
    if isinstance(value, dict):
        return {key: _masked(item, masker) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item, masker) for item in value]
    return value


def _session_json(session: Session) -> dict[str, Any]:
    try:
        machine_id = session.machine.id
    except SessionError:
        machine_id = ""
    return {
        "id": session.id,
        "state": session.state.value,
        "vm_type": session.spec.vm_type,
        "machine_id": machine_id,
        "idle_for": session.idle_for(),
    }


def _artifact_store() -> ArtifactStore:
    settings = ServiceSettings.from_env()
    return ArtifactStore(settings.artifacts_dir, settings.retention_days)


def _artifact_json(artifact: Artifact) -> dict[str, Any]:
    return {k: v for k, v in artifact.to_json().items() if k != "path"}


def create_app(
    config: ServerConfig, *, provider: Provider | None = None, github_transport: Any = None
) -> FastAPI:
    """The app for ``config``; ``provider`` and ``github_transport`` are for tests and benches."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Service(config, provider=provider, github_transport=github_transport) as service:
            app.state.service = service
            app.state.tokens = TokenStore(service.store)
            app.state.dashboard = Dashboard(
                ServiceSource(service),
                lambda token, scope: app.state.tokens.check(token, scope).scope,
                secure=config.base_url.startswith("https://"),
            )
            yield

    app = FastAPI(
        title="vmrunner",
        summary="Runs GitHub Actions workflows from webhooks, one machine per job.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's page loads its assets from a CDN: ours works offline
        redoc_url=None,
    )
    app.add_exception_handler(AccessDenied, access_denied)
    add_dashboard(app)  # the pages at /, /runs/..., /sessions, /pool (server/dashboard.py)

    @app.exception_handler(StoreError)
    async def store_failed(request: Request, exc: StoreError) -> Response:
        return _error(503, f"the state database failed, try again: {exc}")

    def service_of(request: Request) -> Service:
        service: Service = request.app.state.service
        return service

    @app.post("/webhook", status_code=202)
    async def webhook(request: Request) -> Response:
        """Receive one GitHub webhook delivery."""
        service = service_of(request)
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        try:
            return await _webhook(request, service, event, delivery)
        except RequestRejected as exc:
            if exc.status == 401:
                service.metrics.webhooks.labels("", "unauthorized").inc()
            log_delivery(delivery, event, "", f"rejected {exc.status}", note=str(exc))
            return _error(exc.status, str(exc))

    async def _webhook(request: Request, service: Service, event: str, delivery: str) -> Response:
        if service.draining:
            raise RequestRejected("the server is shutting down", 503)
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise RequestRejected("invalid Content-Length")
        if length is not None and int(length) > config.max_body_bytes:
            raise RequestRejected(f"the body exceeds {config.max_body_bytes} bytes", 413)
        body = await read_signed(
            request.stream(), config.webhook_secret, request.headers.get("x-hub-signature-256"),
            limit=config.max_body_bytes, timeout=config.read_timeout,
        )
        if not event or not delivery:
            raise RequestRejected("X-GitHub-Event and X-GitHub-Delivery are required")
        if event == "ping":
            service.metrics.webhooks.labels(event, "pong").inc()
            log_delivery(delivery, event, "", "pong")
            return JSONResponse({"pong": True, "delivery": delivery}, status_code=200)
        payload = parse_payload(body)
        try:
            accepted = service.accept(delivery, event, body, payload)
        except StoreError as exc:
            raise RequestRejected(
                f"cannot record the delivery, redeliver it later: {exc}", 503
            ) from exc
        service.metrics.webhooks.labels(event, accepted.verdict).inc()
        if accepted.verdict != "queued":  # queued ones are logged once dispatched
            log_delivery(
                delivery, event, repository_of(payload), accepted.verdict, note=accepted.note
            )
        status = {"queued": 202, "ignored": 202, "duplicate": 200, "draining": 503}[
            accepted.verdict
        ]
        return JSONResponse(
            {"delivery": delivery, "status": accepted.verdict, "note": accepted.note},
            status_code=status,
        )

    @app.get("/api/deliveries/{delivery_id}", dependencies=READ)
    async def get_delivery(delivery_id: str, request: Request) -> Response:
        """What became of one delivery: its status and the runs it queued."""
        found = service_of(request).delivery_json(delivery_id)
        return (
            JSONResponse(found) if found is not None else _error(404, f"no delivery {delivery_id}")
        )

    @app.get("/api/runs", dependencies=READ)
    async def list_runs(request: Request, limit: int = 50) -> Response:
        """The newest runs the server queued, with their state and conclusion."""
        service = service_of(request)
        return JSONResponse(
            {"runs": [run.to_json() for run in service.state.runs(limit=max(1, min(limit, 1000)))]}
        )

    @app.get("/api/runs/{run_id}", dependencies=READ)
    async def get_run(run_id: str, request: Request) -> Response:
        """One run: its jobs and steps (secrets already masked); on a fleet, its jobs with their
        hosts and attempts. Its output is at ``logs_url``."""
        service = service_of(request)
        queued = service.state.run(run_id)
        result = await service.executor.describe(run_id)
        if result is None and queued is None:
            return _error(404, f"no run {run_id}")
        body = {
            "server": queued.to_json() if queued else None,
            "result": result,
            "logs_url": f"/api/runs/{run_id}/logs",
        }
        return JSONResponse(_masked(body, service.github.masker))

    @app.get("/api/runs/{run_id}/logs", dependencies=READ)
    async def run_logs(run_id: str, request: Request) -> Response:
        """The run's output as it was kept, one JSON object per line (NDJSON), streamed: a run
        with hundreds of MiB of logs costs the server one page of lines at a time."""
        service = service_of(request)
        if service.state.run(run_id) is None and await service.executor.describe(run_id) is None:
            return _error(404, f"no run {run_id}")
        masker = service.github.masker

        async def lines() -> AsyncIterator[bytes]:
            async for page in service.executor.logs(run_id):
                yield b"".join(
                    json.dumps(_masked(row, masker)).encode() + b"\n" for row in page
                )

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/api/runs/{run_id}/artifacts", dependencies=READ)
    async def run_artifacts(run_id: str, request: Request) -> Response:
        """The artifacts the run's jobs uploaded (finalized and unexpired), without their paths."""
        found = await asyncio.to_thread(_artifact_store().list, run_id)
        return JSONResponse({"artifacts": [_artifact_json(a) for a in found]})

    @app.get("/api/runs/{run_id}/artifacts/{name}", dependencies=READ)
    async def download_artifact(run_id: str, name: str, request: Request) -> Response:
        """One artifact's zip, as uploaded."""
        try:
            artifact = await asyncio.to_thread(_artifact_store().get, run_id, name)
        except ArtifactNotFound as exc:
            return _error(404, str(exc))
        return FileResponse(
            artifact.path, media_type="application/zip", filename=f"{artifact.name}.zip"
        )

    @app.post("/api/runs/{run_id}/cancel", dependencies=OPERATE)
    async def cancel_run(run_id: str, request: Request) -> Response:
        """Cancel a queued or running run: its jobs' machines are released (on a fleet, on their
        hosts)."""
        try:
            cancelled = await service_of(request).cancel(run_id)
        except RunNotFound:
            return _error(404, f"no run {run_id}")
        return JSONResponse(
            {"run_id": run_id, "cancelled": cancelled}, status_code=202 if cancelled else 409
        )

    @app.post("/api/runs/{run_id}/rerun", dependencies=OPERATE)
    async def rerun(run_id: str, request: Request) -> Response:
        """Queue the run's workflow again, at the same commit and with the same event."""
        try:
            run = service_of(request).rerun(run_id)
        except RunNotFound:
            return _error(404, f"no run {run_id}")
        except ConfigError as exc:
            return _error(409, str(exc))
        return JSONResponse(run.to_json(), status_code=202)

    @app.get("/api/sessions", dependencies=READ)
    async def sessions(request: Request) -> Response:
        """The session manager's capacity and live sessions."""
        manager = service_of(request).sessions
        live = [_session_json(session) for session in manager.sessions()]
        return JSONResponse({"statistics": asdict(manager.stats()), "sessions": live})

    @app.get("/api/pool", dependencies=READ)
    async def pool(request: Request) -> Response:
        """The warm pool's statistics (null without a pool)."""
        warm = service_of(request).pool
        return JSONResponse({"statistics": asdict(warm.statistics()) if warm else None})

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        service = service_of(request)
        return JSONResponse(
            {"status": "draining" if service.draining else "ok"},
            status_code=503 if service.draining else 200,
        )

    @app.get("/metrics", dependencies=READ if config.metrics_auth else [])
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        return Response(service_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/tokens", dependencies=ADMIN)
    async def list_tokens(request: Request) -> Response:
        """The API tokens: names, scopes, when created and last used (never the tokens)."""
        tokens: TokenStore = request.app.state.tokens
        rows = [
            {"name": t.name, "scope": t.scope, "created_at": t.created_at,
             "last_used_at": t.last_used_at}
            for t in tokens.list()
        ]
        return JSONResponse({"tokens": rows})

    @app.post("/api/tokens", dependencies=ADMIN)
    async def create_token(request: Request, name: str, scope: str = "read") -> Response:
        """A new token, shown in this answer only."""
        tokens: TokenStore = request.app.state.tokens
        try:
            token = tokens.create(name, scope)
        except ConfigError as exc:
            return _error(400, str(exc))
        return JSONResponse({"name": name, "scope": scope, "token": token}, status_code=201)

    @app.delete("/api/tokens/{name}", dependencies=ADMIN)
    async def revoke_token(name: str, request: Request) -> Response:
        tokens: TokenStore = request.app.state.tokens
        try:
            tokens.revoke(name)
        except ConfigError as exc:
            return _error(404, str(exc))
        return Response(status_code=204)

    @app.get("/api/config", dependencies=ADMIN)
    async def server_config(request: Request) -> Response:
        """The server's settings, without its secrets."""
        return JSONResponse(_masked(config.public_json(), service_of(request).github.masker))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        """The API's routes, from the OpenAPI schema, as a page that needs no network."""
        return HTMLResponse(docs_page(app.openapi()))

    return app
