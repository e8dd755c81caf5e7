"""Guest images: content addressing, the initramfs, names, and the ``vmrunner image`` CLI."""

from __future__ import annotations

import dataclasses
import gzip
import json
import time
from pathlib import Path

import pytest

from tests.cli.helpers import vmrunner
from tests.machines.qemu_fixtures import TEST_PACKAGES, qemu_image, test_images_dir
from tests.machines.test_vmlinux import bzimage
from vmrunner.errors import ConfigError, ImageError
from vmrunner.machines.images import (
    AGENT_PATH,
    BASE_PACKAGES,
    INIT,
    UNNAMED_GRACE,
    Image,
    ImageInputs,
    ImageStore,
    check_name,
    check_packages,
    module_closure,
)


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, contents) of a newc archive (an independent reader for the tests)."""
    entries: dict[str, tuple[int, bytes]] = {}
    offset = 0
    while True:
        assert data[offset : offset + 6] == b"070701", f"bad magic at {offset}"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        start = offset + 110
        name = data[start : start + name_size - 1].decode()
        body = (start + name_size + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[body : body + size])
        offset = (body + size + 3) & ~3


@pytest.fixture
def image() -> Image:
    return qemu_image()


def test_the_image_has_its_files_and_the_initramfs_its_parts(image: Image) -> None:
    assert image.kernel.stat().st_size > 1 << 20
    assert image.rootfs.read_bytes()[:4] == b"QFI\xfb"  # qcow2 magic
    with open(image.rootfs_raw, "rb") as raw:
        raw.seek(1024 + 56)
        assert raw.read(2) == b"\x53\xef"  # ext4 superblock magic
    entries = read_cpio(gzip.decompress(image.initrd.read_bytes()))
    assert entries["init"][1] == INIT.encode()
    assert entries["init"][0] & 0o111
    assert entries["vmrunner/agent.py"][1] == AGENT_PATH.read_bytes()
    loaded = entries["lib/modules/load"][1].decode().split()
    for module in ("virtio_pci.ko", "virtio_blk.ko", "virtio_console.ko"):
        assert module in loaded
        assert f"lib/modules/{module}" in entries
    # Dependencies load first.
    assert loaded.index("virtio.ko") < loaded.index("virtio_pci.ko")
    assert loaded.index("virtio_ring.ko") < loaded.index("virtio_blk.ko")
    assert set(BASE_PACKAGES) <= set(image.packages)


def test_the_kernel_is_kept_unpacked_for_firecracker(image: Image, tmp_path: Path) -> None:
    store = ImageStore(test_images_dir())
    unpacked = store.vmlinux(image)
    assert unpacked.parent == image.directory
    with open(unpacked, "rb") as elf:
        assert elf.read(4) == b"\x7fELF"
    assert store.vmlinux(image) == unpacked  # kept: the same file again
    # An image built before kernels were kept unpacked gets its kernel unpacked on first use.
    older = dataclasses.replace(image, directory=tmp_path)
    (tmp_path / "vmlinuz").write_bytes(bzimage(gzip.compress(b"\x7fELF" + bytes(4096))))
    kept = store.vmlinux(older)
    assert kept.parent == tmp_path
    assert kept.read_bytes() == b"\x7fELF" + bytes(4096)
    assert store.vmlinux(older) == kept


def test_building_the_same_inputs_again_reuses_the_image(image: Image) -> None:
    store = ImageStore(test_images_dir())
    before = image.kernel.stat().st_mtime_ns
    stages: list[str] = []
    again = store.build(packages=TEST_PACKAGES, progress=stages.append)
    assert (again.digest, again.directory) == (image.digest, image.directory)
    assert "resolve the kernel package" in stages  # what the progress bar shows, stage by stage
    assert "make the ext4 file system" not in stages  # nothing rebuilt
    assert again.kernel.stat().st_mtime_ns == before
    assert store.names()["default"] == image.digest


def test_the_digest_covers_packages_kernel_and_agent() -> None:
    base = ImageInputs(check_packages([]), "linux-image-x", "1", agent=b"agent")
    assert (
        base.digest()
        == ImageInputs(check_packages([]), "linux-image-x", "1", agent=b"agent").digest()
    )
    assert (
        base.digest()
        != ImageInputs(check_packages(["jq"]), "linux-image-x", "1", agent=b"agent").digest()
    )
    assert (
        base.digest()
        != ImageInputs(check_packages([]), "linux-image-x", "2", agent=b"agent").digest()
    )
    assert (
        base.digest()
        != ImageInputs(check_packages([]), "linux-image-x", "1", agent=b"other").digest()
    )
    # A new agent keeps the root file system (the slow part); new packages do not.
    assert base.rootfs_key() == ImageInputs(check_packages([]), "k", "9", agent=b"x").rootfs_key()
    assert base.rootfs_key() != ImageInputs(check_packages(["jq"]), "k", "9").rootfs_key()


def test_module_closure_orders_dependencies_first(image: Image) -> None:
    kernels = test_images_dir() / "kernels"
    (modules,) = kernels.glob(f"*_{image.kernel_version}/lib/modules/*/kernel")
    names = [path.name for path in module_closure(modules, ["vmw_vsock_virtio_transport"])]
    assert names[-1] == "vmw_vsock_virtio_transport.ko"
    assert names.index("vsock.ko") < names.index("vmw_vsock_virtio_transport_common.ko")
    assert module_closure(modules, ["ext4"]) == []  # built into this kernel


@pytest.mark.parametrize("name", ["", "Upper", "../x", "a b", "-dash"])
def test_bad_image_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid image name"):
        check_name(name)


def test_bad_package_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid Debian package name 'rm -rf'"):
        check_packages(["jq", "rm -rf"])
    assert check_packages(["jq", "jq"]) == tuple(sorted({*BASE_PACKAGES, "jq"}))


def fake_image(
    store: ImageStore, digest: str, *names: str, created_at: float | None = None
) -> Image:
    directory = store.root / digest
    directory.mkdir(parents=True)
    image = Image(
        name=names[0], digest=digest, directory=directory, kernel_version="1", packages=()
    )
    if created_at is not None:
        image = dataclasses.replace(image, created_at=created_at)
    (directory / "image.json").write_text(json.dumps(image.to_json()))
    (store.root / "names").mkdir(exist_ok=True)
    for name in names:
        (store.root / "names" / name).write_text(digest)
    (store.root / "ready" / f"{digest}-shape").mkdir(parents=True)
    return image


def test_remove_forgets_a_name_and_the_files_once_unnamed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    fake_image(store, "d1", "one", "alias")
    assert [i.digest for i in store.list()] == ["d1"]
    store.remove("one")
    assert store.names() == {"alias": "d1"}
    assert (tmp_path / "d1").is_dir()
    store.remove("alias")
    assert store.names() == {}
    assert not (tmp_path / "d1").exists()
    assert not (tmp_path / "ready" / "d1-shape").exists()
    with pytest.raises(ImageError, match="no image named 'alias'"):
        store.get("alias")


def test_images_left_unnamed_by_a_rebuild_go_once_old(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    fake_image(store, "old", "gone", created_at=time.time() - 2 * UNNAMED_GRACE)
    fake_image(store, "recent", "renamed")
    fake_image(store, "current", "default")
    for name in ("gone", "renamed"):  # as if rebuilt: the names now point elsewhere
        (tmp_path / "names" / name).write_text("current")
    store._collect_unnamed()
    assert sorted(i.digest for i in store.list()) == ["current", "recent"]
    assert not (tmp_path / "ready" / "old-shape").exists()
    assert (tmp_path / "ready" / "recent-shape").exists()


def test_cli_lists_and_removes_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ImageStore(tmp_path)
    fake_image(store, "d2", "tiny")
    monkeypatch.setenv("VMRUNNER_IMAGES", str(tmp_path))
    listed = vmrunner("image", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["images"]
    assert (row["names"], row["digest"]) == (["tiny"], "d2")
    assert "tiny" in vmrunner("image", "list").stdout
    removed = vmrunner("image", "rm", "tiny")
    assert removed.returncode == 0, removed.stderr
    missing = vmrunner("image", "rm", "tiny")
    assert missing.returncode == 1
    assert "no image named 'tiny'" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert "no images" in vmrunner("image", "list").stdout


def test_cli_build_reuses_the_image_and_refuses_bad_packages(
    image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMRUNNER_IMAGES", str(test_images_dir()))
    built = vmrunner("image", "build", "--packages", ",".join(TEST_PACKAGES), "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["digest"] == image.digest
    refused = vmrunner("image", "build", "--name", "odd", "--packages", "jq,rm -rf")
    assert refused.returncode == 1
    assert "invalid Debian package name 'rm -rf'" in refused.stderr
    assert "odd" not in ImageStore(test_images_dir()).names()
