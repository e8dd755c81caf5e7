"""act's test cases that need images (``pkg/runner/testdata`` of nektos/act): ``uses-docker-url``,
``job-container`` and ``docker-action-custom-path`` (their workflows as act has them), and the
conformance case ``basic`` whole, its Dockerfile action included.

Their Docker Hub images (``node:16-buster-slim``, ``ubuntu:latest``, ``ubuntu:18.04``) are not
Docker Hub's: ``docker_hub_images`` builds stand-ins (busybox, bash) and serves them from the
test registry on 127.0.0.1, which ``VMRUNNER_REGISTRY_MIRROR`` makes Docker Hub's mirror.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.machines.oci_fixtures import Registry, docker_hub_images, registry
from tests.runner.conformance import ACT, REPO_ROOT, case_options, case_workflows, cases
from tests.runner.engine import run
from vmrunner.machines.oci import REGISTRY_MIRROR
from vmrunner.reports.events import Annotation

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")
needs_buildah = pytest.mark.skipif(
    shutil.which("buildah") is None, reason="Dockerfile actions need buildah"
)

USES_DOCKER_URL = """
name: uses-docker-url
on: push

jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: docker://node:16-buster-slim
        with:
          somekey: somevalue
          args: echo ${INPUT_SOMEKEY} | grep somevalue
      - uses: docker://node:16-buster-slim
        with:
          args: -v
      - uses: docker://node:16-buster-slim
        with:
          entrypoint: /bin/sh
          args: -c -- uname -a
      - uses: docker://node:16-buster-slim
        with:
          entrypoint: /bin/sh
          args: -c 'uname -a'
"""

JOB_CONTAINER = """
name: job-container
on: push

jobs:
  test:
    runs-on: ubuntu-latest
    container:
      image: node:16-buster-slim
      env:
        TEST_ENV: test-value
    steps:
      - run: echo ${TEST_ENV} | grep test-value

  test2:
    runs-on: ubuntu-latest
    container: node:16-buster-slim
    steps:
      - run: echo ${TEST_ENV} | grep test-value
        env:
          TEST_ENV: test-value
"""

DOCKER_ACTION_CUSTOM_PATH = """
on: push
jobs:
  _:
    runs-on: ubuntu-latest
    steps:
    - run: |
        FROM ubuntu:latest
        ENV PATH="/opt/texlive/texdir/bin/x86_64-linuxmusl:${PATH}"
        ENV ORG_PATH="${PATH}"
        ENTRYPOINT [ "bash", "-c", "echo \\"PATH=$PATH\\" && echo \\"ORG_PATH=$ORG_PATH\\" && [[ \\"$PATH\\" = \\"$ORG_PATH\\" ]]" ]
      shell: mv {0} Dockerfile
    - uses: ./
"""  # noqa: E501 - act's workflow, as it is


@pytest.fixture
def hub(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker_hub_images(registry, tmp_path)
    monkeypatch.setenv(REGISTRY_MIRROR, registry.host)


async def test_uses_docker_url(hub: None) -> None:
    ran = await run(USES_DOCKER_URL)
    assert ran.result("test") == "success", ran.logs()
    logs = "\n".join(ran.logs())
    assert "v16.20.2-stand-in" in logs  # `-v` went to node, through the image's entrypoint
    assert logs.count("Linux") >= 2  # both `uname -a`, through /bin/sh as entrypoint


async def test_job_container(hub: None) -> None:
    ran = await run(JOB_CONTAINER)
    assert ran.result("test") == "success", ran.logs()
    assert ran.result("test2") == "success", ran.logs()


@needs_buildah
async def test_docker_action_custom_path(hub: None) -> None:
    ran = await run(DOCKER_ACTION_CUSTOM_PATH)
    assert ran.result("_") == "success", ([a.message for a in ran.of(Annotation)], ran.logs())
    logs = "\n".join(ran.logs())
    assert "PATH=/opt/texlive/texdir/bin/x86_64-linuxmusl:/usr/local/bin:/usr/bin:/bin" in logs
    assert "ORG_PATH=/opt/texlive/texdir/bin/x86_64-linuxmusl:" in logs


@needs_buildah
@pytest.mark.skipif(not cases("basic"), reason="no act conformance manifest in the shared folder")
async def test_basic_builds_its_dockerfile_action(hub: None) -> None:
    """The harness runs ``basic`` without a commit, so its ``check`` job fails on GITHUB_SHA
    and ``build`` is skipped there (``tests/runner/conformance.py``); given one, as act's own
    harness does, every job runs, ``build``'s action built from its Dockerfile
    (``FROM ubuntu:18.04``)."""
    [case] = cases("basic")
    assert (ACT / "testdata" / "actions" / "action1" / "Dockerfile").is_file()
    [workflow] = case_workflows(case)
    ran = await run(workflow, repo_root=REPO_ROOT, **case_options(case), sha="a" * 40)
    for job in ("check", "build", "test"):
        assert ran.result(job) == "success", (job, ran.logs())
    assert "build" in ran.logs()  # action1's args, echoed in its image
