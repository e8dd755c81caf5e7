"""``vmrunner run --provider remote --remote-url URL``: jobs' machines on a machine service."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.cli.helpers import vmrunner
from tests.runner.test_rerun import JOB
from tests.runner.test_rerun import WORKFLOW as RERUN
from tests.server.machines_helpers import machine_service
from tests.services.actions import built_actions
from vmrunner.runner import checkpoints

WORKFLOW = """\
on: push
jobs:
  one:
    runs-on: ubuntu-latest
    steps:
      - run: echo "hello from $(hostname)" && test -d "$GITHUB_WORKSPACE"
  two:
    needs: one
    runs-on: ubuntu-latest
    steps:
      - run: echo second > out.txt && cat out.txt
      - run: exit 3
"""


#: The real artifact actions, whose jobs reach the runner's services through the forward.
ARTIFACTS = """\
on: push
jobs:
  make:
    runs-on: ubuntu-latest
    steps:
      - run: mkdir out && echo "made remotely" > out/a.txt
      - run: head -c 3000000 /dev/urandom > out/b.bin
      - run: sha256sum out/b.bin > sum.txt
      - uses: actions/upload-artifact@v4
        with: {name: things, path: out}
      - uses: actions/upload-artifact@v4
        with: {name: sum, path: sum.txt}
  use:
    needs: make
    runs-on: ubuntu-latest
    steps:
      - uses: actions/download-artifact@v4
        with: {name: things, path: got}
      - uses: actions/download-artifact@v4
        with: {name: sum}
      - run: grep -q "made remotely" got/a.txt && sed 's| out/| got/|' sum.txt | sha256sum -c
"""


def project(root: Path, workflow: str = WORKFLOW) -> Path:
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(workflow)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


async def test_run_on_remote_machines(tmp_path: Path) -> None:
    root = await asyncio.to_thread(project, tmp_path / "repo")
    with machine_service(tmp_path / "service.db") as service:
        token = service.token("cli")
        env = {"VMRUNNER_REMOTE_TOKEN": token, "VMRUNNER_HOME": str(tmp_path / "home")}
        result = await asyncio.to_thread(
            vmrunner, "run", "--provider", "remote", "--remote-url", service.url,
            "--network", "host", cwd=root, env={**_environ(), **env}, timeout=300,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 1, output  # job two fails on purpose
        assert "hello from" in output
        assert "second" in output
        async with httpx.AsyncClient(
            base_url=service.url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            assert (await http.get("/api/vms")).json()["total"] == 0
    unreachable = await asyncio.to_thread(
        vmrunner, "run", "--provider", "remote", "--remote-url", "http://127.0.0.1:9",
        cwd=root, env={**_environ(), "VMRUNNER_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert unreachable.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
async def test_artifacts_pass_between_remote_jobs(tmp_path: Path) -> None:
    built = await asyncio.to_thread(built_actions)
    flags = []
    for name in ("upload-artifact", "download-artifact"):
        clone = tmp_path / name  # the built action, as --local-repository takes it
        bare = built / "server" / "actions" / name
        await asyncio.to_thread(subprocess.run, ["git", "clone", "-q", str(bare), str(clone)],
                                check=True)
        flags += ["--local-repository", f"actions/{name}@v4={clone}"]
    root = await asyncio.to_thread(project, tmp_path / "repo", ARTIFACTS)
    with machine_service(tmp_path / "service.db") as service:
        env = {"VMRUNNER_REMOTE_TOKEN": service.token("cli"),
               "VMRUNNER_HOME": str(tmp_path / "home")}
        result = await asyncio.to_thread(
            vmrunner, "run", "--provider", "remote", "--remote-url", service.url,
            "--network", "host", *flags, cwd=root, env={**_environ(), **env}, timeout=300,
        )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "got/b.bin: OK" in output
    assert "not reachable" not in output


async def test_a_failed_remote_job_is_rerun_from_its_snapshot(tmp_path: Path) -> None:
    """``run --snapshot`` keeps a remote job's snapshots on the runner's host; ``rerun`` seeds a
    fresh remote machine with one and continues from the step after it."""
    root = await asyncio.to_thread(project, tmp_path / "repo", RERUN)
    transfer = tmp_path / "transfer"
    transfer.mkdir()
    with machine_service(tmp_path / "service.db", transfer_dir=str(transfer)) as service:
        token = service.token("cli")
        env = {**_environ(), "VMRUNNER_REMOTE_TOKEN": token}
        remote = ("--provider", "remote", "--remote-url", service.url)
        failed = await asyncio.to_thread(
            vmrunner, "run", "--json", "--snapshot", *remote, "--network", "host", cwd=root,
            env=env, timeout=300,
        )  # fmt: skip
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "cannot keep" not in failed.stdout + failed.stderr
        original = str(json.loads(failed.stdout)["runs"][0]["run_id"])
        assert checkpoints.kept_jobs(original) == [JOB]
        kept = checkpoints.load(original, JOB)
        assert kept is not None
        assert [c.step_number for c in kept.checkpoints] == [0, 1, 2]

        again = await asyncio.to_thread(
            vmrunner, "rerun", original, "--from-step", "3", "--var", "READY=yes", "--json",
            *remote, cwd=root, env=env, timeout=300,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        run = json.loads(again.stdout)["runs"][0]
        assert (run["rerun_of"], run["from_step"], run["conclusion"]) == (original, 3, "success")
        steps = [s for s in run["jobs"][0]["steps"] if s["kind"] == "step"]
        assert [s["conclusion"] for s in steps] == ["success", "success"]  # steps 3 and 4 only
        logs = await asyncio.to_thread(
            vmrunner, "runs", "show", run["run_id"], "--logs", cwd=root, env=env
        )
        assert "trail: step1,step2,step3,step4 hi e1 tool-ok plain," in logs.stdout, logs.stdout
        async with httpx.AsyncClient(
            base_url=service.url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            assert (await http.get("/api/vms")).json()["total"] == 0
    assert await asyncio.to_thread(lambda: list(transfer.iterdir())) == []


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
