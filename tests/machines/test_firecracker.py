"""The ``firecracker`` provider against a stand-in that holds it to Firecracker's API document.

Firecracker cannot run here, so ``tests/machines/fake_firecracker.py`` takes its place: a
real process serving Firecracker's API on a unix socket that validates every request against
the OpenAPI document and Firecracker's ordering rules, records them, and emulates the guest
(our real agent in a bubblewrap sandbox behind an emulated vsock device). The stand-in itself
is tested first, so that its validation cannot be vacuous. The shared provider suite runs
against the emulation here and, in ``test_providers.py``, against real Firecracker where a
host has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import shared_dir
from tests.machines.fake_firecracker import (
    LOAD_AFTER_CONFIG,
    POST_BOOT,
    PRE_BOOT,
    ApiDocument,
    MicroVm,
)
from tests.machines.provider_suite import (
    ProviderSuite,
    assert_nothing_left,
    child_processes,
    eventually,
    machine_processes,
    process_alive,
    sleepers,
)
from vmrunner.errors import AllocationError, SnapshotError
from vmrunner.machines.base import MachineSpec, Provider
from vmrunner.machines.firecracker import (
    FirecrackerApi,
    FirecrackerMachine,
    FirecrackerProvider,
    Jailer,
    SocketPath,
    _Layout,
    clone_file,
    unsupported_reason,
)
from vmrunner.machines.providers import get_provider

DOCUMENT = shared_dir() / "specs/firecracker/firecracker.yaml"
TAPS = ("fctap0", "fctap1", "fctap2")


@pytest.fixture(scope="module")
def document() -> ApiDocument:
    return ApiDocument.load(DOCUMENT)


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, Path]:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF not really a kernel")
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"")  # the emulated guest starts from an empty disk
    return kernel, rootfs


def stub_argv(record: Path, *, guest: bool = True) -> list[str]:
    argv = [sys.executable, str(Path(__file__).with_name("fake_firecracker.py"))]
    argv += ["--document", str(DOCUMENT), "--record", str(record)]
    return [*argv, "--emulate-guest"] if guest else argv


def emulated(tmp_path: Path, image: tuple[Path, Path], **options: Any) -> FirecrackerProvider:
    kernel, rootfs = image
    return FirecrackerProvider(
        kernel=kernel,
        rootfs=rootfs,
        firecracker=stub_argv(tmp_path / "requests.jsonl"),
        taps=TAPS,
        grace=0.5,
        boot_timeout=30,
        **options,
    )


def requests(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


# The stand-in: what it refuses (so that its acceptance means something).


def answer(vm: MicroVm, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    return vm.handle(method, path, raw)


def fault(vm: MicroVm, method: str, path: str, body: Any = None) -> str:
    status, reply = answer(vm, method, path, body)
    assert status == 400, (method, path, body)
    return str(reply["fault_message"])


@pytest.fixture
def vm(document: ApiDocument, tmp_path: Path, image: tuple[Path, Path]) -> MicroVm:
    return MicroVm(document=document, instance_id="probe", run_dir=tmp_path)


def boot_source(image: tuple[Path, Path]) -> dict[str, Any]:
    return {"kernel_image_path": str(image[0]), "boot_args": "console=ttyS0"}


def test_stub_accepts_a_valid_configuration(vm: MicroVm, image: tuple[Path, Path]) -> None:
    assert answer(vm, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}) == (
        204,
        None,
    )
    assert answer(vm, "PUT", "/boot-source", boot_source(image)) == (204, None)
    drive = {"drive_id": "rootfs", "path_on_host": str(image[1]), "is_root_device": True}
    assert answer(vm, "PUT", "/drives/rootfs", drive) == (204, None)
    assert answer(vm, "GET", "/")[1]["state"] == "Not started"
    assert answer(vm, "PUT", "/actions", {"action_type": "InstanceStart"}) == (204, None)
    assert answer(vm, "GET", "/")[1]["state"] == "Running"
    assert answer(vm, "GET", "/vm/config")[1]["drives"] == [drive]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("PUT", "/boot-source", {"boot_args": "x"}, "'kernel_image_path' is a required property"),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": "2", "mem_size_mib": 128},
            "vcpu_count: '2' is not of type 'integer'",
        ),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 2, "mem_size_mib": 128.5},
            "mem_size_mib: 128.5 is not of type 'integer'",
        ),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 0, "mem_size_mib": 128},
            "vcpu_count: 0 is less than the minimum of 1",
        ),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 33, "mem_size_mib": 128},
            "vcpu_count: 33 is greater than the maximum of 32",
        ),
        (
            "PUT",
            "/vsock",
            {"guest_cid": 2, "uds_path": "/v.sock"},
            "guest_cid: 2 is less than the minimum of 3",
        ),
        ("PUT", "/vsock", {"uds_path": "/v.sock"}, "'guest_cid' is a required property"),
        (
            "PATCH",
            "/vm",
            {"state": "Sleeping"},
            "state: 'Sleeping' is not one of ['Paused', 'Resumed']",
        ),
        ("PUT", "/actions", {"action_type": "Reboot"}, "action_type: 'Reboot' is not one of"),
        (
            "PUT",
            "/actions",
            {"action_type": "InstanceStart", "force": True},
            "Additional properties are not allowed ('force' was unexpected)",
        ),
        ("PUT", "/boot-source", ["kernel"], "is not of type 'object'"),
        ("PUT", "/boot-source", None, "the request needs a body"),
        (
            "PUT",
            "/drives/rootfs",
            {"drive_id": "rootfs", "is_root_device": "yes"},
            "is_root_device: 'yes' is not of type 'boolean'",
        ),
        # Through a $ref: the drive's rate limiter's token bucket needs a size.
        (
            "PUT",
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "is_root_device": False,
                "rate_limiter": {"bandwidth": {"refill_time": 100}},
            },
            "rate_limiter.bandwidth: 'size' is a required property",
        ),
        (
            "PUT",
            "/drives/other",
            {"drive_id": "rootfs", "is_root_device": False},
            "The id from the path does not match the id from the body!",
        ),
        (
            "PUT",
            "/snapshot/load",
            {"mem_file_path": "/m"},
            "'snapshot_path' is a required property",
        ),
        ("PUT", "/nonsense", {}, "Invalid request method and/or path: PUT /nonsense."),
        ("DELETE", "/vsock", None, "Invalid request method and/or path: DELETE /vsock."),
        ("GET", "/drives", None, "Invalid request method and/or path"),
    ],
)
def test_stub_refuses_requests_that_break_the_document(
    vm: MicroVm, method: str, path: str, body: Any, expected: str
) -> None:
    assert expected in fault(vm, method, path, body)


def test_stub_refuses_a_body_that_is_not_json(vm: MicroVm) -> None:
    status, reply = vm.handle("PUT", "/vsock", b"{guest_cid: 3")
    assert status == 400
    assert "deserializing the json body" in reply["fault_message"]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["vcpu_count", "mem_size_mib", "kernel_image_path", "boot_args", "drive_id", "is_root_device",
     "path_on_host", "guest_cid", "uds_path", "action_type", "state", "snapshot_path",
     "mem_file_path", "snapshot_type", "iface_id", "host_dev_name"]
)  # fmt: skip


PATHS = [
    "/", "/actions", "/boot-source", "/drives/rootfs", "/drives/x", "/machine-config", "/vsock",
    "/vm", "/snapshot/create", "/snapshot/load", "/network-interfaces/eth0", "/logger",
    "/version", "/vm/config", "/nope", "/drives/",
]  # fmt: skip


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "PUT", "PATCH", "POST", "DELETE"]),
    path=st.sampled_from(PATHS),
    body=st.one_of(JSON, st.dictionaries(FIELDS, JSON, max_size=5)),
)
def test_stub_answers_any_request_as_firecracker_would(
    document: ApiDocument, tmp_path: Path, method: str, path: str, body: Any
) -> None:
    vm = MicroVm(document=document, run_dir=tmp_path)
    status, reply = vm.handle(method, path, json.dumps(body).encode() if body is not None else b"")
    assert status in (200, 204, 400)
    if status == 400:
        assert isinstance(reply["fault_message"], str)
        assert reply["fault_message"]
    elif status == 204:  # accepted: the body matched the document
        operation, _ = document.match(method, path)
        document.validate(operation, body)
    assert vm.guest is None  # no emulation asked for: nothing started


def placeholder(schema: dict[str, Any]) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    return {"string": "x", "integer": 3, "boolean": False}.get(schema.get("type", ""), {})


def test_every_required_field_of_every_body_is_checked(document: ApiDocument) -> None:
    checked = 0
    for _, operations in document._routes:
        for operation in operations.values():
            ref = (operation.body or {}).get("$ref", "")
            if not ref:
                continue
            definition = document.definitions[ref.rsplit("/", 1)[1]]
            required = definition.get("required", [])
            full = {name: placeholder(definition["properties"][name]) for name in required}
            for missing in required:
                body = {name: value for name, value in full.items() if name != missing}
                with pytest.raises(Exception, match=f"'{missing}' is a required property"):
                    document.validate(operation, body)
                checked += 1
    assert checked >= 20  # boot source, drives, vsock, snapshots, machine config, ...


def test_stub_enforces_firecrackers_order(vm: MicroVm, image: tuple[Path, Path]) -> None:
    assert fault(vm, "PATCH", "/vm", {"state": "Paused"}) == PRE_BOOT
    assert (
        fault(vm, "PUT", "/snapshot/create", {"snapshot_path": "s", "mem_file_path": "m"})
        == PRE_BOOT
    )
    assert "without kernel configuration" in fault(
        vm, "PUT", "/actions", {"action_type": "InstanceStart"}
    )
    missing = {"kernel_image_path": "/nonexistent/vmlinux"}
    assert "kernel file cannot be opened" in fault(vm, "PUT", "/boot-source", missing)
    assert answer(vm, "PUT", "/boot-source", boot_source(image))[0] == 204
    load = {"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}}
    assert fault(vm, "PUT", "/snapshot/load", load) == LOAD_AFTER_CONFIG
    assert answer(vm, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204
    assert fault(vm, "PUT", "/actions", {"action_type": "InstanceStart"}) == POST_BOOT
    for path, body in [
        ("/boot-source", boot_source(image)),
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("/vsock", {"guest_cid": 3, "uds_path": "v.sock"}),
        ("/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True}),
    ]:
        assert fault(vm, "PUT", path, body) == POST_BOOT
    create = {"snapshot_path": "vmstate", "mem_file_path": "memory"}
    assert "not paused" in fault(vm, "PUT", "/snapshot/create", create)
    assert answer(vm, "PATCH", "/vm", {"state": "Paused"})[0] == 204
    assert answer(vm, "PUT", "/snapshot/create", create)[0] == 204
    assert fault(vm, "PUT", "/snapshot/load", load) == POST_BOOT


def test_stub_loads_only_on_a_fresh_process_with_one_memory_source(
    document: ApiDocument, tmp_path: Path
) -> None:
    fresh = MicroVm(document=document, run_dir=tmp_path)
    both = {
        "snapshot_path": "s",
        "mem_file_path": "m",
        "mem_backend": {"backend_type": "File", "backend_path": "m"},
    }
    assert "exactly one of" in fault(fresh, "PUT", "/snapshot/load", both)
    assert "Load snapshot error" in fault(
        fresh, "PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"}
    )
    assert fresh.exit_after  # Firecracker ends a process whose load failed


# The API client: Firecracker's faults become our errors.


async def start_stub(tmp_path: Path, record: Path) -> tuple[asyncio.subprocess.Process, Path]:
    socket = tmp_path / "api.sock"
    process = await asyncio.create_subprocess_exec(
        *stub_argv(record, guest=False),
        "--api-sock",
        str(socket),
        "--id",
        "client-test",
        cwd=tmp_path,
    )
    await eventually(socket.exists, "the stub's API socket")
    return process, socket


async def test_api_faults_become_our_errors(tmp_path: Path, image: tuple[Path, Path]) -> None:
    process, socket = await start_stub(tmp_path, tmp_path / "requests.jsonl")
    api = FirecrackerApi(socket)
    try:
        info = await api.get("/")
        assert info["id"] == "client-test"
        with pytest.raises(
            AllocationError,
            match=r"PUT /machine-config: .*vcpu_count: 64 is greater than the maximum of 32.* "
            r"\(HTTP 400\)",
        ):
            await api.put("/machine-config", {"vcpu_count": 64, "mem_size_mib": 128})
        with pytest.raises(SnapshotError, match=rf"PATCH /vm: {PRE_BOOT} \(HTTP 400\)"):
            await api.patch("/vm", {"state": "Paused"}, error=SnapshotError)
        await api.put("/boot-source", boot_source(image))
    finally:
        await api.aclose()
        process.send_signal(signal.SIGTERM)
        await process.wait()
    assert [
        (r["method"], r["path"], r["status"]) for r in requests(tmp_path / "requests.jsonl")
    ] == [
        ("GET", "/", 200),
        ("PUT", "/machine-config", 400),
        ("PATCH", "/vm", 400),
        ("PUT", "/boot-source", 204),
    ]
    with pytest.raises(AllocationError, match="Firecracker GET / failed"):
        await FirecrackerApi(socket).get("/")  # nobody serves it any more


# The provider's requests, as the stand-in saw them.


BOOT = [
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/rootfs"),
    ("PUT", "/network-interfaces/eth0"),
    ("PUT", "/vsock"),
    ("PUT", "/actions"),
]
SNAPSHOT = [("PATCH", "/vm"), ("PUT", "/snapshot/create"), ("PATCH", "/vm")]


async def test_full_request_sequence(tmp_path: Path, image: tuple[Path, Path]) -> None:
    provider = emulated(tmp_path, image)
    record = tmp_path / "requests.jsonl"
    machine = await provider.allocate(MachineSpec(cpus=2, memory_mib=256))
    assert isinstance(machine, FirecrackerMachine)
    first_pid = machine.record.pid
    await machine.write_file(f"{machine.paths.workspace}/state", b"before")
    snapshot = await machine.snapshot("after checkout")
    await machine.write_file(f"{machine.paths.workspace}/state", b"after")
    await machine.restore(snapshot)
    assert await machine.read_file(f"{machine.paths.workspace}/state") == b"before"
    assert (await machine.exec(["cat", "state"])).stdout == b"before"
    assert machine.record.pid != first_pid
    await provider.release(machine)

    sent = requests(record)
    assert all(r["status"] == 204 and r["fault"] is None for r in sent), sent
    assert [(r["method"], r["path"]) for r in sent] == [*BOOT, *SNAPSHOT, ("PUT", "/snapshot/load")]
    assert {r["pid"] for r in sent[: len(BOOT) + 3]} == {first_pid}
    assert sent[-1]["pid"] == machine.record.pid  # the load went to a fresh process
    bodies = {(r["method"], r["path"]): r["body"] for r in sent}
    layout = machine.layout
    assert bodies["PUT", "/machine-config"] == {"vcpu_count": 2, "mem_size_mib": 256}
    assert bodies["PUT", "/boot-source"] == {
        "kernel_image_path": str(image[0]),
        "boot_args": "console=ttyS0 reboot=k pci=off vmrunner.agent=vsock:1024",
    }
    assert bodies["PUT", "/drives/rootfs"] == {
        "drive_id": "rootfs", "path_on_host": str(layout.disk),
        "is_root_device": True, "is_read_only": False,
    }  # fmt: skip
    assert bodies["PUT", "/network-interfaces/eth0"] == {
        "iface_id": "eth0",
        "host_dev_name": "fctap0",
    }
    assert bodies["PUT", "/vsock"] == {"guest_cid": 3, "uds_path": "vsock.sock"}  # from its cwd
    assert bodies["PUT", "/actions"] == {"action_type": "InstanceStart"}
    assert [r["body"] for r in sent if r["path"] == "/vm"] == [
        {"state": "Paused"},
        {"state": "Resumed"},
    ]
    directory = layout.snapshots / snapshot
    assert bodies["PUT", "/snapshot/create"] == {
        "snapshot_type": "Full", "snapshot_path": str(directory / "vmstate"),
        "mem_file_path": str(directory / "memory"),
    }  # fmt: skip
    assert bodies["PUT", "/snapshot/load"] == {
        "snapshot_path": str(directory / "vmstate"),
        "mem_backend": {"backend_type": "File", "backend_path": str(directory / "memory")},
        "resume_vm": True,
    }
    assert_nothing_left(machine)
    assert provider.leftovers() == []


def size(path: str | Path) -> int:
    return os.stat(path).st_size


def first_bytes(path: Path) -> bytes:
    with open(path, "rb") as file:
        return file.read(4)


async def test_boots_the_images_kernel_initrd_and_rootfs(tmp_path: Path) -> None:
    """Without explicit files the provider boots an image of ``images`` (unpacking its kernel)."""
    from tests.machines.qemu_fixtures import qemu_image, test_images_dir

    image = qemu_image()
    record = tmp_path / "requests.jsonl"
    provider = FirecrackerProvider(
        images=test_images_dir(), firecracker=stub_argv(record), grace=0.5, boot_timeout=30
    )
    machine = await provider.allocate(MachineSpec(network="none"))
    try:
        assert (await machine.exec(["true"])).ok
        drive = next(r["body"] for r in requests(record) if r["path"] == "/drives/rootfs")
        assert size(drive["path_on_host"]) == size(image.rootfs_raw)
    finally:
        await provider.release(machine)
    boot = next(r["body"] for r in requests(record) if r["path"] == "/boot-source")
    kernel = Path(boot["kernel_image_path"])
    assert kernel.parent == image.directory  # unpacked once (at build), kept with the image
    assert first_bytes(kernel) == b"\x7fELF"
    assert boot["initrd_path"] == str(image.initrd)
    assert boot["boot_args"] == " ".join(
        ["console=ttyS0 reboot=k pci=off", *image.cmdline, "vmrunner.agent=vsock:1024"]
    )


async def test_network_none_has_no_interface_and_no_network(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    provider = emulated(tmp_path, image)
    machine = await provider.allocate(MachineSpec(network="none"))
    try:
        links = await machine.exec(["cat", "/proc/net/dev"])
        assert b"eth0" not in links.stdout
        assert links.stdout.count(b"\n") == 3  # two header lines and lo
    finally:
        await provider.release(machine)
    paths = [r["path"] for r in requests(tmp_path / "requests.jsonl")]
    assert "/network-interfaces/eth0" not in paths


async def test_a_refused_request_is_an_allocation_error_and_leaves_nothing(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    provider = emulated(tmp_path, image)
    before = frozenset(child_processes())
    with pytest.raises(
        AllocationError,
        match=r"PUT /machine-config: .*vcpu_count: 40 is greater than the maximum of 32",
    ):
        await provider.allocate(MachineSpec(cpus=40, network="none"))
    assert provider.leftovers() == []
    assert list(provider.machines_dir.iterdir()) == []
    await eventually(lambda: not child_processes(before), "the stand-in to be gone")


async def test_missing_image_or_binary_is_an_allocation_error(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    with pytest.raises(AllocationError, match="no guest image for the firecracker provider"):
        await FirecrackerProvider(images=tmp_path / "images").allocate(MachineSpec())
    with pytest.raises(AllocationError, match="a kernel and a rootfs together"):
        await FirecrackerProvider(kernel=image[0]).allocate(MachineSpec())
    with pytest.raises(AllocationError, match="does not exist"):
        await FirecrackerProvider(kernel=tmp_path / "none", rootfs=image[1]).allocate(MachineSpec())
    broken = FirecrackerProvider(
        kernel=image[0], rootfs=image[1], firecracker=str(tmp_path / "no-firecracker")
    )
    with pytest.raises(AllocationError, match="cannot start"):
        await broken.allocate(MachineSpec(network="none"))
    without_taps = FirecrackerProvider(kernel=image[0], rootfs=image[1])
    with pytest.raises(AllocationError, match="TAP device: none configured"):
        await without_taps.allocate(MachineSpec(network="host"))
    assert broken.leftovers() == []


async def test_sockets_deeper_than_a_socket_address_holds(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    provider = emulated(tmp_path, image, home=deep)
    machine = await provider.allocate(MachineSpec(network="none"))
    assert isinstance(machine, FirecrackerMachine)
    try:
        assert len(str(machine.layout.api_socket)) > 108
        assert (await machine.exec(["echo", "deep"])).stdout == b"deep\n"
        await machine.restore(await machine.snapshot())
        assert (await machine.exec(["true"])).ok
    finally:
        await provider.release(machine)
    assert_nothing_left(machine)


def test_socket_path_reaches_a_deep_socket(tmp_path: Path) -> None:
    import socket

    directory = tmp_path / ("x" * 100)
    directory.mkdir()
    path = directory / "deep.sock"
    with pytest.raises(OSError, match="too long"), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(path))
    server = socket.socket(socket.AF_UNIX)
    with SocketPath(path) as short:
        assert len(short) < 100
        server.bind(short)
        server.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(short)
    server.close()
    assert path.exists()


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode()


async def test_a_paused_guest_runs_nothing(tmp_path: Path, image: tuple[Path, Path]) -> None:
    provider = emulated(tmp_path, image)
    machine = await provider.allocate(MachineSpec(network="none"))
    assert isinstance(machine, FirecrackerMachine)
    try:
        await machine.exec("sleep 100 >/dev/null 2>&1 &")
        await eventually(lambda: len(sleepers(machine)) == 1, "the sleeper to start")
        (sleeper,) = sleepers(machine)
        await machine.api.patch("/vm", {"state": "Paused"})
        await eventually(lambda: process_state(sleeper) == "T", "the guest to stop")
        await machine.api.patch("/vm", {"state": "Resumed"})
        await eventually(lambda: process_state(sleeper) != "T", "the guest to go on")
    finally:
        await provider.release(machine)


async def test_taps_are_shared_out_and_given_back(tmp_path: Path, image: tuple[Path, Path]) -> None:
    provider = emulated(tmp_path, image)
    provider.taps = ["fctap0"]
    machine = await provider.allocate(MachineSpec())
    try:
        with pytest.raises(AllocationError, match="all are in use"):
            await provider.allocate(MachineSpec())
    finally:
        await provider.release(machine)
    again = await provider.allocate(MachineSpec())
    await provider.release(again)


async def test_a_failed_restore_is_a_snapshot_error(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    provider = emulated(tmp_path, image)
    machine = await provider.allocate(MachineSpec(network="none"))
    assert isinstance(machine, FirecrackerMachine)
    try:
        with pytest.raises(SnapshotError, match="has no snapshot 'nope'"):
            await machine.restore("nope")
        snapshot = await machine.snapshot()
        assert (await machine.exec(["true"])).ok  # the agent was reconnected after the reset
        (machine.layout.snapshots / snapshot / "vmstate").write_text("garbage")
        with pytest.raises(
            SnapshotError, match=r"PUT /snapshot/load: Load snapshot error: .* \(HTTP 400\)"
        ):
            await machine.restore(snapshot)
        stub = (machine.record.pid, machine.record.pid_start)
        await eventually(lambda: not process_alive(*stub), "Firecracker to end after a failed load")
    finally:
        await provider.release(machine)
    assert_nothing_left(machine)


async def test_a_cancelled_snapshot_leaves_a_running_machine(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    provider = emulated(tmp_path, image)
    machine = await provider.allocate(MachineSpec(network="none"))
    assert isinstance(machine, FirecrackerMachine)
    try:
        for step in range(5):  # cancelled at different stages of the snapshot
            task = asyncio.create_task(machine.snapshot(f"s{step}"))
            await asyncio.sleep(step * 0.02)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # unless it was done already
                await task
            assert (await machine.api.get("/"))["state"] == "Running"
            assert (await machine.exec(["true"])).ok
    finally:
        await provider.release(machine)
    assert_nothing_left(machine)


async def test_snapshot_of_a_released_machine_is_an_error(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    provider = emulated(tmp_path, image)
    machine = await provider.allocate(MachineSpec(network="none"))
    await provider.release(machine)
    with pytest.raises(SnapshotError, match="was released"):
        await machine.snapshot()


async def test_reclaim_after_the_runner_died_leaves_nothing(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    provider = emulated(tmp_path, image)
    machine = await provider.allocate(MachineSpec(network="none"))
    await machine.exec("sleep 100 >/dev/null 2>&1 &")
    assert machine_processes(machine.id)
    # Another provider (a new runner process) finds the record and reclaims it.
    successor = emulated(tmp_path, image)
    (record,) = successor.leftovers()
    assert (record.machine_id, record.pid) == (machine.id, machine.record.pid)
    await successor.reclaim(record)
    await eventually(lambda: not machine_processes(machine.id), "the guest's processes to die")
    assert_nothing_left(machine)
    await successor.reclaim(record)  # idempotent
    await provider.release(machine)


# Pieces.


def test_clone_file_keeps_data_and_holes(tmp_path: Path) -> None:
    source = tmp_path / "disk"
    with open(source, "wb") as file:
        file.write(b"head")
        file.seek(64 << 20)
        file.write(b"tail")
    target = tmp_path / "copy"
    clone_file(source, target)
    copied = target.read_bytes()
    assert (copied[:4], copied[-4:]) == (b"head", b"tail")
    assert target.stat().st_size == source.stat().st_size
    assert target.stat().st_blocks * 512 < 16 << 20  # the hole was not written out


def test_jailer_command_line_and_paths(tmp_path: Path) -> None:
    provider = FirecrackerProvider(
        tmp_path,
        firecracker="/usr/bin/firecracker",
        jailer=Jailer(binary="/usr/bin/jailer", uid=123, gid=456),
    )
    layout = provider._layout("firecracker-abc", tmp_path / "machines" / "firecracker-abc")
    root = tmp_path / "jailer" / "firecracker" / "firecracker-abc" / "root"
    assert layout == _Layout(vm_dir=root, chroot=root)
    assert layout.api(layout.disk) == "/rootfs.ext4"
    assert provider._argv("firecracker-abc", layout) == [
        "/usr/bin/jailer", "--id", "firecracker-abc", "--exec-file", "/usr/bin/firecracker",
        "--uid", "123", "--gid", "456", "--chroot-base-dir", str(tmp_path / "jailer"),
        "--", "--api-sock", "/api.sock",
    ]  # fmt: skip
    plain = FirecrackerProvider(tmp_path, firecracker="/usr/bin/firecracker")
    state = tmp_path / "machines" / "firecracker-abc"
    assert plain._argv("firecracker-abc", plain._layout("firecracker-abc", state)) == [
        "/usr/bin/firecracker", "--api-sock", "api.sock", "--id", "firecracker-abc",
    ]  # fmt: skip


def test_host_probe_names_what_is_missing(tmp_path: Path) -> None:
    assert unsupported_reason(str(tmp_path / "none")) == "firecracker binary not found"
    reason = unsupported_reason("/bin/sh")
    kvm_works = os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert (reason is None) == kvm_works or (reason or "").startswith("KVM cannot boot a guest")


def test_registered_by_name(image: tuple[Path, Path]) -> None:
    provider = get_provider("firecracker", kernel=image[0], rootfs=image[1])
    assert isinstance(provider, FirecrackerProvider)
    assert provider.capabilities.snapshots


# The shared suite, against the emulation.


class TestEmulatedFirecracker(ProviderSuite):
    @pytest.fixture
    async def provider(self, tmp_path: Path, image: tuple[Path, Path]) -> AsyncIterator[Provider]:
        provider = emulated(tmp_path, image)
        yield provider
        await provider.aclose()
        assert provider.leftovers() == [], "a test left a machine behind"
        faults = [r for r in requests(tmp_path / "requests.jsonl") if r["status"] >= 300]
        assert faults == [], "the provider sent a request Firecracker refuses"


# Real Firecracker, where the host has it (``test_providers.py`` runs the suite with these).

ENV_TAPS = "VMRUNNER_FIRECRACKER_TAPS"
_boot_failure: dict[str, str] = {}


async def real_firecracker_options() -> dict[str, Any]:
    """Options for real Firecracker on this host, or a skip that says what is missing.

    The probe is real: the binary, a KVM that speaks its API, TAP devices for network "host"
    (``$VMRUNNER_FIRECRACKER_TAPS``, comma-separated), the shared test image, and one machine
    that boots and answers (tried once per test session).
    """
    from tests.machines.qemu_fixtures import qemu_image, test_images_dir

    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(f"real Firecracker cannot run here: {reason}")
    taps = [tap for tap in os.environ.get(ENV_TAPS, "").split(",") if tap]
    if not taps:
        pytest.skip(f"real Firecracker: no TAP devices for network 'host' (set {ENV_TAPS})")
    qemu_image()  # the image the VM tests share (built once per host)
    options: dict[str, Any] = {"images": test_images_dir(), "taps": taps}
    if "probe" not in _boot_failure:
        provider = FirecrackerProvider(**options)
        try:
            await provider.release(await provider.allocate(MachineSpec(network="none")))
            _boot_failure["probe"] = ""
        except AllocationError as exc:
            _boot_failure["probe"] = str(exc)
    if _boot_failure["probe"]:
        pytest.skip(f"real Firecracker: KVM cannot boot a guest: {_boot_failure['probe']}")
    return options
