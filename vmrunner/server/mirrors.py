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
from pathlib import Path

from vmrunner.config import DEFAULT_WORKFLOWS_DIR, vmrunner_home
from vmrunner.errors import ConfigError
from vmrunner.runner.repository import git
from vmrunner.server.config import RepositoryConfig

ZERO_SHA = "0" * 40


def mirrors_root() -> Path:
    return vmrunner_home() / "mirrors"


class Mirrors:
    """``owner/name`` -> a bare mirror, cloned or fetched on demand (one git process per repository at a time)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or mirrors_root()
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, repo: RepositoryConfig) -> Path:
        return self.root / (repo.name.replace("/", "__").lower() + ".git")

    async def commit(self, repo: RepositoryConfig, want: str) -> tuple[Path, str]:
        """The mirror holding ``want`` (a sha or a ref) and the sha it names; fetches when needed."""
        path = self.path(repo)
        async with self._locks.setdefault(repo.name, asyncio.Lock()):
            if not await asyncio.to_thread(path.exists):
                await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")
                await asyncio.to_thread(shutil.rmtree, partial, True)
                await git("clone", "--quiet", "--mirror", _source(repo.url), str(partial), cwd=self.root)
                await asyncio.to_thread(os.replace, partial, path)
            sha = await _resolve(path, want)
            if sha is None:
                await git("fetch", "--quiet", "--prune", "origin", cwd=path)
                sha = await _resolve(path, want)
        if sha is None:
            raise ConfigError(f"{repo.name}: {want} is not in {repo.url}")
        return path, sha


def _source(url: str) -> str:
    """Local paths are cloned by absolute path; URLs as given."""
    return os.path.abspath(url) if os.path.isdir(url) else url


async def _resolve(path: Path, want: str) -> str | None:
    code, out, _ = await git("rev-parse", "--verify", "--quiet", f"{want}^{{commit}}", cwd=path, check=False)
    return out.decode().strip() if code == 0 else None


async def workflows_at(mirror: Path, sha: str, dest: Path) -> Path:
    """Extract ``.github/workflows`` of ``sha`` into ``dest``; the folder (empty when there is none)."""
    folder = dest / DEFAULT_WORKFLOWS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    code, out, _ = await git("archive", "--format=tar", sha, str(DEFAULT_WORKFLOWS_DIR), cwd=mirror, check=False)
    if code != 0:
        return folder  # the commit has no workflows
    try:
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            tar.extractall(dest, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"cannot read the workflows of {sha}: {exc}") from exc
    return folder
