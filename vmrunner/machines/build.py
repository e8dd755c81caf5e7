"""Images of Docker actions built from their Dockerfile, with ``buildah``, never as host root.

A Dockerfile's ``RUN`` instructions are the action's code: as hostile as a job. So the build
runs in a user namespace mapped like the machines' (``identity.py``: its root is the machines'
unprivileged root id, host root is not mapped), with mount, pid and network namespaces of its
own (loopback only: ``RUN`` reaches no network, the host's services included), ``buildah``
using its ``chroot`` isolation and ``vfs`` storage in a staging folder of the image cache.
Base images (``FROM``) are copied by ``skopeo`` on the host first (the same path as a pull,
Docker Hub's mirror included) and handed to buildah as OCI layouts: nothing is fetched from
inside the build.

The result is pushed by buildah to an OCI layout and unpacked into the shared cache by
``ImageStore.unpack`` (digests checked, ids mapped as for a pulled image). It is keyed by the
digest of the build context (every file's path, type, executable bit and content, and the
Dockerfile's name), so a second run of the same action reuses it without building.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from vmrunner.errors import ImageError, MachineError
from vmrunner.machines.identity import ROOT_UID, id_map, user_namespace
from vmrunner.machines.oci import (
    ContainerImage,
    ImageStore,
    copy_to_layout,
    parse_reference,
)

BUILDAH_MISSING = (
    "building a Docker action's image from its Dockerfile needs buildah: apt-get install buildah"
)
#: How long one build may take, seconds (buildah and everything it started are killed then).
BUILD_TIMEOUT = 1800.0
#: The tag buildah gives the image it built (inside its private storage only).
_BUILT = "localhost/vmrunner-build:latest"
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.I | re.M)


def context_digest(context: Path, dockerfile: str) -> str:
    """The build's key: each file's relative path, type, executable bit and content (links'
    targets), in order, with the Dockerfile's name; times and owners do not count."""
    hasher = hashlib.sha256(f"dockerfile {dockerfile}\0".encode())
    for path in sorted(context.rglob("*")):
        relative = path.relative_to(context).as_posix()
        if path.is_symlink():
            hasher.update(f"link {relative}\0{os.readlink(path)}\0".encode())
        elif path.is_dir():
            hasher.update(f"dir {relative}\0".encode())
        elif path.is_file():
            executable = "x" if os.access(path, os.X_OK) else "-"
            hasher.update(f"file {relative} {executable} {path.stat().st_size}\0".encode())
            with open(path, "rb") as file:
                while chunk := file.read(1 << 20):
                    hasher.update(chunk)
    return hasher.hexdigest()


def base_images(dockerfile: str) -> list[str]:
    """The images a Dockerfile starts from (``FROM``), without ``scratch`` and earlier stages;
    ``ImageError`` for a base named by a build argument, which vmrunner does not resolve."""
    bases: list[str] = []
    stages: set[str] = set()
    for match in _FROM.finditer(dockerfile):
        base, stage = match.group(1), match.group(2)
        if "$" in base:
            raise ImageError(f"FROM {base}: a base image named by a build argument is not built")
        if base.lower() != "scratch" and base.lower() not in stages and base not in bases:
            bases.append(base)
        if stage:
            stages.add(stage.lower())
    return bases


def qualified(dockerfile: str, bases: list[str]) -> str:
    """``dockerfile`` with its bases named in full (``ubuntu`` is
    ``docker.io/library/ubuntu:latest``, as Docker reads it): buildah finds them so in its
    storage, whatever its short-name settings."""

    def full(match: re.Match[str]) -> str:
        base = match.group(1)
        if base not in bases:
            return match.group(0)
        start, end = match.span(1)
        line = match.group(0)
        offset = match.start(0)
        return line[: start - offset] + str(parse_reference(base)) + line[end - offset :]

    return _FROM.sub(full, dockerfile)


def unpack_context(tar_data: bytes, into: Path) -> Path:
    """The context folder from ``Machine.get``'s tar (one top folder), unpacked with the
    ``data`` filter: no absolute paths, ``..``, links out of it, devices or set-id bits."""
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_data), mode="r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"cannot read the action's folder: {exc}") from exc
    folders = [p for p in into.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(folders) != 1:
        raise ImageError("cannot read the action's folder: expected one folder in its tar")
    return folders[0]


def build_image(store: ImageStore, tar_data: bytes, dockerfile: str, *, ids: int) -> ContainerImage:
    """The image of the Dockerfile ``dockerfile`` (relative to the context, a folder sent as
    ``Machine.get``'s tar) unpacked for machines whose root is host id ``ids``: from the cache
    when this context was built before, else built. Blocking: call it in a thread."""
    if shutil.which("buildah") is None:
        raise ImageError(BUILDAH_MISSING)
    if PurePosixPath(dockerfile).is_absolute() or ".." in PurePosixPath(dockerfile).parts:
        raise ImageError(f"image {dockerfile!r}: the Dockerfile must be inside the action's folder")
    mapping = id_map()
    if mapping.host_id(ROOT_UID) != ids:
        raise ImageError("building images needs the machines' own id range (run as root)")
    store.prepare()
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=store.root))
    try:
        os.chmod(staging, 0o711)
        context = unpack_context(tar_data, staging / "context")
        key = context_digest(context, dockerfile)
        with store.locked(f"build-{key[:32]}"):
            if (image := store.built(key, ids)) is not None:
                return image
            path = context / dockerfile
            if not path.is_file() or path.is_symlink():
                raise ImageError(f"the action's folder has no file {dockerfile}")
            text = path.read_text(encoding="utf-8", errors="replace")
            bases = base_images(text)
            path.write_text(qualified(text, bases), encoding="utf-8")
            layouts = [staging / f"base-{index}" for index in range(len(bases))]
            for base, layout in zip(bases, layouts, strict=True):
                copy_to_layout(parse_reference(base), layout, None, staging)
            _run_buildah(staging, context, dockerfile, list(zip(bases, layouts, strict=True)))
            out = staging / "out"
            index = json.loads((out / "index.json").read_text(encoding="utf-8"))
            digest = str(index["manifests"][0]["digest"])
            image = store.unpack(f"Dockerfile {key[:12]}", out, digest, ids, staging)
            store.remember_build(key, image.digest)
            return image
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run_buildah(
    staging: Path, context: Path, dockerfile: str, bases: list[tuple[str, Path]]
) -> None:
    """Tag the base layouts in a private storage, build, push the result to ``staging/out``:
    each a ``buildah`` in the build's namespaces, as the machines' root."""
    mapping = id_map()
    owner = mapping.host_id(ROOT_UID)
    storage = staging / "storage"
    for folder in (storage, storage / "home", storage / "tmp"):
        folder.mkdir()
        os.chown(folder, owner, owner)
    for where, _, files in os.walk(staging):  # the context and bases: readable, not writable
        os.chmod(where, 0o755)
        for name in files:
            path = os.path.join(where, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o755 | 0o444)
    buildah = [
        "buildah", "--storage-driver", "vfs", "--root", str(storage / "root"),
        "--runroot", str(storage / "run"),
    ]  # fmt: skip
    store = f"containers-storage:[vfs@{storage / 'root'}+{storage / 'run'}]"
    for name, layout in bases:
        full = str(parse_reference(name))
        _inside(
            staging,
            ["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:image",
             f"{store}{full}"],
            f"FROM {name}",
        )  # fmt: skip
    _inside(
        staging,
        [*buildah, "build", "--pull=never", "--isolation", "chroot", "--quiet", "--layers=false",
         "-f", str(context / dockerfile), "-t", _BUILT, str(context)],
        f"building {dockerfile}",
    )  # fmt: skip
    out = staging / "out"
    out.mkdir()
    os.chown(out, owner, owner)
    _inside(staging, [*buildah, "push", "--quiet", _BUILT, f"oci:{out}:image"], "keeping it")


def _inside(staging: Path, argv: list[str], what: str) -> str:
    """``argv`` as the machines' root in a new user, mount, pid and network namespace; its
    standard output. Everything it started dies with it (``--kill-child``)."""
    storage = staging / "storage"
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(storage / "home"), "TMPDIR": str(storage / "tmp"),
        "XDG_RUNTIME_DIR": str(storage / "tmp"), "BUILDAH_ISOLATION": "chroot",
    }  # fmt: skip
    try:
        userns = user_namespace(id_map())
    except MachineError as exc:
        raise ImageError(f"{what}: {exc}") from exc
    try:
        done = subprocess.run(
            ["nsenter", f"--user=/proc/self/fd/{userns}", "--setuid", "0", "--setgid", "0",
             "--", "unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork",
             "--mount-proc", "--kill-child", "--", *argv],
            pass_fds=(userns,), env=env, cwd=str(staging), capture_output=True,
            timeout=BUILD_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what}: took more than {BUILD_TIMEOUT:.0f} s") from exc
    except OSError as exc:
        raise ImageError(f"{what}: {exc}") from exc
    finally:
        os.close(userns)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        tail = "; ".join(line.strip() for line in lines[-3:]) or f"exit {done.returncode}"
        raise ImageError(f"{what}: {tail}")
    return done.stdout.decode(errors="replace")

