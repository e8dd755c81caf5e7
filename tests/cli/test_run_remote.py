"""``vmrunner run --provider remote --remote-url URL``: jobs' machines on a machine service."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx

from tests.cli.helpers import vmrunner
from tests.server.machines_helpers import machine_service

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


def project(root: Path) -> Path:
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(WORKFLOW)
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


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
