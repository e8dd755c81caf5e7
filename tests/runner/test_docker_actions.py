"""Docker actions and ``docker://`` steps: one-shot containers of their images in the job's
machine, with GitHub's mounts (/github/workspace, file commands) and inputs as INPUT_*."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.machines.oci_fixtures import Registry, busybox_image, registry
from tests.runner.engine import run
from vmrunner.reports.events import Annotation

__all__ = ["registry"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container machines need root")


async def test_docker_steps_and_actions_run_in_their_image(
    registry: Registry, tmp_path: Path
) -> None:
    image = busybox_image(registry, tmp_path, name="busybox:steps", Entrypoint=["sh", "-c"],
                          Cmd=["echo from-cmd"])  # fmt: skip
    action = f"""
name: in an image
inputs: {{who: {{default: nobody}}}}
runs:
  using: docker
  image: docker://{image}
  env: {{GREETING: hello}}
  args: ['echo "said=$GREETING $INPUT_WHO $(pwd)" >> $GITHUB_OUTPUT; echo in-action']
"""
    ran = await run(
        f"""
on: push
jobs:
  docker:
    runs-on: ubuntu-latest
    outputs: {{said: "${{{{ steps.a.outputs.said }}}}", seen: "${{{{ steps.b.outputs.seen }}}}"}}
    steps:
      - run: |
          echo from-the-job > "$GITHUB_WORKSPACE/shared.txt"
          mkdir act && echo "$ACTION" > act/action.yml
        env: {{ACTION: {json.dumps(action)}}}
      - uses: docker://{image}
      - id: b
        uses: docker://{image}
        with:
          key: a value
          args: >-
            'cat /github/workspace/shared.txt; echo "seen=$INPUT_KEY $GITHUB_WORKSPACE"
            >> $GITHUB_OUTPUT; echo made > made.txt; test ! -e /home/runner'
      - run: test "$(cat made.txt)" = made
      - uses: docker://{image}
        with: {{entrypoint: /bin/echo, args: via entrypoint}}
      - id: a
        uses: ./act
        with: {{who: tester}}
      - uses: docker://{image}
        with: {{args: "'exit 3'"}}
""",
    )
    logs = ran.logs()
    assert ran.result("docker") == "failure", logs
    outputs = ran.finished("docker").outputs
    assert outputs["seen"] == "a value /github/workspace"
    assert outputs["said"] == "hello tester /github/workspace"
    for line in ("from-cmd", "from-the-job", "via entrypoint", "in-action"):
        assert line in logs


@pytest.mark.skipif(shutil.which("buildah") is None, reason="Dockerfile actions need buildah")
async def test_a_dockerfile_action_is_built_and_runs(
    registry: Registry, tmp_path: Path
) -> None:
    base = busybox_image(registry, tmp_path, name="busybox:base")
    dockerfile = (
        f"FROM {base}\nCOPY say.sh /say.sh\nRUN echo built-in-image > /stamp\n"
        'ENTRYPOINT ["sh", "/say.sh"]\n'
    )
    say = 'echo "$(cat /stamp) $INPUT_WHO $1 $(pwd)"; echo "said=$INPUT_WHO" >> $GITHUB_OUTPUT\n'
    action = (
        "inputs: {who: {default: nobody}}\nruns: {using: docker, image: Dockerfile, args: [first]}"
    )
    workflow = f"""
on: push
jobs:
  b:
    runs-on: ubuntu-latest
    outputs: {{said: "${{{{ steps.a.outputs.said }}}}"}}
    steps:
      - run: |
          mkdir built && printf '%s' "$DOCKERFILE" > built/Dockerfile
          printf '%s' "$SAY" > built/say.sh && printf '%s' "$ACTION" > built/action.yml
        env: {{DOCKERFILE: {json.dumps(dockerfile)}, SAY: {json.dumps(say)},
               ACTION: {json.dumps(action)}}}
      - id: a
        uses: ./built
        with: {{who: tester}}
"""
    ran = await run(workflow)
    assert ran.result("b") == "success", ran.logs()
    assert "built-in-image tester first /github/workspace" in ran.logs()
    assert ran.finished("b").outputs["said"] == "tester"


async def test_a_dockerfile_action_that_does_not_build_fails_its_step(
    registry: Registry, tmp_path: Path
) -> None:
    ran = await run(
        """
on: push
jobs:
  b:
    runs-on: ubuntu-latest
    steps:
      - run: |
          mkdir built && printf 'FROM scratch\\nRUN exit 3\\n' > built/Dockerfile
          echo 'runs: {using: docker, image: Dockerfile}' > built/action.yml
      - uses: ./built
""",
    )
    assert ran.result("b") == "failure"
    messages = " ".join(a.message for a in ran.of(Annotation))
    assert "cannot run the image of" in messages, messages
