"""The repository on the host: its commit and ref, its files as a tar stream, remote actions.

These are the few host-side processes the runner starts (``git``); every failure is mapped to
``ConfigError`` with what was attempted.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError

GIT_TIMEOUT = 300.0
_REMOTE = re.compile(r"(?:[:/])([^/:]+)/([^/]+?)(?:\.git)?/?$")


@dataclass(frozen=True, slots=True)
class RepositoryInfo:
    sha: str
    ref: str
    repository: str


async def git(
    *args: str, cwd: str | os.PathLike[str], check: bool = True
) -> tuple[int, bytes, str]:
    """Run git on the host; returns (exit code, stdout, stderr)."""
    try:
        process = await asyncio.create_subprocess_exec(
            "git", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        raise ConfigError(f"cannot run git {' '.join(args)}: {exc}") from exc
    try:
        async with asyncio.timeout(GIT_TIMEOUT):
            out, err = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    code = process.returncode or 0
    error = err.decode(errors="replace").strip()
    if check and code != 0:
        raise ConfigError(f"git {' '.join(args)} failed in {cwd}: {error or f'exit code {code}'}")
    return code, out, error


async def repository_info(root: str) -> RepositoryInfo:
    """HEAD's sha and ref and ``owner/name`` from ``origin``; blanks where git knows nothing."""
    if not await asyncio.to_thread(os.path.exists, os.path.join(root, ".git")):
        return RepositoryInfo("", "", "")  # not a repository's top level: nothing to ask git
    head, symbolic, remote = await asyncio.gather(
        git("rev-parse", "HEAD", cwd=root, check=False),
        git("symbolic-ref", "-q", "HEAD", cwd=root, check=False),
        git("remote", "get-url", "origin", cwd=root, check=False),
    )
    sha = head[1].decode().strip() if head[0] == 0 else ""
    ref = symbolic[1].decode().strip() if symbolic[0] == 0 else ""
    match = _REMOTE.search(remote[1].decode().strip()) if remote[0] == 0 else None
    repository = f"{match.group(1)}/{match.group(2)}" if match else ""
    return RepositoryInfo(sha, ref, repository)


async def git_toplevel(path: str) -> str | None:
    """The top-level folder of the git repository holding ``path``, if any."""
    is_folder = await asyncio.to_thread(os.path.isdir, path)
    folder = path if is_folder else os.path.dirname(os.path.abspath(path))  # noqa: ASYNC240
    code, out, _ = await git("rev-parse", "--show-toplevel", cwd=folder or ".", check=False)
    return out.decode().strip() or None if code == 0 else None


async def working_tree_tar(root: str) -> bytes:
    """The working tree of ``root`` as a tar stream.

    In a git repository: the files git knows or would add (``.gitignore`` is honoured, as act
    does) and ``.git``; elsewhere every file under ``root``.
    """
    entries: list[str] | None = None
    if await asyncio.to_thread(os.path.exists, os.path.join(root, ".git")):
        _, out, _ = await git(
            "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=root
        )
        entries = [
            ".git",
            *sorted({name for name in out.decode(errors="surrogateescape").split("\0") if name}),
        ]
    return await asyncio.to_thread(_tar_entries, root, entries)


def _tar_entries(root: str, entries: list[str] | None) -> bytes:
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for entry in entries if entries is not None else sorted(os.listdir(root)):
                path = os.path.join(root, entry)
                if os.path.lexists(path):  # a tracked file may be deleted in the working tree
                    tar.add(path, arcname=entry)
    except OSError as exc:
        raise ConfigError(f"cannot read the repository at {root}: {exc}") from exc
    return buffer.getvalue()


async def commit_tar(root: str, commit: str) -> bytes:
    """The files of ``commit`` as a tar stream (``git archive``)."""
    _, out, _ = await git("archive", "--format=tar", commit, cwd=root)
    return out


def actions_cache() -> Path:
    return vmrunner_home() / "actions"


#: One fetch at a time per clone in the cache (per event loop): parallel jobs share it.
_FETCHING: dict[tuple[int, Path], asyncio.Lock] = {}


async def fetch_action(base_url: str, owner: str, repo: str, ref: str) -> Path:
    """A clone of ``owner/repo`` at ``ref`` in the actions cache (cloned once per ref, also
    when several jobs ask for it at once)."""
    safe = re.compile(r"^[\w.-]+$")
    if (
        not all(safe.match(part) for part in (owner, repo))
        or not ref
        or ref.startswith("-")
        or ".." in ref
    ):
        raise ConfigError(f"invalid action reference {owner}/{repo}@{ref}")
    target = actions_cache() / owner / repo / ref.replace("/", "%2F")
    key = (id(asyncio.get_running_loop()), target)
    async with _FETCHING.setdefault(key, asyncio.Lock()):
        return await _clone(base_url, owner, repo, ref, target)


async def _clone(base_url: str, owner: str, repo: str, ref: str, target: Path) -> Path:
    if (target / ".vmrunner-complete").exists():
        return target
    url = f"{base_url.rstrip('/')}/{owner}/{repo}"
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    partial.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)
    code, _, error = await git(
        "clone", "--quiet", "--depth", "1", "--branch", ref, url, str(partial), cwd=partial.parent,
        check=False,
    )
    if code != 0:  # maybe a commit sha: full clone, then check it out
        code, _, error = await git(
            "clone", "--quiet", url, str(partial), cwd=partial.parent, check=False
        )
        if code == 0:
            code, _, error = await git(
                "checkout", "--quiet", "--detach", ref, cwd=partial, check=False
            )
    if code != 0:
        raise ConfigError(
            f"cannot fetch action {owner}/{repo}@{ref} from {url}: {error or 'git failed'}"
        )
    (partial / ".vmrunner-complete").write_text(ref)
    try:
        partial.rename(target)
    except OSError:
        if not (target / ".vmrunner-complete").exists():
            raise
    return target
