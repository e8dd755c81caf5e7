"""``container:`` jobs, ``services:`` and ``docker://`` steps through the runner on the qemu
provider: the same workflows and semantics as on the sandbox, inside QEMU guests."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.machines.oci_fixtures import Registry, busybox_image, docker_hub_images, registry
from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.machines.test_services import web_image
from tests.runner.engine import run
from tests.runner.test_act_container_cases import (
    DOCKER_ACTION_CUSTOM_PATH,
    JOB_CONTAINER,
    USES_DOCKER_URL,
)
from vmrunner.machines.oci import REGISTRY_MIRROR
from vmrunner.machines.qemu import QemuProvider
from vmrunner.reports.events import Annotation

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pulling images needs root")


@pytest.fixture
async def provider() -> AsyncIterator[QemuProvider]:
    qemu_image()
    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    try:
        yield provider
    finally:
        await provider.aclose()
    assert provider.leftovers() == [], "a job left a machine behind"


async def test_container_service_and_docker_jobs_in_qemu(
    registry: Registry, tmp_path: Path, provider: QemuProvider
) -> None:
    image = busybox_image(registry, tmp_path, name="busybox:qrun")
    steps = busybox_image(registry, tmp_path, name="busybox:qsteps", Entrypoint=["sh", "-c"])
    web = web_image(registry, tmp_path, "qrunweb:1")
    ran = await run(
        f"""
on: push
jobs:
  inside:
    runs-on: ubuntu-latest
    container:
      image: {image}
      env: {{FROM_JOB: "${{{{ github.event_name }}}}"}}
      options: --user 65534 --env FROM_OPTIONS=yes
    services:
      web:
        image: {web}
        env: {{GREETING: hello from web}}
        options: >-
          --health-cmd "wget -q -O- http://localhost:8080/" --health-interval 200ms
          --health-retries 50
    outputs: {{where: "${{{{ steps.w.outputs.where }}}}", page: "${{{{ steps.w.outputs.page }}}}"}}
    steps:
      - id: w
        run: |
          test "$(pwd)" = "$GITHUB_WORKSPACE"
          test "$(id -u)" = 65534
          test ! -e /usr/bin/python3   # the image's root, not the guest's
          first=$(head -1 /etc/passwd)
          echo "where=$GITHUB_WORKSPACE-$FROM_JOB-$FROM_OPTIONS-$HOME-$first" >> $GITHUB_OUTPUT
          echo "page=$(wget -q -O- http://web:8080/)" >> $GITHUB_OUTPUT
  docker:
    runs-on: ubuntu-latest
    outputs: {{seen: "${{{{ steps.b.outputs.seen }}}}"}}
    steps:
      - run: echo from-the-job > "$GITHUB_WORKSPACE/shared.txt"
      - id: b
        uses: docker://{steps}
        with:
          key: a value
          args: >-
            'cat /github/workspace/shared.txt; echo "seen=$INPUT_KEY $GITHUB_WORKSPACE"
            >> $GITHUB_OUTPUT; echo made > made.txt; test ! -e /home/runner'
      - run: test "$(cat made.txt)" = made
""",
        repository="nektos/nektos", provider=provider,
    )
    logs = ran.logs()
    assert ran.result("inside") == "success", (ran.finished("inside").reason, ran.logs("inside"))
    assert ran.finished("inside").outputs == {
        "where": "/__w/nektos/nektos-push-yes-/github/home-root:x:0:0:root:/root:/bin/sh",
        "page": "hello from web",
    }
    assert ran.result("docker") == "success", logs
    assert ran.finished("docker").outputs["seen"] == "a value /github/workspace"
    assert "from-the-job" in logs


async def test_acts_container_cases_in_qemu(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: QemuProvider
) -> None:
    """act's ``job-container`` and ``uses-docker-url`` (and ``docker-action-custom-path``, a
    Dockerfile action, where buildah is installed), as on the sandbox."""
    docker_hub_images(registry, tmp_path)
    monkeypatch.setenv(REGISTRY_MIRROR, registry.host)
    ran = await run(JOB_CONTAINER, provider=provider)
    assert ran.result("test") == "success", (ran.finished("test").reason, ran.logs())
    assert ran.result("test2") == "success", ran.logs()
    ran = await run(USES_DOCKER_URL, provider=provider)
    assert ran.result("test") == "success", ran.logs()
    assert "v16.20.2-stand-in" in "\n".join(ran.logs())
    if shutil.which("buildah") is not None:
        ran = await run(DOCKER_ACTION_CUSTOM_PATH, provider=provider)
        assert ran.result("_") == "success", ([a.message for a in ran.of(Annotation)], ran.logs())
        assert "ORG_PATH=/opt/texlive/texdir/bin/x86_64-linuxmusl:" in "\n".join(ran.logs())
