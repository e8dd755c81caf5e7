"""``container:`` jobs, ``services:`` and ``docker://`` steps through the runner on the qemu
provider: the same workflows and semantics as on the sandbox, inside QEMU guests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.machines.oci_fixtures import Registry, busybox_image, registry
from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.machines.test_services import web_image
from tests.runner.engine import run
from vmrunner.machines.qemu import QemuProvider

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
