"""GitHub's "Re-run" buttons on our check runs: ``check_run`` and ``check_suite`` webhooks with
the action ``rerequested``.

A check run carries our run id as its ``external_id`` (``checks.CheckSink``), so a re-requested
check run names the run to run again. A re-requested check suite names a commit: every
workflow's newest finished run at that commit runs again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vmrunner.server.state import ServerRun

EVENTS = frozenset({"check_run", "check_suite"})


def is_rerequest(event: str, payload: Mapping[str, Any]) -> bool:
    return event in EVENTS and payload.get("action") == "rerequested"


def runs_to_rerun(
    event: str, payload: Mapping[str, Any], repository: str, runs: Sequence[ServerRun]
) -> list[ServerRun] | str:
    """The runs to run again (from ``runs``, the server's, oldest first), or why there are none."""
    ours = [run for run in runs if run.repository.lower() == repository.lower()]
    if event == "check_run":
        check = payload.get("check_run")
        wanted = check.get("external_id") if isinstance(check, Mapping) else None
        found = [run for run in ours if run.run_id == wanted]
        return found or f"no run {wanted!r} of {repository} for this check run"
    suite = payload.get("check_suite")
    sha = suite.get("head_sha") if isinstance(suite, Mapping) else None
    newest: dict[str, ServerRun] = {}
    for run in ours:
        if run.sha == sha:
            newest[run.workflow_file] = run
    return list(newest.values()) or f"no run of {repository} at {str(sha)[:12]}"
