"""``POST /api/runs/{id}/rerun`` (scope operate): the workflow again, same commit and event."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.server.helpers import config, deliver, finished, live_server, make_repo, settled
from tests.server.test_webhook_bounds import _push

WORKFLOW = (
    "name: CI\non: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
    "      - run: echo built $GITHUB_SHA\n"
)


async def test_a_finished_run_is_run_again(tmp_path: Path) -> None:
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW})
    async with live_server(config({"acme/widgets": root}), scope="operate") as client:
        delivery = str(uuid.uuid4())
        await deliver(client, "push", _push(sha), delivery)
        first = (await settled(client, delivery))["runs"][0]["run_id"]
        assert (await finished(client, first))["server"]["conclusion"] == "success"
        answer = await client.post(f"/api/runs/{first}/rerun")
        assert answer.status_code == 202
        again = answer.json()
        assert again["run_id"] != first
        assert (again["sha"], again["delivery_id"], again["note"]) == (
            sha, delivery, f"re-run of {first}"
        )
        done = await finished(client, again["run_id"])
        assert done["server"]["conclusion"] == "success"
        assert f"built {sha}" in [row["text"] for row in done["logs"]]
        assert len((await client.get("/api/runs")).json()["runs"]) == 2
        assert (await client.post("/api/runs/nope/rerun")).status_code == 404
