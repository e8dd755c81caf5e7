"""Service containers of a machine: started from their images in its network, reachable by
label, health checks awaited before the machine is handed out, gone with the machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.machines.oci_fixtures import Registry, busybox_layer, registry, write_layout
from tests.machines.provider_suite import assert_nothing_left
from vmrunner.errors import AllocationError
from vmrunner.machines.base import HealthCheck, MachineSpec, ServiceSpec
from vmrunner.machines.sandbox import SandboxProvider

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")

#: Serves $GREETING on port 8080, after a pause: only a health check that is awaited sees it.
WEB = (
    'sleep 0.5; mkdir -p /www; echo "$GREETING" > /www/index.html; exec httpd -f -p 8080 -h /www'
)
PROBE = "wget -q -O- http://localhost:8080/"


def web_image(registry: Registry, tmp: Path, name: str = "web:1", script: str = WEB) -> str:
    layer = busybox_layer()
    layer["bin/httpd"] = ("link", "busybox")
    layout = write_layout(
        tmp / name.replace(":", "-"), [layer], config={"Cmd": ["sh", "-c", script]}
    )
    return registry.push(layout, name)


def web(image: str, **health: float) -> ServiceSpec:
    return ServiceSpec(
        "web", image, env=(("GREETING", "hello from web"),),
        health=HealthCheck(PROBE, **{"interval": 0.1, "retries": 100, **health}),  # type: ignore[arg-type]
    )  # fmt: skip


async def test_a_service_is_healthy_and_reachable_by_its_label(
    registry: Registry, tmp_path: Path
) -> None:
    image = web_image(registry, tmp_path)
    provider = SandboxProvider(grace=0.5)
    try:
        machine = await provider.allocate(MachineSpec(network="private", services=(web(image),)))
        try:
            # the first request, at once: allocation waited for the health check
            result = await machine.exec(
                ["python3", "-c", "import urllib.request as u;"
                 "print(u.urlopen('http://web:8080/').read().decode().strip());"
                 "print(u.urlopen('http://localhost:8080/').read().decode().strip())"],
            )  # fmt: skip
            assert result.ok, result.stderr
            assert result.stdout.decode().split("\n")[:2] == ["hello from web"] * 2
            # the service runs in the machine: its pid namespace, as the image's root
            result = await machine.exec(["sh", "-c", "ps -eo user,args | grep '[h]ttpd -f'"])
            assert b"httpd" in result.stdout
        finally:
            await provider.release(machine)
        assert_nothing_left(machine)
    finally:
        await provider.aclose()


async def test_a_container_job_reaches_its_service(registry: Registry, tmp_path: Path) -> None:
    image = web_image(registry, tmp_path, "web:2")
    job = write_layout(tmp_path / "job", [busybox_layer()])
    provider = SandboxProvider(grace=0.5)
    try:
        machine = await provider.allocate(
            MachineSpec(image=registry.push(job, "job:1"), network="none", services=(web(image),))
        )
        try:
            result = await machine.exec(["sh", "-c", "wget -q -O- http://web:8080/"])
            assert result.ok, result.stderr
            assert result.stdout.decode().strip() == "hello from web"
        finally:
            await provider.release(machine)
        assert_nothing_left(machine)
    finally:
        await provider.aclose()


async def test_an_unhealthy_service_fails_the_allocation_and_leaves_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    never = web_image(registry, tmp_path, "never:1", script="exec sleep 1000")
    exits = web_image(registry, tmp_path, "exits:1", script="echo boom; exit 3")
    provider = SandboxProvider(grace=0.5)
    try:
        with pytest.raises(AllocationError, match=r"service web is unhealthy.*failed 3 times"):
            await provider.allocate(MachineSpec(services=(web(never, retries=3),)))
        with pytest.raises(AllocationError, match=r"exited before it was healthy \(exit 3\): boom"):
            await provider.allocate(MachineSpec(services=(web(exits),)))
        assert provider.leftovers() == []
        assert not any(provider.machines_dir.iterdir())
    finally:
        await provider.aclose()
