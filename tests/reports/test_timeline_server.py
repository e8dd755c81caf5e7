"""The server's run API serves the machine lifecycle timeline of a run it made (a real push)."""

from __future__ import annotations

import uuid
from pathlib import Path

import jsonschema

from tests.server.helpers import config, deliver, finished, fixture, live_server, make_repo, settled
from vmrunner.reports.results import RUN_RESULT_SCHEMA

WORKFLOW = """
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo built
  test:
    runs-on: ubuntu-latest
    steps:
      - run: echo tested
"""


async def test_the_run_api_serves_each_jobs_timeline_and_the_counts(tmp_path: Path) -> None:
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW})
    payload = fixture("push", "04-event.json")
    payload["after"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    async with live_server(config({"acme/widgets": root})) as client:
        delivery = str(uuid.uuid4())
        await deliver(client, "push", payload, delivery)
        runs = (await settled(client, delivery))["runs"]
        assert len(runs) == 1
        data = await finished(client, runs[0]["run_id"])
    result = data["result"]
    jsonschema.validate(result, RUN_RESULT_SCHEMA)
    lifecycle = result["lifecycle"]
    assert lifecycle["jobs"] == 2
    assert lifecycle["machines_allocated"] == 2
    assert lifecycle["machines_released"] == 2
    assert lifecycle["kept"] is True
    for job in result["jobs"]:
        kinds = [e["kind"] for e in job["timeline"]]
        assert kinds.count("machine_allocated") == 1
        assert kinds.count("machine_released") == 1
        assert (
            kinds.index("machine_allocated")
            < kinds.index("command_started")
            < kinds.index("machine_released")
        )
        assert {e["machine_id"] for e in job["timeline"] if e["kind"] == "command_started"} == {
            job["machine_id"]
        }
