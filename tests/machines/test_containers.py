"""Container machines: a sandbox whose root is an OCI image from a real registry."""

from __future__ import annotations

import os

import pytest

from tests.machines.oci_fixtures import Registry, busybox_image, registry
from tests.machines.provider_suite import assert_nothing_left
from vmrunner.errors import AllocationError, ImageError
from vmrunner.machines.base import Machine, MachineSpec
from vmrunner.machines.sandbox import SandboxProvider

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")


async def sh(machine: Machine, script: str) -> tuple[int | None, str]:
    result = await machine.exec(["sh", "-c", script])
    return result.exit_code, (result.stdout + result.stderr).decode()


async def test_the_machine_runs_the_image_as_its_root(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = busybox_image(
        registry, tmp_path_factory.mktemp("images"), Env=["PATH=/bin", "FROM_IMAGE=yes"]
    )
    provider = SandboxProvider(grace=0.5)
    try:
        machine = await provider.allocate(MachineSpec(image=image, network="private"))
        try:
            assert machine.paths.workspace == "/__w/workspace"
            assert machine.paths.work == "/__w"
            assert machine.paths.home == "/github/home"
            code, out = await sh(
                machine,
                "id -u; echo $FROM_IMAGE $HOME; pwd; ls /usr; test -e /usr/bin/python3 || echo "
                "no-python; echo x > /bin/new && cat /bin/new; echo w > /__w/workspace/f",
            )
            assert code == 0, out
            lines = out.split()
            # root of the image (the machine's root, no host root), the image's environment
            assert lines[:4] == ["0", "yes", "/github/home", "/__w/workspace"]
            assert "no-python" in out
            assert "x" in lines
            # the job's root is its own: the cache never sees what it writes
            rootfs = provider.images._cached(
                (await provider.images.pull(image, ids=_root(provider))).digest, _root(provider)
            )
            assert rootfs is not None
            assert not (rootfs.rootfs / "bin/new").exists()
            # the host's system is not on the image's paths; the host's loopback is unreachable
            code, out = await sh(machine, "ls /home /root 2>&1; cat /etc/passwd")
            assert "runner" not in out
            assert "root:x:0:0" in out
            code, _ = await sh(machine, "echo hi > /proc/sys/kernel/hostname")
            assert code != 0
        finally:
            await provider.release(machine)
        assert_nothing_left(machine)
        # a second machine of the same image starts from the cache, unchanged
        again = await provider.allocate(MachineSpec(image=image, network="none"))
        try:
            code, out = await sh(again, "test -e /bin/new && echo leaked || echo clean")
            assert out.strip() == "clean"
        finally:
            await provider.release(again)
        assert_nothing_left(again)
    finally:
        await provider.aclose()


def _root(provider: SandboxProvider) -> int:
    return provider._ids().host_id(0)


async def test_an_image_user_runs_the_commands(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = busybox_image(registry, tmp_path_factory.mktemp("images"), name="busybox:user")
    provider = SandboxProvider(grace=0.5)
    try:
        machine = await provider.allocate(MachineSpec(image=image, image_user="65534"))
        try:
            code, out = await sh(machine, "id -u; id -g; touch /__w/workspace/mine && echo ok")
            assert (code, out.split()) == (0, ["65534", "65534", "ok"])
            code, _ = await sh(machine, "echo x > /bin/nope")
            assert code != 0
        finally:
            await provider.release(machine)
        with pytest.raises(AllocationError, match="'nobody2' is not in the image's /etc/passwd"):
            await provider.allocate(MachineSpec(image=image, image_user="nobody2"))
    finally:
        await provider.aclose()
    assert list(provider.machines_dir.iterdir()) == []


async def test_an_image_that_cannot_be_pulled_fails_allocation(registry: Registry) -> None:
    provider = SandboxProvider(grace=0.5)
    try:
        with pytest.raises(ImageError, match="pulling"):
            await provider.allocate(MachineSpec(image=f"{registry.host}/missing:1"))
    finally:
        await provider.aclose()
    assert not provider.machines_dir.exists() or list(provider.machines_dir.iterdir()) == []


