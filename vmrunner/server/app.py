"""The web app: ``POST /webhook``, the REST API, ``/healthz`` and ``/metrics``.

``create_app(config)`` declares the routes; its ``lifespan`` enters the ``Service`` (task group,
session manager, pool, reaper) for as long as the server runs. Every endpoint is ``async`` so
that it runs on the event loop that owns the service (the store is single-threaded).

A webhook is checked in this order, and nothing else happens when a check fails: draining
(503), ``Content-Length`` over the limit (413), the body read as a stream and cut off at the
limit (413), the signature over the raw bytes (401). Then ``ping`` is answered, and any other
event is recorded and acknowledged (202) while the dispatcher decides, later, what it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from vmrunner.errors import ArtifactNotFound, RunNotFound, SessionError
from vmrunner.machines.base import Provider
from vmrunner.runner.masking import Masker
from vmrunner.server.config import ServerConfig
from vmrunner.server.service import Service, parse_json
from vmrunner.server.signatures import verify
from vmrunner.services.artifacts import Artifact, ArtifactStore
from vmrunner.services.settings import ServiceSettings
from vmrunner.sessions import Session


class _TooLarge(Exception):
    pass


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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
        "idle_for": session.idle_for,
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
            yield

    app = FastAPI(
        title="vmrunner",
        summary="Runs GitHub Actions workflows from webhooks, one machine per job.",
        lifespan=lifespan,
    )

    def service_of(request: Request) -> Service:
        service: Service = request.app.state.service
        return service

    @app.post("/webhook", status_code=202)
    async def webhook(request: Request) -> Response:
        """Receive one GitHub webhook delivery."""
        service = service_of(request)
        if service.draining:
            return _error(503, "the server is shutting down")
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            return _error(400, "invalid Content-Length")
        if length is not None and int(length) > config.max_body_bytes:
            return _error(413, f"the body exceeds {config.max_body_bytes} bytes")
        try:
            body = await _read_limited(request, config.max_body_bytes)
        except _TooLarge:
            return _error(413, f"the body exceeds {config.max_body_bytes} bytes")
        if not verify(config.webhook_secret, body, request.headers.get("x-hub-signature-256")):
            service.metrics.webhooks.labels("", "unauthorized").inc()
            return _error(401, "missing or invalid X-Hub-Signature-256")
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not event or not delivery:
            return _error(400, "X-GitHub-Event and X-GitHub-Delivery are required")
        if event == "ping":
            service.metrics.webhooks.labels(event, "pong").inc()
            return JSONResponse({"pong": True, "delivery": delivery}, status_code=200)
        payload = parse_json(body)
        if payload is None:
            return _error(400, "the body is not a JSON object")
        accepted = service.accept(delivery, event, body, payload)
        service.metrics.webhooks.labels(event, accepted.verdict).inc()
        status = {"queued": 202, "ignored": 202, "duplicate": 200, "draining": 503}[
            accepted.verdict
        ]
        return JSONResponse(
            {"delivery": delivery, "status": accepted.verdict, "note": accepted.note},
            status_code=status,
        )

    @app.get("/api/deliveries/{delivery_id}")
    async def get_delivery(delivery_id: str, request: Request) -> Response:
        """What became of one delivery: its status and the runs it queued."""
        found = service_of(request).delivery_json(delivery_id)
        return (
            JSONResponse(found) if found is not None else _error(404, f"no delivery {delivery_id}")
        )

    @app.get("/api/runs")
    async def list_runs(request: Request, limit: int = 50) -> Response:
        """The newest runs the server queued, with their state and conclusion."""
        service = service_of(request)
        return JSONResponse(
            {"runs": [run.to_json() for run in service.state.runs(limit=max(1, min(limit, 1000)))]}
        )

    @app.get("/api/runs/{run_id}")
    async def get_run(run_id: str, request: Request) -> Response:
        """One run: its jobs, steps and logs (as kept; secrets already masked); on a fleet, its
        jobs with their hosts and attempts, and its log lines."""
        service = service_of(request)
        queued = service.state.run(run_id)
        result, logs = await service.executor.describe(run_id)
        if result is None and queued is None:
            return _error(404, f"no run {run_id}")
        body = {"server": queued.to_json() if queued else None, "result": result, "logs": logs}
        return JSONResponse(_masked(body, service.github.masker))

    @app.get("/api/runs/{run_id}/artifacts")
    async def run_artifacts(run_id: str, request: Request) -> Response:
        """The artifacts the run's jobs uploaded (finalized and unexpired), without their paths."""
        found = await asyncio.to_thread(_artifact_store().list, run_id)
        return JSONResponse({"artifacts": [_artifact_json(a) for a in found]})

    @app.get("/api/runs/{run_id}/artifacts/{name}")
    async def download_artifact(run_id: str, name: str, request: Request) -> Response:
        """One artifact's zip, as uploaded."""
        try:
            artifact = await asyncio.to_thread(_artifact_store().get, run_id, name)
        except ArtifactNotFound as exc:
            return _error(404, str(exc))
        return FileResponse(
            artifact.path, media_type="application/zip", filename=f"{artifact.name}.zip"
        )

    @app.post("/api/runs/{run_id}/cancel")
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

    @app.get("/api/sessions")
    async def sessions(request: Request) -> Response:
        """The session manager's capacity and live sessions."""
        manager = service_of(request).sessions
        live = [_session_json(session) for session in manager.sessions()]
        return JSONResponse({"statistics": asdict(manager.stats()), "sessions": live})

    @app.get("/api/pool")
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

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        return Response(service_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
