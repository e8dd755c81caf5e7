"""Local mirrors of the configured repositories, and the workflows of one commit.

Each repository is cloned once (``git clone --mirror``) under ``VMRUNNER_HOME/mirrors`` and
fetched again only when an event names a commit the mirror lacks. Runs check their commit out
of the mirror (``RunOptions.commit`` with ``repo_root`` = the mirror: ``git archive``), and the
workflows that decide whether an event runs are read from that same commit, never from a
working tree on the server's disk.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vmrunner.config import DEFAULT_WORKFLOWS_DIR, vmrunner_home
from vmrunner.errors import ConfigError, WorkflowError
from vmrunner.repository import git
from vmrunner.server.config import RepositoryConfig
from vmrunner.workflow.loader import WORKFLOW_SUFFIXES, load_workflow_text
from vmrunner.workflow.models import Workflow

ZERO_SHA = "0" * 40
#: Commits whose workflows are kept in memory / full shas known to be in a mirror.
CACHED_COMMITS = 64
KNOWN_COMMITS = 100_000


def mirrors_root() -> Path:
    return vmrunner_home() / "mirrors"


class Mirrors:
    """``owner/name`` -> a bare mirror, cloned or fetched on demand (one git process per repository
    at a time)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or mirrors_root()
        self._locks: dict[str, asyncio.Lock] = {}
        self._workflows: dict[tuple[str, str], CommitWorkflows] = {}
        self._known: set[tuple[str, str]] = set()

    async def workflows(self, mirror: Path, sha: str) -> CommitWorkflows:
        """``read_workflows``, remembered: a commit's files never change."""
        key = (str(mirror), sha)
        found = self._workflows.get(key)
        if found is None:
            found = self._workflows[key] = await read_workflows(mirror, sha)
            while len(self._workflows) > CACHED_COMMITS:
                self._workflows.pop(next(iter(self._workflows)))
        return found

    def path(self, repo: RepositoryConfig) -> Path:
        return self.root / (repo.name.replace("/", "__").lower() + ".git")

    async def commit(self, repo: RepositoryConfig, want: str) -> tuple[Path, str]:
        """The mirror holding ``want`` (a sha or a ref) and the sha it names; fetches when
        needed."""
        path = self.path(repo)
        if (repo.name, want) in self._known:
            return path, want  # a full sha seen before: commits never change
        async with self._locks.setdefault(repo.name, asyncio.Lock()):
            if not await asyncio.to_thread(path.exists):
                await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")
                await asyncio.to_thread(shutil.rmtree, partial, True)
                await git(
                    "clone", "--quiet", "--mirror", _source(repo.url), str(partial), cwd=self.root
                )
                await asyncio.to_thread(os.replace, partial, path)
            sha = await _resolve(path, want)
            if sha is None:
                await git("fetch", "--quiet", "--prune", "origin", cwd=path)
                sha = await _resolve(path, want)
        if sha is None:
            raise ConfigError(f"{repo.name}: {want} is not in {repo.url}")
        if len(self._known) < KNOWN_COMMITS:
            self._known.add((repo.name, sha))
        return path, sha


def _source(url: str) -> str:
    """Local paths are cloned by absolute path; URLs as given."""
    return os.path.abspath(url) if os.path.isdir(url) else url


async def _resolve(path: Path, want: str) -> str | None:
    code, out, _ = await git(
        "rev-parse", "--verify", "--quiet", f"{want}^{{commit}}", cwd=path, check=False
    )
    return out.decode().strip() if code == 0 else None


@dataclass(frozen=True, slots=True)
class CommitWorkflows:
    """The workflows of one commit, by path (``.github/workflows/ci.yml``), and the invalid ones'
    problems."""

    workflows: Mapping[str, Workflow]
    problems: tuple[str, ...]


async def read_workflows(mirror: Path, sha: str) -> CommitWorkflows:
    """The workflow files directly in ``.github/workflows`` of ``sha`` (``git archive``), loaded."""
    code, out, _ = await git(
        "archive", "--format=tar", sha, str(DEFAULT_WORKFLOWS_DIR), cwd=mirror, check=False
    )
    if code != 0:
        return CommitWorkflows({}, ())  # the commit has no workflows
    return await asyncio.to_thread(_load_tar, out)


def _load_tar(data: bytes) -> CommitWorkflows:
    workflows: dict[str, Workflow] = {}
    problems: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                path = PurePosixPath(member.name)
                if (
                    not member.isfile()
                    or path.parent != PurePosixPath(DEFAULT_WORKFLOWS_DIR)
                    or not path.name.endswith(WORKFLOW_SUFFIXES)
                ):
                    continue
                handle = tar.extractfile(member)
                text = handle.read().decode("utf-8", errors="replace") if handle else ""
                try:
                    workflows[str(path)] = load_workflow_text(text, str(path))
                except WorkflowError as exc:
                    problems += [str(d) for d in exc.diagnostics]
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"cannot read the workflows of a commit: {exc}") from exc
    return CommitWorkflows(workflows, tuple(problems))
