"""Containers in QEMU guests: a ``container:`` job's steps, its services and a Docker step run
from images pulled on the host (a real registry on 127.0.0.1) and copied into the guest.

One VM for the job with a service and a Docker step (the ready state makes later machines a
restore), one for a service that never gets healthy."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests.machines.oci_fixtures import (
    Registry,
    busybox_image,
    busybox_layer,
    registry,
    write_layout,
)
from tests.machines.provider_suite import assert_nothing_left, tar_with
from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.machines.test_services import web, web_image
from vmrunner.errors import AllocationError
from vmrunner.machines import guest_containers
from vmrunner.machines.base import ImageRun, MachineSpec
from vmrunner.machines.oci import ContainerImage
from vmrunner.machines.qemu import QemuMachine, QemuProvider

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pulling images needs root")


async def test_container_job_services_and_docker_step_in_a_guest(
    registry: Registry, tmp_path: Path
) -> None:
    qemu_image()
    layer = busybox_layer()
    layer["etc/marker"] = b"from the job image\n"
    job = registry.push(
        write_layout(tmp_path / "job", [layer], config={"Env": ["PATH=/bin", "FROM_IMAGE=yes"]}),
        "qjob:1",
    )
    service = web_image(registry, tmp_path, "qweb:1")
    step = busybox_image(registry, tmp_path, "qstep:1", Entrypoint=["sh", "-c"])
    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    try:
        spec = MachineSpec(
            image=job, image_env=(("JOB_VAR", "set"),), network="none", services=(web(service),)
        )
        machine = await provider.allocate(spec)
        assert isinstance(machine, QemuMachine)
        try:
            assert machine.paths.workspace == "/__w/workspace"
            # the steps run in the image's root (its files, its PATH, its env), at /__w
            result = await machine.exec(
                "cat /etc/marker; pwd; id -u; echo $PATH $FROM_IMAGE $JOB_VAR $HOME;"
                " test -e /usr/bin/python3 || echo no-guest-python; ls /proc/self >/dev/null"
                " && echo proc; test -c /dev/null && echo dev"
            )
            assert result.ok, result.stderr
            assert result.stdout.decode().split("\n")[:7] == [
                "from the job image", "/__w/workspace", "0", "/bin yes set /github/home",
                "no-guest-python", "proc", "dev",
            ]  # fmt: skip
            # files the runner puts and gets at the job's paths are the steps' files
            await machine.put(machine.paths.workspace, tar_with("in.txt", b"put by the host"))
            made = await machine.exec("cat in.txt > out.txt; echo made > $RUNNER_TEMP/t")
            assert made.ok, made.stderr
            assert await machine.read_file("/__w/workspace/out.txt") == b"put by the host"
            assert await machine.read_file("/__w/_temp/t") == b"made\n"
            # the service was healthy before the machine was handed out, reachable by label
            got = await machine.exec("wget -q -O- http://web:8080/ && wget -q -O- localhost:8080")
            assert got.ok, got.stderr
            assert got.stdout.decode().split() == ["hello", "from", "web"] * 2
            # a Docker step: its own root, the workspace bound in, args and env
            run = ImageRun(step, binds=(("/__w/workspace", "/github/workspace"),))
            ran = await machine.exec_image(
                run, ['cat /github/workspace/in.txt; echo " $STEP_VAR"; test -e /etc/marker'
                      " || echo own-root"], env={"STEP_VAR": "given"},
            )  # fmt: skip
            assert ran.ok, ran.stderr
            assert ran.stdout.decode().split("\n")[:2] == ["put by the host given", "own-root"]
        finally:
            await provider.release(machine)
        assert_nothing_left(machine)
        assert provider.leftovers() == []
    finally:
        await provider.aclose()


async def test_an_unhealthy_service_fails_the_allocation_and_leaves_no_vm(
    registry: Registry, tmp_path: Path
) -> None:
    qemu_image()
    exits = web_image(registry, tmp_path, "qexits:1", script="echo boom; exit 3")
    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    try:
        with pytest.raises(AllocationError, match=r"exited before it was healthy \(exit 3\): boom"):
            await provider.allocate(MachineSpec(network="none", services=(web(exits),)))
        assert provider.leftovers() == []
        assert not any(provider.machines_dir.iterdir())
    finally:
        await provider.aclose()


def test_the_root_is_copied_with_the_images_own_ids(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "home/app").mkdir(parents=True)
    (rootfs / "home/app/file").write_text("x")
    (rootfs / "link").symlink_to("home/app/file")
    os.chown(rootfs / "home/app", 101000, 101000)
    os.chown(rootfs / "home/app/file", 101000, 101001)
    image = ContainerImage("t", "sha256:0", rootfs)
    data = guest_containers.rootfs_tar(image, shift=100000)
    (tmp_path / "t.tar").write_bytes(data)
    with tarfile.open(tmp_path / "t.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert (members["home/app/file"].uid, members["home/app/file"].gid) == (1000, 1001)
    assert members["home/app/file"].uname == ""
    assert members["link"].issym()
    assert members["link"].linkname == "home/app/file"
