"""Acceptance: workflows that say exactly ``uses: actions/upload-artifact@v4`` (and download,
and cache) run GitHub's own built actions in sandbox machines, which reach the services through
their forward."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.runner.engine import run
from tests.services.actions import built_actions
from vmrunner.machines.providers import get_provider
from vmrunner.machines.qemu import QemuProvider
from vmrunner.reports.events import Annotation, JobStarted, LogLine, Recorder
from vmrunner.runner import checkpoints
from vmrunner.runner.rerun import plan_rerun, rerun_job
from vmrunner.services.artifacts import ArtifactStore, extract
from vmrunner.services.settings import ServiceSettings
from vmrunner.sessions import SessionManager
from vmrunner.workflow.loader import load_workflow, load_workflow_text

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="needs node"),
]

ARTIFACTS = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: |
          mkdir -p out/sub
          echo "made in job a" > out/hello.txt
          head -c 200000 /dev/urandom > out/sub/blob
          sha256sum out/sub/blob | cut -d' ' -f1 > out/sum
      - uses: actions/upload-artifact@v4
        id: up
        with:
          name: things
          path: out/
          retention-days: 2
      - run: echo "uploaded as ${{ steps.up.outputs.artifact-id }}"
      - run: echo "node $(node --version) in $GITHUB_WORKSPACE for $HOME"
  b:
    needs: a
    runs-on: ubuntu-latest
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: things
          path: got
      - run: |
          cat got/hello.txt
          test "$(sha256sum got/sub/blob | cut -d' ' -f1)" = "$(cat got/sum)" && echo same bytes
      - run: echo "token seen by run steps [$ACTIONS_RUNTIME_TOKEN]"
"""

CACHE = """
on: push
jobs:
  c:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/cache@v4
        id: cache
        with:
          path: deps
          key: deps-linux-v1
          restore-keys: deps-
      - if: steps.cache.outputs.cache-hit != 'true'
        run: mkdir -p deps && echo "built in run $GITHUB_RUN_ID" > deps/lib.txt
      - run: echo "hit=${{ steps.cache.outputs.cache-hit }} $(cat deps/lib.txt)"
"""


@pytest.fixture(scope="module")
def actions_url() -> str:
    return f"file://{built_actions() / 'server'}"


async def test_an_artifact_passes_from_one_job_to_the_next(actions_url: str) -> None:
    ran = await run(ARTIFACTS, actions_url=actions_url, run_id="4242", repository="octo/demo")
    assert ran.result("a") == "success", ran.logs("a")
    assert ran.result("b") == "success", ran.logs("b")
    assert "uploaded as 1" in ran.logs("a")
    logs = ran.logs("b")
    assert "made in job a" in logs
    assert "same bytes" in logs
    # GitHub gives the runtime token to actions only, not to run: steps.
    assert "token seen by run steps []" in logs
    [artifact] = ArtifactStore(ServiceSettings.from_env().artifacts_dir, 90).list("4242")
    assert (artifact.name, artifact.job_key) == ("things", "a")
    assert 1.9 * 86400 < artifact.expires_at - artifact.created_at < 2.1 * 86400


async def test_an_artifact_passes_between_jobs_in_qemu_machines(actions_url: str) -> None:
    """The same workflow in QEMU guests (TCG here): node is Debian's (18.x, the test image's
    ``nodejs``), the services are reached through each VM's agent forward."""
    qemu_image()
    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    try:
        ran = await run(
            ARTIFACTS, provider=provider, actions_url=actions_url, run_id="4343",
            repository="octo/demo",
        )
    finally:
        await provider.aclose()
    assert provider.leftovers() == [], "the run left a machine behind"
    assert {e.provider for e in ran.of(JobStarted)} == {"qemu"}
    assert ran.result("a") == "success", ran.logs("a")
    assert "node v18." in "\n".join(ran.logs("a"))
    assert "in /home/runner/work/demo/demo for /home/runner" in "\n".join(ran.logs("a"))
    assert ran.result("b") == "success", ran.logs("b")
    logs = ran.logs("b")
    assert "made in job a" in logs
    assert "same bytes" in logs
    assert "token seen by run steps []" in logs
    [artifact] = ArtifactStore(ServiceSettings.from_env().artifacts_dir, 90).list("4343")
    assert (artifact.name, artifact.job_key) == ("things", "a")


#: Called: its one job uploads what it built.
CALLED_BUILD = """
on:
  workflow_call:
    inputs:
      flavour: {type: string, required: true}
jobs:
  make:
    runs-on: ubuntu-latest
    steps:
      - run: mkdir dist && echo "built ${{ inputs.flavour }}" > dist/app.txt
      - uses: actions/upload-artifact@v4
        with:
          name: app-${{ inputs.flavour }}
          path: dist/app.txt
"""

CALLER = """
on: push
jobs:
  build:
    uses: ./.github/workflows/build.yml
    with: {flavour: small}
  ship:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - uses: actions/download-artifact@v4
        with: {name: app-small}
      - run: echo "shipping $(cat app.txt)"
"""

#: Nothing but a call: no step of this file says ``uses:``.
ONLY_A_CALL = """
on: push
jobs:
  build:
    uses: ./.github/workflows/build.yml
    with: {flavour: large}
"""


def project(root: Path, caller: str) -> Path:
    workflows = root / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "build.yml").write_text(CALLED_BUILD)
    (workflows / "caller.yml").write_text(caller)
    return workflows / "caller.yml"


async def test_an_artifact_from_a_called_workflow_reaches_the_caller(
    actions_url: str, tmp_path: Path
) -> None:
    ran = await run(
        project(tmp_path, CALLER), repo_root=tmp_path, actions_url=actions_url, run_id="4444",
        repository="octo/demo",
    )
    assert ran.result("build / make") == "success", ran.logs("build / make")
    assert ran.result("ship") == "success", ran.logs("ship")
    assert "shipping built small" in ran.logs("ship")
    [artifact] = ArtifactStore(ServiceSettings.from_env().artifacts_dir, 90).list("4444")
    assert (artifact.name, artifact.job_key) == ("app-small", "build / make")


async def test_a_call_alone_starts_the_services(actions_url: str, tmp_path: Path) -> None:
    caller = load_workflow(project(tmp_path, ONLY_A_CALL))
    assert not any(step.uses for job in caller.jobs.values() for step in job.steps)
    ran = await run(
        caller, repo_root=tmp_path, actions_url=actions_url, run_id="4445",
        repository="octo/demo",
    )
    assert ran.result("build / make") == "success", ran.logs("build / make")
    [artifact] = ArtifactStore(ServiceSettings.from_env().artifacts_dir, 90).list("4445")
    assert (artifact.name, artifact.job_key) == ("app-large", "build / make")


#: Uploads after the snapshots (set-up, step 1), fails at step 3 unless vars.READY is yes.
SNAPSHOTTED = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: mkdir out && echo "made before the snapshot" > out/a.txt
      - uses: actions/upload-artifact@v4
        with: {name: first, path: out/a.txt}
      - run: test "${{ vars.READY }}" = yes
      - uses: actions/upload-artifact@v4
        with: {name: second, path: out/a.txt}
"""


async def test_the_services_are_reached_after_snapshots_and_in_a_rerun(
    actions_url: str, tmp_path: Path
) -> None:
    """The forward lives in the agent; a sandbox snapshot or restore is a file system copy, so
    it holds. ``vmrunner rerun`` seeds a fresh machine from the snapshot and serves the
    services to it as a run does."""
    workflow = load_workflow_text(SNAPSHOTTED, "snap.yml")
    ran = await run(
        workflow, actions_url=actions_url, run_id="4446", repository="octo/demo", snapshot=True,
    )
    assert ran.result("a") == "failure"
    artifacts = ArtifactStore(ServiceSettings.from_env().artifacts_dir, 90)
    assert [a.name for a in artifacts.list("4446")] == ["first"]

    kept = checkpoints.load("4446", "a")
    assert kept is not None, [a.message for a in ran.of(Annotation)]
    options = kept.run_options(
        vars={"READY": "yes"}, run_id="4447", snapshot=False, rollback_on_failure=False,
        jobs=None,
    )
    recorder = Recorder()
    provider = get_provider("sandbox")
    try:
        async with SessionManager(provider, limit=1) as sessions:
            outcome = await rerun_job(
                workflow, plan_rerun(kept, workflow, 3), options, sessions, recorder
            )
    finally:
        await provider.aclose()
    assert outcome.conclusion == "success", [
        e.text for e in recorder.events if isinstance(e, LogLine)
    ]
    [second] = artifacts.list("4447")
    assert second.name == "second"
    extract(second, tmp_path / "got")
    assert (tmp_path / "got" / "a.txt").read_text() == "made before the snapshot\n"


async def test_the_second_run_hits_the_cache(actions_url: str) -> None:
    options = {"actions_url": actions_url, "repository": "octo/demo"}
    first = await run(CACHE, run_id="100", ref="refs/heads/main", **options)
    assert first.result("c") == "success", first.logs("c")
    assert "hit= built in run 100" in first.logs("c")
    second = await run(CACHE, run_id="101", ref="refs/heads/main", **options)
    assert second.result("c") == "success", second.logs("c")
    assert "hit=true built in run 100" in second.logs("c")
    # Another branch restores what the default branch (main) saved.
    feature = await run(CACHE, run_id="102", ref="refs/heads/feature", **options)
    assert "hit=true built in run 100" in feature.logs("c")
