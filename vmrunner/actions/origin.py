"""Where a workflow or action file comes from: a repository on the host (``Origin``), and
reading one file of it without leaving it."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from vmrunner.errors import ConfigError
from vmrunner.repository import git


@dataclass(frozen=True, slots=True)
class Origin:
    """The repository a workflow file comes from: the folder ``root`` on the host (its files at
    ``commit`` when set, else as they are), and ``repository``/``ref`` when it was fetched."""

    root: str
    commit: str | None = None
    repository: str = ""
    ref: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.repository)


async def read_file(origin: Origin, path: str, what: str) -> str:
    """The text of ``path`` in ``origin``'s repository; ``ConfigError`` when it is not there."""
    if origin.commit:
        code, out, _ = await git("show", f"{origin.commit}:{path}", cwd=origin.root, check=False)
        if code != 0:
            raise ConfigError(f"{what}: no file {path} at commit {origin.commit}")
        return out.decode("utf-8", errors="replace")
    return await asyncio.to_thread(_read_inside, origin.root, path, what)


def _read_inside(root: str, path: str, what: str) -> str:
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, path))
    if not real.startswith(base.rstrip("/") + "/"):
        raise ConfigError(f"{what}: {path} leads out of the repository ({real}); refused")
    try:
        with open(real, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(
            f"{what}: no file {path} in the repository ({exc.strerror or exc})"
        ) from exc


def workflow_origin(path: str, repo_root: str, commit: str | None) -> Origin:
    """The repository a workflow file being run belongs to: at ``commit``, the repository at
    ``repo_root``; from the working tree, the folder that holds the file's ``.github/workflows``
    (``vmrunner run -W examples/.github/workflows`` calls ``./.github/workflows/x.yml`` of
    ``examples/``, as it would if that folder were the repository), else ``repo_root``."""
    if commit:
        return Origin(repo_root, commit)
    folder = os.path.dirname(os.path.realpath(path))
    if os.path.basename(folder) == "workflows" and os.path.basename(
        os.path.dirname(folder)
    ) == ".github":
        return Origin(os.path.dirname(os.path.dirname(folder)))
    return Origin(repo_root)
