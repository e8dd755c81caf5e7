"""Container jobs, service containers and Docker steps on remote machines: a real ``machines
serve`` on 127.0.0.1 (sandboxes) pulling from a real registry, driven by ``vmrunner run
--provider remote``; registry passwords never come back, nor reach a log or the store."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.helpers import vmrunner
from tests.cli.test_run_remote import _environ, project
from tests.machines.oci_fixtures import Registry, busybox_image, registry
from tests.machines.test_services import PROBE, web_image
from tests.server.machines_helpers import LiveService, machine_service

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")

PASSWORD = "pw-never-shown-4f9c2a"
CREDENTIALS = {"user": "ci", "password": PASSWORD}

WORKFLOW = """\
on: push
jobs:
  boxed:
    runs-on: ubuntu-latest
    container:
      image: {job}
      credentials: {{username: ci, password: {password}}}
      env: {{FROM_JOB: "yes"}}
      options: --user 65534
    steps:
      - run: test "$FROM_JOB" = yes && echo "inside:$(id -u)"
  served:
    runs-on: ubuntu-latest
    services:
      web:
        image: {web}
        credentials: {{username: ci, password: {password}}}
        env: {{GREETING: hello from the service}}
        options: >-
          --health-cmd "{probe}" --health-interval 100ms --health-retries 100
    steps:
      - run: python3 -c "import urllib.request as u; print(u.urlopen('http://web:8080/').read().decode().upper())"
      - uses: docker://{steps}
        with: {{args: "'echo made-in-a-container > made.txt'"}}
      - run: test "$(cat made.txt)" = made-in-a-container && tr a-z A-Z < made.txt
"""


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[_Kept]:
    """Every log record of this process (the service's thread included), DEBUG and up."""
    root, kept = logging.getLogger(), _Kept()
    level = root.level
    root.addHandler(kept)
    root.setLevel(logging.DEBUG)
    yield kept
    root.removeHandler(kept)
    root.setLevel(level)


def client(service: LiveService, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    )


def stored(path: Path) -> bytes:
    """The service's database files, as on disk."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_container_and_service_jobs_run_through_the_service(
    registry: Registry, tmp_path: Path, logged: _Kept
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    job = busybox_image(registry, images, name="busybox:remote-job")
    steps = busybox_image(registry, images, name="busybox:remote-steps", Entrypoint=["sh", "-c"])
    web = web_image(registry, images, "remote-web:1")
    workflow = WORKFLOW.format(job=job, web=web, steps=steps, probe=PROBE, password=PASSWORD)
    root = await asyncio.to_thread(project, tmp_path / "repo", workflow)
    with machine_service(tmp_path / "service.db") as service:
        token = service.token("cli")
        async with client(service, token) as http:
            offered = (await http.get("/api/vm-types")).json()
            assert offered["capabilities"]["containers"] is True
        env = {**_environ(), "VMRUNNER_REMOTE_TOKEN": token, "VMRUNNER_HOME": str(tmp_path / "h")}
        planned = await asyncio.to_thread(
            vmrunner, "run", "--dry-run", "--json", "--provider", "remote",
            "--remote-url", service.url, cwd=root, env=env,
        )  # fmt: skip
        assert planned.returncode == 0, planned.stdout + planned.stderr
        jobs = {row["job"]: row["cannot_run"] for row in json.loads(planned.stdout)["jobs"]}
        assert jobs == {"boxed": "", "served": ""}  # the service says it runs images
        result = await asyncio.to_thread(
            vmrunner, "run", "--provider", "remote", "--remote-url", service.url,
            "--network", "private", cwd=root, env=env, timeout=600,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        for said in ("inside:65534", "HELLO FROM THE SERVICE", "MADE-IN-A-CONTAINER"):
            assert said in output
        async with client(service, token) as http:
            assert (await http.get("/api/vms")).json()["total"] == 0
    assert not [line for line in logged.lines if PASSWORD in line]
    assert PASSWORD.encode() not in stored(tmp_path / "service.db")


async def test_image_machines_and_exec_image_over_the_api(
    registry: Registry, tmp_path: Path, logged: _Kept
) -> None:
    job = busybox_image(registry, tmp_path, name="busybox:api-job")
    steps = busybox_image(registry, tmp_path, name="busybox:api-steps", Entrypoint=["sh", "-c"])
    with machine_service(tmp_path / "service.db", max_vms=2) as service:
        async with client(service, service.token("api")) as http:
            answers: list[str] = []
            made = await http.post("/api/vms", json={
                "wait": True, "image": {"reference": job, "credentials": CREDENTIALS,
                                        "user": "65534", "env": {"IN_IMAGE": "1"}},
            })  # fmt: skip
            answers.append(made.text)
            assert made.status_code == 201, made.text
            vm_id = made.json()["id"]
            ran = await http.post(f"/api/vms/{vm_id}/exec", json={
                "command": 'echo "$(id -u) $IN_IMAGE $(head -c 4 /etc/passwd)"'})  # fmt: skip
            assert _lines(ran.text)[-1]["result"]["exit_code"] == 0
            assert "65534 1 root" in _stdout(ran.text)
            answers.append((await http.get(f"/api/vms/{vm_id}")).text)
            answers.append((await http.get("/api/vms")).text)

            one_shot = await http.post(f"/api/vms/{vm_id}/exec-image", json={
                "image": steps, "credentials": CREDENTIALS, "args": ["echo one-shot $SAID"],
                "env": {"SAID": "hi"}, "collect": ["/tmp/none"],
            })  # fmt: skip
            answers.append(one_shot.text)
            assert one_shot.status_code == 200, one_shot.text
            assert _lines(one_shot.text)[-1]["result"]["exit_code"] == 0
            assert _stdout(one_shot.text) == "one-shot hi\n"

            bad = [
                {"image": {"credentials": CREDENTIALS}},  # no reference
                {"image": {"reference": job, "credentials": {"password": PASSWORD}}},  # no user
                {"image": {"reference": job, "credentials": {"user": "ci", "password": 3}}},
                {"services": [{"label": "no such host!", "image": job}]},
                {"services": [{"label": "a", "image": job}, {"label": "a", "image": job}]},
                {"services": [{"label": "a", "image": job, "health": {"command": ""}}]},
            ]
            for body in bad:
                refused = await http.post("/api/vms", json=body)
                answers.append(refused.text)
                assert refused.status_code == 422, (body, refused.text)
                assert refused.json()["kind"] == "RequestRejected"
            for body in (
                {"args": ["true"], "credentials": CREDENTIALS},  # no image
                {"image": steps, "binds": [["relative", "/x"]], "credentials": CREDENTIALS},
            ):
                refused = await http.post(f"/api/vms/{vm_id}/exec-image", json=body)
                answers.append(refused.text)
                assert refused.status_code == 422, (body, refused.text)

            missing = await http.post("/api/vms", json={
                "wait": True, "image": {"reference": f"{registry.host}/nothing:here",
                                        "credentials": CREDENTIALS},
            })  # fmt: skip
            answers.append(missing.text)
            assert missing.status_code == 409, missing.text
            assert missing.json()["kind"] == "AllocationError"
            assert (await http.delete(f"/api/vms/{vm_id}")).is_success
    assert not [a for a in answers if PASSWORD in a]
    assert not [line for line in logged.lines if PASSWORD in line]
    assert PASSWORD.encode() not in stored(tmp_path / "service.db")


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line]


def _stdout(text: str) -> str:
    import base64

    return "".join(
        base64.b64decode(str(m["d"])).decode() for m in _lines(text) if m.get("o") == "stdout"
    )
