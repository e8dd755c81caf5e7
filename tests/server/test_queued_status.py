"""How a fleet job's row reads as a commit status."""

from __future__ import annotations

import pytest

from vmrunner.fleet.queue import QueuedJob
from vmrunner.server.queued import job_status


def row(status: str, *, host: str | None = None, attempt: int = 1, reason: str = "") -> QueuedJob:
    return QueuedJob("r1", "build", status, attempt, host, {}, reason, ("linux",))


@pytest.mark.parametrize(
    ("job", "state", "words"),
    [
        (row("pending"), "pending", "waiting for the jobs it needs"),
        (row("matrix"), "pending", "matrix combinations running"),
        (row("queued", attempt=2), "pending", "queued (attempt 2)"),
        (row("running", host="h2"), "pending", "running on h2"),
        (row("success", host="h1"), "success", "success on h1"),
        (
            row("failure", host="h1", reason="step 2 failed"),
            "failure",
            "failure on h1: step 2 failed",
        ),
    ],
)
def test_each_fleet_job_state_becomes_a_commit_status(
    job: QueuedJob, state: str, words: str
) -> None:
    assert job_status(job) == (state, words)
