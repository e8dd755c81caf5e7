"""Images pulled from a real registry on 127.0.0.1 with skopeo, unpacked with umoci, cached."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.machines.oci_fixtures import Registry, busybox_layer, registry, write_layout
from vmrunner.errors import ImageError
from vmrunner.machines.oci import ImageStore, parse_reference, verify_layout

__all__ = ["registry"]
IDS = 1879048192


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node:20", "docker.io/library/node:20"),
        ("postgres", "docker.io/library/postgres:latest"),
        ("docker://alpine:3.19", "docker.io/library/alpine:3.19"),
        ("ghcr.io/owner/image:v1", "ghcr.io/owner/image:v1"),
        ("owner/image", "docker.io/owner/image:latest"),
        ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
        ("127.0.0.1:5000/x@sha256:" + "a" * 64, "127.0.0.1:5000/x@sha256:" + "a" * 64),
    ],
)
def test_references_are_normalised_as_docker_does(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


@pytest.mark.parametrize(
    "text", ["", "Node:20", "node:", "x@sha256:abc", "a//b", "ghcr.io/", "node:bad tag"]
)
def test_bad_references_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ImageError, match="image"):
        parse_reference(text)


_names = st.from_regex(r"[a-z0-9]{1,8}(-[a-z0-9]{1,4})?", fullmatch=True)


@given(
    registry=st.sampled_from(["", "ghcr.io/", "127.0.0.1:5000/", "localhost/"]),
    path=st.lists(_names, min_size=1, max_size=3),
    tag=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)),
)
def test_a_normalised_reference_parses_to_itself(
    registry: str, path: list[str], tag: str | None
) -> None:
    ref = parse_reference(registry + "/".join(path) + (f":{tag}" if tag else ""))
    assert parse_reference(str(ref)) == ref
    assert ref.tag == (tag or "latest")
    assert ref.loopback == registry.startswith(("127.", "localhost"))


def test_an_image_is_pulled_verified_unpacked_and_cached(
    registry: Registry, tmp_path: Path
) -> None:
    layers = [
        busybox_layer(),
        {"etc/motd": b"hello\n", "opt": None, "opt/a": b"a", "opt/b": b"b", "gone": None,
         "gone/x": b"x"},
        # the third layer deletes a file and a folder of the second, and adds one
        {"opt/a": ("whiteout",), "gone": ("whiteout",), "opt/c": b"c"},
    ]  # fmt: skip
    layout = write_layout(
        tmp_path / "layout", layers, config={"Env": ["PATH=/bin", "GREETING=hi"],
                                              "Entrypoint": ["/bin/echo"], "WorkingDir": "/opt"},
    )  # fmt: skip
    reference = registry.push(layout, "layers:1")
    store = ImageStore(tmp_path / "cache")
    image = asyncio.run(store.pull(reference, ids=IDS))
    root = image.rootfs
    assert (root / "etc/motd").read_bytes() == b"hello\n"
    assert sorted(os.listdir(root / "opt")) == ["b", "c"]
    assert not (root / "gone").exists()
    assert os.readlink(root / "bin/sh") == "busybox"
    # image root is the machines' root: never host root
    assert (root / "bin/busybox").stat().st_uid == IDS
    assert image.env == (("PATH", "/bin"), ("GREETING", "hi"))
    assert image.entrypoint == ("/bin/echo",)
    assert image.workdir == "/opt"
    assert image.digest.startswith("sha256:")
    assert image.digest[7:] in str(root)
    # cached: a second pull (by tag, then by digest) asks nothing of the registry
    registry_host = reference.split("/")[0]
    store_again = asyncio.run(store.pull(reference, ids=IDS))
    assert store_again == image
    by_digest = asyncio.run(store.pull(f"{registry_host}/layers@{image.digest}", ids=IDS))
    assert by_digest.rootfs == image.rootfs
    assert [p.name for p in (tmp_path / "cache/oci").iterdir() if p.name.startswith(".pull")] == []


def test_a_tampered_blob_is_refused(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "layout", [{"a": b"1"}])
    manifest = json.loads((layout.path / "index.json").read_text())["manifests"][0]
    data = json.loads((layout.path / "blobs/sha256" / manifest["digest"][7:]).read_text())
    layer = layout.path / "blobs/sha256" / data["layers"][0]["digest"][7:]
    data_bytes = bytearray(layer.read_bytes())
    data_bytes[-1] ^= 0xFF
    layer.write_bytes(bytes(data_bytes))
    with pytest.raises(ImageError, match="does not match its digest"):
        verify_layout(layout.path)


def test_a_missing_image_or_registry_is_a_clear_error(
    registry: Registry, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "cache")
    with pytest.raises(ImageError, match=re.escape(f"pulling {registry.host}/nothing:here")):
        asyncio.run(store.pull(f"{registry.host}/nothing:here", ids=IDS))
    with pytest.raises(ImageError, match=re.escape("pulling 127.0.0.1:9/x:1")):
        asyncio.run(store.pull("127.0.0.1:9/x:1", ids=IDS))
