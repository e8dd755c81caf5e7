"""Check runs end to end: a live server with a GitHub App posts one check run per job to a fake
GitHub that validates every body against the Checks API's schema; annotations in batches of 50;
the Re-run buttons (check_run / check_suite rerequested) run the workflow again."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.server.helpers import config, deliver, finished, live_server, make_repo, settled
from tests.server.test_github_client import rsa_pair
from tests.server.test_webhook_bounds import _push
from vmrunner.reports.results import AnnotationResult
from vmrunner.server.checks import MAX_ANNOTATIONS, annotation_json
from vmrunner.server.config import GitHubApp
from vmrunner.server.testing import (
    CREATE_CHECK_RUN_SCHEMA,
    UPDATE_CHECK_RUN_SCHEMA,
    FakeGitHub,
)

WORKFLOW = (
    "name: CI\non: push\njobs:\n"
    "  lint:\n    runs-on: ubuntu-latest\n    steps:\n"
    "      - run: |\n"
    "          for i in $(seq 1 120); do echo \"::warning file=src/m$i.py,line=$i::w$i\"; done\n"
    "          echo '::error file=src/main.py,line=7,col=3,title=Bad::boom'\n"
    "          echo '::notice::no file here'\n"
    "          echo '# Lint report' >> $GITHUB_STEP_SUMMARY\n"
    "  test:\n    needs: lint\n    runs-on: ubuntu-latest\n    steps:\n"
    "      - run: echo testing\n"
    "      - run: exit 4\n"
)


def _app_config(root: Path, github: FakeGitHub, private: str, **settings: Any):
    return config(
        {"acme/widgets": root}, github_api_url=github.url,
        github_app=GitHubApp(github.app_id, private, "77"), **settings,
    )


async def _run(client, sha: str) -> str:
    delivery = str(uuid.uuid4())
    await deliver(client, "push", _push(sha), delivery)
    run_id = (await settled(client, delivery))["runs"][0]["run_id"]
    await finished(client, run_id)
    return str(run_id)


async def _checks_done(github: FakeGitHub, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        while sum(c.get("status") == "completed" for c in github.check_runs.values()) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return sorted(github.check_runs.values(), key=lambda c: c["id"])


async def test_one_check_run_per_job_with_conclusion_summary_and_annotations(
    tmp_path: Path,
) -> None:
    private, public = rsa_pair()
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW})
    async with FakeGitHub(app_id="4242", app_public_key=public).running() as github:
        async with live_server(_app_config(root, github, private)) as client:
            run_id = await _run(client, sha)
            lint, test = await _checks_done(github, 2)
        assert github.rejected == []  # every body fitted GitHub's schema
        assert not github.statuses()  # with an App: check runs, not statuses
        assert (lint["name"], lint["head_sha"], lint["external_id"]) == ("CI / lint", sha, run_id)
        assert (lint["conclusion"], test["conclusion"]) == ("success", "failure")
        assert lint["details_url"].endswith(f"/runs/{run_id}")
        assert "# Lint report" in lint["output"]["summary"]
        assert "| Step |" in lint["output"]["summary"]
        assert "exit 4" in test["output"]["summary"]
        # 120 warnings, one error and one notice without a file (ubuntu-latest, a standard
        # label, runs on the default machine type silently): 122, in ceil(122 / 50) requests.
        annotations = lint["annotations"]
        assert len(annotations) == 122
        posted = [c for c in github.check_run_calls() if c.path.endswith(f"/{lint['id']}")
                  or (c.method == "POST" and c.json["name"] == "CI / lint")]
        sizes = [len((c.json.get("output") or {}).get("annotations") or []) for c in posted]
        assert max(sizes) == MAX_ANNOTATIONS
        assert sum(sizes) == 122
        assert len([size for size in sizes if size]) == 3
        assert {"path": "src/main.py", "start_line": 7, "end_line": 7, "start_column": 3,
                "end_column": 3, "annotation_level": "failure", "message": "boom",
                "title": "Bad"} in annotations
        assert {"path": ".github/workflows/ci.yml", "start_line": 1, "end_line": 1,
                "annotation_level": "notice", "message": "no file here"} in annotations
        # Created when the job started: the first request of each check run was in progress.
        first = next(c for c in github.check_run_calls() if c.method == "POST")
        assert first.json["status"] == "in_progress"


async def test_rerequested_check_run_and_suite_run_again(tmp_path: Path) -> None:
    private, public = rsa_pair()
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": "name: CI\non: push\njobs:\n  a:\n"
                           "    runs-on: ubuntu-latest\n    steps:\n      - run: echo a\n"})
    fake = FakeGitHub(app_id="4242", app_public_key=public)
    async with fake.running() as github, live_server(_app_config(root, github, private)) as client:
        run_id = await _run(client, sha)
        await _checks_done(github, 1)
        repository = {"full_name": "acme/widgets"}
        for event, payload in (
            ("check_run", {"action": "rerequested", "repository": repository,
                           "check_run": {"id": 1, "external_id": run_id, "head_sha": sha}}),
            ("check_suite", {"action": "rerequested", "repository": repository,
                             "check_suite": {"id": 2, "head_sha": sha}}),
        ):
            delivery = str(uuid.uuid4())
            assert (await deliver(client, event, payload, delivery)).status_code == 202
            note = (await settled(client, delivery))["note"]
            assert note.startswith("re-ran as "), note
            await finished(client, note.removeprefix("re-ran as "))
        runs = (await client.get("/api/runs")).json()["runs"]
        assert len(runs) == 3
        ignored = str(uuid.uuid4())
        await deliver(client, "check_run", {
            "action": "rerequested", "repository": repository,
            "check_run": {"id": 3, "external_id": "nope", "head_sha": sha}}, ignored)
        assert (await settled(client, ignored))["status"] == "ignored"
        await _checks_done(github, 3)


async def test_statuses_and_comment_stay_available(tmp_path: Path) -> None:
    private, public = rsa_pair()
    root = tmp_path / "widgets"
    sha = make_repo(root, {".github/workflows/ci.yml": WORKFLOW})
    async with FakeGitHub(app_id="4242", app_public_key=public).running() as github:
        settings = _app_config(root, github, private, reports=("statuses", "checks"))
        async with live_server(settings) as client:
            await _run(client, sha)
            await _checks_done(github, 2)
        assert {s["state"] for s in github.statuses()} >= {"pending", "success", "failure"}


def test_a_token_cannot_write_check_runs_on_the_fake() -> None:
    """As on GitHub: without an App, the fake refuses check runs (so does our default)."""
    assert not config({}, github_token="t").reporting("checks")
    assert config({}, github_token="t").reporting("statuses")


@given(
    level=st.sampled_from(["error", "warning", "notice", "debug"]),
    file=st.sampled_from(["", "src/a.py", "deep/dir/b.c"]),
    line=st.integers(min_value=0, max_value=10**6),
    column=st.integers(min_value=0, max_value=500),
    message=st.text(min_size=0, max_size=50),
    title=st.text(max_size=20),
)
def test_every_annotation_fits_the_schema(
    level: str, file: str, line: int, column: int, message: str, title: str
) -> None:
    annotation = AnnotationResult("job", 0, level, message, 0.0, file, line, column, title)  # type: ignore[arg-type]
    body = {"name": "x", "head_sha": "a" * 40, "status": "completed", "conclusion": "success",
            "completed_at": "2026-01-01T00:00:00Z",
            "output": {"title": "t", "summary": "s",
                       "annotations": [annotation_json(annotation, ".github/workflows/ci.yml")]}}
    jsonschema.validate(body, CREATE_CHECK_RUN_SCHEMA)
    jsonschema.validate({k: v for k, v in body.items() if k not in ("head_sha",)},
                        UPDATE_CHECK_RUN_SCHEMA)


@pytest.mark.parametrize("body", [
    {"name": "x", "head_sha": "a" * 40, "status": "completed"},  # no conclusion
    {"name": "x", "head_sha": "abc"},  # not a sha
    {"name": "x", "head_sha": "a" * 40, "conclusion": "green", "status": "completed"},
    {"name": "x", "head_sha": "a" * 40, "output": {"title": "t", "summary": "s",
                                                  "annotations": [{"path": "a"}] * 51}},
])
def test_the_schema_refuses_what_github_refuses(body: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, CREATE_CHECK_RUN_SCHEMA)
