"""The ``github`` and ``runner`` contexts and GitHub's default environment variables.

Values follow GitHub's documentation for the contexts; fields GitHub fills from its own
services (ids of repositories and actors) are empty strings here; ``github.token`` is the
``GITHUB_TOKEN`` secret when one is given (masked like every secret).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping
from typing import Any

from vmrunner.repository import RepositoryInfo
from vmrunner.runner.options import RunOptions

_ARCH = {
    "x86_64": "X64", "amd64": "X64", "aarch64": "ARM64", "arm64": "ARM64", "armv7l": "ARM",
    "i686": "X86",
}


def _section(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    return value if isinstance(value, Mapping) else {}


def new_run_id() -> str:
    """A numeric run id, as GitHub's are (milliseconds since the epoch: unique enough here)."""
    return str(int(time.time() * 1000))


def event_refs(options: RunOptions, info: RepositoryInfo) -> tuple[str, str, str, str]:
    """(ref, sha, head_ref, base_ref) for the event, as GitHub sets them."""
    payload = options.payload
    head_ref = base_ref = ""
    ref = options.ref
    sha = options.sha or options.commit or ""
    if options.event_name.startswith("pull_request"):
        pull_request = _section(payload, "pull_request")
        head_ref = str(_section(pull_request, "head").get("ref") or "")
        base_ref = str(_section(pull_request, "base").get("ref") or "")
        number = payload.get("number") or pull_request.get("number")
        if not ref and number:
            ref = f"refs/pull/{number}/merge"
    if not ref and isinstance(payload.get("ref"), str):
        ref = str(payload["ref"])
    if not sha and isinstance(payload.get("after"), str):
        sha = str(payload["after"])
    return ref or info.ref, sha or info.sha, head_ref, base_ref


def ref_name_and_type(ref: str) -> tuple[str, str]:
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix):
            return ref[len(prefix):], kind
    if ref.startswith("refs/pull/"):
        return ref[len("refs/pull/"):], "branch"
    return ref, "branch" if ref else ""


def github_context(
    options: RunOptions, info: RepositoryInfo, *, workflow_name: str, workflow_file: str,
    run_id: str, job_id: str = "", workspace: str = "",
) -> dict[str, Any]:
    """The ``github`` context of one job (without the per-step ``action*`` fields)."""
    ref, sha, head_ref, base_ref = event_refs(options, info)
    repository = options.repository or info.repository
    owner = repository.split("/", 1)[0] if "/" in repository else repository
    ref_name, ref_type = ref_name_and_type(ref)
    server = options.server_url.rstrip("/")
    api = "https://api.github.com" if server == "https://github.com" else f"{server}/api/v3"
    return {
        "action": "",
        "action_path": "",
        "action_ref": "",
        "action_repository": "",
        "action_status": "",
        "actor": options.actor,
        "actor_id": "",
        "api_url": api,
        "base_ref": base_ref,
        "env": "",
        "event": dict(options.payload),
        "event_name": options.event_name,
        "event_path": "",
        "graphql_url": f"{api}/graphql"
        if server != "https://github.com"
        else "https://api.github.com/graphql",
        "head_ref": head_ref,
        "job": job_id,
        "output": "",
        "path": "",
        "ref": ref,
        "ref_name": ref_name,
        "ref_protected": False,
        "ref_type": ref_type,
        "repository": repository,
        "repository_id": "",
        "repository_owner": owner,
        "repository_owner_id": "",
        "repositoryUrl": f"{server.replace('https://', 'git://')}/{repository}.git"
        if repository
        else "",
        "retention_days": "90",
        "run_attempt": "1",
        "run_id": run_id,
        "run_number": str(options.run_number),
        "secret_source": "None",
        "server_url": server,
        "sha": sha,
        "state": "",
        "step_summary": "",
        "token": options.secrets.get("GITHUB_TOKEN", ""),
        "triggering_actor": options.actor,
        "workflow": workflow_name,
        "workflow_ref": f"{repository}/{workflow_file}@{ref}" if repository else "",
        "workflow_sha": sha,
        "workspace": workspace,
    }


def workspaces(work: str, repository: str, repo_root: str) -> tuple[str, str]:
    """(``runner.workspace``, ``github.workspace``): ``work/<repo>`` and ``work/<repo>/<repo>``,
    GitHub-hosted runners' layout (``<repo>``: the name in ``owner/name``, else the folder's)."""
    name = repository.rpartition("/")[2] or os.path.basename(os.path.abspath(repo_root))
    name = name if name not in ("", ".", "..") and "/" not in name else "repository"
    return f"{work}/{name}", f"{work}/{name}/{name}"


def runner_context(*, name: str, temp: str, tool_cache: str, workspace: str = "") -> dict[str, Any]:
    machine = platform.machine().lower()
    return {
        "name": name, "os": "Linux", "arch": _ARCH.get(machine, machine.upper()), "temp": temp,
        "tool_cache": tool_cache, "debug": "", "environment": "self-hosted",
        "workspace": workspace,
    }


def default_env(github: Mapping[str, Any], runner: Mapping[str, Any]) -> dict[str, str]:
    """GitHub's default environment variables (``CI``, ``GITHUB_*``, ``RUNNER_*``)."""
    env = {
        "CI": "true", "GITHUB_ACTIONS": "true", "RUNNER_OS": str(runner["os"]),
        "RUNNER_ARCH": str(runner["arch"]), "RUNNER_NAME": str(runner["name"]),
        "RUNNER_TEMP": str(runner["temp"]), "RUNNER_TOOL_CACHE": str(runner["tool_cache"]),
        "RUNNER_ENVIRONMENT": str(runner["environment"]),
        "RUNNER_WORKSPACE": str(runner.get("workspace", "")),
    }
    names = (
        "action", "action_path", "action_repository", "actor", "actor_id", "api_url", "base_ref",
        "env", "event_name", "event_path", "graphql_url", "head_ref", "job", "output", "path",
        "ref", "ref_name", "ref_type", "repository", "repository_id", "repository_owner",
        "repository_owner_id", "retention_days", "run_attempt", "run_id", "run_number",
        "server_url", "sha", "state", "step_summary", "triggering_actor", "workflow",
        "workflow_ref", "workflow_sha", "workspace",
    )  # fmt: skip
    for name in names:
        value = github.get(name, "")
        env[f"GITHUB_{name.upper()}"] = value if isinstance(value, str) else str(value).lower()
    env["GITHUB_REF_PROTECTED"] = "false"
    if github.get("action_ref"):
        env["GITHUB_ACTION_REF"] = str(github["action_ref"])
    return env
