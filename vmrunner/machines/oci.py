"""OCI images for container machines: pulled with ``skopeo``, unpacked with ``umoci``, kept once.

No Docker daemon: ``skopeo copy`` fetches an image from any OCI or Docker registry into an OCI
layout (checking every blob against its digest as it goes, and choosing this host's platform
from a multi-platform index), we check the layout's blobs against their digests once more, and
``umoci unpack`` applies the layers in order, whiteouts included, into a root file system whose
files belong to the machines' mapped ids (image root is the machines' root, never host root).

The cache, under ``VMRUNNER_HOME/cache/oci``, is content-addressed and shared by every machine:

- ``images/<manifest hex>-<first host id>/``: ``rootfs/`` (never written after the unpack: a
  machine sees it through an overlay whose upper layer is its own) and ``image.json`` (the
  image's digest and config: env, entrypoint, cmd, working directory, user);
- ``refs/<hash of the reference>.json``: the digest a tag resolved to and when; a tag is asked
  of its registry again after ``TAG_REFRESH`` seconds, a reference ``@sha256:`` never.

A registry on a loopback address is spoken to over plain HTTP, as Docker does. Docker Hub's
images may come from a mirror (``VMRUNNER_REGISTRY_MIRROR``), as with Docker's
``registry-mirrors``: the tests serve ``alpine`` and ``node`` images that way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmrunner.errors import ImageError

#: Seconds a tag's resolution is trusted before the registry is asked again.
TAG_REFRESH = 600.0
#: How long one pull may take (skopeo or umoci), seconds.
PULL_TIMEOUT = 1800.0
DEFAULT_REGISTRY = "docker.io"
#: A registry that serves Docker Hub's images (``host[:port]``), as Docker's registry-mirrors.
REGISTRY_MIRROR = "VMRUNNER_REGISTRY_MIRROR"
SKOPEO_MISSING = "pulling images needs skopeo: apt-get install skopeo"
UMOCI_MISSING = "unpacking images needs umoci: apt-get install umoci"
_LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?$|^\[[0-9a-fA-F:]+\](:\d+)?$")


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A Docker reference, normalised as Docker does (``node:20`` is
    ``docker.io/library/node:20``)."""

    registry: str
    repository: str
    tag: str | None = "latest"
    digest: str | None = None

    @property
    def loopback(self) -> bool:
        """A registry on this host's loopback: plain HTTP, as Docker treats it."""
        return bool(_LOOPBACK.match(self.registry))

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    """``text`` (``[registry/]path[:tag][@sha256:hex]``, or with ``docker://``) normalised;
    ``ImageError`` says what is wrong with it."""
    reference = text.strip().removeprefix("docker://")
    rest, _, digest = reference.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ImageError(f"image {text!r}: the digest must be sha256: and 64 hex digits")
    first, slash, after = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, after
        if not _REGISTRY.match(registry):
            raise ImageError(f"image {text!r}: {registry!r} is not a registry host[:port]")
    else:
        registry, path = DEFAULT_REGISTRY, rest
    name, colon, tag = path.rpartition(":")
    if not colon:
        name, tag = path, ""
    elif not tag:
        raise ImageError(f"image {text!r}: empty tag after ':'")
    if registry == DEFAULT_REGISTRY and name and "/" not in name:
        name = f"library/{name}"
    if not name or not all(_COMPONENT.match(part) for part in name.split("/")):
        raise ImageError(
            f"image {text!r}: the name must be lowercase letters, digits and separators"
            " (e.g. node:20, ghcr.io/owner/image:tag)"
        )
    if tag and not _TAG.match(tag):
        raise ImageError(f"image {text!r}: {tag!r} is not a valid tag")
    return ImageReference(registry, name, tag or (None if digest else "latest"), digest or None)


@dataclass(frozen=True, slots=True)
class ContainerImage:
    """One unpacked image in the cache."""

    reference: str
    digest: str
    rootfs: Path
    env: tuple[tuple[str, str], ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""

    def to_data(self) -> dict[str, Any]:
        return {
            "reference": self.reference, "digest": self.digest, "env": [list(e) for e in self.env],
            "entrypoint": list(self.entrypoint), "cmd": list(self.cmd), "workdir": self.workdir,
            "user": self.user,
        }  # fmt: skip

    @classmethod
    def from_data(cls, data: Mapping[str, Any], rootfs: Path) -> ContainerImage:
        return cls(
            reference=str(data["reference"]), digest=str(data["digest"]), rootfs=rootfs,
            env=tuple((str(k), str(v)) for k, v in data.get("env", [])),
            entrypoint=tuple(data.get("entrypoint") or ()), cmd=tuple(data.get("cmd") or ()),
            workdir=str(data.get("workdir") or ""), user=str(data.get("user") or ""),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Credentials:
    """A registry's user name and password (``container.credentials``); never shown."""

    username: str
    password: str = field(repr=False)


class ImageStore:
    """The shared cache of unpacked images under ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / "oci"
        self.images = self.root / "images"
        self.refs = self.root / "refs"

    async def pull(
        self, reference: str, *, ids: int, credentials: Credentials | None = None
    ) -> ContainerImage:
        """The image ``reference`` unpacked for machines whose root is host id ``ids`` (and the
        65,536 after it): from the cache when a fresh resolution of it is there, else pulled.
        Raises ``ImageError`` with the reason."""
        ref = parse_reference(reference)
        digest = ref.digest or self._resolved(ref)
        if digest is not None and (image := self._cached(digest, ids)) is not None:
            return image
        return await asyncio.to_thread(self._pull, ref, ids, credentials)

    def folder(self, digest: str, ids: int) -> Path:
        return self.images / f"{digest.removeprefix('sha256:')}-{ids}"

    def _cached(self, digest: str, ids: int) -> ContainerImage | None:
        folder = self.folder(digest, ids)
        try:
            data = json.loads((folder / "image.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return ContainerImage.from_data(data, folder / "rootfs")

    def _ref_file(self, ref: ImageReference) -> Path:
        return self.refs / (hashlib.sha256(str(ref).encode()).hexdigest()[:32] + ".json")

    def _resolved(self, ref: ImageReference) -> str | None:
        try:
            data = json.loads(self._ref_file(ref).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if time.time() - float(data.get("time", 0)) > TAG_REFRESH:
            return None
        return str(data["digest"])

    def prepare(self) -> None:
        """Make the cache's folders (passable: the sandbox's unprivileged bubblewrap goes
        through them to the images)."""
        for folder in (self.root, self.images, self.refs):
            folder.mkdir(parents=True, exist_ok=True, mode=0o711)
            folder.chmod(0o711)

    def locked(self, name: str) -> contextlib.AbstractContextManager[None]:
        """One holder of ``name`` at a time on this host (other runners' included)."""
        return _locked(self.root / f".lock-{name}")

    def built(self, key: str, ids: int) -> ContainerImage | None:
        """The image built before from a context of digest ``key`` (``build.py``), if kept."""
        try:
            data = json.loads((self.refs / f"build-{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return self._cached(str(data["digest"]), ids)

    def remember_build(self, key: str, digest: str) -> None:
        _write_json(self.refs / f"build-{key}.json", {"digest": digest, "time": time.time()})

    def _pull(
        self, ref: ImageReference, ids: int, credentials: Credentials | None
    ) -> ContainerImage:
        self.prepare()
        with self.locked(self._ref_file(ref).stem):
            digest = ref.digest or self._resolved(ref)
            if digest is not None and (image := self._cached(digest, ids)) is not None:
                return image
            staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.root))
            try:
                image = self._fetch(ref, ids, credentials, staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if not ref.digest:
                _write_json(self._ref_file(ref), {"digest": image.digest, "time": time.time()})
            return image

    def _fetch(
        self, ref: ImageReference, ids: int, credentials: Credentials | None, staging: Path
    ) -> ContainerImage:
        digest = copy_to_layout(ref, staging / "layout", credentials, staging)
        return self.unpack(str(ref), staging / "layout", digest, ids, staging)

    def unpack(
        self, reference: str, layout: Path, digest: str, ids: int, staging: Path
    ) -> ContainerImage:
        """The one image of the OCI ``layout`` (tag ``image``), checked and unpacked into the
        cache as ``digest`` (its manifest's) for machines whose root is host id ``ids``."""
        umoci = _tool("umoci", UMOCI_MISSING)
        config = verify_layout(layout)
        folder = self.folder(digest, ids)
        if (image := self._cached(digest, ids)) is not None:
            return image  # another tag of the same image
        bundle = staging / "bundle"
        mapping = f"0:{ids}:65536"
        _run(
            [umoci, "unpack", "--image", f"{layout}:image", "--uid-map", mapping,
             "--gid-map", mapping, str(bundle)],
            f"unpacking {reference}", None,
        )  # fmt: skip
        for leftover in bundle.glob("*.mtree"):
            leftover.unlink()
        os.chmod(bundle, 0o711)
        image = image_from_config(reference, digest, config, folder / "rootfs")
        _write_json(bundle / "image.json", image.to_data())
        with contextlib.suppress(FileExistsError, OSError):
            bundle.rename(folder)
        if (cached := self._cached(digest, ids)) is None:
            raise ImageError(f"unpacking {reference}: cannot keep it in {self.images}")
        return cached

    def remove_all(self) -> None:
        """Empty the cache (unpacked files belong to the machines' ids: root removes them)."""
        shutil.rmtree(self.root, ignore_errors=True)


def copy_to_layout(
    ref: ImageReference, layout: Path, credentials: Credentials | None, staging: Path
) -> str:
    """Copy ``ref`` from its registry (or Docker Hub's mirror) into the OCI ``layout`` as tag
    ``image`` with ``skopeo``; its manifest's digest."""
    skopeo = _tool("skopeo", SKOPEO_MISSING)
    digest_file = staging / f"digest-{layout.name}"
    # Signature policies are not ours to judge: the image is named by the workflow, and its
    # blobs are still checked against their digests (here and by skopeo).
    argv = [skopeo, "--insecure-policy", "copy", "--quiet", "--digestfile", str(digest_file)]
    if ref.loopback:
        argv.append("--src-tls-verify=false")
    if credentials is not None:
        auth = staging / "auth.json"
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode())
        _write_json(auth, {"auths": {ref.registry: {"auth": token.decode()}}})
        argv += ["--src-authfile", str(auth)]
    else:
        argv.append("--src-no-creds")
    source = mirrored(ref)
    if source.loopback and not ref.loopback:
        argv.append("--src-tls-verify=false")
    _run([*argv, f"docker://{source}", f"oci:{layout}:image"], f"pulling {ref}", credentials)
    digest = digest_file.read_text(encoding="ascii").strip()
    if ref.digest and digest != ref.digest:
        raise ImageError(f"pulling {ref}: the registry sent {digest}, not {ref.digest}")
    return digest


def mirrored(ref: ImageReference) -> ImageReference:
    """Where a Docker Hub image is pulled from: the mirror ``VMRUNNER_REGISTRY_MIRROR``
    (``host[:port]``, as Docker's ``registry-mirrors``) when set, Docker Hub otherwise."""
    mirror = os.environ.get(REGISTRY_MIRROR, "").strip().removeprefix("http://").rstrip("/")
    if ref.registry != DEFAULT_REGISTRY or not mirror:
        return ref
    return ImageReference(mirror, ref.repository, ref.tag, ref.digest)


def verify_layout(layout: Path) -> dict[str, Any]:
    """Check the image's manifest, config and layers in an OCI layout against their digests and
    sizes; return its config. ``ImageError`` names the first blob that does not match."""
    index = _read_json(layout / "index.json")
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ImageError(f"{layout}: expected one image in the layout, found {len(manifests)}")
    manifest = json.loads(_blob(layout, manifests[0]))
    config = json.loads(_blob(layout, manifest["config"]))
    for layer in manifest.get("layers", []):
        _blob(layout, layer, keep=False)
    result: dict[str, Any] = config
    return result


def _blob(layout: Path, descriptor: Mapping[str, Any], *, keep: bool = True) -> bytes:
    digest = str(descriptor.get("digest", ""))
    if not _DIGEST.match(digest):
        raise ImageError(f"{layout}: unsupported digest {digest!r}")
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    hasher = hashlib.sha256()
    size = 0
    data = bytearray()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                hasher.update(chunk)
                size += len(chunk)
                if keep:
                    data += chunk
    except OSError as exc:
        raise ImageError(f"{layout}: blob {digest} is missing: {exc.strerror}") from exc
    if f"sha256:{hasher.hexdigest()}" != digest or size != int(descriptor.get("size", size)):
        raise ImageError(f"blob {digest} does not match its digest or size: refusing the image")
    return bytes(data)


def image_from_config(
    reference: str, digest: str, config: Mapping[str, Any], rootfs: Path
) -> ContainerImage:
    inner = config.get("config") or {}
    env = []
    for item in inner.get("Env") or []:
        name, _, value = str(item).partition("=")
        env.append((name, value))
    return ContainerImage(
        reference=reference, digest=digest, rootfs=rootfs, env=tuple(env),
        entrypoint=tuple(inner.get("Entrypoint") or ()), cmd=tuple(inner.get("Cmd") or ()),
        workdir=str(inner.get("WorkingDir") or ""), user=str(inner.get("User") or ""),
    )  # fmt: skip


def _tool(name: str, missing: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ImageError(missing)
    return found


def _run(argv: list[str], what: str, credentials: Credentials | None) -> None:
    import subprocess

    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=PULL_TIMEOUT, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        text = message[-1] if message else f"exit status {done.returncode}"
        if credentials is not None:
            text = text.replace(credentials.password, "***")
        raise ImageError(f"{what}: {_plain(text)}")


def _plain(message: str) -> str:
    """skopeo's last line without its log prefix (``time="..." level=fatal msg="..."``)."""
    found = re.search(r'msg="(.*)"\s*$', message)
    return found.group(1).replace('\\"', '"') if found else message


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: not an OCI layout ({exc})") from exc
    return data


def _write_json(path: Path, data: Any) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    mode = 0o600 if "auth" in path.name else 0o644
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(data, file)
    os.replace(temp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One pull of a reference at a time on this host (other runners' included)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
