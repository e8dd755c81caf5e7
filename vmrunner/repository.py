"""The repository on the host: its commit and ref, its files as a tar stream, remote actions.

These are the few host-side processes the runner starts (``git``); every failure is mapped to
``ConfigError`` with what was attempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import tarfile
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError

GIT_TIMEOUT = 300.0
_REMOTE = re.compile(r"(?:[:/])([^/:]+)/([^/]+?)(?:\.git)?/?$")
#: A line of git's ``--progress``: ``Receiving objects:  45% (9/20)``.
_PROGRESS = re.compile(rb"^(?:remote: )?([A-Z][a-z]+(?: [a-z]+)*):\s+\d+% \((\d+)/(\d+)\)")

#: Told how a fetch goes: (phase, done, total), e.g. ("receiving objects", 9, 20).
FetchProgress = Callable[[str, int, int], None]
#: A repository's ``owner/name`` as GitHub allows it.
OWNER_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True, slots=True)
class RepositoryInfo:
    sha: str
    ref: str
    repository: str


@contextlib.asynccontextmanager
async def _running_git(
    args: tuple[str, ...], cwd: str | os.PathLike[str], stdout: int
) -> AsyncIterator[Process]:
    """git started with ``args``, given ``GIT_TIMEOUT`` to end; killed and reaped when the
    block is cut short (the timeout, a cancel, an error). git runs in a process group of its
    own, killed whole: a helper it started (``git-remote-https``, ``ssh``) would otherwise keep
    its pipes open, and asyncio waits for those before it reports git's exit."""
    try:
        process = await asyncio.create_subprocess_exec(
            "git", *args, cwd=cwd, stdout=stdout, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
    except OSError as exc:
        raise ConfigError(f"cannot run git {' '.join(args)}: {exc}") from exc
    try:
        async with asyncio.timeout(GIT_TIMEOUT):
            yield process
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # helpers too, even once git has exited
        await process.wait()
        raise


async def git(
    *args: str, cwd: str | os.PathLike[str], check: bool = True
) -> tuple[int, bytes, str]:
    """Run git on the host; returns (exit code, stdout, stderr)."""
    async with _running_git(args, cwd, asyncio.subprocess.PIPE) as process:
        out, err = await process.communicate()
    code = process.returncode or 0
    error = err.decode(errors="replace").strip()
    if check and code != 0:
        raise ConfigError(f"git {' '.join(args)} failed in {cwd}: {error or f'exit code {code}'}")
    return code, out, error


async def git_progress(
    *args: str, cwd: str | os.PathLike[str], progress: FetchProgress
) -> tuple[int, str]:
    """Run a git command that takes ``--progress`` (given here), telling ``progress`` each
    progress line as it comes; returns the exit code and stderr's other lines."""
    kept: list[bytes] = []

    def take(line: bytes) -> None:
        if found := _PROGRESS.match(line.strip()):
            progress(found[1].decode().lower(), int(found[2]), int(found[3]))
        elif line.strip():
            kept.append(line.strip())

    started = (*args[:1], "--progress", *args[1:])
    async with _running_git(started, cwd, asyncio.subprocess.DEVNULL) as process:
        assert process.stderr is not None
        pending = b""
        while chunk := await process.stderr.read(4096):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                take(line)
        take(pending)
        await process.wait()
    return process.returncode or 0, b"\n".join(kept).decode(errors="replace")


def local_name(root: str) -> str:
    """``owner/name`` of a repository with no ``origin``: actions (upload-artifact) need both
    parts, so the owner is ``local`` and the name the folder's."""
    return f"local/{os.path.basename(os.path.abspath(root)) or 'repository'}"


async def repository_info(root: str) -> RepositoryInfo:
    """HEAD's sha and ref (blanks where git knows nothing), and ``owner/name`` from ``origin``,
    as act takes it; ``local_name`` without one."""
    if not await asyncio.to_thread(os.path.exists, os.path.join(root, ".git")):
        # not a repository's top level: nothing to ask git
        return RepositoryInfo("", "", local_name(root))
    head, symbolic, remote = await asyncio.gather(
        git("rev-parse", "HEAD", cwd=root, check=False),
        git("symbolic-ref", "-q", "HEAD", cwd=root, check=False),
        git("remote", "get-url", "origin", cwd=root, check=False),
    )
    sha = head[1].decode().strip() if head[0] == 0 else ""
    ref = symbolic[1].decode().strip() if symbolic[0] == 0 else ""
    match = _REMOTE.search(remote[1].decode().strip()) if remote[0] == 0 else None
    repository = f"{match.group(1)}/{match.group(2)}" if match else local_name(root)
    return RepositoryInfo(sha, ref, repository)


async def git_toplevel(path: str) -> str | None:
    """The top-level folder of the git repository holding ``path``, if any."""
    is_folder = await asyncio.to_thread(os.path.isdir, path)
    folder = path if is_folder else os.path.dirname(os.path.abspath(path))  # noqa: ASYNC240
    code, out, _ = await git("rev-parse", "--show-toplevel", cwd=folder or ".", check=False)
    return out.decode().strip() or None if code == 0 else None


async def working_tree_tar(root: str) -> bytes:
    """The working tree of ``root`` as a tar stream, without ``.git``.

    In a git repository: the files git knows or would add (``.gitignore`` is honoured, as act
    does); elsewhere every file under ``root``.
    """
    entries: list[str] | None = None
    if await asyncio.to_thread(os.path.exists, os.path.join(root, ".git")):
        _, out, _ = await git(
            "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=root
        )
        names = out.decode(errors="surrogateescape").split("\0")
        entries = sorted({name for name in names if name})
    return await asyncio.to_thread(_tar_entries, root, entries)


def is_repository(root: str) -> bool:
    """Whether ``root`` is the top of a git repository (a working tree, or a bare one)."""
    return os.path.exists(os.path.join(root, ".git")) or all(
        os.path.exists(os.path.join(root, name)) for name in ("HEAD", "objects", "refs")
    )


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


def actions_cache() -> Path:
    return vmrunner_home() / "actions"


_SHA = re.compile(r"^[0-9a-f]{40}$")
_SAFE_NAME = re.compile(r"^[\w.-]+$")


def is_full_sha(ref: str) -> bool:
    """A full commit sha: immutable, so what is cached for it is good forever."""
    return bool(_SHA.match(ref))


def _check_ref(ref: str, what: str) -> None:
    if not ref or ref.startswith("-") or ".." in ref or any(c.isspace() for c in ref):
        raise ConfigError(f"invalid ref {ref!r} for {what}")


async def ls_remote(url: str, *patterns: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """``git ls-remote``: ref name -> sha (annotated tags peeled: ``refs/tags/x`` names the
    commit). One round trip to the server, whatever the size of the repository."""
    code, out, error = await git(
        *extra, "ls-remote", "--", url, *patterns, *[f"{p}^{{}}" for p in patterns],
        cwd=vmrunner_home_dir(), check=False,
    )
    if code != 0:
        raise ConfigError(f"cannot reach {url}: {error or f'git ls-remote exit code {code}'}")
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in out.decode(errors="replace").splitlines():
        sha, _, name = line.partition("\t")
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        elif name:
            refs[name] = sha
    return {**refs, **peeled}


def pick_ref(refs: dict[str, str], ref: str, *, branches_first: bool) -> tuple[str, str] | None:
    """(full ref name, sha) that ``ref`` names among ``refs``; None when it names none.

    ``refs/...`` is taken as is; a short name is a tag or a branch: git's own order (tags
    first) for actions, branches first for ``actions/checkout``, as it does.
    """
    if ref.startswith("refs/"):
        return (ref, refs[ref]) if ref in refs else None
    kinds = ("heads", "tags") if branches_first else ("tags", "heads")
    for kind in kinds:
        name = f"refs/{kind}/{ref}"
        if name in refs:
            return name, refs[name]
    return None


def vmrunner_home_dir() -> Path:
    """Where host-side git runs when no repository is involved (made if missing)."""
    home = vmrunner_home()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclass(frozen=True, slots=True)
class FetchedAction:
    """A repository's files at one commit in the actions cache (``path``), and what it took."""

    path: Path
    sha: str
    #: Something the user should hear (e.g. the server was unreachable, the cached commit was
    #: used); empty when all went as asked.
    note: str = ""


def _resolved_file(owner: str, repo: str, ref: str) -> Path:
    return actions_cache() / owner / repo / "refs" / ref.replace("/", "%2F")


async def fetch_action(
    base_url: str, owner: str, repo: str, ref: str, *, offline: bool = False,
    progress: FetchProgress | None = None,
) -> FetchedAction:
    """``owner/repo`` at ``ref`` in the actions cache, keyed by the commit ``ref`` names.

    A full sha is immutable: cached once, never asked again. Any other ref (``v4``, a branch)
    moves: it is resolved on every call with one ``git ls-remote`` and fetched only when it
    names a commit not cached yet. ``offline``: nothing touches the network; the commit the ref
    named last time is used, and a ref never fetched is an error naming it. ``progress``
    hears how a fetch goes.
    """
    if not all(_SAFE_NAME.match(part) for part in (owner, repo)):
        raise ConfigError(f"invalid action reference {owner}/{repo}@{ref}")
    _check_ref(ref, f"action {owner}/{repo}")
    what = f"{owner}/{repo}@{ref}"
    url = f"{base_url.rstrip('/')}/{owner}/{repo}"
    remembered = _resolved_file(owner, repo, ref)
    note = ""
    if is_full_sha(ref):
        sha = ref
    elif offline:
        sha = await asyncio.to_thread(_read_text, remembered)
        if not sha:
            raise ConfigError(
                f"action {what} is not in the cache and --offline forbids fetching it "
                f"(run once without --offline, or map it with --local-repository)"
            )
    else:
        try:
            found = pick_ref(await ls_remote(url, ref), ref, branches_first=False)
        except ConfigError as exc:
            sha = await asyncio.to_thread(_read_text, remembered)
            if not sha:
                raise ConfigError(f"cannot fetch action {what} from {url}: {exc}") from exc
            found = None
            note = f"{exc}; using the cached commit {sha[:12]} of action {what}"
        else:
            if found is None:
                raise ConfigError(f"cannot fetch action {what} from {url}: no such tag or branch")
            sha = found[1]
    target = actions_cache() / owner / repo / sha
    if not (target / ".vmrunner-complete").exists():
        if offline:
            raise ConfigError(
                f"action {what} is not in the cache and --offline forbids fetching it"
            )
        await _fetch_commit(url, sha, target, what, progress)
    if not is_full_sha(ref):
        await asyncio.to_thread(_write_text, remembered, sha)
    return FetchedAction(target, sha, note)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.write_text(text)
    partial.replace(path)


async def _fetch_commit(
    url: str, sha: str, target: Path, what: str, progress: FetchProgress | None
) -> None:
    """One commit of ``url`` (its files and a one-commit history) into ``target``, atomically."""
    # unique per call: jobs of one process may fetch the same commit at once
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir(parents=True)
    try:
        await git("init", "--quiet", cwd=partial)
        code, error = await git_progress(
            "fetch", "--no-tags", "--depth", "1", "--", url, sha, cwd=partial,
            progress=progress or (lambda phase, done, total: None),
        )
        if code == 0:
            code, _, error = await git(
                "checkout", "--quiet", "--detach", "FETCH_HEAD", cwd=partial, check=False
            )
        if code != 0:
            raise ConfigError(f"cannot fetch action {what} from {url}: {error or 'git failed'}")
        (partial / ".vmrunner-complete").write_text(sha)
        try:
            partial.rename(target)
        except OSError:
            if not (target / ".vmrunner-complete").exists():
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
