"""Workflow-level concurrency across the runs of one server: a second push stops the first run."""

from __future__ import annotations

import asyncio
import copy
import uuid
from pathlib import Path
from typing import Any

from tests.server.helpers import (
    commit,
    config,
    deliver,
    finished,
    fixture,
    live_server,
    make_repo,
    settled,
)
from vmrunner.store import Store

WORKFLOW = """name: CI
on: push
concurrency:
  group: ci-${{ github.ref }}
  cancel-in-progress: true
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: STEP
"""


def _push(sha: str) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("push", "04-event.json"))
    payload["after"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    return payload


async def _start(client: Any, sha: str) -> str:
    delivery = str(uuid.uuid4())
    await deliver(client, "push", _push(sha), delivery)
    return str((await settled(client, delivery))["runs"][0]["run_id"])


def _machines() -> int:
    with Store.open() as store:
        return len(store.machines())


async def test_a_second_push_cancels_the_first_run_of_the_group(tmp_path: Path) -> None:
    root = tmp_path / "widgets"
    first_sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW.replace("STEP", "sleep 120")})
    second_sha = commit(root, {".github/workflows/ci.yml": WORKFLOW.replace("STEP", "echo second")})
    async with live_server(config({"acme/widgets": root})) as client:
        first = await _start(client, first_sha)
        async with asyncio.timeout(60):
            while _machines() == 0:  # noqa: ASYNC110 - the first job holds its machine: a row in another connection
                await asyncio.sleep(0.05)
        second = await _start(client, second_sha)
        stopped, done = await finished(client, first), await finished(client, second)
        assert stopped["server"]["conclusion"] == "cancelled"
        assert stopped["result"]["jobs"][0]["conclusion"] == "cancelled"
        assert done["server"]["conclusion"] == "success"
        notes = [a["message"] for job in stopped["result"]["jobs"] for a in job["annotations"]]
        assert any(
            f"run {second} entered concurrency group 'ci-refs/heads/" in note for note in notes
        )
        assert "cancel-in-progress" in stopped["result"]["jobs"][0]["reason"]
        assert _machines() == 0
