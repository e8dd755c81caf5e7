"""Docker actions' images built from a Dockerfile with buildah: RUN as the machines' root in
namespaces of its own (no host root, no network), the result unpacked into the cache, reused
for the same context."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.machines.oci_fixtures import Registry, busybox_image, registry
from vmrunner.errors import ImageError
from vmrunner.machines import build
from vmrunner.machines.identity import ROOT_UID, id_map
from vmrunner.machines.oci import ImageStore

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("buildah") is None,
    reason="building images needs root (the machines' id range) and buildah",
)


def context_tar(files: dict[str, str], name: str = "action") -> bytes:
    """A folder as ``Machine.get`` sends it: one top folder named as the folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size, info.mode, info.mtime = len(data), 0o755, 1234
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


RUN = (
    "RUN id -u > /built-as; cat /proc/self/uid_map > /uid-map;"
    " (wget -q -T 2 -O- http://127.0.0.1:{port}/v2/ && echo reached || echo no-network) > /net"
)


def test_a_dockerfile_is_built_unprivileged_without_network_and_kept(
    registry: Registry, tmp_path: Path
) -> None:
    base = busybox_image(registry, tmp_path)
    dockerfile = (
        f"FROM {base} AS first\nCOPY greeting.txt /greeting.txt\n"
        + RUN.format(port=registry.port)
        + '\nENV SAID=hello\nENTRYPOINT ["/bin/sh", "/entry.sh"]\nCOPY entry.sh /entry.sh\n'
    )
    files = {"Dockerfile": dockerfile, "greeting.txt": "hi there\n", "entry.sh": "echo $SAID\n"}
    store, ids = ImageStore(tmp_path / "cache"), id_map().host_id(ROOT_UID)
    image = build.build_image(store, context_tar(files), "Dockerfile", ids=ids)
    root = image.rootfs
    assert (root / "greeting.txt").read_text() == "hi there\n"
    assert image.entrypoint == ("/bin/sh", "/entry.sh")
    assert ("SAID", "hello") in image.env
    # RUN ran as root of a user namespace whose root is the machines' unprivileged id...
    assert (root / "built-as").read_text().strip() == "0"
    first = (root / "uid-map").read_text().split()
    assert first[:3] == ["0", str(ids), str(first[2])]
    # ... and reached no network, the registry on the host's loopback included
    assert (root / "net").read_text().strip().endswith("no-network")
    # unpacked as a pulled image is: owned by the machines' ids, never host root
    assert (root / "greeting.txt").stat().st_uid == ids
    # the same context (other times, other tar) is not built again
    again = build.build_image(store, context_tar(files, "elsewhere"), "Dockerfile", ids=ids)
    assert again == image
    changed = build.build_image(
        store, context_tar({**files, "greeting.txt": "changed\n"}), "Dockerfile", ids=ids
    )
    assert changed.digest != image.digest
    assert not list(store.root.glob(".build-*"))  # staging removed


def test_build_errors_are_clear(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids = ImageStore(tmp_path / "cache"), id_map().host_id(ROOT_UID)
    base = busybox_image(registry, tmp_path)
    with pytest.raises(ImageError, match="has no file Dockerfile"):
        build.build_image(store, context_tar({"x": ""}), "Dockerfile", ids=ids)
    with pytest.raises(ImageError, match="inside the action's folder"):
        build.build_image(store, context_tar({"x": ""}), "../Dockerfile", ids=ids)
    with pytest.raises(ImageError, match=r"building Dockerfile: .*exit 7|building Dockerfile"):
        build.build_image(
            store, context_tar({"Dockerfile": f"FROM {base}\nRUN exit 7\n"}), "Dockerfile",
            ids=ids,
        )  # fmt: skip
    assert not list(store.root.glob(".build-*"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ImageError, match="needs buildah: apt-get install buildah"):
        build.build_image(store, context_tar({"Dockerfile": "FROM x\n"}), "Dockerfile", ids=ids)


def test_base_images_skip_scratch_and_stages() -> None:
    dockerfile = (
        "FROM --platform=linux/amd64 golang:1.22 AS build\nRUN x\n"
        "from build as second\nFROM scratch\nFROM alpine:3\nFROM golang:1.22\n"
    )
    assert build.base_images(dockerfile) == ["golang:1.22", "alpine:3"]
    with pytest.raises(ImageError, match="build argument"):
        build.base_images("ARG V=1\nFROM node:${V}\n")


@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.text(max_size=20),
                       min_size=1, max_size=4))  # fmt: skip
def test_the_context_digest_depends_on_contents_only(files: dict[str, str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        first = build.unpack_context(context_tar(files, "a"), Path(one))
        second = build.unpack_context(context_tar(files, "b"), Path(two))
        os.utime(second / next(iter(files)), (1, 1))
        key = build.context_digest(first, "Dockerfile")
        assert key == build.context_digest(second, "Dockerfile")
        assert key != build.context_digest(first, "other/Dockerfile")
        (second / next(iter(files))).write_text("something else entirely")
        assert key != build.context_digest(second, "Dockerfile")


def test_bases_are_named_in_full_for_buildah() -> None:
    dockerfile = "FROM ubuntu AS one\nRUN echo FROM ubuntu\nFROM one\nfrom  ghcr.io/o/i:1\n"
    assert build.qualified(dockerfile, build.base_images(dockerfile)) == (
        "FROM docker.io/library/ubuntu:latest AS one\nRUN echo FROM ubuntu\nFROM one\n"
        "from  ghcr.io/o/i:1\n"
    )
