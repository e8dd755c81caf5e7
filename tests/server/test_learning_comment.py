"""The pull request comment carries what vmrunner learned: a lesson after repeated identical
failures."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.server.helpers import commit, deliver, finished, live_server, settled
from tests.server.test_github_e2e import pull_payload, repo, server_config
from vmrunner.server.testing import FakeGitHub


async def test_a_repeated_failure_becomes_a_lesson_in_the_pull_request_comment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMRUNNER_LESSON_THRESHOLD", "2")
    root, first = repo(tmp_path)
    async with FakeGitHub().running() as github, live_server(server_config(root, github)) as client:
        opened = str(uuid.uuid4())
        await deliver(client, "pull_request", pull_payload("00-opened.json", first), opened)
        await finished(client, (await settled(client, opened))["runs"][0]["run_id"])
        second = commit(root, {"README.md": "hello again\n"})
        synchronized = str(uuid.uuid4())
        await deliver(
            client, "pull_request", pull_payload("22-synchronize.json", second), synchronized
        )
        await finished(client, (await settled(client, synchronized))["runs"][0]["run_id"])
    (comment,) = github.comments.values()
    assert "## Learned from earlier runs" in comment["body"]
    assert "`exit 3` failed 2 times the same way" in comment["body"]
