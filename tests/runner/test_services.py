"""``services:`` of a job: started from their images in the job's machine, reachable by label
and on localhost, health checks awaited before the steps, ``job.services`` in expressions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.machines.oci_fixtures import Registry, busybox_layer, registry, write_layout
from tests.runner.engine import run
from vmrunner.machines.oci import REGISTRY_MIRROR

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")

#: Stand-ins for act's ``services`` case (``postgres:12`` and ``mongo:5``): not the databases,
#: a busybox httpd on their ports (after a pause, so only an awaited health check sees it)
#: showing the env the job gave, and a ``pg_isready`` that probes it.
SERVE = (
    'sleep {pause}; mkdir -p /www; echo "{page}" > /www/index.html; '
    "exec httpd -f -p {port} -h /www"
)


def stand_in(registry: Registry, tmp: Path, name: str, port: int, page: str) -> None:
    layer = busybox_layer()
    layer["bin/httpd"] = ("link", "busybox")
    layer["usr/bin/pg_isready"] = (
        f"#!/bin/sh\nexec wget -q -O /dev/null http://127.0.0.1:{port}/\n".encode()
    )
    script = SERVE.format(pause=1, page=page, port=port)
    layout = write_layout(tmp / name.replace("/", "-").replace(":", "-"), [layer],
                          config={"Cmd": ["sh", "-c", script]})  # fmt: skip
    registry.push(layout, name)


async def test_act_services_case_with_stand_in_images(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(registry, tmp_path, "library/postgres:12", 5432, "$POSTGRES_USER@$POSTGRES_DB")
    stand_in(registry, tmp_path, "library/mongo:5", 27017, "$MONGO_INITDB_ROOT_USERNAME")
    monkeypatch.setenv(REGISTRY_MIRROR, registry.host)
    ran = await run(
        """
on: push
jobs:
  postgres:
    runs-on: ubuntu-latest
    services:
      postgres:
        image: postgres:12
        env: {POSTGRES_USER: runner, POSTGRES_PASSWORD: "${{ secrets.DB }}", POSTGRES_DB: mydb}
        options: >-
          --health-cmd pg_isready --health-interval 200ms --health-timeout 5s
          --health-retries 50
        ports: ["5432:5432"]
    steps:
      - run: |
          echo "id: ${{ job.services.postgres.id }}"
          echo "ports: ${{ toJSON(job.services.postgres.ports) }}"
      - shell: python3 {0}
        run: |
          import urllib.request as u
          for host in ("postgres", "localhost"):
              print(host, u.urlopen(f"http://{host}:5432/").read().decode().strip())
  mongodb:
    runs-on: ubuntu-latest
    services:
      mongodb:
        image: mongo:5
        env: {MONGO_INITDB_ROOT_USERNAME: root}
        ports: [27017]
    steps:
      - run: echo "ports ${{ job.services.mongodb.ports['27017'] }}"
""",
        repository="nektos/act", secrets={"DB": "sekret"},
    )
    assert ran.result("postgres") == "success", ran.logs()
    assert ran.result("mongodb") == "success", ran.logs()
    logs = ran.logs()
    assert "id: postgres" in logs
    assert "postgres runner@mydb" in logs
    assert "localhost runner@mydb" in logs
    assert "ports 27017" in logs


async def test_service_errors_fail_the_job_with_the_reason(
    registry: Registry, tmp_path: Path
) -> None:
    layout = write_layout(tmp_path / "idle", [busybox_layer()],
                          config={"Cmd": ["sleep", "1000"]})  # fmt: skip
    image = registry.push(layout, "idle:1")
    ran = await run(
        f"""
on: push
jobs:
  mapped:
    runs-on: ubuntu-latest
    services: {{web: {{image: {image}, ports: ["8080:80"]}}}}
    steps: [{{run: 'true'}}]
  unhealthy:
    runs-on: ubuntu-latest
    services:
      web: {{image: {image}, options: --health-cmd false --health-interval 10ms --health-retries 2}}
    steps: [{{run: 'true'}}]
""",
    )
    assert ran.result("mapped") == "failure"
    assert "services.web.ports: 8080:80 maps to another port" in ran.finished("mapped").reason
    assert ran.result("unhealthy") == "failure"
    assert "service web is unhealthy" in ran.finished("unhealthy").reason
