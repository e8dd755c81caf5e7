"""``vmrunner serve --store``: webhooks become fleet runs, run by real agents, reported to a fake
GitHub.

Real parts: the PostgreSQL cluster, ``vmrunner agent`` processes, the server under uvicorn on
127.0.0.1, a git repository the server mirrors (the agents check the commit out of that mirror);
only GitHub's API is a fake. Two server instances have their own homes (their own SQLite and
mirrors), as on two hosts, and share the fleet.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet.harness import agents, until
from tests.fleet.test_fleet_runs import CHAIN
from tests.server.helpers import config, deliver, fixture, live_server, make_repo, settled
from tests.server.helpers import finished as server_finished
from vmrunner.errors import RunNotFound
from vmrunner.fleet.store import FleetStore
from vmrunner.runner.options import RunOptions
from vmrunner.server.config import ServerConfig
from vmrunner.server.github import COMMENT_MARKER, GitHubClient
from vmrunner.server.metrics import Metrics
from vmrunner.server.queued import QueuedRuns
from vmrunner.server.state import ServerRun
from vmrunner.server.testing import FakeGitHub
from vmrunner.store import DATABASE_NAME, Store
from vmrunner.workflow.loader import load_workflow_text

WORKFLOW = """
name: CI
on:
  push:
    branches: [master]
  pull_request:
    types: [opened]
jobs:
  build:
    runs-on: linux
    steps:
      - uses: actions/checkout@v4
      - run: echo "built $(cat VERSION) at $GITHUB_SHA"
  hang:
    runs-on: linux
    needs: build
    if: ${{ contains(github.event.head_commit.message, '[hang]') }}
    steps:
      - run: sleep 120
"""


def _repo(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW, "VERSION": "1.2.3\n"})
    return root, sha


def _push(sha: str, message: str = "a change") -> dict[str, Any]:
    payload = copy.deepcopy(fixture("push", "04-event.json"))
    payload["after"] = sha
    payload["repository"]["full_name"] = "acme/widgets"
    payload["head_commit"] = {**(payload.get("head_commit") or {}), "id": sha, "message": message}
    return payload


def _server_config(root: Path, github: FakeGitHub, database: str) -> ServerConfig:
    return dataclasses.replace(
        config({"acme/widgets": root}, github_api_url=github.url, github_token=github.token),
        store=database,
    )


@contextlib.asynccontextmanager
async def _server_at(
    home: Path, server_config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A server whose state and mirrors live in ``home`` (a host of its own)."""
    monkeypatch.setenv("VMRUNNER_HOME", str(home))
    async with live_server(server_config) as client:
        yield client


def _machines(home: Path) -> int:
    with Store.open(home / DATABASE_NAME) as store:
        return len(store.machines())


async def test_a_redelivered_push_makes_one_fleet_run_across_two_servers(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, sha = _repo(tmp_path)
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux")),
        FakeGitHub().running() as github,
        _server_at(
            tmp_path / "server-a", _server_config(root, github, database), monkeypatch
        ) as first,
        _server_at(
            tmp_path / "server-b", _server_config(root, github, database), monkeypatch
        ) as second,
        FleetStore(database) as fleet,
    ):
        delivery = str(uuid.uuid4())
        assert (await deliver(first, "push", _push(sha), delivery)).status_code == 202
        assert (await deliver(first, "push", _push(sha), delivery)).json()["status"] == "duplicate"
        assert (await deliver(second, "push", _push(sha), delivery)).status_code == 202
        runs = [(await settled(client, delivery))["runs"] for client in (first, second)]
        assert [len(found) for found in runs] == [1, 1]
        done = [
            await server_finished(client, found[0]["run_id"])
            for client, found in zip((first, second), runs, strict=True)
        ]
        assert [run["server"]["conclusion"] for run in done] == ["success", "success"]
        async with fleet.pool.connection() as connection:
            assert await (
                await connection.execute("SELECT count(*) FROM vmrunner_runs")
            ).fetchone() == (1,)
        run = done[0]["result"]
        assert {job["job_id"]: job["status"] for job in run["jobs"]} == {
            "build": "success",
            "hang": "skipped",
        }
        assert run["run_id"] == done[1]["result"]["run_id"]
        assert f"built 1.2.3 at {sha}" in [row["text"] for row in done[0]["logs"]]

    assert github.rejected == []
    build = [status for status in github.statuses() if status["context"] == "vmrunner/CI/build"]
    assert build[0]["state"] == "pending"
    assert build[-1]["state"] == "success"
    assert build[-1]["description"].startswith("success on h")


async def _running(fleet: FleetStore, run_id: str, job_id: str) -> str | None:
    try:
        job = (await fleet.run(run_id)).job(job_id)
    except RunNotFound:  # the server has not submitted it yet
        return None
    return job.host if job.status == "running" else None


async def _started_hang(
    client: httpx.AsyncClient, fleet: FleetStore, sha: str, agent_homes: dict[str, Path]
) -> tuple[str, Path]:
    """Deliver a push whose second job hangs; its run id and the home of the agent running it."""
    delivery = str(uuid.uuid4())
    await deliver(client, "push", _push(sha, "[hang] please"), delivery)
    run_id = str((await settled(client, delivery))["runs"][0]["run_id"])
    host = await until(
        lambda: _running(fleet, run_id, "hang"), within=60, what="the hanging job running"
    )
    home = agent_homes[host]
    await until(lambda: _async(_machines(home) > 0), within=30, what="the agent's machine recorded")
    return run_id, home


async def _async(value: bool) -> bool:
    return value


async def test_cancel_through_the_api_or_a_cancelled_workflow_run_reaches_the_agent(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, sha = _repo(tmp_path)
    async with (
        agents(database, ("h1", "linux")) as started,
        FakeGitHub().running() as github,
        _server_at(
            tmp_path / "server", _server_config(root, github, database), monkeypatch
        ) as client,
        FleetStore(database) as fleet,
    ):
        homes = {name: agent.home for name, agent in started.items()}
        run_id, home = await _started_hang(client, fleet, sha, homes)
        answer = await client.post(f"/api/runs/{run_id}/cancel")
        assert answer.status_code == 202, answer.text
        await until(
            lambda: _async(_machines(home) == 0),
            within=10,
            what="the machine released after cancel",
        )
        run = await server_finished(client, run_id)
        assert (run["server"]["state"], run["server"]["conclusion"]) == ("completed", "cancelled")
        assert {job["job_id"]: job["status"] for job in run["result"]["jobs"]} == {
            "build": "success",
            "hang": "cancelled",
        }
        assert (await client.post(f"/api/runs/{run_id}/cancel")).status_code == 409
        assert (await client.post("/api/runs/404/cancel")).status_code == 404

        again, home = await _started_hang(client, fleet, sha, homes)
        cancelled = copy.deepcopy(fixture("workflow_run", "01-completed.json"))
        cancelled["repository"]["full_name"] = "acme/widgets"
        cancelled["workflow_run"].update(
            head_sha=sha, conclusion="cancelled", path=".github/workflows/ci.yml"
        )
        delivery = str(uuid.uuid4())
        assert (await deliver(client, "workflow_run", cancelled, delivery)).status_code == 202
        assert (await settled(client, delivery))["note"] == f"cancelled run(s) {again}"
        await until(
            lambda: _async(_machines(home) == 0),
            within=10,
            what="the machine released after the cancelled workflow_run",
        )
        assert (await server_finished(client, again))["server"]["conclusion"] == "cancelled"
        assert [attempt for job, attempt, _, _ in await fleet.attempts(again) if job == "hang"] == [
            1
        ]

    hang = [status for status in github.statuses() if status["context"] == "vmrunner/CI/hang"]
    assert hang[-1]["state"] == "error"


async def test_a_restarted_server_watches_its_fleet_runs_again_and_comments_on_pull_requests(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, sha = _repo(tmp_path)
    async with (
        agents(database, ("h1", "linux")) as started,
        FakeGitHub().running() as github,
        FleetStore(database) as fleet,
    ):
        homes = {name: agent.home for name, agent in started.items()}
        settings = _server_config(root, github, database)
        async with _server_at(tmp_path / "server", settings, monkeypatch) as client:
            run_id, home = await _started_hang(client, fleet, sha, homes)
        assert (await fleet.run(run_id)).status == "running"  # the server stopped, the run did not
        assert _machines(home) == 1
        async with _server_at(tmp_path / "server", settings, monkeypatch) as client:
            answer = await client.post(f"/api/runs/{run_id}/cancel")
            assert answer.status_code == 202, answer.text
            assert (await server_finished(client, run_id))["server"]["conclusion"] == "cancelled"

            opened = copy.deepcopy(fixture("pull_request", "00-opened.json"))
            opened["pull_request"]["head"]["sha"] = sha
            opened["repository"]["full_name"] = "acme/widgets"
            delivery = str(uuid.uuid4())
            await deliver(client, "pull_request", opened, delivery)
            pull = (await settled(client, delivery))["runs"][0]
            assert (await server_finished(client, pull["run_id"]))["server"][
                "conclusion"
            ] == "success"

    assert github.rejected == []
    (comment,) = github.comments.values()
    assert comment["body"].startswith(COMMENT_MARKER)
    assert f"Run {pull['run_id']} on the fleet." in comment["body"]
    assert "| build | success | h1 | 1 |" in comment["body"]


async def test_a_cancel_before_the_run_is_submitted_again_is_taken_and_applied_after_it(
    database: str, tmp_path: Path
) -> None:
    """The window after a restart: the server knows the run is running but has not submitted it
    to the queue again (here the queue never had it), so the queue cannot cancel it yet."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run = ServerRun(
        0, "r-restarted", str(uuid.uuid4()), "acme/widgets", ".github/workflows/ci.yml", "push",
        "0" * 40, "refs/heads/master", None, "running", None, 0.0, 0.0, None, None, None, "",
    )  # fmt: skip
    async with (
        FakeGitHub().running() as github,
        GitHubClient(github.url, token=github.token) as client,
        FleetStore(database) as fleet,
    ):
        await fleet.register_agent("h1", ["linux"], 1)  # it serves the labels; no job is taken
        runs = QueuedRuns(fleet, client, Metrics())
        assert await runs.cancel(run.run_id)
        workflow = load_workflow_text(WORKFLOW, run.workflow_file)
        options = RunOptions(repo_root=str(repo), repository=run.repository, run_id=run.run_id)
        assert await runs.execute(run, workflow, options, "http://server/runs") == "cancelled"
        queued = await fleet.run(run.run_id)
        assert (queued.conclusion, queued.job("build").status) == ("cancelled", "cancelled")


async def test_one_server_and_two_agents_run_a_chain_with_outputs_across_hosts(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9's first scenario end to end: a push to the server; A on either host, B (kvm,
    needs A) on h2 with A's outputs, then C; one success each."""
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/chain.yml": CHAIN})
    async with (
        agents(database, ("h1", "linux"), ("h2", "linux,kvm")),
        FakeGitHub().running() as github,
        _server_at(
            tmp_path / "server", _server_config(root, github, database), monkeypatch
        ) as client,
        FleetStore(database) as fleet,
    ):
        delivery = str(uuid.uuid4())
        assert (await deliver(client, "push", _push(sha), delivery)).status_code == 202
        run_id = str((await settled(client, delivery))["runs"][0]["run_id"])
        done = await server_finished(client, run_id)
        assert done["server"]["conclusion"] == "success", done
        run = await fleet.run(run_id)
        assert run.job("b").host == "h2"
        assert run.job("b").outputs == {"got": "from-a"}
        assert [line for _, job, _, line in await fleet.logs(run_id) if job == "c"] == [
            "c saw from-a"
        ]
        assert sorted((job, result) for job, _, _, result in await fleet.attempts(run_id)) == [
            ("a", "success"),
            ("b", "success"),
            ("c", "success"),
        ]
    last = {
        status["context"].rsplit("/", 1)[-1]: status["state"] for status in github.statuses()
    }  # the latest per job
    assert last == {"a": "success", "b": "success", "c": "success"}
