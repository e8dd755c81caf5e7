"""``actions/checkout``, done natively, with its inputs honoured as the action does.

The repository is prepared on the host with git: a fresh repository whose ``origin`` is the
repository's address on the server (``https://github.com/OWNER/REPO``), holding the commits
``fetch-depth`` asks for (1 by default, everything with tags for 0), the ref checked out as
the action does (a branch as a local branch tracking ``origin``, a tag or a sha detached),
``submodules`` and ``sparse-checkout`` applied. It goes into the machine as one tar stream, so
the machine needs neither git nor a route to the source.

Where the commits come from:
- the job's own repository is the one on the host (``repo_root``): its ``HEAD`` commit with the
  working tree on top (uncommitted and untracked files included, ``.gitignore`` honoured, as
  act does), or ``RunOptions.commit``, or the ``ref`` asked for; never the host's ``.git`` itself
  (its config may hold credentials);
- another repository (``repository:``) from a local mirror the user maps
  (``--repository-mirror OWNER/REPO=PATH``), else from the server (``server_url``/OWNER/REPO)
  through git, with the ``token`` when one is given; ``--offline`` allows mirrors only.
- submodules as GitHub resolves them (relative URLs against the repository's address on the
  server), then through the same mirrors or the server; a submodule URL naming a path on the
  host is refused, so a repository cannot pull a host folder into the job.

Inputs that cannot be honoured here (``lfs``, ``filter``, ``ssh-*``) are warnings naming them,
never silently ignored.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlparse

from vmrunner.actions.sources import ActionError
from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError, MachineError
from vmrunner.machines.base import Machine
from vmrunner.repository import (
    OWNER_NAME,
    git,
    is_full_sha,
    is_repository,
    ls_remote,
    pick_ref,
    working_tree_tar,
)

#: The inputs of actions/checkout v4 (``action.yml``), in its order.
INPUTS = (
    "repository", "ref", "token", "ssh-key", "ssh-known-hosts", "ssh-strict", "ssh-user",
    "persist-credentials", "path", "clean", "filter", "sparse-checkout",
    "sparse-checkout-cone-mode", "fetch-depth", "fetch-tags", "show-progress", "lfs",
    "submodules", "set-safe-directory", "github-server-url",
)  # fmt: skip
#: Inputs accepted but not honoured: a warning names them when they ask for something.
_NOT_HONOURED = {
    "lfs": "Git LFS files are not fetched (their pointer files are checked out)",
    "filter": "partial clone filters are not applied (the whole tree is fetched)",
    "ssh-key": "SSH keys are not used: the repository is fetched by the runner",
    "ssh-known-hosts": "SSH known hosts are not used",
    "ssh-user": "SSH is not used",
}
_GITHUB = re.compile(r"^(?:https?://github\.com/|git@github\.com:|ssh://git@github\.com/)"
                     r"([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
_TAGS = "+refs/tags/*:refs/tags/*"
_ALLOW_FILE = ("-c", "protocol.file.allow=always")


class CheckoutError(ActionError):
    """actions/checkout cannot do what its inputs ask (the step fails with this reason)."""


@dataclass(frozen=True, slots=True)
class CheckoutSettings:
    """What a checkout needs of the run."""

    repo_root: str
    #: ``github.repository`` (``owner/name``), ``github.ref``, and the server's address.
    repository: str
    server_url: str
    event_ref: str = ""
    #: Check this commit of ``repo_root`` out instead of its working tree.
    commit: str | None = None
    #: ``owner/repo`` -> a local git repository to fetch it from (``--repository-mirror``).
    mirrors: Mapping[str, str] = field(default_factory=dict)
    offline: bool = False
    #: ``github.token`` (the ``GITHUB_TOKEN`` secret), the ``token`` input's default.
    token: str = ""


def parse_mirrors(values: Sequence[str]) -> dict[str, str]:
    """``--repository-mirror OWNER/REPO=PATH`` values as owner/repo -> absolute path of a git
    repository (bare or not); ``ConfigError`` saying what is wrong."""
    mirrors: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not OWNER_NAME.match(name) or not path:
            raise ConfigError(f"--repository-mirror: expected OWNER/REPO=PATH, got {value!r}")
        if not is_repository(path):
            raise ConfigError(f"--repository-mirror {name}: {path} is not a git repository")
        mirrors[name] = os.path.abspath(path)
    return mirrors


@dataclass(slots=True)
class CheckoutRequest:
    """The inputs, read and checked."""

    repository: str
    own: bool
    ref: str
    depth: int
    fetch_tags: bool
    target: str
    submodules: str
    token: str
    persist: bool
    clean: bool
    sparse: tuple[str, ...]
    cone: bool
    server: str
    given: frozenset[str]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CheckedOut:
    """What a checkout did: for the step's log, its warnings and the values to mask."""

    description: str
    warnings: tuple[str, ...]
    secrets: tuple[str, ...]


def _flag(inputs: Mapping[str, str], name: str, default: bool) -> bool:
    value = inputs.get(name, "").strip().lower()
    if not value:
        return default
    if value not in ("true", "false"):
        raise CheckoutError(
            f"actions/checkout: input '{name}' must be true or false, got {value!r}"
        )
    return value == "true"


def read_inputs(
    inputs: Mapping[str, str], settings: CheckoutSettings, workspace: str
) -> CheckoutRequest:
    """The checkout's inputs as a request; ``CheckoutError`` for values it cannot take."""
    given = frozenset(k for k, v in inputs.items() if v.strip())
    warnings = []
    unexpected = sorted(set(inputs) - set(INPUTS))
    if unexpected:
        warnings.append(
            f"actions/checkout: unexpected input(s) {', '.join(repr(n) for n in unexpected)}, "
            f"valid inputs are {list(INPUTS)}"
        )
    repository = inputs.get("repository", "").strip() or settings.repository
    own = repository.lower() == settings.repository.lower() or not repository
    if not own and not OWNER_NAME.match(repository):
        raise CheckoutError(
            f"actions/checkout: repository '{repository}' is not of the form owner/name"
        )
    raw_depth = inputs.get("fetch-depth", "").strip() or "1"
    try:
        depth = int(raw_depth)
    except ValueError:
        depth = -1
    if depth < 0:
        raise CheckoutError(
            f"actions/checkout: fetch-depth must be a whole number (0: all history), got "
            f"{raw_depth!r}"
        )
    submodules = inputs.get("submodules", "").strip().lower() or "false"
    if submodules not in ("true", "false", "recursive"):
        raise CheckoutError(
            f"actions/checkout: submodules must be true, false or recursive, got {submodules!r}"
        )
    for name in ("ssh-strict", "set-safe-directory", "show-progress"):
        _flag(inputs, name, True)  # accepted, nothing to do here; a bad value is still an error
    if _flag(inputs, "lfs", False):
        warnings.append(f"actions/checkout: input 'lfs' is not honoured: {_NOT_HONOURED['lfs']}")
    for name in ("filter", "ssh-key", "ssh-known-hosts", "ssh-user"):
        if name in given:
            warnings.append(
                f"actions/checkout: input '{name}' is not honoured: {_NOT_HONOURED[name]}"
            )
    sparse = tuple(
        line.strip() for line in inputs.get("sparse-checkout", "").splitlines() if line.strip()
    )
    token = inputs["token"] if "token" in given else settings.token
    return CheckoutRequest(
        repository=repository, own=own, ref=inputs.get("ref", "").strip(), depth=depth,
        fetch_tags=_flag(inputs, "fetch-tags", False),
        target=checkout_target(inputs.get("path", ""), workspace),
        submodules="" if submodules == "false" else submodules, token=token.strip(),
        persist=_flag(inputs, "persist-credentials", True), clean=_flag(inputs, "clean", True),
        sparse=sparse, cone=_flag(inputs, "sparse-checkout-cone-mode", True),
        server=(inputs.get("github-server-url", "").strip() or settings.server_url).rstrip("/"),
        given=given, warnings=warnings,
    )


def checkout_target(path: str, workspace: str) -> str:
    """Where the repository goes: ``path`` under the workspace (relative, or absolute inside
    it); a path leaving the workspace is an error, as in the action."""
    path = path.strip()
    joined = PurePosixPath(workspace, path) if path else PurePosixPath(workspace)
    normal = os.path.normpath(joined.as_posix())
    if normal != workspace and not normal.startswith(workspace.rstrip("/") + "/"):
        raise CheckoutError(
            f"actions/checkout: repository path '{path}' is not under '{workspace}'"
        )
    return normal


def _basic(token: str) -> str:
    return base64.b64encode(f"x-access-token:{token}".encode()).decode()


class _Builder:
    """Builds the repository for one checkout in a host folder."""

    def __init__(self, request: CheckoutRequest, settings: CheckoutSettings, folder: Path):
        self.request = request
        self.settings = settings
        self.repo = folder / "repo"
        self.notes: list[str] = []

    def auth(self, url: str) -> tuple[str, ...]:
        token = self.request.token
        if not token or not url.startswith(("https://", "http://")):
            return ()
        return ("-c", f"http.extraheader=AUTHORIZATION: basic {_basic(token)}")

    def source_of(self, owner: str, name: str, what: str) -> str:
        """The URL to fetch ``owner/name`` from: a mapped mirror, else the server."""
        for key, path in self.settings.mirrors.items():
            if key.lower() == f"{owner}/{name}".lower():
                return Path(os.path.abspath(path)).as_uri()
        if self.settings.offline:
            raise CheckoutError(
                f"actions/checkout: {what} {owner}/{name} has no mirror (--repository-mirror) and "
                f"--offline forbids fetching it from {self.request.server}"
            )
        return f"{self.request.server}/{owner}/{name}"

    async def resolve(self, source: str, ref: str, what: str) -> tuple[str, str]:
        """(full ref name or '', sha) of ``ref`` at ``source``; its default branch for ''."""
        if is_full_sha(ref):
            return "", ref
        extra = self.auth(source)
        try:
            if not ref:
                code, out, error = await git(
                    *extra, "ls-remote", "--symref", "--", source, "HEAD", cwd=self.repo.parent,
                    check=False,
                )
                if code != 0:
                    raise ConfigError(error or f"git ls-remote exit code {code}")
                for line in out.decode(errors="replace").splitlines():
                    if line.startswith("ref: ") and line.endswith("\tHEAD"):
                        ref = line[5:].split("\t", 1)[0]
                        break
                else:
                    raise CheckoutError(f"actions/checkout: {what} has no default branch")
            refs = await ls_remote(source, ref, extra=extra)
        except CheckoutError:
            raise
        except ConfigError as exc:
            raise CheckoutError(f"actions/checkout: cannot reach {what}: {exc}") from exc
        found = pick_ref(refs, ref, branches_first=True)
        if found is None:
            raise CheckoutError(
                f"actions/checkout: a branch or tag with the name '{ref}' could not be found in "
                f"{what}"
            )
        return found

    async def fetch(
        self, source: str, full_ref: str, sha: str, display: str, *, files: bool = True
    ) -> None:
        """Init the repository, fetch as ``fetch-depth`` says, check the ref out (without
        writing its files when ``files`` is false: they will come from the working tree)."""
        request = self.request
        self.repo.mkdir()
        await git("init", "--quiet", cwd=self.repo)
        await git("remote", "add", "origin", display, cwd=self.repo)
        branch = full_ref.removeprefix("refs/heads/") if full_ref.startswith("refs/heads/") else ""
        if full_ref.startswith("refs/tags/"):
            wanted = [f"+{full_ref}:{full_ref}"]
        elif branch:
            wanted = [f"+{sha}:refs/remotes/origin/{branch}"]
        else:
            wanted = [sha]
        refspecs = list(wanted)
        if request.depth == 0:  # every branch and tag; the commit itself if none names it
            refspecs = ["+refs/heads/*:refs/remotes/origin/*", _TAGS]
            refspecs += [] if full_ref.startswith("refs/tags/") else [sha]
        elif request.fetch_tags:
            refspecs.append(_TAGS)
        depth = ("--depth", str(request.depth)) if request.depth else ()
        code, _, error = await git(
            *self.auth(source), *_ALLOW_FILE, "fetch", "--quiet", "--no-tags", *depth, "--",
            source, *refspecs, cwd=self.repo, check=False,
        )
        if code != 0:
            raise CheckoutError(
                f"actions/checkout: cannot fetch {sha[:12]} of {display}: {error or code}"
            )
        if branch and request.depth == 0:  # the branch at the commit asked for
            await git("update-ref", f"refs/remotes/origin/{branch}", sha, cwd=self.repo)
        if not files:  # HEAD, the branch and the index only, as checkout would leave them
            if branch:
                await git("update-ref", f"refs/heads/{branch}", sha, cwd=self.repo)
                await git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=self.repo)
                await git("branch", "--quiet", f"--set-upstream-to=origin/{branch}", cwd=self.repo)
            else:
                await git("update-ref", "--no-deref", "HEAD", sha, cwd=self.repo)
            await git("read-tree", "HEAD", cwd=self.repo)
            return
        start: tuple[str, ...]
        if branch:
            start = ("-B", branch, f"refs/remotes/origin/{branch}")
        else:
            start = ("--detach", full_ref if full_ref.startswith("refs/tags/") else sha)
        await git("checkout", "--quiet", "--force", *start, cwd=self.repo)
        if request.sparse:
            cone = () if request.cone else ("--no-cone",)
            await git("sparse-checkout", "set", *cone, "--", *request.sparse, cwd=self.repo)

    async def submodules(
        self, repo: Path, display: str, own_root: str | None, prefix: str = ""
    ) -> None:
        """``submodules: true`` (or ``recursive``): each submodule from a vetted source."""
        if not (repo / ".gitmodules").exists():
            return
        code, out, _ = await git(
            "config", "-f", ".gitmodules", "--get-regexp", r"^submodule\..*\.(url|path)$",
            cwd=repo, check=False,
        )
        if code != 0:
            return
        found: dict[str, dict[str, str]] = {}
        for line in out.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            name, _, kind = key.removeprefix("submodule.").rpartition(".")
            found.setdefault(name, {})[kind] = value.strip()
        sources: dict[str, tuple[str, str, str]] = {}
        for name, entry in found.items():
            if "url" not in entry or "path" not in entry:
                continue
            source, shown = self.submodule_source(name, entry["url"], display, own_root)
            sources[name] = (entry["path"], source, shown)
            await git("config", f"submodule.{name}.url", source, cwd=repo)
        depth = ("--depth", "1") if self.request.depth else ()
        code, _, error = await git(
            *_ALLOW_FILE, "submodule", "update", "--init", "--force", *depth, cwd=repo,
            check=False,
        )
        if code != 0:
            raise CheckoutError(f"actions/checkout: submodules of {display}: {error or code}")
        for name, (path, _, shown) in sources.items():
            await git("config", f"submodule.{name}.url", shown, cwd=repo)
            await git("remote", "set-url", "origin", shown, cwd=repo / path)
            self.notes.append(f"submodule {prefix}{path} from {shown}")
            if self.request.submodules == "recursive":
                await self.submodules(repo / path, shown, None, f"{prefix}{path}/")

    def submodule_source(
        self, name: str, url: str, display: str, own_root: str | None
    ) -> tuple[str, str]:
        """(where to fetch submodule ``name`` from, the URL the job sees)."""
        if own_root is not None:
            modules = Path(own_root, ".git", "modules", name)
            if modules.is_dir():  # the user's own clone of it, on the host
                shown = urljoin(display + "/", url) if url.startswith(("./", "../")) else url
                return modules.as_uri(), shown
        shown = urljoin(display + "/", url) if url.startswith(("./", "../")) else url
        match = _GITHUB.match(shown)
        server = self.request.server + "/"
        if match is None and shown.startswith(server):
            parts = shown[len(server):].removesuffix(".git").strip("/").split("/")
            if len(parts) == 2:
                match = re.match(r"^([\w.-]+)/([\w.-]+)$", "/".join(parts))
        if match is not None:
            owner, repo = match.group(1), match.group(2)
            return self.source_of(owner, repo, f"submodule '{name}'"), shown
        parsed = urlparse(shown)
        remote = parsed.scheme in ("https", "http", "ssh", "git") or re.match(
            r"^[\w.-]+@[\w.-]+:", shown
        )
        if not remote or parsed.scheme == "file":
            raise CheckoutError(
                f"actions/checkout: submodule '{name}' has the URL {url!r}, a path on the host: "
                f"refused (map the repository with --repository-mirror OWNER/REPO=PATH)"
            )
        if self.settings.offline:
            raise CheckoutError(
                f"actions/checkout: submodule '{name}' ({shown}) cannot be fetched with --offline"
            )
        return shown, shown


async def _head(root: str) -> tuple[str, str]:
    """(sha, symbolic ref) of ``root``'s HEAD; blanks when it has none (or is no repository's
    top: a folder inside another repository is not that repository)."""
    if not await asyncio.to_thread(is_repository, root):
        return "", ""
    code, out, _ = await git("rev-parse", "--verify", "-q", "HEAD^{commit}", cwd=root, check=False)
    if code != 0:
        return "", ""
    code2, ref, _ = await git("symbolic-ref", "-q", "HEAD", cwd=root, check=False)
    return out.decode().strip(), ref.decode().strip() if code2 == 0 else ""


async def _changes(root: str) -> set[str]:
    """Paths of ``root``'s working tree that differ from its HEAD (changed, deleted, added,
    untracked and not ignored); submodules left out."""
    _, changed, _ = await git(
        "diff", "--name-only", "-z", "--no-renames", "--ignore-submodules=all", "HEAD", cwd=root
    )
    _, untracked, _ = await git("ls-files", "-z", "--others", "--exclude-standard", cwd=root)
    text = (changed + b"\0" + untracked).decode(errors="surrogateescape")
    return {name for name in text.split("\0") if name}


async def _files(root: str) -> set[str]:
    """Every file of ``root``'s working tree git knows or would add (``.gitignore`` honoured)."""
    _, out, _ = await git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=root)
    return {name for name in out.decode(errors="surrogateescape").split("\0") if name}


def _tar(repo: Path, overlay_root: str | None, overlay: set[str], *, git_only: bool) -> bytes:
    """``repo`` (only its ``.git`` if ``git_only``) as a tar stream, with the paths ``overlay``
    taken from ``overlay_root`` instead (left out where they are gone there)."""
    buffer = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if info.name in overlay else info

    try:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for entry in [".git"] if git_only else sorted(os.listdir(repo)):
                tar.add(repo / entry, arcname=entry, filter=keep)
            if overlay_root is not None:
                for name in sorted(overlay):
                    path = os.path.join(overlay_root, name)
                    if os.path.islink(path) or os.path.isfile(path):
                        tar.add(path, arcname=name, recursive=False)
    except OSError as exc:
        raise CheckoutError(f"actions/checkout: cannot read the checkout: {exc}") from exc
    return buffer.getvalue()


async def prepare(
    request: CheckoutRequest, settings: CheckoutSettings
) -> tuple[bytes, str, list[str]]:
    """The checkout as a tar stream, what it is, and notes for the log."""
    scratch = vmrunner_home() / "checkouts"
    await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="checkout-", dir=scratch))
    try:
        return await _prepare(request, settings, folder)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def _prepare(
    request: CheckoutRequest, settings: CheckoutSettings, folder: Path
) -> tuple[bytes, str, list[str]]:
    builder = _Builder(request, settings, folder)
    repository = request.repository
    display = f"{request.server}/{repository}" if repository else ""
    overlay_root: str | None = None
    overlay: set[str] = set()
    light = False  # only the repository's .git, the files all from the working tree
    if request.own:
        root = os.path.abspath(settings.repo_root)  # noqa: ASYNC240 - no file system access
        sha, head_ref = await _head(root)
        if not sha:
            if request.ref:
                raise CheckoutError(
                    f"actions/checkout: ref '{request.ref}' cannot be checked out: {root} is not "
                    f"a git repository with commits"
                )
            for name in ("fetch-depth", "fetch-tags", "submodules", "sparse-checkout"):
                if name in request.given:
                    request.warnings.append(
                        f"actions/checkout: input '{name}' is not honoured: {root} is not a git "
                        f"repository with commits (its files are copied)"
                    )
            data = await working_tree_tar(root)
            return data, f"the files of {root}", []
        source = Path(root).as_uri()
        what = f"{repository or root}"
        if request.ref:
            full_ref, sha = await builder.resolve(source, request.ref, what)
            described = f"{request.ref} ({sha[:12]})"
        elif settings.commit:
            sha = settings.commit
            event = settings.event_ref
            full_ref = event if event.startswith("refs/heads/") else ""
            described = f"commit {sha[:12]}"
        else:
            full_ref = head_ref if head_ref.startswith("refs/heads/") else ""
            described = f"the working tree on {full_ref.removeprefix('refs/heads/') or sha[:12]}"
            if request.sparse:
                request.warnings.append(
                    "actions/checkout: with sparse-checkout the committed HEAD is checked out; "
                    "uncommitted changes are left out"
                )
            elif request.submodules:
                overlay_root, overlay = root, await _changes(root)
            else:
                overlay_root, overlay, light = root, await _files(root), True
        own_root: str | None = root
    else:
        owner, name = repository.split("/", 1)
        source = builder.source_of(owner, name, "repository")
        full_ref, sha = await builder.resolve(source, request.ref, repository)
        own_root = None
        described = f"{full_ref.rpartition('/')[2] if full_ref else sha[:12]} ({sha[:12]})"
    await builder.fetch(source, full_ref, sha, display or source, files=not light)
    if request.submodules:
        await builder.submodules(builder.repo, display or source, own_root)
    if request.token and request.persist:
        await git(
            "config", "--local", f"http.{request.server}/.extraheader",
            f"AUTHORIZATION: basic {_basic(request.token)}", cwd=builder.repo,
        )
    data = await asyncio.to_thread(_tar, builder.repo, overlay_root, overlay, git_only=light)
    depth = "all history" if request.depth == 0 else f"depth {request.depth}"
    return data, f"{described} of {repository or settings.repo_root} ({depth})", builder.notes


#: Empties the target before the files go in ($1: the folder; $2 = keep: keep a repository
#: already there, as ``clean: false`` does). The folder itself stays: it may be the workspace.
_CLEAR = r"""
mkdir -p -- "$1" || exit 1
if [ "$2" = keep ] && [ -e "$1/.git" ]; then exit 0; fi
find "$1" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
"""


async def checkout(
    machine: Machine, inputs: Mapping[str, str], settings: CheckoutSettings, workspace: str
) -> CheckedOut:
    """Check the repository out into the machine as ``inputs`` ask (see the module)."""
    request = read_inputs(inputs, settings, workspace)
    data, description, notes = await prepare(request, settings)
    try:
        cleared = await machine.exec(
            ["sh", "-c", _CLEAR, "sh", request.target, "clean" if request.clean else "keep"],
            timeout=300,
        )
        if not cleared.ok:
            raise CheckoutError(
                f"actions/checkout: cannot empty {request.target}: "
                f"{cleared.stderr.decode(errors='replace').strip()}"
            )
        await machine.put(request.target, data)
    except MachineError as exc:
        raise CheckoutError(
            f"actions/checkout: cannot copy the repository into the machine: {exc}"
        ) from exc
    secrets = (request.token, _basic(request.token)) if request.token else ()
    lines = [f"Checked out {description} into {request.target}", *notes]
    return CheckedOut("\n".join(lines), tuple(request.warnings), secrets)
