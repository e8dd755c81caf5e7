"""``container:`` jobs run their steps inside the image, with GitHub's paths and env."""

from __future__ import annotations

import os

import pytest

from tests.machines.oci_fixtures import Registry, busybox_image, registry
from tests.runner.engine import run
from vmrunner.workflow.containers import parse_options

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")


async def test_a_container_job_runs_in_its_image(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = busybox_image(registry, tmp_path_factory.mktemp("img"), name="busybox:job")
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
    outputs: {{where: "${{{{ steps.w.outputs.where }}}}"}}
    steps:
      - id: w
        run: |
          test "$(pwd)" = "$GITHUB_WORKSPACE"
          test "$(id -u)" = 65534
          test -z "${{BASH:-}}"   # the image has no bash: GitHub's default falls back to sh
          first=$(head -1 /etc/passwd)
          echo "where=$GITHUB_WORKSPACE-$FROM_JOB-$FROM_OPTIONS-$HOME-$first" >> $GITHUB_OUTPUT
  refused:
    runs-on: ubuntu-latest
    container: {{image: {image}, options: --privileged}}
    steps: [{{run: 'true'}}]
""",
        repository="nektos/nektos",
    )
    assert ran.result("inside") == "success", ran.logs()
    assert ran.finished("inside").outputs["where"] == (
        "/__w/nektos/nektos-push-yes-/github/home-root:x:0:0:root:/root:/bin/sh"
    )
    assert ran.result("refused") == "failure"
    reason = ran.finished("refused").reason
    assert "jobs.refused.container.options: --privileged cannot apply" in reason


def test_options_parse_the_flags_that_apply() -> None:
    options = parse_options(
        "--user 1000:1000 -e A=1 --health-cmd 'pg_isready -U x' --health-interval=1m30s "
        "--health-retries 5 --health-timeout 500ms --rm"
    )
    assert options.user == "1000:1000"
    assert options.env == (("A", "1"),)
    assert options.health_cmd == "pg_isready -U x"
    assert (options.health_interval, options.health_timeout) == (90.0, 0.5)
    assert options.health_retries == 5
