"""Every fixture webhook, signed and sent to a live server, against a local test repository.

Mapping the fixtures: they name repositories, branches and commits that do not exist here. The
server is configured with both fixture repositories (``Codertocat/Hello-World``,
``octo-org/octo-repo``) pointing at one local repository, which has the branches the fixtures
name (master, main). Commits: before signing, the commit a payload asks for (``after`` of a push,
``pull_request.head.sha``) is replaced by the local repository's HEAD, unless it is the zero sha
of a deletion; every other byte of the payload is GitHub's.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.helpers import (
    FIXTURES,
    SECRET,
    config,
    deliver,
    git,
    headers,
    live_server,
    make_repo,
    settled,
)
from vmrunner.server.signatures import sign, verify

ZERO = "0" * 40
STEP = "    runs-on: ubuntu-latest\n    steps:\n      - run: 'true'\n"
WORKFLOWS = {
    # push to master touching README.md or src/
    "push-master.yml": "on:\n  push:\n    branches: [master]\n    paths: ['README.md', "
    "'src/**']\njobs:\n  j:\n" + STEP,
    # pushes of tags simple-*
    "tags.yml": "on:\n  push:\n    tags: ['simple-*']\njobs:\n  j:\n" + STEP,
    # pushes touching docs/ (no fixture's commits do; tag pushes ignore path filters)
    "docs.yml": "on:\n  push:\n    paths: ['docs/**']\njobs:\n  j:\n" + STEP,
    # pull requests opened or synchronized against master
    "pr.yml": "on:\n  pull_request:\n    types: [opened, synchronize]\n    branches: "
    "[master]\njobs:\n  j:\n" + STEP,
    # the workflow the dispatch fixtures name
    "hello-world-workflow.yml": "on: workflow_dispatch\njobs:\n  j:\n" + STEP,
    # another dispatchable workflow: a dispatch names one workflow, so it must not run
    "other-dispatch.yml": "on: [workflow_dispatch, issues]\njobs:\n  j:\n" + STEP,
    "repository-dispatch.yml": "on:\n  repository_dispatch:\n    types: [on-demand-test]\njobs:\n "
    " j:\n" + STEP,
}


def expected_workflows(event: str, payload: dict) -> set[str]:
    """What GitHub would run for the test repository's workflows (their filters, spelled out)."""
    if event == "push":
        if payload.get("deleted") or payload["after"] == ZERO:
            return set()
        changed = {f for c in payload["commits"] for f in c["added"] + c["modified"] + c["removed"]}
        ref = payload["ref"]
        runs = set()
        if ref == "refs/heads/master" and changed & {"README.md"}:
            runs.add("push-master.yml")
        if ref.startswith("refs/tags/simple-"):
            runs.add("tags.yml")
        if ref.startswith("refs/tags/") or any(f.startswith("docs/") for f in changed):
            runs.add("docs.yml")  # GitHub does not evaluate path filters for tag pushes
        return runs
    if event == "pull_request":
        ok = (
            payload["action"] in ("opened", "synchronize")
            and payload["pull_request"]["base"]["ref"] == "master"
        )
        return {"pr.yml"} if ok else set()
    if event == "workflow_dispatch":
        return {Path(payload["workflow"]).name}
    if event == "repository_dispatch":
        return {"repository-dispatch.yml"} if payload["action"] == "on-demand-test" else set()
    return set()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    make_repo(
        root,
        {f".github/workflows/{name}": text for name, text in WORKFLOWS.items()}
        | {"README.md": "hi\n"},
    )
    git(root, "branch", "main")
    git(root, "tag", "simple-tag")
    return root


def localized(event: str, payload: dict, head: str) -> dict:
    payload = copy.deepcopy(payload)
    if event == "push" and payload["after"] != ZERO:
        payload["after"] = head
    if event == "pull_request":
        payload["pull_request"]["head"]["sha"] = head
    return payload


def server(repo: Path, **settings):
    return config(
        {"Codertocat/Hello-World": repo, "octo-org/octo-repo": repo},
        concurrent_runs=4,
        concurrent_jobs=4,
        **settings,
    )


async def test_every_fixture_starts_runs_exactly_when_the_workflows_match(repo):
    head = git(repo, "rev-parse", "HEAD")
    seen_events: set[str] = set()
    async with live_server(server(repo)) as client:
        sent = []
        for path in sorted(FIXTURES.glob("*/*.json")):
            event = path.parent.name
            payload = localized(event, json.loads(path.read_text()), head)
            delivery = str(uuid.uuid4())
            response = await deliver(client, event, payload, delivery)
            if event == "ping":
                assert response.status_code == 200
                assert response.json()["pong"] is True
                continue
            assert response.status_code == 202, (path, response.text)
            sent.append((path, event, payload, delivery))
        for path, event, payload, delivery in sent:
            outcome = await settled(client, delivery)
            runs = {Path(run["workflow_file"]).name for run in outcome["runs"]}
            assert runs == expected_workflows(event, payload), (str(path), outcome["note"])
            assert all(run["sha"] == head for run in outcome["runs"])
            if runs:
                seen_events.add(event)
        # the runs really ran, from the mirror at that commit
        listed = (await client.get("/api/runs", params={"limit": 100})).json()["runs"]
        for run in listed:
            detail = await _finished(client, run["run_id"])
            assert detail["result"]["conclusion"] == "success", detail
    assert seen_events == {"push", "pull_request", "workflow_dispatch", "repository_dispatch"}


async def _finished(client, run_id):
    from tests.server.helpers import finished

    return await finished(client, run_id)


async def test_a_redelivery_does_nothing_twice(repo):
    head = git(repo, "rev-parse", "HEAD")
    payload = localized("push", json.loads((FIXTURES / "push" / "04-event.json").read_text()), head)
    async with live_server(server(repo)) as client:
        delivery = str(uuid.uuid4())
        first = await deliver(client, "push", payload, delivery)
        assert first.status_code == 202
        assert first.json()["status"] == "queued"
        runs = (await settled(client, delivery))["runs"]
        again = await deliver(client, "push", payload, delivery)
        assert again.status_code == 200
        assert again.json()["status"] == "duplicate"
        # The same run, and no other: it may have moved on from running to completed meanwhile.
        assert [r["run_id"] for r in (await settled(client, delivery))["runs"]] == [
            r["run_id"] for r in runs
        ]
        assert len((await client.get("/api/runs")).json()["runs"]) == len(runs) == 1


async def test_signatures_are_checked_on_the_raw_body(repo):
    body = (FIXTURES / "push" / "04-event.json").read_bytes()
    async with live_server(server(repo)) as client:
        for index in (0, len(body) // 2, len(body) - 1):
            tampered = bytearray(body)
            tampered[index] ^= 0x01
            delivery = str(uuid.uuid4())
            response = await client.post(
                "/webhook", content=bytes(tampered), headers=headers("push", body, delivery)
            )
            assert response.status_code == 401
            assert (await client.get(f"/api/deliveries/{delivery}")).status_code == 404
        unsigned = headers("push", body)
        del unsigned["X-Hub-Signature-256"]
        assert (await client.post("/webhook", content=body, headers=unsigned)).status_code == 401
        wrong = headers("push", body, secret=b"another secret")
        assert (await client.post("/webhook", content=body, headers=wrong)).status_code == 401
        assert (await client.get("/api/runs")).json()["runs"] == []


async def test_oversized_bodies_are_refused_with_413(repo):
    async with live_server(server(repo, max_body_bytes=1000)) as client:
        big = b"{" + b" " * 2000 + b"}"
        assert (
            await client.post("/webhook", content=big, headers=headers("push", big))
        ).status_code == 413

        async def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(10):
                yield b" " * 500

        streamed = await client.post("/webhook", content=chunks(), headers=headers("push", b""))
        assert streamed.status_code == 413
        small = json.dumps({"zen": "Keep it logically awesome."}).encode()
        assert (
            await client.post("/webhook", content=small, headers=headers("ping", small))
        ).status_code == 200


async def test_other_events_are_acknowledged_and_start_nothing(repo):
    async with live_server(server(repo)) as client:
        for event in ("issues", "check_run", "release", "status"):
            path = sorted((FIXTURES / event).glob("*.json"))[0]
            response = await deliver(client, event, path.read_bytes())
            assert response.status_code == 202
            assert response.json()["status"] == "ignored"
        assert (await client.get("/api/runs")).json()["runs"] == []


async def test_openapi_metrics_health_sessions_and_pool_are_served(repo):
    async with live_server(server(repo)) as client:
        openapi = (await client.get("/openapi.json")).json()
        assert {
            "/webhook",
            "/api/runs",
            "/api/runs/{run_id}",
            "/api/sessions",
            "/api/pool",
            "/healthz",
            "/metrics",
        } <= set(openapi["paths"])
        await deliver(client, "issues", (FIXTURES / "issues" / "15-opened.json").read_bytes())
        metrics = await client.get("/metrics")
        families = {family.name: family for family in text_string_to_metric_families(metrics.text)}
        assert {
            "vmrunner_webhooks",
            "vmrunner_runs",
            "vmrunner_job_start_latency_seconds",
            "vmrunner_allocation_seconds",
            "vmrunner_machines_idle",
            "vmrunner_machines_busy",
            "vmrunner_snapshot_seconds",
        } <= set(families)
        webhooks = {
            (s.labels["event"], s.labels["outcome"]): s.value
            for s in families["vmrunner_webhooks"].samples
            if s.name.endswith("_total")
        }
        assert webhooks[("issues", "ignored")] == 1
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        sessions = (await client.get("/api/sessions")).json()
        assert sessions["statistics"]["limit"] == 4
        assert (await client.get("/api/pool")).json() == {"statistics": None}
        assert (await client.get("/api/runs/123")).status_code == 404


def test_sign_and_verify_agree_and_reject_any_change():
    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.binary(max_size=200), st.binary(min_size=1, max_size=32), st.integers(min_value=0))
    def check(body, secret, position):
        signature = sign(secret, body)
        assert verify(secret, body, signature)
        if body:
            changed = bytearray(body)
            changed[position % len(body)] ^= 0xFF
            assert not verify(secret, bytes(changed), signature)
        assert not verify(secret, body, None)
        assert not verify(secret, body, signature.replace("sha256=", "sha1="))

    check()


def test_known_github_signature():
    # the example from GitHub's documentation on validating webhook deliveries
    assert sign(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    assert SECRET
    assert isinstance(httpx.__version__, str)


async def test_a_failed_delivery_is_taken_again_when_redelivered(tmp_path):
    missing = tmp_path / "not-yet"
    async with live_server(config({"Codertocat/Hello-World": missing})) as client:
        delivery = str(uuid.uuid4())
        payload = json.loads((FIXTURES / "push" / "04-event.json").read_text())
        await deliver(client, "push", payload, delivery)
        failed = await settled(client, delivery)
        assert failed["status"] == "failed"
        assert failed["runs"] == []
        head = make_repo(
            missing, {".github/workflows/push-master.yml": WORKFLOWS["push-master.yml"]}
        )
        again = await deliver(client, "push", localized("push", payload, head), delivery)
        assert again.json()["status"] == "queued"
        assert [run["sha"] for run in (await settled(client, delivery))["runs"]] == [head]
        assert (await deliver(client, "push", payload, delivery)).json()["status"] == "duplicate"


async def test_a_warm_pool_is_owned_by_the_server_and_shown_in_the_api_and_metrics(repo):
    async with live_server(server(repo, pool_size=1)) as client:
        async with asyncio.timeout(60):
            while True:
                if sum((await client.get("/api/pool")).json()["statistics"]["idle"].values()):
                    break
                await asyncio.sleep(0.05)
        families = {
            f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)
        }
        assert families["vmrunner_machines_idle"].samples[0].value == 1
    machines = list((Path(os.environ["VMRUNNER_HOME"]) / "machines").glob("*"))
    assert [m for m in machines if not m.name.startswith(".")] == []  # released with the server
