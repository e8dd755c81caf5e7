"""The HTTP face of the services: what GitHub's own actions talk to, unchanged.

- ``POST /twirp/github.actions.results.api.v1.ArtifactService/<method>``: CreateArtifact,
  FinalizeArtifact, ListArtifacts, GetSignedArtifactURL, DeleteArtifact (``@actions/artifact``
  2.x, used by ``actions/upload-artifact@v4`` and ``actions/download-artifact@v4``);
- ``POST /twirp/github.actions.results.api.v1.CacheService/<method>``: CreateCacheEntry,
  FinalizeCacheEntryUpload, GetCacheEntryDownloadURL (``@actions/cache`` 4.x with
  ``ACTIONS_CACHE_SERVICE_V2``, used by ``actions/cache@v4``);
- ``PUT|GET /vmrunner/<artifacts|cache>/<blob>?sp=&se=&sig=``: signed blob URLs, written with
  Azure's Put Blob, Put Block and Put Block List (what ``@azure/storage-blob`` sends) and read
  with a plain GET. The path has Azure's path-style shape (account, container, blob), which
  the SDK expects of an address like ``127.0.0.1:port``.

Twirp calls need the job's runtime token; every refusal is JSON ``{"code", "msg"}`` with a 4xx
status (twirp's error shape, which the clients print), never a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from vmrunner.errors import ArtifactNotFound, ServiceError, TokenError
from vmrunner.services import blobs
from vmrunner.services.artifacts import (
    ArtifactStore,
    format_timestamp,
    parse_timestamp,
    run_folder_name,
)
from vmrunner.services.cache import CacheStore
from vmrunner.services.settings import MAX_BLOCK, MAX_MESSAGE, ServiceSettings
from vmrunner.services.tokens import URL_LIFETIME, JobGrant, Signer, job_backend_id

ARTIFACT_SERVICE = "github.actions.results.api.v1.ArtifactService"
CACHE_SERVICE = "github.actions.results.api.v1.CacheService"
ACCOUNT = "vmrunner"
_TWIRP_CODES = {
    400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
    409: "already_exists", 413: "invalid_argument",
}
log = logging.getLogger(__name__)

#: A blob's signed URL: (name, permission 'r' or 'w') -> URL.
UrlMaker = Callable[[str, str], str]
Handler = Callable[[JobGrant, dict[str, Any], UrlMaker], Awaitable[dict[str, Any]]]


def twirp_error(error: ServiceError) -> JSONResponse:
    code = _TWIRP_CODES.get(error.status, "internal" if error.status >= 500 else "unknown")
    return JSONResponse({"code": code, "msg": str(error)}, status_code=error.status)


def blob_error(error: ServiceError) -> Response:
    """Azure's error shape: the SDK reads the code and message from it."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
        f"{_TWIRP_CODES.get(error.status, 'InternalError')}</Code><Message>"
        f"{_xml_text(str(error))}</Message></Error>"
    )
    return Response(body, status_code=error.status, media_type="application/xml")


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _field(body: dict[str, Any], name: str) -> Any:
    """A request field by its proto name or its JSON (lowerCamel) name, as protobuf allows."""
    if name in body:
        return body[name]
    head, *rest = name.split("_")
    return body.get(head + "".join(part.title() for part in rest))


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = _field(body, name)
    if isinstance(value, dict):  # a wrapper written as an object
        value = value.get("value")
    if value is None or value == "":
        if required:
            raise ServiceError(f"the request has no {name}")
        return ""
    if not isinstance(value, (str, int)):
        raise ServiceError(f"{name} must be a string, got {type(value).__name__}")
    return str(value)


def _number(body: dict[str, Any], name: str) -> int:
    text = _text(body, name, required=False) or "0"
    if not text.lstrip("-").isdigit() or int(text) < 0:
        raise ServiceError(f"{name} must be a non-negative integer, got {text!r}")
    return int(text)


@dataclass(slots=True)
class Services:
    """The stores and the signer the routes share."""

    settings: ServiceSettings
    signer: Signer
    artifacts: ArtifactStore
    cache: CacheStore

    def blob_url(self, request: Request, container: str, name: str, permission: str) -> str:
        expires = int(time.time() + URL_LIFETIME)
        what = f"{container}/{name}"
        query = urlencode({
            "sv": "2024-05-04", "sr": "b", "sp": permission, "se": expires,
            "sig": self.signer.sign(what, permission, expires),
        })
        host = request.headers.get("host") or "127.0.0.1"
        return f"http://{host}/{ACCOUNT}/{what}?{query}"

    # ArtifactService

    def _own_run(self, grant: JobGrant, body: dict[str, Any], *, job: bool) -> None:
        run = _text(body, "workflow_run_backend_id")
        if run != grant.run_id:
            raise TokenError(f"the runtime token does not grant access to run {run}", 403)
        if job and _text(body, "workflow_job_run_backend_id") != grant.job_id:
            raise TokenError("the runtime token belongs to another job", 403)

    async def create_artifact(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        self._own_run(grant, body, job=True)
        version = _number(body, "version")
        if version not in (0, 4):
            raise ServiceError(f"artifact version {version} is not supported (4 is)")
        expires = parse_timestamp(_field(body, "expires_at"))
        artifact_id = self.artifacts.create(grant, _text(body, "name"), expires)
        blob = f"{run_folder_name(grant.run_id)}~{artifact_id}"
        return {"ok": True, "signed_upload_url": url(blob, "w")}

    async def finalize_artifact(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        self._own_run(grant, body, job=True)
        artifact_id = await _in_thread(
            self.artifacts.finalize, grant, _text(body, "name"), _number(body, "size"),
            _text(body, "hash", required=False),
        )
        return {"ok": True, "artifact_id": str(artifact_id)}

    async def list_artifacts(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        self._own_run(grant, body, job=False)
        name = _text(body, "name_filter", required=False)
        wanted = _text(body, "id_filter", required=False)
        found = [
            {
                "workflow_run_backend_id": grant.run_id,
                "workflow_job_run_backend_id": artifact.job_id,
                "database_id": str(artifact.artifact_id), "name": artifact.name,
                "size": str(artifact.size), "created_at": format_timestamp(artifact.created_at),
                "digest": artifact.digest,
            }
            for artifact in self.artifacts.list(grant.run_id)
            if (not name or artifact.name == name)
            and (not wanted or str(artifact.artifact_id) == wanted)
        ]
        return {"artifacts": found}

    async def signed_artifact_url(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        self._own_run(grant, body, job=False)
        artifact = self.artifacts.get(grant.run_id, _text(body, "name"))
        blob = f"{run_folder_name(grant.run_id)}~{artifact.artifact_id}"
        return {"signed_url": url(blob, "r")}

    async def delete_artifact(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        self._own_run(grant, body, job=False)
        artifact_id = self.artifacts.delete(grant.run_id, _text(body, "name"))
        return {"ok": True, "artifact_id": str(artifact_id)}

    # CacheService

    async def create_cache_entry(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        entry_id = await _in_thread(
            self.cache.reserve, grant.repository, grant.ref, _text(body, "key"),
            _text(body, "version"),
        )
        return {"ok": True, "signed_upload_url": url(str(entry_id), "w")}

    async def finalize_cache_entry(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        entry_id = await _in_thread(
            self.cache.finalize, grant.repository, grant.ref, _text(body, "key"),
            _text(body, "version"), _number(body, "size_bytes"),
        )
        return {"ok": True, "entry_id": str(entry_id)}

    async def cache_download_url(
        self, grant: JobGrant, body: dict[str, Any], url: UrlMaker
    ) -> dict[str, Any]:
        restore_keys = _field(body, "restore_keys") or []
        if not isinstance(restore_keys, list) or not all(isinstance(k, str) for k in restore_keys):
            raise ServiceError("restore_keys must be a list of strings")
        scopes = [grant.ref, *(ref for ref in grant.readable_refs if ref != grant.ref)]
        entry = await _in_thread(
            self.cache.lookup, grant.repository, scopes, _text(body, "key"), restore_keys,
            _text(body, "version"),
        )
        if entry is None:
            return {"ok": False, "signed_download_url": "", "matched_key": ""}
        return {
            "ok": True, "signed_download_url": url(str(entry.entry_id), "r"),
            "matched_key": entry.key,
        }


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(function, *args)


def create_services_app(settings: ServiceSettings, signer: Signer) -> Starlette:
    """The services' ASGI app over the artifact and cache folders of ``settings``."""
    services = Services(
        settings, signer, ArtifactStore(settings.artifacts_dir, settings.retention_days),
        CacheStore(settings.cache_dir, settings.cache_size),
    )
    methods: dict[tuple[str, str], tuple[str, Handler]] = {
        (ARTIFACT_SERVICE, "CreateArtifact"): ("artifacts", services.create_artifact),
        (ARTIFACT_SERVICE, "FinalizeArtifact"): ("artifacts", services.finalize_artifact),
        (ARTIFACT_SERVICE, "ListArtifacts"): ("artifacts", services.list_artifacts),
        (ARTIFACT_SERVICE, "GetSignedArtifactURL"): ("artifacts", services.signed_artifact_url),
        (ARTIFACT_SERVICE, "DeleteArtifact"): ("artifacts", services.delete_artifact),
        (CACHE_SERVICE, "CreateCacheEntry"): ("cache", services.create_cache_entry),
        (CACHE_SERVICE, "FinalizeCacheEntryUpload"): ("cache", services.finalize_cache_entry),
        (CACHE_SERVICE, "GetCacheEntryDownloadURL"): ("cache", services.cache_download_url),
    }

    async def twirp(request: Request) -> Response:
        service, method = request.path_params["service"], request.path_params["method"]
        try:
            found = methods.get((service, method))
            if found is None:
                raise ServiceError(f"no such method: {service}/{method}", 404)
            grant = signer.verify(request.headers.get("authorization"))
            body = await _json_body(request)
            container, handler = found

            def url(name: str, permission: str) -> str:
                return services.blob_url(request, container, name, permission)

            return JSONResponse(await handler(grant, body, url))
        except ServiceError as exc:
            return twirp_error(exc)
        except Exception as exc:  # the client prints the message; the log keeps the rest
            log.exception("services: %s/%s failed", service, method)
            return twirp_error(ServiceError(f"internal error: {type(exc).__name__}", 500))

    async def blob(request: Request) -> Response:
        container, name = request.path_params["container"], request.path_params["name"]
        query = request.query_params
        write = request.method == "PUT"
        try:
            permission = "w" if write else "r"
            signer.check(
                f"{container}/{name}", permission, query.get("se", ""), query.get("sig", "")
            )
            if write:
                return await _write_blob(services, request, container, name)
            return await _read_blob(services, container, name)
        except ServiceError as exc:
            return blob_error(exc)
        except Exception as exc:
            log.exception("services: blob %s/%s failed", container, name)
            return blob_error(ServiceError(f"internal error: {type(exc).__name__}", 500))

    routes = [
        Route("/twirp/{service}/{method}", twirp, methods=["POST"]),
        Route(f"/{ACCOUNT}/{{container}}/{{name}}", blob, methods=["GET", "HEAD", "PUT"]),
    ]
    app = Starlette(routes=routes)
    app.state.services = services
    return app


async def _json_body(request: Request) -> dict[str, Any]:
    import json

    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ServiceError(f"the request is larger than {MAX_MESSAGE} bytes", 413)
    try:
        body = json.loads(data or b"{}")
    except ValueError as exc:
        raise ServiceError(f"the request is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ServiceError("the request must be a JSON object")
    return body


def _artifact_blob_id(name: str) -> tuple[str, int]:
    folder, _, number = name.rpartition("~")
    if not folder or not number.isdigit():
        raise ServiceError(f"no such blob: {name}", 404)
    return folder, int(number)


async def _write_blob(services: Services, request: Request, container: str, name: str) -> Response:
    if container == "artifacts":
        folder, artifact_id = _artifact_blob_id(name)
        target = services.artifacts.upload_blob(folder, artifact_id)
    elif container == "cache" and name.isdigit():
        target = await _in_thread(services.cache.pending, int(name))
    else:
        raise ServiceError(f"no such blob: {container}/{name}", 404)
    query = request.query_params
    comp = query.get("comp", "")
    limit = min(MAX_BLOCK, services.settings.max_blob)
    if comp == "block":
        await blobs.receive(request.stream(), blobs.block_path(target, query.get("blockid", "")),
                            limit)
    elif comp == "blocklist":
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_MESSAGE * 4:
                raise ServiceError("the block list is too large", 413)
        await blobs.commit(target, blobs.parse_block_list(data), services.settings.max_blob)
    elif not comp:
        if request.headers.get("x-ms-blob-type", "BlockBlob") != "BlockBlob":
            raise ServiceError("only block blobs can be written here")
        await blobs.receive(request.stream(), target, limit)
    else:
        raise ServiceError(f"comp={comp} is not supported here")
    return Response(status_code=201, headers=_azure_headers())


async def _read_blob(services: Services, container: str, name: str) -> Response:
    if container == "artifacts":
        folder, artifact_id = _artifact_blob_id(name)
        path = services.artifacts.finalized_blob(folder, artifact_id)
        media = "application/zip"
    elif container == "cache" and name.isdigit():
        path = await _in_thread(services.cache.ready_blob, int(name))
        media = "application/octet-stream"
    else:
        raise ArtifactNotFound(f"no such blob: {container}/{name}")
    return FileResponse(path, media_type=media, headers=_azure_headers())


def _azure_headers() -> dict[str, str]:
    return {
        "x-ms-version": "2024-05-04", "x-ms-request-id": job_backend_id(str(time.time()), ""),
        "x-ms-request-server-encrypted": "false",
    }
