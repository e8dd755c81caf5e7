"""A stand-in for the ``firecracker`` binary that holds every request to Firecracker's API document.

For hosts where Firecracker cannot run (no binary, or a KVM that cannot boot a guest), tests
point the ``firecracker`` provider at this program instead::

    python tests/machines/fake_firecracker.py --document firecracker.yaml \\
        [--record FILE] [--emulate-guest] --api-sock PATH [--id ID]

It serves HTTP on a real unix socket, like Firecracker, and for every request:

- finds the operation (method and path template) in the OpenAPI (Swagger 2.0) document, or
  answers 400 as Firecracker does for an unknown method or path;
- validates the JSON body against the operation's schema (required fields, types, enums,
  bounds, ``$ref``s resolved) with ``jsonschema``; objects also refuse fields they do not
  declare, as Firecracker's request types are deserialised with serde's
  ``deny_unknown_fields``; and an id in the path must match the one in the body;
- enforces the documented order: "Pre-boot only" resources are refused once the microVM
  started, "Post-boot only" ones before; ``InstanceStart`` needs a boot source and works once;
  ``/snapshot/create`` needs a ``Paused`` microVM; ``/snapshot/load`` only on a fresh process
  with nothing configured but the logger and metrics (and, as Firecracker, a failed load ends
  the process); files named in requests must exist, as Firecracker opens them;
- answers with the documented status codes (204, 200 with JSON for GETs, 400 with
  ``{"fault_message": ...}``) and appends the request and its answer to ``--record`` (one JSON
  object a line), so tests can check the exact sequence a provider sent.

It does not boot a VM. With ``--emulate-guest`` it emulates one, for tests only: InstanceStart
(or a snapshot load) starts our real guest agent in a bubblewrap sandbox with the guest's paths
(``/home/runner``, ``/tmp``, ``/opt/hostedtoolcache``), listening on the vsock port named by
``vmrunner.agent=vsock:PORT`` in the boot arguments (as the images' ``/init`` reads it); the vsock
device is emulated on
``uds_path`` with Firecracker's host-initiated handshake (``CONNECT PORT\\n`` answered by
``OK HOSTPORT\\n``, or the connection closed when nothing listens). The emulated disk is the
drive's backing file holding a tar of the guest's writable directories: it is unpacked at boot
and written back when a snapshot is created (Firecracker flushes block devices then), so a
restore sees exactly the disk the provider put back. The guest's memory is not emulated: a
restored guest runs a fresh agent (processes running at snapshot time are not brought back).
As with Firecracker, creating a snapshot resets every vsock connection, and the guest dies with
the process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from vmrunner.machines.base import MachineSpec
from vmrunner.machines.local import AGENT_PATH
from vmrunner.machines.sandbox import (
    HOME,
    PATH,
    PYTHONS,
    SECRET_DIRS,
    TEMP,
    TOOL_CACHE,
    WORKSPACE,
    env_args,
    namespace_args,
    system_args,
)

#: Files of the host's /etc the fake's guest must not see (masked with an empty file).
SECRET_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers")


def host_etc_args() -> list[str]:
    """The fake guest's /etc: the host's, less its secrets (a stand-in for a guest image's)."""
    args = ["--ro-bind", "/etc", "/etc"]
    for path in SECRET_FILES:
        if os.path.isfile(path):
            args += ["--ro-bind", "/dev/null", path]
    for path in SECRET_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--tmpfs", path, "--remount-ro", path]
    # /etc/resolv.conf often links into /run, which the guest does not see: bring the target.
    resolv = os.path.realpath("/etc/resolv.conf")
    if resolv != "/etc/resolv.conf" and not resolv.startswith(("/etc/", "/usr/")):
        args += ["--ro-bind-try", resolv, resolv]
    return args


NOT_STARTED, RUNNING, PAUSED = "Not started", "Running", "Paused"
POST_BOOT = "The requested operation is not supported after starting the microVM."
PRE_BOOT = "The requested operation is not supported before starting the microVM."
LOAD_AFTER_CONFIG = (
    "Loading a microVM snapshot not allowed after configuring boot-specific resources."
)
#: Operations whose summary does not say it but that Firecracker also takes before boot only.
EXTRA_PRE_BOOT = {"putBalloon", "putLogger", "putMetrics", "putSerial"}
#: Likewise after boot only.
EXTRA_POST_BOOT = {"patchVm", "patchBalloon", "patchBalloonStatsInterval"}
#: Resources that may be configured before a snapshot load.
LOAD_ALLOWED = {"putLogger", "putMetrics"}
#: Where the vsock device numbers host ends (as Firecracker does, from 2^30).
FIRST_HOST_PORT = 1 << 30
GUEST_WRITABLE = {"home": HOME, "tmp": "/tmp", "toolcache": TOOL_CACHE}


class Fault(Exception):
    """A request Firecracker would refuse: its status and ``fault_message``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# The API document.


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    template: str
    operation_id: str
    summary: str
    body: Mapping[str, Any] | None
    body_required: bool

    @property
    def pre_boot(self) -> bool:
        return "Pre-boot only" in self.summary or self.operation_id in EXTRA_PRE_BOOT

    @property
    def post_boot(self) -> bool:
        return "Post-boot only" in self.summary or self.operation_id in EXTRA_POST_BOOT


class ApiDocument:
    """The operations of a Swagger 2.0 document and a validator for their bodies."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.version = str(document.get("info", {}).get("version", ""))
        self.definitions = {
            name: _deny_unknown(schema) for name, schema in document["definitions"].items()
        }
        self._routes: list[tuple[re.Pattern[str], dict[str, Operation]]] = []
        for template, item in document["paths"].items():
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            operations = {}
            for method, spec in item.items():
                if method.startswith("x-") or method == "parameters":
                    continue
                body = next((p for p in spec.get("parameters", []) if p.get("in") == "body"), None)
                operations[method.upper()] = Operation(
                    method=method.upper(),
                    template=template,
                    operation_id=spec.get("operationId", f"{method} {template}"),
                    summary=str(spec.get("summary", "")),
                    body=body["schema"] if body else None,
                    body_required=bool(body and body.get("required")),
                )
            self._routes.append((re.compile(f"^{pattern}$"), operations))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ApiDocument:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: faster
        with open(path, encoding="utf-8") as file:
            return cls(yaml.load(file, Loader=loader))

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        """The operation for ``method path`` and its path parameters, or a 400 ``Fault``."""
        for pattern, operations in self._routes:
            found = pattern.match(path)
            if found and method in operations:
                return operations[method], found.groupdict()
        raise Fault(f"Invalid request method and/or path: {method} {path}.")

    def validate(self, operation: Operation, body: Any) -> None:
        """Raise a 400 ``Fault`` naming the first field of ``body`` the schema refuses."""
        if operation.body is None:
            if body is not None:
                raise Fault(f"{operation.method} {operation.template} takes no body.")
            return
        if body is None:
            if operation.body_required:
                raise Fault(f"{operation.method} {operation.template}: the request needs a body.")
            return
        validator = jsonschema.Draft4Validator({**operation.body, "definitions": self.definitions})
        errors = sorted(validator.iter_errors(body), key=lambda e: (len(e.path), list(e.path)))
        if errors:
            error = errors[0]
            where = ".".join(str(part) for part in error.absolute_path) or "body"
            raise Fault(
                "An error occurred when deserializing the json body of a request: "
                f"{where}: {error.message}."
            )


def _deny_unknown(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on objects that list their properties."""
    if not isinstance(schema, dict):
        return schema
    copied = dict(schema)
    if isinstance(copied.get("properties"), dict):
        copied["properties"] = {k: _deny_unknown(v) for k, v in copied["properties"].items()}
        copied.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(copied.get(key), dict):
            copied[key] = _deny_unknown(copied[key])
    return copied


# The emulated guest (tests only).


class Spawner:
    """Runs process starts on the main thread.

    bubblewrap's ``--die-with-parent`` ties the guest to the *thread* that started it: starting
    it from a request thread would kill it when that thread ends.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.Queue()
        self.stopping = threading.Event()

    def call(self, job: Callable[[], Any]) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                job, future = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)


@dataclass
class EmulatedGuest:
    """Our agent in a bubblewrap sandbox, standing in for the guest the kernel would boot."""

    run_dir: Path
    machine_id: str
    agent_port: int | None
    network: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "vsock" / "agent.sock"

    def start(self, disk: Path) -> None:
        for name in (*GUEST_WRITABLE, "vsock"):
            (self.run_dir / name).mkdir(parents=True, exist_ok=True)
        _unpack_disk(disk, self.run_dir)
        for inner in ("work", "work/workspace", "work/_temp"):
            (self.run_dir / "home" / inner).mkdir(exist_ok=True)
        if self.agent_port is None:
            return  # a guest without our agent: it boots, nobody listens
        bwrap = shutil.which("bwrap") or "bwrap"
        python = next((p for p in PYTHONS if os.access(p, os.X_OK)), sys.executable)
        spec = MachineSpec(network="host" if self.network else "none")
        argv = [
            bwrap,
            *namespace_args(spec, hostname=self.machine_id),
            *(["--unshare-user"] if os.geteuid() != 0 else []),
            *system_args(),
            *host_etc_args(),
            *(
                arg
                for name, inside in GUEST_WRITABLE.items()
                for arg in ("--bind", str(self.run_dir / name), inside)
            ),
            "--dir", "/var",
            "--symlink", "../tmp", "/var/tmp",
            "--ro-bind", str(AGENT_PATH.parent), "/run/vmrunner",
            "--bind", str(self.run_dir / "vsock"), "/run/vsock",
            "--remount-ro", "/",
            "--chdir", WORKSPACE,
            "--clearenv",
            *env_args(
                HOME=HOME,
                PATH=PATH,
                LANG="C.UTF-8",
                RUNNER_TEMP=TEMP,
                RUNNER_TOOL_CACHE=TOOL_CACHE,
                VMRUNNER_MACHINE_ID=self.machine_id,
            ),
            "--",
            python, "-I", "-S", f"/run/vmrunner/{AGENT_PATH.name}",
            "--unix", "/run/vsock/agent.sock",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    def connect(self, port: int) -> socket.socket | None:
        """A stream to whatever listens on guest ``port``, None when nothing does."""
        if port != self.agent_port or self.process is None:
            return None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(_short(self.agent_socket))
        except OSError:
            conn.close()
            return None
        return conn

    def flush(self, disk: Path) -> None:
        """Write the guest's writable directories to its disk (Firecracker flushes on snapshot)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in GUEST_WRITABLE:
                tar.add(self.run_dir / name, arcname=name)
        with open(disk, "r+b" if disk.exists() else "wb") as file:
            file.truncate(0)
            file.write(buffer.getvalue())

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the guest (the sandbox and its descendants)."""
        if self.process is None:
            return
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                children.setdefault(int(stat[1]), []).append(int(entry))
        pending = [self.process.pid]
        while pending:
            pid = pending.pop()
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
            pending.extend(children.get(pid, ()))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _unpack_disk(disk: Path, into: Path) -> None:
    if disk.stat().st_size == 0 or not tarfile.is_tarfile(disk):
        return  # a fresh disk (or a real image): the guest starts empty
    with tarfile.open(disk) as tar:
        tar.extractall(into, filter="tar")


class VsockDevice:
    """Firecracker's vsock device, host side: ``uds_path`` forwards to guest ports."""

    def __init__(self, uds_path: Path, guest: EmulatedGuest) -> None:
        self.guest = guest
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(_short(uds_path))  # fails with EADDRINUSE as Firecracker's does
        self._listener.listen(16)
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._next_port = FIRST_HOST_PORT
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                host, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(host,), daemon=True).start()

    def _forward(self, host: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            chunk = host.recv(1)
            if not chunk:
                break
            line += chunk
        found = re.fullmatch(rb"CONNECT (\d+)\n", line)
        guest = self.guest.connect(int(found.group(1))) if found else None
        if guest is None:  # nothing listens there: Firecracker closes the host's connection
            host.close()
            return
        with self._lock:
            port, self._next_port = self._next_port, self._next_port + 1
            self._connections.update((host, guest))
        host.sendall(f"OK {port}\n".encode())
        threading.Thread(target=_pump, args=(guest, host), daemon=True).start()
        _pump(host, guest)

    def reset(self) -> None:
        """Close every forwarded connection (a transport reset, as on snapshot creation)."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.reset()
        self._listener.close()


def _short(path: Path) -> str:
    """``path`` relative to the working directory when too long for a socket address."""
    return str(path) if len(str(path)) < 100 else os.path.relpath(path)


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
    except OSError:
        pass
    for conn in (source, target):
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)


# The microVM's API state.


@dataclass
class MicroVm:
    """What one Firecracker process knows, and the rules its API enforces."""

    document: ApiDocument
    instance_id: str = "anonymous-instance"
    run_dir: Path = field(default_factory=Path.cwd)
    emulate_guest: bool = False
    spawner: Spawner | None = None
    state: str = NOT_STARTED
    #: operationId -> body, for every resource configured so far.
    configured: dict[str, Any] = field(default_factory=dict)
    drives: dict[str, dict[str, Any]] = field(default_factory=dict)
    interfaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Set when the process must end after answering (failed load, guest shut down).
    exit_after: bool = False
    guest: EmulatedGuest | None = None
    vsock: VsockDevice | None = None

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        """The answer to one request: 204, 200 with a JSON document, or 400 with a fault."""
        try:
            operation, params = self.document.match(method, path.split("?", 1)[0])
            body = _parse(raw)
            self.document.validate(operation, body)
            for name, value in params.items():
                if isinstance(body, dict) and name in body and body[name] != value:
                    raise Fault("The id from the path does not match the id from the body!")
            return self._apply(operation, body or {})
        except Fault as fault:
            return fault.status, {"fault_message": str(fault)}

    def _apply(self, operation: Operation, body: dict[str, Any]) -> tuple[int, Any]:
        op = operation.operation_id
        if operation.method == "GET":
            return 200, self._get(op)
        if operation.pre_boot and self.state != NOT_STARTED:
            raise Fault(POST_BOOT)
        if operation.post_boot and self.state == NOT_STARTED:
            raise Fault(PRE_BOOT)
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            handler(body)
        elif op == "createSyncAction":
            self._action(body["action_type"])
        else:
            self.configured[op] = body
        return 204, None

    def _get(self, op: str) -> Any:
        if op == "describeInstance":
            return {
                "app_name": "Firecracker",
                "id": self.instance_id,
                "state": self.state,
                "vmm_version": self.document.version,
            }
        if op == "getFirecrackerVersion":
            return {"firecracker_version": self.document.version}
        if op == "getMachineConfiguration":
            return self.configured.get(
                "putMachineConfiguration", {"vcpu_count": 1, "mem_size_mib": 128, "smt": False}
            )
        if op == "getExportVmConfig":
            return self._export()
        raise Fault(f"the stub does not emulate {op}")

    def _export(self) -> dict[str, Any]:
        config: dict[str, Any] = {"drives": list(self.drives.values())}
        config["network-interfaces"] = list(self.interfaces.values())
        for op, key in (
            ("putGuestBootSource", "boot-source"),
            ("putMachineConfiguration", "machine-config"),
            ("putGuestVsock", "vsock"),
        ):
            if op in self.configured:
                config[key] = self.configured[op]
        return config

    # Configuration.

    def _op_putMachineConfiguration(self, body: dict[str, Any]) -> None:
        if body.get("smt") and body["vcpu_count"] > 1 and body["vcpu_count"] % 2:
            raise Fault(
                "The vCPU number is invalid! The vCPU number can only be 1 or an even number when "
                "SMT is enabled."
            )
        self.configured["putMachineConfiguration"] = body

    def _op_putGuestBootSource(self, body: dict[str, Any]) -> None:
        for key in ("kernel_image_path", "initrd_path"):
            if key in body and not os.path.isfile(self._path(body[key])):
                raise Fault(
                    f"The {key.split('_')[0]} file cannot be opened: No such file or directory "
                    f"(os error 2)"
                )
        self.configured["putGuestBootSource"] = body

    def _op_putGuestDriveByID(self, body: dict[str, Any]) -> None:
        if "path_on_host" in body and not os.path.isfile(self._path(body["path_on_host"])):
            raise Fault(
                "Unable to create the virtio block device: No such file or directory (os error 2)"
            )
        if body["is_root_device"] and any(
            d["is_root_device"] for i, d in self.drives.items() if i != body["drive_id"]
        ):
            raise Fault("A root block device already exists!")
        self.drives[body["drive_id"]] = body
        self.configured["putGuestDriveByID"] = True

    def _op_putGuestNetworkInterfaceByID(self, body: dict[str, Any]) -> None:
        self.interfaces[body["iface_id"]] = body
        self.configured["putGuestNetworkInterfaceByID"] = True

    def _op_patchVm(self, body: dict[str, Any]) -> None:
        self.state = PAUSED if body["state"] == "Paused" else RUNNING
        if self.guest is not None:  # a paused guest runs nothing, as its vCPUs would not
            self.guest.signal(signal.SIGSTOP if self.state == PAUSED else signal.SIGCONT)

    def _path(self, path: str) -> Path:
        return self.run_dir / path  # relative paths are the process's (a jail's root: "/")

    # Actions.

    def _action(self, action: str) -> None:
        if action == "InstanceStart":
            if self.state != NOT_STARTED:
                raise Fault(POST_BOOT)
            if "putGuestBootSource" not in self.configured:
                raise Fault("Cannot start microvm without kernel configuration.")
            self._boot(self.configured.get("putGuestVsock"))
            self.state = RUNNING
        elif action == "SendCtrlAltDel":
            if self.state == NOT_STARTED:
                raise Fault(PRE_BOOT)
            self.exit_after = True  # the guest shuts down and Firecracker exits on its reset
        elif "putMetrics" not in self.configured:  # FlushMetrics
            raise Fault("The metrics system is not initialized.")

    def _boot(self, vsock: Mapping[str, Any] | None) -> None:
        root = next((d for d in self.drives.values() if d["is_root_device"]), None)
        boot_args = str(self.configured.get("putGuestBootSource", {}).get("boot_args", ""))
        found = re.search(r"(?:^|\s)vmrunner\.agent=vsock:(\d+)", boot_args)
        if vsock is not None:
            try:
                uds = self._path(vsock["uds_path"])
                guest = EmulatedGuest(
                    run_dir=self.run_dir / f"guest-{os.getpid()}",
                    machine_id=self.instance_id,
                    agent_port=int(found.group(1)) if found and self.emulate_guest else None,
                    network=bool(self.interfaces),
                )
                self.vsock = VsockDevice(uds, guest)
            except OSError as exc:
                raise Fault(f"Error creating the vsock device: {exc}") from exc
        if self.vsock is not None and root is not None and "path_on_host" in root:
            guest = self.vsock.guest
            disk = self._path(root["path_on_host"])
            if self.spawner is not None:
                self.spawner.call(lambda: guest.start(disk))
            else:
                guest.start(disk)
            self.guest = guest

    # Snapshots.

    def _op_createSnapshot(self, body: dict[str, Any]) -> None:
        if self.state != PAUSED:
            raise Fault("Cannot create a snapshot: the microVM is not paused.")
        if body.get("snapshot_type") == "Diff" and not self.configured.get(
            "putMachineConfiguration", {}
        ).get("track_dirty_pages"):
            raise Fault("Diff snapshots are not allowed on microVMs without dirty page tracking.")
        state = {"emulated": "vmrunner firecracker stub", **self._export()}
        try:
            snapshot_path = self._path(body["snapshot_path"])
            snapshot_path.write_text(json.dumps(state), encoding="utf-8")
            memory = self._path(body["mem_file_path"])
            memory.write_bytes(json.dumps({"memory_of": self.instance_id}).encode())
            if self.guest is not None:
                for drive in self.drives.values():
                    if drive["is_root_device"]:
                        self.guest.flush(self._path(drive["path_on_host"]))
        except OSError as exc:
            raise Fault(f"Cannot create snapshot: {exc}") from exc
        if self.vsock is not None:
            self.vsock.reset()

    def _op_loadSnapshot(self, body: dict[str, Any]) -> None:
        if set(self.configured) - LOAD_ALLOWED:
            raise Fault(LOAD_AFTER_CONFIG)
        if ("mem_file_path" in body) == ("mem_backend" in body):
            raise Fault(
                "Load snapshot error: exactly one of mem_file_path and mem_backend is required."
            )
        backend = body.get("mem_backend", {"backend_type": "File"})
        memory = body.get("mem_file_path") or backend.get("backend_path", "")
        try:
            if backend["backend_type"] != "File":
                raise ValueError("the stub only loads File memory backends")
            self._path(memory).read_bytes()
            state = json.loads(self._path(body["snapshot_path"]).read_text(encoding="utf-8"))
            for drive in state["drives"]:
                open(self._path(drive["path_on_host"]), "rb").close()
        except (OSError, ValueError, KeyError) as exc:
            self.exit_after = True  # a failed load leaves the process in no state to go on
            raise Fault(f"Load snapshot error: Failed to restore from snapshot: {exc}") from exc
        self.drives = {d["drive_id"]: d for d in state["drives"]}
        self.interfaces = {i["iface_id"]: i for i in state.get("network-interfaces", [])}
        for op, key in (
            ("putGuestBootSource", "boot-source"),
            ("putMachineConfiguration", "machine-config"),
        ):
            if key in state:
                self.configured[op] = state[key]
        vsock = dict(state["vsock"]) if "vsock" in state else None
        if vsock is not None and "vsock_override" in body:
            vsock["uds_path"] = body["vsock_override"]["uds_path"]
        self._boot(vsock)
        self.configured["loadSnapshot"] = True
        self.state = RUNNING if body.get("resume_vm") else PAUSED

    def shutdown(self) -> None:
        if self.vsock is not None:
            self.vsock.close()
        if self.guest is not None:
            self.guest.stop()
            shutil.rmtree(self.guest.run_dir, ignore_errors=True)


def _parse(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Fault(
            f"An error occurred when deserializing the json body of a request: {exc}."
        ) from exc


# The server.


class Recorder:
    """Appends each request and its answer to a file, one JSON object a line."""

    def __init__(self, path: str | None, instance_id: str) -> None:
        self.path = path
        self.instance_id = instance_id
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str, raw: bytes, status: int, answer: Any) -> None:
        if self.path is None:
            return
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        entry = {
            "id": self.instance_id,
            "pid": os.getpid(),
            "method": method,
            "path": path,
            "body": body,
            "status": status,
            "fault": answer.get("fault_message") if isinstance(answer, dict) else None,
        }
        with self._lock, open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    vm: MicroVm
    record: Recorder
    lock: threading.Lock
    finished: threading.Event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with self.server.lock:  # Firecracker's API thread takes one request at a time
            status, answer = self.server.vm.handle(self.command, self.path, raw)
            self.server.record(self.command, self.path, raw, status, answer)
        payload = json.dumps(answer).encode() if answer is not None else b""
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        if self.server.vm.exit_after:
            self.server.finished.set()

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake_firecracker", description=__doc__.split("\n")[0])
    parser.add_argument("--document", required=True, help="Firecracker's firecracker.yaml")
    parser.add_argument("--record", help="append every request and answer to this file")
    parser.add_argument("--emulate-guest", action="store_true", help="run our agent as the guest")
    parser.add_argument("--api-sock", required=True)
    parser.add_argument("--id", default="anonymous-instance")
    options, _ = parser.parse_known_args(argv)  # Firecracker's other options are ignored
    spawner = Spawner()
    vm = MicroVm(
        document=ApiDocument.load(options.document),
        instance_id=options.id,
        run_dir=Path.cwd(),
        emulate_guest=options.emulate_guest,
        spawner=spawner,
    )
    try:
        server = _Server(options.api_sock, _Handler)
    except OSError as exc:
        sys.stderr.write(f"Failed to open the API socket {options.api_sock}: {exc}\n")
        return 1
    server.vm, server.lock = vm, threading.Lock()
    server.record = Recorder(options.record, options.id)
    server.finished = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop_when_finished() -> None:
        server.finished.wait()
        spawner.stopping.set()

    threading.Thread(target=stop_when_finished, daemon=True).start()

    def terminate(signum: int, frame: Any) -> None:
        spawner.stopping.set()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    try:
        spawner.run()
    finally:
        vm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
