"""Nothing of a container job with a service outlives a SIGKILLed runner once
``vmrunner sessions reclaim`` ran: no process, mount or unpacked directory outside the cache."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import vmrunner
from tests.machines.oci_fixtures import Registry, busybox_layer, registry, write_layout
from tests.machines.test_services import web_image
from tests.test_sessions import home, left_on_system, processes_with

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")


async def test_a_killed_container_job_with_a_service_is_reclaimed(
    registry: Registry, tmp_path: Path
) -> None:
    service = web_image(registry, tmp_path, "leak-web:1")
    job = registry.push(write_layout(tmp_path / "job", [busybox_layer()]), "leak-job:1")
    script = tmp_path / "runner.py"
    script.write_text(f"""
import asyncio
from vmrunner.machines.base import HealthCheck, MachineSpec, ServiceSpec
from vmrunner.machines.providers import get_provider
from vmrunner.sessions import SessionManager

async def main():
    web = ServiceSpec("web", {service!r}, env=(("GREETING", "hi"),),
                      health=HealthCheck("wget -q -O- http://localhost:8080/", 0.1, 5, 100))
    spec = MachineSpec(image={job!r}, network="private", services=(web,))
    async with SessionManager(get_provider("sandbox"), limit=1) as manager:
        async with manager.open(spec) as session:
            done = await session.exec(["sh", "-c", "wget -q -O- http://web:8080/ > seen"])
            assert done.ok
            print("ready", session.machine.id, flush=True)
            await asyncio.sleep(3600)

asyncio.run(main())
""")
    runner = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert runner.stdout is not None
    async with asyncio.timeout(120):
        line = (await runner.stdout.readline()).decode()
    if not line.startswith("ready"):
        runner.kill()
        _, err = await runner.communicate()
        pytest.fail(f"runner did not start: {line!r} {err.decode()[-2000:]}")
    machine_id = line.split()[1]
    assert processes_with(["httpd -f -p 8080"])  # the service runs
    runner.kill()
    await runner.wait()
    done = await asyncio.to_thread(vmrunner, "sessions", "reclaim")
    assert done.returncode == 0, done.stderr
    assert machine_id in done.stdout
    assert left_on_system([machine_id], ["httpd -f -p 8080"]) == []
    # the cache holds images only: every unpacked folder is an image's, none a machine's
    images = home() / "cache" / "oci" / "images"
    assert all((folder / "image.json").exists() for folder in images.iterdir())
