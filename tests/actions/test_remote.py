"""Remote actions: a moving ref re-resolved on every run, a sha cached for good, ``--offline``
and ``--local-repository`` (act's flags), with real git repositories served from folders."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runner.engine import run
from vmrunner.actions.sources import (
    ActionError,
    Sources,
    parse_local_repositories,
    repository_folder,
)
from vmrunner.errors import ConfigError
from vmrunner.reports.events import Annotation, Progress

WORKFLOW = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: {uses}
"""


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )
    return done.stdout.strip()


def action(says: str) -> str:
    return f"runs:\n  using: composite\n  steps:\n    - run: echo {says}\n      shell: bash\n"


class Server:
    """``octo/greet`` on a git server (a folder of bare repositories), pushed to from a clone."""

    def __init__(self, root: Path) -> None:
        self.root = root / "server"
        self.work = root / "work"
        self.bare = self.root / "octo" / "greet"
        self.bare.mkdir(parents=True)
        git("init", "-q", "--bare", "-b", "main", cwd=self.bare)
        git("clone", "-q", str(self.bare), str(self.work), cwd=root)

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def release(self, says: str, tag: str = "v1") -> str:
        """Commit an action that echoes ``says``, move ``tag`` to it, push; the commit's sha."""
        (self.work / "action.yml").write_text(action(says))
        git("add", ".", cwd=self.work)
        git("commit", "-q", "-m", says, cwd=self.work)
        git("tag", "-f", "-a", tag, "-m", says, cwd=self.work)
        git("push", "-q", "-f", "origin", "main", tag, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def errors(ran: object) -> list[str]:
    return [a.message for a in ran.of(Annotation) if a.level == "error"]  # type: ignore[attr-defined]


async def test_a_moving_tag_is_resolved_again_and_a_sha_is_cached_for_good(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path)
    first = server.release("first")
    ran = await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url)
    assert ran.logs("a") == ["first"]
    server.release("second")  # v1 moves, as major tags do
    ran = await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url)
    assert ran.logs("a") == ["second"]
    ran = await run(WORKFLOW.format(uses="octo/greet@main"), actions_url=server.url)
    assert ran.logs("a") == ["second"]
    ran = await run(WORKFLOW.format(uses=f"octo/greet@{first}"), actions_url=server.url)
    assert ran.logs("a") == ["first"]
    shutil.rmtree(server.root)  # the server is gone: a sha needs no network
    ran = await run(WORKFLOW.format(uses=f"octo/greet@{first}"), actions_url=server.url)
    assert ran.logs("a") == ["first"]
    # a moving ref that cannot be resolved falls back on the commit it named last, and says so
    ran = await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url)
    assert ran.logs("a") == ["second"]
    notes = [a.message for a in ran.of(Annotation) if a.level == "warning"]
    assert any("using the cached commit" in n and "octo/greet@v1" in n for n in notes), notes


async def test_offline_uses_only_the_cache(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.release("cached")
    ran = await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url, offline=True)
    assert ran.result("a") == "failure"
    assert errors(ran) == [
        "action octo/greet@v1 is not in the cache and --offline forbids fetching it (run once "
        "without --offline, or map it with --local-repository)"
    ]
    await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url)
    server.release("newer")  # offline never asks the server: the cached commit is used
    ran = await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url, offline=True)
    assert ran.logs("a") == ["cached"]
    assert not [a for a in ran.of(Annotation) if a.level == "warning"]


async def test_local_repository_replaces_an_action(tmp_path: Path) -> None:
    """``actions/upload-artifact@v4`` (and a path inside a repository) from local folders,
    used as they are (uncommitted, no git), with the network unreachable."""
    local = tmp_path / "upload-artifact"
    local.mkdir()
    (local / "action.yml").write_text(action("local upload-artifact"))
    tools = tmp_path / "tools"
    (tools / "lint").mkdir(parents=True)
    (tools / "lint" / "action.yml").write_text(action("local lint"))
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/upload-artifact@v4
      - uses: Octo/Tools/lint@main
      - if: always()
        uses: actions/upload-artifact@v3
""",
        actions_url=(tmp_path / "nowhere").as_uri(),
        local_repositories=parse_local_repositories(
            [f"actions/upload-artifact@v4={local}", f"octo/tools@main={tools}"]
        ),
    )
    assert ran.logs("a") == ["local upload-artifact", "local lint"]
    assert [s.outcome for s in ran.steps("a")] == ["success", "success", "failure"]
    assert "cannot fetch action actions/upload-artifact@v3" in errors(ran)[0]


async def test_repository_folder_serves_reusable_workflows_too(tmp_path: Path) -> None:
    server = Server(tmp_path)
    sha = server.release("x")
    found = await repository_folder("octo", "greet", "v1", Sources(server.url))
    assert (found.sha, found.local) == (sha, False)
    assert (found.path / "action.yml").read_text() == action("x")
    sources = Sources(server.url, local={f"{server.url}/octo/greet@v1": str(tmp_path)})
    assert (await repository_folder("octo", "greet", "v1", sources)).path == tmp_path
    with pytest.raises(ActionError, match="octo/greet@v2 is not in the cache"):
        await repository_folder("octo", "greet", "v2", Sources(server.url, offline=True))


def test_local_repository_values_are_checked(tmp_path: Path) -> None:
    assert parse_local_repositories([f"a/b@v1={tmp_path}"]) == {"a/b@v1": str(tmp_path)}
    for bad, message in (
        ("a/b@v1", "expected OWNER/REPO@REF=PATH"),
        (f"a/b={tmp_path}", "expected OWNER/REPO@REF=PATH"),
        (f"ab@v1={tmp_path}", "is not OWNER/REPO"),
        (f"a/b@v1={tmp_path / 'missing'}", "is not a folder"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_local_repositories([bad])


async def test_jobs_fetching_the_same_action_at_once_share_one_copy(tmp_path: Path) -> None:
    server = Server(tmp_path)
    sha = server.release("x")
    found = await asyncio.gather(
        *[repository_folder("octo", "greet", ref, Sources(server.url)) for ref in ("v1",) * 4]
    )
    assert {f.path for f in found} == {found[0].path}
    assert {f.sha for f in found} == {sha}
    assert sorted(p.name for p in found[0].path.parent.iterdir()) == [sha, "refs"]


async def test_fetching_an_action_reports_its_progress_for_a_bar(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.release("first")
    ran = await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url)
    assert ran.logs("a") == ["first"]
    reports = ran.of(Progress)
    assert reports, "no progress was reported"
    moving, last = reports[:-1], reports[-1]
    assert {p.job_key for p in reports} == {"a"}
    assert all(p.task.startswith("fetching octo/greet@v1: ") and not p.finished for p in moving)
    # git's phases depend on the pack's size (unpacking a small one, indexing a big one)
    assert any(p.task.endswith(" objects") and p.done == p.total for p in moving)
    assert last.finished
    assert last.task == "fetching octo/greet@v1"
    # cached now: nothing fetched, so nothing to report
    again = await run(WORKFLOW.format(uses="octo/greet@v1"), actions_url=server.url)
    assert again.logs("a") == ["first"]
    assert again.of(Progress) == []
