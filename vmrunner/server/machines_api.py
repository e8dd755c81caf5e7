"""``vmrunner machines serve``: a host's machines behind HTTP, in the prototype's contract.

The routes the prototype's runner calls (its ``FcctlWebProvider`` and ``VmCommandExecutor``
speak to fcctl-web): ``GET /health``; ``POST /api/vms`` then ``GET /api/vms/{id}`` until
``running``; ``GET /api/vms``; ``DELETE /api/vms/{id}`` (404 when unknown);
``POST /api/llm/execute``; ``POST /api/vms/{id}/snapshots``; ``POST
/api/vms/{id}/rollback/{snapshot_id}``. Ours besides (what ``--provider remote`` uses): a
streamed exec (``POST /api/vms/{id}/exec``, NDJSON lines of output, then the result; or the
same path as a WebSocket, command after command: ``machines_exec.py``), files in
and out as tar (``PUT``/``GET /api/vms/{id}/files?path=``), ``DELETE /api/vms/by-name/{name}``
(a cancelled allocation), ``GET /api/vm-types`` (this host's machine types and capabilities),
port forwards as WebSockets the runner opens (``/api/vms/{id}/forward``, ``machines_forward.py``),
a snapshot out as a tar (``GET /api/vms/{id}/snapshots/{snapshot_id}/export``, with ``read``: it
shows the VM's files, as ``GET .../files`` does) and one into a fresh VM (``POST
/api/vms/{id}/import``, with ``operate``: ``machines_snapshots.py``), machines of a container
image with service containers (``image``, ``services`` of ``POST /api/vms``) and one-shot
containers in them (``POST /api/vms/{id}/exec-image``, streamed as the exec:
``machines_images.py``).

Callers authenticate with an API token (``operate`` to change, ``read`` to look), or with an
HS256 JWT when a secret is configured; each caller sees only its own VMs.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection

from vmrunner.errors import (
    AccessDenied,
    AllocationError,
    ArchiveRejected,
    CapacityError,
    ExecError,
    ForwardError,
    MachineError,
    SessionNotFound,
    SnapshotError,
    SnapshotUnsupported,
    VmrunnerError,
)
from vmrunner.machines.base import NetworkMode, Provider
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.remote import error_body
from vmrunner.server import jwt
from vmrunner.server.auth import access_denied
from vmrunner.server.machines_exec import CommandStream, ExecBody, serve_channel
from vmrunner.server.machines_forward import serve_accept, serve_forward
from vmrunner.server.machines_images import (
    ImageBody,
    ImageExecBody,
    ServiceBody,
    image_fields,
    unique_labels,
    validation_error,
)
from vmrunner.server.machines_service import (
    FAILED,
    MachineService,
    Quota,
    iso,
    spec_of,
)
from vmrunner.server.machines_snapshots import exported, imported
from vmrunner.server.tokens import Scope, TokenStore, bearer
from vmrunner.sessions import SessionManager
from vmrunner.store import Store

SERVICE_NAME = "vmrunner-machines"
DEFAULT_MAX_IMPORT = 16 << 30
ANONYMOUS = "anonymous"
#: HTTP status of our errors, most specific class first.
STATUS: tuple[tuple[type[VmrunnerError], int], ...] = (
    (SessionNotFound, 404),
    (CapacityError, 429),
    (SnapshotUnsupported, 409),
    (SnapshotError, 404),
    (ExecError, 422),
    (AllocationError, 409),
    (MachineError, 500),
    (VmrunnerError, 400),
)


@dataclass
class MachineServiceConfig:
    """What ``machines serve`` runs: which provider, how many machines, who may use them."""

    provider: str = "sandbox"
    provider_options: dict[str, Any] = field(default_factory=dict)
    network: NetworkMode = "private"
    #: Machines kept started per vm_type (the warm pool).
    pool: dict[str, int] = field(default_factory=dict)
    #: VMs on this host at once (all callers).
    limit: int = 8
    max_vms: int = 4
    max_sessions: int = 16
    quotas: dict[str, Quota] = field(default_factory=dict)
    #: A VM untouched this long is released (its client is gone).
    idle_timeout: float = 600.0
    reap_interval: float = 15.0
    vm_types: tuple[str, ...] = ()
    jwt_secret: bytes = field(default=b"", repr=False)
    #: No token needed (loopback development only).
    open_access: bool = False
    #: The state database (sessions, machines, tokens); '' for VMRUNNER_HOME's.
    store: str = ""
    #: Where snapshots are exported and imported for a moment; '' for the system's temp folder.
    transfer_dir: str = ""
    #: A snapshot's tar bigger than this is refused (413).
    max_import_bytes: int = DEFAULT_MAX_IMPORT


class VmBody(BaseModel):
    vm_type: str = "default"
    name: str = ""
    network: Literal["private", "host", "none"] | None = None
    cpus: int | None = Field(default=None, ge=1)
    memory_mib: int | None = Field(default=None, ge=16)
    pids: int | None = Field(default=None, ge=8)
    disk_mib: int | None = Field(default=None, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)
    #: The machine's root file system (a ``container:`` job), and its service containers.
    image: ImageBody | None = None
    services: list[ServiceBody] = Field(default_factory=list)
    #: Answer once the VM runs (or failed), not at once with ``creating``.
    wait: bool = False

    _labels = field_validator("services")(unique_labels)


class SnapshotBody(BaseModel):
    name: str = ""
    description: str = ""


class LlmExecuteBody(BaseModel):
    agent_id: str = ""
    language: str = "bash"
    code: str
    vm_id: str
    timeout_seconds: float | None = Field(default=None, ge=0)
    working_dir: str | None = None


#: ``language`` of ``/api/llm/execute`` -> how its code is run.
LANGUAGES: dict[str, Callable[[str], list[str]]] = {
    "bash": lambda code: ["bash", "-c", code],
    "sh": lambda code: ["sh", "-c", code],
    "python": lambda code: ["python3", "-c", code],
    "python3": lambda code: ["python3", "-c", code],
}


def _status(exc: VmrunnerError) -> int:
    if isinstance(exc, ArchiveRejected):
        return exc.status
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def create_machines_app(
    config: MachineServiceConfig, *, provider: Provider | None = None, store: Store | None = None
) -> FastAPI:
    """The machine service's app; ``provider`` and ``store`` are for tests and benches."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = store or stack.enter_context(Store.open(config.store or None))
            base = provider
            if base is None:
                from vmrunner.machines.providers import get_provider

                base = get_provider(config.provider, **config.provider_options)
                stack.push_async_callback(base.aclose)
            if config.pool:
                base = await stack.enter_async_context(WarmPool(base, config.pool))
            sessions = await stack.enter_async_context(
                SessionManager(
                    base, limit=config.limit, store=db, wait_timeout=0,
                    idle_timeout=config.idle_timeout, reap_interval=config.reap_interval,
                )
            )
            app.state.service = await stack.enter_async_context(
                MachineService(
                    sessions,
                    default_quota=Quota(config.max_vms, config.max_sessions),
                    quotas=config.quotas, vm_types=config.vm_types,
                    idle_timeout=config.idle_timeout,
                )
            )
            app.state.tokens = TokenStore(db)
            app.state.provider = base
            yield

    app = FastAPI(
        title="vmrunner machines", lifespan=lifespan, docs_url=None, redoc_url=None,
        summary="A host's machines over HTTP, compatible with fcctl-web's callers.",
    )
    app.add_exception_handler(AccessDenied, access_denied)

    @app.exception_handler(VmrunnerError)
    async def failed(request: HTTPConnection, exc: Exception) -> Response:
        assert isinstance(exc, VmrunnerError)
        return JSONResponse(error_body(exc), status_code=_status(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HTTPConnection, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(validation_error(exc.errors()), status_code=422)

    def caller(scope: Scope) -> Callable[[HTTPConnection], Awaitable[str]]:
        async def check(request: HTTPConnection) -> str:
            token = bearer(request.headers.get("authorization"))
            if token and config.jwt_secret and jwt.looks_like_jwt(token):
                return "jwt:" + jwt.verify(token, config.jwt_secret)
            if token is None and config.open_access:
                return ANONYMOUS
            tokens: TokenStore = request.app.state.tokens
            return tokens.check(token, scope).name

        return check

    reader, operator = Depends(caller("read")), Depends(caller("operate"))

    def service_of(request: HTTPConnection) -> MachineService:
        service: MachineService = request.app.state.service
        return service

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the service answers (no token needed)."""
        return {"service": SERVICE_NAME, "status": "healthy", "timestamp": iso(time.time())}

    @app.get("/api/vm-types")
    async def vm_types(request: Request, owner: str = reader) -> dict[str, Any]:
        """This host's machine types, provider and capabilities."""
        base: Provider = request.app.state.provider
        caps = base.capabilities
        stats = base.statistics() if isinstance(base, WarmPool) else None
        return {
            "vm_types": list(config.vm_types) or ["default"], "provider": base.name,
            "capabilities": {
                "isolation": caps.isolation.value, "snapshots": caps.snapshots,
                "network_modes": sorted(caps.network_modes), "forward": caps.forward,
                "snapshot_export": caps.snapshot_export, "containers": caps.containers,
            },
            "pool": None if stats is None else {"idle": dict(stats.idle), "hits": stats.hits},
        }

    @app.post("/api/vms", status_code=201)
    async def create_vm(body: VmBody, request: Request, owner: str = operator) -> Response:
        """Allocate a VM: ``creating`` at once, or (``wait``) once it runs or failed."""
        service = service_of(request)
        spec = dataclasses.replace(
            spec_of(body.model_dump(), config.network), **image_fields(body.image, body.services)
        )
        vm = service.create(owner, spec, body.name)
        if body.wait:
            await vm.ready.wait()
            if vm.status == FAILED:
                return JSONResponse(
                    {**vm.describe(), "kind": _failure_kind(vm.error)}, status_code=409
                )
        return JSONResponse(vm.describe(), status_code=201)

    @app.get("/api/vms")
    async def list_vms(request: Request, owner: str = reader) -> dict[str, Any]:
        service = service_of(request)
        vms = [vm.describe() for vm in service.owned(owner)]
        return {"vms": vms, "total": len(vms), "usage": service.usage(owner), "user": owner}

    @app.get("/api/vms/{vm_id}")
    async def get_vm(vm_id: str, request: Request, owner: str = reader) -> dict[str, Any]:
        return service_of(request).get(owner, vm_id).describe()

    @app.delete("/api/vms/by-name/{name}")
    async def forget_vm(name: str, request: Request, owner: str = operator) -> dict[str, Any]:
        """Drop an allocation by the name its client gave (a cancelled allocation)."""
        await service_of(request).forget(owner, name)
        return {"name": name, "status": "deleted"}

    @app.delete("/api/vms/{vm_id}")
    async def delete_vm(vm_id: str, request: Request, owner: str = operator) -> dict[str, Any]:
        """Release a VM; it is gone when this answers."""
        await service_of(request).delete(owner, vm_id)
        return {"id": vm_id, "status": "deleted"}

    @app.post("/api/llm/execute")
    async def llm_execute(
        body: LlmExecuteBody, request: Request, owner: str = operator
    ) -> dict[str, Any]:
        """Run ``code`` in the VM and answer with its whole output (the prototype's exec)."""
        argv = LANGUAGES.get(body.language)
        if argv is None:
            raise ExecError(
                f"language {body.language!r}: expected one of {', '.join(sorted(LANGUAGES))}"
            )
        started = time.time()
        async with service_of(request).command(owner, body.vm_id) as session:
            result = await service_of(request).exec(
                session, argv(body.code), cwd=body.working_dir or None,
                timeout=body.timeout_seconds or None,
            )
        completed = time.time()
        exit_code, error = result.exit_code, None
        if result.timed_out:
            exit_code, error = 124, f"timed out after {body.timeout_seconds}s"
        elif exit_code is None:
            exit_code, error = 128 + (result.signal or 0), f"killed by signal {result.signal}"
        return {
            "execution_id": str(uuid.uuid4()), "vm_id": body.vm_id, "exit_code": exit_code,
            "stdout": result.stdout.decode(errors="replace"),
            "stderr": result.stderr.decode(errors="replace"),
            "duration_ms": int((completed - started) * 1000),
            "started_at": iso(started), "completed_at": iso(completed), "error": error,
        }

    @app.post("/api/vms/{vm_id}/exec")
    async def exec_stream(
        vm_id: str, body: ExecBody, request: Request, owner: str = operator
    ) -> Response:
        """Run a command, streaming NDJSON: ``{"o": stream, "d": base64}`` lines, then one
        ``{"result": ...}`` or ``{"error", "kind"}``. Closing the connection kills it."""
        service = service_of(request)
        session, done = service.start_command(owner, vm_id)
        run = partial(service.exec, session, **body.call())
        command = CommandStream(request.receive, run, done)
        if await command.finished_quickly():  # one plain response: less to send than a stream
            return Response(command.whole(), media_type="application/x-ndjson")
        return StreamingResponse(
            command.lines(), media_type="application/x-ndjson", background=BackgroundTask(done)
        )

    @app.post("/api/vms/{vm_id}/exec-image")
    async def exec_image(
        vm_id: str, body: ImageExecBody, request: Request, owner: str = operator
    ) -> Response:
        """``Machine.exec_image``: a one-shot container (a Docker step), streamed as the exec."""
        service = service_of(request)
        session, done = service.start_command(owner, vm_id)
        run = partial(service.exec_image, session, body.run(), body.args, **body.options())
        command = CommandStream(request.receive, run, done)
        return StreamingResponse(
            command.lines(), media_type="application/x-ndjson", background=BackgroundTask(done)
        )

    async def admitted(websocket: WebSocket, vm_id: str) -> str | None:
        """The caller of a WebSocket to a running VM of theirs; else None, once the upgrade
        was refused with the HTTP error a request would get."""
        try:
            owner = await caller("operate")(websocket)
            service_of(websocket).running(owner, vm_id)
        except AccessDenied as exc:
            await websocket.send_denial_response(await access_denied(websocket, exc))
            return None
        except VmrunnerError as exc:
            await websocket.send_denial_response(await failed(websocket, exc))
            return None
        return owner

    @app.websocket("/api/vms/{vm_id}/exec")
    async def exec_channel(websocket: WebSocket, vm_id: str) -> None:
        """The same exec, command after command over one WebSocket (``serve_channel``); the
        token is checked at the upgrade, refused with the HTTP error, and for every command."""
        service, check = service_of(websocket), caller("operate")
        if await admitted(websocket, vm_id) is None:
            return

        async def start(body: ExecBody) -> CommandStream:
            session, done = service.start_command(await check(websocket), vm_id)
            run = partial(service.exec, session, **body.call())
            return CommandStream(websocket.receive, run, done)

        await websocket.accept()
        await serve_channel(websocket, start)

    @app.websocket("/api/vms/{vm_id}/forward")
    async def forward(websocket: WebSocket, vm_id: str, port: int = 0) -> None:
        """A port forward out of the VM while this socket is open (``machines_forward.py``)."""
        owner = await admitted(websocket, vm_id)
        if owner is None:
            return
        vm = service_of(websocket).get(owner, vm_id)
        assert vm.session is not None  # running: ``admitted`` checked it
        await websocket.accept()
        await serve_forward(websocket, vm.session, vm.forwards, vm.done, port)

    @app.websocket("/api/vms/{vm_id}/forward/{forward_id}")
    async def forward_accept(websocket: WebSocket, vm_id: str, forward_id: str) -> None:
        """Carries the forward's next guest connection; the token is checked again then."""
        owner = await admitted(websocket, vm_id)
        if owner is None:
            return
        relay = service_of(websocket).get(owner, vm_id).forwards.get(forward_id)
        if relay is None:
            exc = ForwardError(f"no forward {forward_id} in VM {vm_id}")
            await websocket.send_denial_response(JSONResponse(error_body(exc), status_code=404))
            return
        await websocket.accept()
        await serve_accept(websocket, relay, partial(caller("operate"), websocket))

    @app.put("/api/vms/{vm_id}/files", status_code=204)
    async def put_files(vm_id: str, path: str, request: Request, owner: str = operator) -> None:
        """Unpack the tar body into the directory ``path`` of the VM."""
        session = service_of(request).running(owner, vm_id)
        await session.machine.put(path, await request.body())
        session.touch()

    @app.get("/api/vms/{vm_id}/files")
    async def get_files(vm_id: str, path: str, request: Request, owner: str = reader) -> Response:
        """A tar of ``path`` (a file or a directory) in the VM."""
        session = service_of(request).running(owner, vm_id)
        data = await session.machine.get(path)
        session.touch()
        return Response(data, media_type="application/x-tar")

    @app.get("/api/vms/{vm_id}/limits")
    async def limits(vm_id: str, request: Request, owner: str = reader) -> dict[str, Any]:
        session = service_of(request).running(owner, vm_id)
        return {"limits_hit": await session.machine.limits_hit()}

    @app.post("/api/vms/{vm_id}/snapshots")
    async def snapshot(
        vm_id: str, body: SnapshotBody, request: Request, owner: str = operator
    ) -> dict[str, Any]:
        session = service_of(request).running(owner, vm_id)
        row = await session.snapshot(body.name)
        return {
            "snapshot_id": row.snapshot_id, "name": row.name, "vm_id": vm_id,
            "description": body.description, "created_at": iso(row.created_at),
        }

    @app.get("/api/vms/{vm_id}/snapshots")
    async def snapshots(vm_id: str, request: Request, owner: str = reader) -> dict[str, Any]:
        session = service_of(request).running(owner, vm_id)
        rows = [
            {"snapshot_id": s.snapshot_id, "name": s.name, "created_at": iso(s.created_at)}
            for s in session.snapshots
        ]
        return {"snapshots": rows, "total": len(rows)}

    @app.post("/api/vms/{vm_id}/rollback/{snapshot_id}")
    async def rollback(
        vm_id: str, snapshot_id: str, request: Request, owner: str = operator
    ) -> dict[str, Any]:
        session = service_of(request).running(owner, vm_id)
        await session.restore(snapshot_id)
        return {"vm_id": vm_id, "snapshot_id": snapshot_id, "status": "rolled_back",
                "timestamp": datetime.now(UTC).isoformat()}

    @app.get("/api/vms/{vm_id}/snapshots/{snapshot_id}/export")
    async def export_snapshot(
        vm_id: str, snapshot_id: str, request: Request, owner: str = reader
    ) -> Response:
        """The snapshot as a tar stream, to keep beyond the VM (``vmrunner rerun``)."""
        service = service_of(request)
        async with service.command(owner, vm_id) as session, service.busy(session):
            return await exported(session.machine, snapshot_id, config.transfer_dir or None)

    @app.post("/api/vms/{vm_id}/import")
    async def import_snapshot(
        vm_id: str, request: Request, owner: str = operator
    ) -> dict[str, Any]:
        """Seed the (fresh) VM with an exported snapshot's tar, the request's body."""
        service = service_of(request)
        async with service.command(owner, vm_id) as session, service.busy(session):
            await imported(
                session.machine, request.stream(), request.headers.get("content-length"),
                config.max_import_bytes, config.transfer_dir or None,
            )
        return {"vm_id": vm_id, "status": "imported"}

    return app


def _failure_kind(error: str) -> str:
    return "CapacityError" if error.startswith("limit reached") else "AllocationError"
