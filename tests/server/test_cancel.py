"""Cancelling a run the server runs itself (no fleet): the API and GitHub's cancelled
``workflow_run``."""

from __future__ import annotations

import asyncio
import copy
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.server.helpers import config, deliver, finished, fixture, live_server, make_repo, settled
from vmrunner.store import Store

WORKFLOW = (
    "name: CI\non: push\njobs:\n  hang:\n    runs-on: ubuntu-latest\n    steps:\n      - "
    "run: sleep 120\n"
)


def _push(sha: str) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("push", "04-event.json"))
    payload["after"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    return payload


async def _hanging(client: httpx.AsyncClient, sha: str) -> str:
    delivery = str(uuid.uuid4())
    await deliver(client, "push", _push(sha), delivery)
    run_id = str((await settled(client, delivery))["runs"][0]["run_id"])
    async with asyncio.timeout(60):
        while _machines() == 0:  # noqa: ASYNC110 - the job holds its machine: a row in another connection
            await asyncio.sleep(0.05)
    return run_id


def _machines() -> int:
    with Store.open() as store:
        return len(store.machines())


async def test_a_local_run_is_cancelled_by_the_api_and_by_a_cancelled_workflow_run(
    tmp_path: Path,
) -> None:
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW})
    async with live_server(config({"acme/widgets": root})) as client:
        run_id = await _hanging(client, sha)
        assert (await client.post(f"/api/runs/{run_id}/cancel")).status_code == 202
        run = await finished(client, run_id)
        assert (run["server"]["state"], run["server"]["conclusion"]) == ("completed", "cancelled")
        assert run["result"]["jobs"][0]["conclusion"] == "cancelled"
        assert (await client.post(f"/api/runs/{run_id}/cancel")).status_code == 409

        again = await _hanging(client, sha)
        cancelled = copy.deepcopy(fixture("workflow_run", "01-completed.json"))
        cancelled["repository"]["full_name"] = "acme/widgets"
        cancelled["workflow_run"].update(
            head_sha=sha, conclusion="cancelled", path=".github/workflows/ci.yml"
        )
        delivery = str(uuid.uuid4())
        await deliver(client, "workflow_run", cancelled, delivery)
        assert (await settled(client, delivery))["note"] == f"cancelled run(s) {again}"
        assert (await finished(client, again))["server"]["conclusion"] == "cancelled"
        assert _machines() == 0

        other = copy.deepcopy(cancelled)
        other["workflow_run"]["conclusion"] = "success"
        ignored = str(uuid.uuid4())
        assert (await deliver(client, "workflow_run", other, ignored)).json()["status"] == "ignored"
