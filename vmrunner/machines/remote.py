"""The ``remote`` provider: machines of a ``vmrunner machines serve`` on another host, over HTTP.

The runner keeps its engine and store; the service keeps the providers, the warm pool and the
machines. One machine here is one VM of the service (``/api/vms/{vm_id}``): allocation is a
``POST /api/vms`` that waits until the machine runs, files move as tar bodies, and commands go
over a WebSocket the machine keeps open (``/api/vms/{vm_id}/exec``: the command's body out, its
output messages in while it runs, then its result), one command at a time per socket: a command
then costs no HTTP request. A body too big for one message (a large stdin) is posted instead
(the same exec as NDJSON over chunked HTTP). Either way, ending the connection kills the
command: that is how a cancelled or failed ``exec`` stops it. A port forward is a WebSocket
held open for as long as it lasts, and its connections come back over WebSockets the runner
opens ahead of time (``remote_forward.py``): the service never connects to the runner.

Snapshots leave and enter a machine as tar streams (``snapshot_tar.py``): an export is
unpacked on this host as it arrives, so a failed job's checkpoints stay with its runner
(``vmrunner rerun``), and an import sends such a folder back. Container images are the
service's to pull (``remote_images.py``): a machine's image and services go with its allocation,
a Docker step is posted (``exec-image``) and streamed back as a posted exec.

Errors are mapped once, here: the service answers ``{"error", "kind"}`` with the name of one of
our own ``MachineError`` classes, and the client raises that class; an unknown VM (released,
reaped) is an ``AgentError``, as a local machine whose agent is gone. A cancelled allocation
tells the service to forget its name, so a machine finishing its start after the client gave
up is released there at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.protocol import State

from vmrunner.errors import (
    AgentError,
    AllocationError,
    ArchiveRejected,
    ExecError,
    ForwardError,
    ForwardUnsupported,
    ImageError,
    MachineError,
    ReleaseError,
    SnapshotError,
    SnapshotUnsupported,
    TransferError,
)
from vmrunner.machines.base import (
    Capabilities,
    ExecResult,
    ImageRun,
    Isolation,
    Machine,
    MachinePaths,
    MachineRecord,
    MachineSpec,
    OutputCallback,
    Provider,
    SnapshotId,
)
from vmrunner.machines.client import MAX_SOCKET_PATH
from vmrunner.machines.local import owner_identity, shielded
from vmrunner.machines.remote_forward import Tunnel
from vmrunner.machines.remote_images import image_exec, spec_images
from vmrunner.machines.snapshot_tar import remove_tree, tar_chunks, untar_chunks

ENV_REMOTE_URL = "VMRUNNER_REMOTE_URL"
ENV_REMOTE_TOKEN = "VMRUNNER_REMOTE_TOKEN"
#: Labels the client gives its machines, so a leftover can be matched with its runner process.
OWNER_LABELS = ("vmrunner.owner_host", "vmrunner.owner_pid", "vmrunner.owner_start")
#: Errors the service may name in ``kind``; anything else becomes the caller's default class.
ERRORS: dict[str, type[MachineError]] = {
    cls.__name__: cls
    for cls in (
        AllocationError, AgentError, ExecError, TransferError, ArchiveRejected, SnapshotError,
        SnapshotUnsupported, ForwardError, ForwardUnsupported, ReleaseError, ImageError,
    )
}
#: Connecting is quick or broken; a command or a VM's boot takes as long as it takes (the
#: caller bounds it: a job's timeout, a step's).
TIMEOUT = httpx.Timeout(None, connect=10.0)
#: An exec body bigger than this is posted: the service takes WebSocket messages of 16 MiB at
#: most (uvicorn's default), and such a body is no quick command anyway.
CHANNEL_BODY = 1 << 20
#: Open WebSockets a machine keeps for its next commands (more are opened while commands run
#: side by side, and closed after).
IDLE_CHANNELS = 2
DEFAULT_CAPABILITIES = Capabilities(
    isolation=Isolation.NAMESPACES, snapshots=True,
    network_modes=frozenset({"private", "host", "none"}),
)


def error_body(exc: BaseException) -> dict[str, str]:
    """How the service reports one of our errors (the client raises the same class)."""
    return {"error": str(exc), "kind": type(exc).__name__}


def _raise(response: httpx.Response, default: type[MachineError], doing: str) -> NoReturn:
    _refused(response.status_code, response.content, response.reason_phrase, default, doing)


def _refused(
    status: int, content: bytes, reason: str, default: type[MachineError], doing: str
) -> NoReturn:
    """Raise the error a refusal of the service names (``{"error", "kind"}``), else ``default``."""
    try:
        body = json.loads(content)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("error") or body.get("detail") or content.decode(errors="replace") or reason
    cls = ERRORS.get(str(body.get("kind")), default)
    if status == 404 and cls is default:
        cls = AgentError
    raise cls(f"{doing}: {message} (HTTP {status})")


def _check(response: httpx.Response, default: type[MachineError], doing: str) -> Any:
    if not response.is_success:
        _raise(response, default, doing)
    return response.json() if response.content else None


def capabilities_from(body: Mapping[str, Any]) -> Capabilities:
    return Capabilities(
        isolation=Isolation(body.get("isolation", "namespaces")),
        snapshots=bool(body.get("snapshots")),
        network_modes=frozenset(body.get("network_modes") or ("host",)),
        forward=bool(body.get("forward")),  # through the service: ``remote_forward.py``
        containers=bool(body.get("containers")),  # images pulled and run by the service
        snapshot_export=bool(body.get("snapshot_export")),  # as tar streams
    )


class RemoteProvider(Provider):
    """Machines allocated on a machine service at ``url`` (``$VMRUNNER_REMOTE_URL``), with
    the bearer ``token`` (``$VMRUNNER_REMOTE_TOKEN``)."""

    name: ClassVar[str] = "remote"
    capabilities: ClassVar[Capabilities] = DEFAULT_CAPABILITIES

    def __init__(self, url: str | None = None, token: str | None = None, **_: Any) -> None:
        self.url = (url or os.environ.get(ENV_REMOTE_URL, "")).rstrip("/")
        self.token = token if token is not None else os.environ.get(ENV_REMOTE_TOKEN) or None
        self._client: httpx.AsyncClient | None = None
        self._held: dict[str, RemoteMachine] = {}
        if self.url:
            body = self._sync_get("/api/vm-types", AllocationError, "describing the service")
            caps = capabilities_from(body.get("capabilities", {}))
            setattr(self, "capabilities", caps)  # noqa: B010 - the service's, per instance
            self.vm_types: list[str] = list(body.get("vm_types", []))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self) -> httpx.AsyncClient:
        if not self.url:
            raise AllocationError(
                f"the remote provider needs the service's URL: --remote-url or ${ENV_REMOTE_URL}"
            )
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url, headers=self.headers, timeout=TIMEOUT
            )
        return self._client

    def _sync_get(self, path: str, default: type[MachineError], doing: str) -> Any:
        try:
            response = httpx.get(self.url + path, headers=self.headers, timeout=10.0)
        except httpx.HTTPError as exc:
            raise default(f"{doing}: cannot reach {self.url}: {exc}") from exc
        return _check(response, default, doing)

    async def request(
        self, method: str, path: str, default: type[MachineError], doing: str, **kwargs: Any
    ) -> httpx.Response:
        try:
            return await self.client().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise default(f"{doing}: cannot reach the machine service {self.url}: {exc}") from exc

    async def connect(self, path: str, doing: str) -> ClientConnection:
        """A WebSocket to ``path`` of the service, with the token; refusals raised as ours."""
        url = "ws" + self.url.removeprefix("http") + path  # http -> ws, https -> wss
        try:
            return await connect(
                url, additional_headers=self.headers, compression=None, max_size=None,
                open_timeout=TIMEOUT.connect,
            )
        except InvalidStatus as exc:
            answer = exc.response
            body = bytes(answer.body or b"")
            _refused(answer.status_code, body, answer.reason_phrase, AgentError, doing)
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise AgentError(f"{doing}: cannot reach the service {self.url}: {exc}") from exc

    async def allocate(self, spec: MachineSpec) -> Machine:
        name = f"vmr-{secrets.token_hex(8)}"
        pid, start = owner_identity()
        owner = dict(zip(OWNER_LABELS, (socket.gethostname(), str(pid), str(start)), strict=True))
        body = {
            "vm_type": spec.vm_type, "name": name, "network": spec.network, "cpus": spec.cpus,
            "memory_mib": spec.memory_mib, "pids": spec.pids, "disk_mib": spec.disk_mib,
            "labels": {**spec.labels, **owner}, "wait": True, **spec_images(spec),
        }
        try:
            response = await self.request(
                "POST", "/api/vms", AllocationError, "allocating", json=body
            )
            vm = _check(response, AllocationError, f"allocating a {spec.vm_type} machine")
            if vm.get("status") != "running":
                raise AllocationError(
                    f"machine {vm.get('id')} is {vm.get('status')}: {vm.get('error') or '?'}"
                )
        except BaseException:
            await shielded(self._forget(name))
            raise
        machine = RemoteMachine(self, spec, vm)
        self._held[machine.vm_id] = machine
        return machine

    async def _forget(self, name: str) -> None:
        """Ask the service to drop the allocation ``name``, made or not (yet)."""
        with suppress(httpx.HTTPError):  # else the service's idle timeout releases it
            await self.client().delete(f"/api/vms/by-name/{name}")

    async def release(self, machine: Machine) -> None:
        if not isinstance(machine, RemoteMachine):
            raise ReleaseError(f"machine {machine.id} is not a remote machine")
        await shielded(self._hang_up_and_delete(machine))
        self._held.pop(machine.vm_id, None)
        machine.released = True

    async def _hang_up_and_delete(self, machine: RemoteMachine) -> None:
        await machine.hang_up()
        await self._delete(self.client(), machine.vm_id)

    @staticmethod
    async def _delete(client: httpx.AsyncClient, vm_id: str) -> None:
        try:
            response = await client.delete(f"/api/vms/{vm_id}")
        except httpx.HTTPError as exc:
            raise ReleaseError(f"releasing {vm_id}: cannot reach the service: {exc}") from exc
        if response.status_code != 404 and not response.is_success:
            _raise(response, ReleaseError, f"releasing {vm_id}")

    async def reclaim(self, record: MachineRecord) -> None:
        url = str(record.data.get("url") or self.url)
        vm_id = str(record.data.get("vm_id") or record.machine_id)
        async with httpx.AsyncClient(base_url=url, headers=self.headers, timeout=TIMEOUT) as c:
            await shielded(self._delete(c, vm_id))

    def leftovers(self) -> list[MachineRecord]:
        """The service's machines of this token that a runner process on this host made."""
        if not self.url:
            return []
        body = self._sync_get("/api/vms", AgentError, "listing machines")
        here = socket.gethostname()
        found = []
        for vm in body.get("vms", []):
            labels = vm.get("labels") or {}
            host, pid, start = (labels.get(k) for k in OWNER_LABELS)
            if host != here or not pid or vm.get("status") not in ("creating", "running"):
                continue
            found.append(record_of(self.url, vm, int(pid), None if start in (None, "None")
                                   else int(start)))
        return found

    async def aclose(self) -> None:
        for machine in self._held.values():
            await shielded(machine.hang_up())
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def record_of(url: str, vm: Mapping[str, Any], owner_pid: int, owner_start: int | None
              ) -> MachineRecord:
    """A remote machine's record: the machine's pid and folder are the service host's."""
    inner = vm.get("machine") or {}
    return MachineRecord(
        machine_id=str(inner.get("id") or vm["id"]),
        provider=RemoteProvider.name,
        vm_type=str(vm.get("vm_type", "")),
        pid=inner.get("pid"),
        pid_start=inner.get("pid_start"),
        state_dir=str(inner.get("state_dir", "")),
        owner_pid=owner_pid,
        owner_start=owner_start,
        data={"url": url, "vm_id": vm["id"], "name": vm.get("name", "")},
    )


class RemoteMachine(Machine):
    """One VM of the machine service."""

    def __init__(self, provider: RemoteProvider, spec: MachineSpec, vm: Mapping[str, Any]) -> None:
        self._provider = provider
        self.vm_id = str(vm["id"])
        self.spec = spec
        paths = vm.get("paths") or {}
        self.paths = MachinePaths(
            workspace=paths.get("workspace", ""), temp=paths.get("temp", ""),
            home=paths.get("home", ""), tool_cache=paths.get("tool_cache", ""),
        )
        self.from_pool = bool((vm.get("machine") or {}).get("from_pool"))
        pid, start = owner_identity()
        self._record = record_of(provider.url, vm, pid, start)
        self.id = self._record.machine_id
        self.released = False
        self._idle: list[ClientConnection] = []
        self._tunnels: set[Tunnel] = set()
        self._hung_up = False

    @property
    def provider_name(self) -> str:
        return RemoteProvider.name

    @property
    def record(self) -> MachineRecord:
        return self._record

    def _path(self, tail: str = "") -> str:
        return f"/api/vms/{self.vm_id}{tail}"

    async def exec(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced inside the machine
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        write: Mapping[str, str] | None = None,
        collect: Sequence[str] = (),
    ) -> ExecResult:
        body = {
            "command": command if isinstance(command, str) else list(command),
            "env": dict(env or {}), "cwd": cwd, "timeout": timeout,
            "stdin": None if stdin is None else base64.b64encode(stdin).decode(),
            "write": dict(write or {}), "collect": list(collect),
        }
        payload = json.dumps(body, separators=(",", ":"))
        doing = f"running a command in {self.id}"
        if len(payload) > CHANNEL_BODY:
            return await self._posted(payload, _Reply(on_output), doing)
        channel = await self._channel(doing)
        reply = _Reply(on_output)
        try:
            await channel.send(payload)
            while True:
                result = reply.take(json.loads(await channel.recv(decode=False)))
                if result is not None:
                    return result
        except WebSocketException as exc:
            raise AgentError(f"{doing}: lost the machine service: {exc}") from exc
        finally:  # a command cut short (cancelled, a failing callback) dies with its socket
            if reply.ended and not self._hung_up and len(self._idle) < IDLE_CHANNELS:
                self._idle.append(channel)
            else:
                await shielded(channel.close())

    async def _channel(self, doing: str) -> ClientConnection:
        while self._idle:
            channel = self._idle.pop()
            if channel.state is State.OPEN:
                return channel
            await shielded(channel.close())  # the service closed it meanwhile
        return await self._provider.connect(self._path("/exec"), doing)

    async def hang_up(self) -> None:
        """Close the machine's WebSockets, and those of commands still running once they end
        (the provider does this on release)."""
        self._hung_up = True
        while self._idle:
            await self._idle.pop().close()
        for tunnel in list(self._tunnels):
            await tunnel.aclose()

    @asynccontextmanager
    async def forward(self, target: Path, port: int = 0) -> AsyncIterator[int]:
        """The machine's forward, held open by a WebSocket to the service; its connections
        come back over accept sockets (``remote_forward.py``)."""
        if not self._provider.capabilities.forward:
            raise ForwardUnsupported(f"the machine service of {self.id} cannot forward ports")
        if len(os.fsencode(target)) > MAX_SOCKET_PATH:
            raise ForwardError(f"cannot forward to {target}: its path is too long for a socket")
        doing = f"forwarding port {port} of {self.id}"
        control = await self._provider.connect(self._path(f"/forward?port={port}"), doing)
        try:
            try:
                answer = json.loads(await control.recv())
            except WebSocketException as exc:
                raise ForwardError(f"{doing}: the service closed the forward: {exc}") from exc
            if "error" in answer:
                raise ERRORS.get(answer.get("kind", ""), ForwardError)(
                    f"{doing}: {answer['error']}"
                )
            path = self._path(f"/forward/{answer['forward']}")
            tunnel = Tunnel(self._provider.connect, path, target, name=self.id)
            self._tunnels.add(tunnel)
            try:
                tunnel.start()
                yield int(answer["port"])
            finally:
                self._tunnels.discard(tunnel)
                await shielded(tunnel.aclose())
        finally:
            await shielded(control.close())

    async def exec_image(
        self,
        run: ImageRun,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced inside the machine
        on_output: OutputCallback | None = None,
        write: Mapping[str, str] | None = None,
        collect: Sequence[str] = (),
    ) -> ExecResult:
        """The one-shot container run by the service (``exec-image``: rare enough for a
        request each), streamed as a posted exec."""
        if not self._provider.capabilities.containers:
            raise ExecError(f"the machine service of {self.id} cannot run container images")
        body = image_exec(run, args, env, timeout, write, collect)
        payload = json.dumps(body, separators=(",", ":"))
        doing = f"running {run.image} in {self.id}"
        return await self._posted(payload, _Reply(on_output), doing, "/exec-image")

    async def _posted(
        self, payload: str, reply: _Reply, doing: str, tail: str = "/exec"
    ) -> ExecResult:
        """The exec as one HTTP request, its messages as NDJSON lines."""
        try:
            async with self._provider.client().stream(
                "POST", self._path(tail), content=payload,
                headers={"Content-Type": "application/json"},
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _raise(response, AgentError, doing)
                result = None
                async for line in response.aiter_lines():  # to its end: the connection is kept
                    result = reply.take(json.loads(line)) if line else result
        except httpx.HTTPError as exc:
            raise AgentError(f"{doing}: lost the machine service: {exc}") from exc
        if result is None:
            raise AgentError(f"{doing}: the service ended the command's stream without a result")
        return result

    async def put(self, dest_dir: str, tar_data: bytes) -> None:
        doing = f"copying into {dest_dir} of {self.id}"
        response = await self._provider.request(
            "PUT", self._path("/files"), AgentError, doing, params={"path": dest_dir},
            content=tar_data, headers={"Content-Type": "application/x-tar"},
        )
        _check(response, TransferError, doing)

    async def get(self, path: str) -> bytes:
        doing = f"copying {path} out of {self.id}"
        response = await self._provider.request(
            "GET", self._path("/files"), AgentError, doing, params={"path": path}
        )
        if not response.is_success:
            _raise(response, TransferError, doing)
        return response.content

    async def snapshot(self, name: str = "") -> SnapshotId:
        doing = f"taking a snapshot of {self.id}"
        response = await self._provider.request(
            "POST", self._path("/snapshots"), AgentError, doing,
            json={"name": name, "description": name},
        )
        return str(_check(response, SnapshotError, doing)["snapshot_id"])

    async def restore(self, snapshot_id: SnapshotId) -> None:
        doing = f"restoring {self.id} to {snapshot_id}"
        response = await self._provider.request(
            "POST", self._path(f"/rollback/{snapshot_id}"), AgentError, doing
        )
        _check(response, SnapshotError, doing)

    async def export_snapshot(self, snapshot_id: SnapshotId, dest_dir: str) -> None:
        """The snapshot's tar, streamed from the service into ``dest_dir`` on this host:
        unpacked into a folder beside it, renamed at the end (a cut export leaves nothing)."""
        doing = f"exporting snapshot {snapshot_id} of {self.id}"
        self._can_export(doing)
        dest = dest_dir.rstrip("/")
        partial = f"{dest}.partial-{secrets.token_hex(4)}"
        path = self._path(f"/snapshots/{urllib.parse.quote(snapshot_id, safe='')}/export")
        try:
            await asyncio.to_thread(os.makedirs, Path(dest).parent, exist_ok=True)
            async with self._provider.client().stream("GET", path) as response:
                if not response.is_success:
                    await response.aread()
                    _raise(response, TransferError, doing)
                await untar_chunks(response.aiter_raw(), partial)
            await asyncio.to_thread(os.rename, partial, dest)
        except httpx.HTTPError as exc:
            raise AgentError(f"{doing}: lost the machine service: {exc}") from exc
        except OSError as exc:
            raise TransferError(f"{doing}: {exc}") from exc
        finally:
            await shielded(asyncio.to_thread(remove_tree, partial))

    async def import_snapshot(self, source_dir: str) -> None:
        """``source_dir`` (an export) as a tar stream to the service, which imports it."""
        doing = f"importing the snapshot in {source_dir} into {self.id}"
        self._can_export(doing)
        async with aclosing(tar_chunks(source_dir)) as chunks:
            response = await self._provider.request(
                "POST", self._path("/import"), AgentError, doing, content=chunks,
                headers={"Content-Type": "application/x-tar"},
            )
        _check(response, TransferError, doing)

    def _can_export(self, doing: str) -> None:
        if not self._provider.capabilities.snapshot_export:
            raise SnapshotUnsupported(f"{doing}: the machine service cannot export snapshots")

    async def limits_hit(self) -> list[str]:
        response = await self._provider.request(
            "GET", self._path("/limits"), AgentError, "reading limits"
        )
        return list(_check(response, AgentError, "reading limits").get("limits_hit", []))


class _Reply:
    """The messages of one command, in order: its output (to ``on_output``, else kept), then its
    result or its error."""

    def __init__(self, on_output: OutputCallback | None) -> None:
        self.on_output = on_output
        self.kept: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.ended = False

    def take(self, message: Mapping[str, Any]) -> ExecResult | None:
        """The result once it came; raises the command's error."""
        if "o" in message:
            chunk = base64.b64decode(message["d"])
            if self.on_output is not None:
                self.on_output(message["o"], chunk)
            else:
                self.kept[message["o"]].append(chunk)
        elif "result" in message:
            self.ended = True
            return _result(message["result"], self.kept)
        elif "error" in message:
            self.ended = True
            raise ERRORS.get(message.get("kind", ""), AgentError)(message["error"])
        return None


def _result(body: Mapping[str, Any], kept: Mapping[str, list[bytes]]) -> ExecResult:
    return ExecResult(
        exit_code=body.get("exit_code"),
        duration=float(body.get("duration", 0.0)),
        signal=body.get("signal"),
        timed_out=bool(body.get("timed_out")),
        stdout=b"".join(kept["stdout"]),
        stderr=b"".join(kept["stderr"]),
        files={k: base64.b64decode(v) for k, v in (body.get("files") or {}).items()},
        truncated=frozenset(body.get("truncated") or ()),
    )
