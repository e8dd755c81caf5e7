"""Small OCI images built by the tests, and a real registry on 127.0.0.1 to pull them from.

An image is written as an OCI layout (tar layers, config, manifest, index: the format itself,
no tool) from a few files: Debian's static busybox as the system, plus what a test adds; it is
pushed to Debian's ``docker-registry`` with ``skopeo copy``, as a user would push to theirs.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUSYBOX = Path("/bin/busybox")
#: Busybox applets every test image links (a shell and the usual tools).
APPLETS = (
    "sh", "ls", "cat", "echo", "env", "id", "mkdir", "rm", "test", "pwd", "sleep", "touch",
    "printf", "grep", "sed", "wc", "head", "tr", "nc", "wget", "kill", "true", "false", "ps",
    "hostname", "stat", "which", "chmod", "cp", "mv", "tee", "expr", "date", "uname",
)  # fmt: skip
#: A file of a layer: bytes (a file), None (a directory), ("link", target) or ("whiteout",).
Entry = bytes | None | tuple[str, ...]


def tools_missing() -> str:
    missing = [t for t in ("skopeo", "umoci", "docker-registry") if shutil.which(t) is None]
    if not BUSYBOX.exists():
        missing.append("busybox-static")
    return ", ".join(missing)


def busybox_layer() -> dict[str, Entry]:
    files: dict[str, Entry] = {
        "bin": None, "etc": None, "tmp": None, "root": None, "usr": None, "usr/bin": None,
        "bin/busybox": BUSYBOX.read_bytes(),
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
        "etc/group": b"root:x:0:\n",
    }  # fmt: skip
    for applet in APPLETS:
        files[f"bin/{applet}"] = ("link", "busybox")
    return files


def _tar_layer(entries: Mapping[str, Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, entry in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if entry is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
                tar.addfile(info)
            elif isinstance(entry, bytes):
                info.size, info.mode = len(entry), 0o755
                tar.addfile(info, io.BytesIO(entry))
            elif entry[0] == "link":
                info.type, info.linkname = tarfile.SYMTYPE, entry[1]
                tar.addfile(info)
            else:  # a whiteout: an empty file named .wh.NAME beside it
                folder, _, base = name.rpartition("/")
                info.name = f"{folder}/.wh.{base}" if folder else f".wh.{base}"
                tar.addfile(info, io.BytesIO(b""))
    return gzip.compress(buffer.getvalue(), mtime=0)


@dataclass
class Layout:
    path: Path
    tag: str


def write_layout(
    path: Path,
    layers: list[Mapping[str, Entry]],
    *,
    config: Mapping[str, Any] | None = None,
    tag: str = "latest",
) -> Layout:
    """An OCI image layout at ``path`` holding one image of ``layers`` (first is lowest)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer_blobs, diff_ids = [], []
    for entries in layers:
        data = _tar_layer(entries)
        diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest())
        layer_blobs.append(blob(data, "application/vnd.oci.image.layer.v1.tar+gzip"))
    image_config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"], **(config or {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }  # fmt: skip
    config_type = "application/vnd.oci.image.config.v1+json"
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(json.dumps(image_config).encode(), config_type),
        "layers": layer_blobs,
    }  # fmt: skip
    descriptor = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return Layout(path, tag)


class Registry:
    """Debian's docker-registry serving plain HTTP on 127.0.0.1 (as Docker treats loopback)."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(root / "registry.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1),
            ):
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"docker-registry did not start: {root / 'registry.log'}")
            time.sleep(0.05)

    def push(self, layout: Layout, name: str) -> str:
        """Push ``layout`` as ``name`` (``repo:tag``); the reference to pull it by."""
        reference = f"{self.host}/{name}"
        subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
             f"oci:{layout.path}:{layout.tag}", f"docker://{reference}"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return reference

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if missing := tools_missing():
        pytest.skip(f"container tests need {missing}: scripts/bootstrap --dev")
    server = Registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.close()


#: What was pushed, by registry (each test module that imports the session fixture ``registry``
#: gets a registry of its own), name and config.
_PUSHED: dict[tuple[str, str, str], str] = {}


def busybox_image(registry: Registry, tmp: Path, name: str = "busybox:1", **config: Any) -> str:
    """The busybox image with ``config`` pushed as ``name`` (once per session, name and
    config); another config under the same name gets a tag of its own (``busybox:1-<digest>``),
    so that tests asking for different images never overwrite each other's tag."""
    settings = json.dumps(config, sort_keys=True)
    key = (registry.host, name, settings)
    if key not in _PUSHED:
        if config:
            name = f"{name}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
        layout = write_layout(
            tmp / f"layout-{name.replace(':', '-').replace('/', '-')}",
            [busybox_layer()],
            config=config,
        )
        _PUSHED[key] = registry.push(layout, name)
    return _PUSHED[key]


def host_programs_layer(programs: list[str], folders: tuple[str, ...] = ()) -> dict[str, Entry]:
    """A layer holding host ``programs`` (with every shared library they and the ELF files of
    ``folders`` load) and ``folders`` whole: real programs for test images (bash, python)."""
    files: dict[str, Entry] = {"lib64": None}
    elves = [os.path.realpath(p) for p in programs]
    for folder in folders:
        for where, _, names in os.walk(folder):
            files[where.lstrip("/")] = None
            for name in names:
                path = os.path.join(where, name)
                if not os.path.islink(path) and "__pycache__" not in path:
                    files[path.lstrip("/")] = Path(path).read_bytes()
                    if name.endswith(".so"):
                        elves.append(path)
    libraries: set[str] = set()
    for elf in elves:
        done = subprocess.run(["ldd", elf], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if path.startswith("/"):
                libraries.add(path)
    for path in sorted(libraries | set(elves)):
        real = os.path.realpath(path)
        parent = os.path.dirname(real).lstrip("/")
        for index in range(1, parent.count("/") + 2):
            files.setdefault("/".join(parent.split("/")[:index]), None)
        files[real.lstrip("/")] = Path(real).read_bytes()
        named = os.path.join(os.path.dirname(real), os.path.basename(path))  # the soname
        if named != real:
            files[named.lstrip("/")] = ("link", os.path.basename(real))
    files["lib64/ld-linux-x86-64.so.2"] = ("link", os.path.realpath("/lib64/ld-linux-x86-64.so.2"))
    return files


def docker_hub_images(registry: Registry, tmp: Path) -> None:
    """The Docker Hub images act's test cases name, built here and served by ``registry`` as
    their mirror: ``alpine`` (busybox's sh), ``node:16-buster-slim`` (with bash),
    ``node:16-buster`` (with bash and python), and ``ubuntu:latest`` and ``ubuntu:18.04`` (with
    bash: the bases of act's Dockerfile actions)."""
    if (registry.host, "library/ubuntu:18.04", "docker-hub") in _PUSHED:
        return
    python = os.path.realpath(sys.executable if sys.executable.startswith("/usr/") else
                              "/usr/bin/python3")  # fmt: skip
    bash = host_programs_layer(["/usr/bin/bash"])
    links: dict[str, Entry] = {"usr/bin/python": ("link", python), "usr/bin/python3":
                               ("link", python), "bin/bash": ("link", "/usr/bin/bash")}  # fmt: skip
    with_python = host_programs_layer([python], (f"/usr/lib/{os.path.basename(python)}",))
    # node's entrypoint, as the real image has it: arguments that start with '-' go to node
    # (act's uses-docker-url runs `args: -v`); the stand-in node only answers -v.
    node: dict[str, Entry] = {
        "usr/local": None, "usr/local/bin": None,
        "usr/local/bin/docker-entrypoint.sh":
            b'#!/bin/sh\nif [ "${1#-}" != "$1" ]; then set -- node "$@"; fi\nexec "$@"\n',
        "usr/local/bin/node": b'#!/bin/sh\n[ "$1" = -v ] && exec echo v16.20.2-stand-in\n'
                              b'echo "a stand-in for node: it only answers -v" >&2; exit 1\n',
    }  # fmt: skip
    images = {
        "library/alpine:latest": [busybox_layer()],
        "library/node:16-buster-slim": [busybox_layer(), bash, links, node],
        "library/node:16-buster": [busybox_layer(), bash, with_python, links, node],
        "library/ubuntu:latest": [busybox_layer(), bash, links],
        "library/ubuntu:18.04": [busybox_layer(), bash, links],
    }
    for name, layers in images.items():
        config: dict[str, Any] = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]}
        if "/node:" in name:
            config.update(Entrypoint=["docker-entrypoint.sh"], Cmd=["node"])
        layout = write_layout(tmp / name.replace("/", "-").replace(":", "-"), layers,
                              config=config)  # fmt: skip
        _PUSHED[registry.host, name, "docker-hub"] = registry.push(layout, name)
