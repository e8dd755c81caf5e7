"""End to end against a fake GitHub API on 127.0.0.1: statuses for a push, one comment per pull
request."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

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
from vmrunner.server.config import RepositoryConfig
from vmrunner.server.github import COMMENT_MARKER
from vmrunner.server.testing import FakeGitHub

SECRET_VALUE = "hunter2-very-secret"
WORKFLOW = """
name: CI
on:
  push:
    branches: [master]
  pull_request:
    types: [opened, synchronize]
jobs:
  ok:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: test -f README.md && echo fine
  broken:
    runs-on: ubuntu-latest
    steps:
      - run: echo "the key is ${{ secrets.API_KEY }}"
      - run: exit 3
"""


def repo(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW, "README.md": "hello\n"})
    return root, sha


def server_config(root: Path, github: FakeGitHub):
    base = config({}, github_api_url=github.url, github_token=github.token)
    repos = {"acme/widgets": RepositoryConfig("acme/widgets", str(root), {"API_KEY": SECRET_VALUE})}
    return type(base)(
        **{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "repositories": repos}
    )


def push_payload(sha: str) -> dict:
    payload = copy.deepcopy(fixture("push", "04-event.json"))
    payload["after"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    return payload


def pull_payload(name: str, sha: str) -> dict:
    payload = copy.deepcopy(fixture("pull_request", name))
    payload["pull_request"]["head"]["sha"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    return payload


async def test_push_reports_pending_then_final_statuses_and_never_success_for_a_failed_job(
    tmp_path,
):
    root, sha = repo(tmp_path)
    # a later commit fixes the workflow: the push of the first commit must still run the first one
    commit(root, {".github/workflows/ci.yml": WORKFLOW.replace("exit 3", "exit 0")})
    async with FakeGitHub().running() as github, live_server(server_config(root, github)) as client:
        delivery = str(uuid.uuid4())
        assert (await deliver(client, "push", push_payload(sha), delivery)).status_code == 202
        runs = (await settled(client, delivery))["runs"]
        assert [run["workflow_file"] for run in runs] == [".github/workflows/ci.yml"]
        run = await finished(client, runs[0]["run_id"])
        assert run["server"]["conclusion"] == "failure"
        assert any("the key is ***" in row["text"] for row in run["logs"])
        assert run["result"]["workflow_file"] == ".github/workflows/ci.yml"
        assert SECRET_VALUE not in json.dumps(run)
        metrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families((await client.get("/metrics")).text)
            for s in family.samples
        }
        assert metrics[("vmrunner_runs_total", (("conclusion", "failure"),))] == 1
        assert metrics[("vmrunner_job_start_latency_seconds_count", ())] == 2
        assert metrics[("vmrunner_allocation_seconds_count", ())] == 2

    assert github.rejected == []
    by_context: dict[str, list[str]] = {}
    for status in github.statuses():
        by_context.setdefault(status["context"], []).append(status["state"])
        assert status["target_url"].endswith(f"/api/runs/{runs[0]['run_id']}")
    assert set(by_context) == {"vmrunner/CI/ok", "vmrunner/CI/broken"}
    assert by_context["vmrunner/CI/ok"][0] == "pending"
    assert by_context["vmrunner/CI/ok"][-1] == "success"
    assert by_context["vmrunner/CI/broken"][0] == "pending"
    assert by_context["vmrunner/CI/broken"][-1] == "failure"
    assert "success" not in by_context["vmrunner/CI/broken"]
    assert all(call.path == f"/repos/acme/widgets/statuses/{sha}" for call in github.calls)
    assert SECRET_VALUE not in json.dumps([call.json for call in github.calls])


async def test_a_pull_request_gets_one_comment_updated_in_place_for_a_new_commit(tmp_path):
    root, first = repo(tmp_path)
    async with FakeGitHub().running() as github, live_server(server_config(root, github)) as client:
        opened = str(uuid.uuid4())
        await deliver(client, "pull_request", pull_payload("00-opened.json", first), opened)
        run = (await settled(client, opened))["runs"][0]
        await finished(client, run["run_id"])
        second = commit(root, {"README.md": "hello again\n"})
        synchronized = str(uuid.uuid4())
        await deliver(
            client, "pull_request", pull_payload("22-synchronize.json", second), synchronized
        )
        again = (await settled(client, synchronized))["runs"][0]
        await finished(client, again["run_id"])
        # the same delivery again does nothing
        assert (
            await deliver(
                client, "pull_request", pull_payload("22-synchronize.json", second), synchronized
            )
        ).json()["status"] == "duplicate"

    assert github.rejected == []
    comments = [call for call in github.calls if "/comments" in call.path and call.method != "GET"]
    created = [call for call in comments if call.method == "POST"]
    assert len(created) == 1
    assert created[0].path == "/repos/acme/widgets/issues/2/comments"
    (comment,) = github.comments.values()
    assert [call.path for call in comments if call.method == "PATCH"] == [
        f"/repos/acme/widgets/issues/comments/{comment['id']}"
    ]
    assert comment["body"].startswith(COMMENT_MARKER)
    assert second[:12] in comment["body"]
    assert first[:12] not in comment["body"]
    assert "failure" in comment["body"]
    assert SECRET_VALUE not in json.dumps([call.json for call in github.calls])
