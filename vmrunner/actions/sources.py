"""Actions a step ``uses``: where they come from and what their ``action.yml`` says.

- ``actions/checkout`` is done natively (the repository's files are copied into the machine).
- ``./path``: a local action, read from the job's workspace inside the machine only (as
  GitHub's runner does): a step must have put it there (``actions/checkout``). Nothing is read
  or copied from the host, so a committed symlink cannot bring a host folder into the job, and
  a path that resolves (inside the machine) outside the workspace is refused.
- ``owner/repo[/path]@ref``: its commit fetched into the actions cache under ``VMRUNNER_HOME``
  (keyed by the commit: a moving ref is resolved again on every run, a full sha is fetched
  once), then copied into the machine; or, when the user maps ``owner/repo@ref`` to a folder
  (``--local-repository``, act's flag), that folder as it is. ``repository_folder`` is the one
  place that decides, for actions and reusable workflows alike.
- ``$/path``: the action in the repository of the file naming it, at the same commit
  (``load_self_action``): copied from the host, or fetched like a remote action.
- ``docker://image`` and actions with ``runs.using: docker`` run from their image on providers
  whose machines can run images (``actions/blockers.py`` says which cannot).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vmrunner.actions.origin import Origin, read_file
from vmrunner.errors import ConfigError, MachineError, WorkflowError
from vmrunner.machines.base import Machine
from vmrunner.repository import FetchProgress, fetch_action, git
from vmrunner.workflow.calls import SELF
from vmrunner.workflow.models import Step, frozen_map
from vmrunner.workflow.yaml import load_document

ACTION_FILES = ("action.yml", "action.yaml")
NODE_RUNTIMES = ("node12", "node16", "node20", "node24")
_REMOTE = re.compile(r"^([\w.-]+)/([\w.-]+)((?:/[^@]+)?)@(.+)$")
ACTIONS_DIR = "_actions"


class ActionError(ConfigError):
    """An action could not be found, fetched or understood (the step fails with this reason)."""


@dataclass(frozen=True, slots=True)
class Sources:
    """Where ``owner/repo@ref`` comes from: a git server (``base_url``/owner/repo), the actions
    cache only (``offline``), or a local folder the user maps (``local``: act's
    ``--local-repository`` keys, ``owner/repo@ref`` or ``URL@ref``, to folders)."""

    base_url: str
    offline: bool = False
    local: Mapping[str, str] = field(default_factory=dict)

    def local_folder(self, owner: str, repo: str, ref: str) -> str | None:
        """The folder mapped to ``owner/repo@ref`` (owner and name compared as GitHub does,
        without case; the ref exactly), or None."""
        url = f"{self.base_url.rstrip('/')}/{owner}/{repo}"
        wanted = {f"{owner}/{repo}@{ref}".lower(), f"{url}@{ref}".lower()}
        for key, folder in self.local.items():
            name, _, key_ref = key.rpartition("@")
            if key_ref == ref and f"{name.removesuffix('.git')}@{ref}".lower() in wanted:
                return folder
        return None


def parse_local_repositories(values: Sequence[str]) -> dict[str, str]:
    """``--local-repository`` values (act's syntax: ``OWNER/REPO@REF=PATH``, or ``URL@REF=PATH``
    for one server only) as key -> absolute folder; ``ConfigError`` saying what is wrong."""
    mapped: dict[str, str] = {}
    for value in values:
        key, sep, folder = value.partition("=")
        name, at, ref = key.rpartition("@")
        if not sep or not at or not name or not ref or not folder:
            raise ConfigError(
                f"--local-repository: expected OWNER/REPO@REF=PATH, got {value!r}"
            )
        if "://" not in name and not re.match(r"^[\w.-]+/[\w.-]+$", name):
            raise ConfigError(
                f"--local-repository: {name!r} is not OWNER/REPO (nor a repository URL)"
            )
        if not os.path.isdir(folder):
            raise ConfigError(f"--local-repository {key}: {folder} is not a folder")
        mapped[key] = os.path.abspath(folder)
    return mapped


@dataclass(frozen=True, slots=True)
class RepositoryFolder:
    """A repository's files on the host for ``owner/repo@ref``."""

    path: Path
    #: The commit (empty for a local folder: it is used as it is).
    sha: str
    #: Mapped by the user to a local folder (``--local-repository``), not fetched.
    local: bool = False
    #: Something to tell the user (e.g. the server was unreachable and the cache was used).
    note: str = ""


async def repository_folder(
    owner: str, repo: str, ref: str, sources: Sources, progress: FetchProgress | None = None
) -> RepositoryFolder:
    """``owner/repo`` at ``ref`` on the host: the user's local folder for it, else a clone in
    the actions cache (a moving ref re-resolved, a full sha cached for good; nothing fetched
    ``offline``). For actions and reusable workflows (``owner/repo/path@ref``: add the path).
    Raises ``ActionError`` naming the reference."""
    folder = sources.local_folder(owner, repo, ref)
    if folder is not None:
        path = Path(folder)
        if not await asyncio.to_thread(path.is_dir):
            raise ActionError(
                f"--local-repository {owner}/{repo}@{ref}: {folder} is not a folder"
            )
        return RepositoryFolder(path, "", local=True)
    try:
        fetched = await fetch_action(
            sources.base_url, owner, repo, ref, offline=sources.offline, progress=progress
        )
    except ConfigError as exc:
        hint = (
            ""
            if sources.offline
            else f" (is the network reachable? remote actions need {sources.base_url})"
        )
        raise ActionError(f"{exc}{hint}") from exc
    return RepositoryFolder(fetched.path, fetched.sha, note=fetched.note)


@dataclass(frozen=True, slots=True)
class ActionInput:
    name: str
    default: str | None
    required: bool


@dataclass(frozen=True, slots=True)
class Action:
    """An action's metadata, and where its files are inside the machine."""

    reference: str
    path: str
    using: str
    inputs: tuple[ActionInput, ...] = ()
    outputs: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    main: str = ""
    pre: str = ""
    post: str = ""
    pre_if: str = ""
    post_if: str = ""
    repository: str = ""
    ref: str = ""
    #: A Docker action's ``runs``: its image (``docker://...`` or a Dockerfile), entrypoint,
    #: args (expressions, rendered at the step) and env.
    image: str = ""
    entrypoint: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_composite(self) -> bool:
        return self.using == "composite"

    @property
    def is_node(self) -> bool:
        return self.using in NODE_RUNTIMES

    @property
    def is_docker(self) -> bool:
        return self.using == "docker"


def is_checkout(uses: str) -> bool:
    return uses.lower().split("@", 1)[0].rstrip("/") == "actions/checkout"


def split_remote(uses: str) -> tuple[str, str, str, str] | None:
    """``owner/repo[/path]@ref`` as (owner, repo, ``/path`` or '', ref); None for another form."""
    match = _REMOTE.match(uses)
    if match is None:
        return None
    owner, repo, subpath, ref = match.groups()
    return owner, repo, subpath, ref


def is_docker_reference(uses: str) -> bool:
    return uses.startswith("docker://")


def parse_action(
    text: str, filename: str, reference: str, path: str, repository: str = "", ref: str = ""
) -> Action:
    try:
        raw = load_document(text, filename).value
    except WorkflowError as exc:
        raise ActionError(f"action {reference}: {exc}") from exc
    if not isinstance(raw, Mapping) or not isinstance(raw.get("runs"), Mapping):
        raise ActionError(f"action {reference}: {filename} has no 'runs' section")
    runs = raw["runs"]
    using = str(runs.get("using", "")).strip().lower()
    inputs = []
    for name, spec in (raw.get("inputs") or {}).items():
        spec = spec if isinstance(spec, Mapping) else {}
        default = spec.get("default")
        inputs.append(
            ActionInput(
                str(name), None if default is None else _scalar(default),
                bool(spec.get("required", False)),
            )
        )
    outputs: Mapping[str, Any] = raw["outputs"] if isinstance(raw.get("outputs"), Mapping) else {}
    steps: list[Step] = []
    if using == "composite":
        for index, item in enumerate(runs.get("steps") or []):
            if not isinstance(item, Mapping):
                raise ActionError(f"action {reference}: step {index} is not a mapping")
            if keys := [k for k in ("background", "wait", "wait-all", "cancel", "parallel")
                        if k in item]:
                raise ActionError(
                    f"action {reference}: step {index} uses '{keys[0]}': a composite action "
                    f"cannot declare background or parallel steps (it can run as one itself)"
                )
            steps.append(step_from_mapping(index, item))
    elif using not in NODE_RUNTIMES and using != "docker":
        raise ActionError(
            f"action {reference}: runs.using '{using}' is not supported (expected composite, "
            f"node16, node20 or docker)"
        )
    return Action(
        reference=reference, path=path, using=using, inputs=tuple(inputs), outputs=dict(outputs),
        steps=tuple(steps), main=str(runs.get("main", "")), pre=str(runs.get("pre", "")),
        post=str(runs.get("post", "")), pre_if=str(runs.get("pre-if", "")),
        image=str(runs.get("image") or ""), entrypoint=str(runs.get("entrypoint") or ""),
        args=tuple(_scalar(a) for a in runs.get("args") or ()),
        env={str(k): _scalar(v) for k, v in (runs.get("env") or {}).items()},
        post_if=str(runs.get("post-if", "")), repository=repository, ref=ref,
    )


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def step_from_mapping(index: int, raw: Mapping[str, Any]) -> Step:
    """A composite action's step, read like a workflow step."""

    def text(key: str) -> str | None:
        value = raw.get(key)
        return None if value is None or isinstance(value, Mapping | list) else _scalar(value)

    def mapping(key: str) -> Mapping[str, Any] | str:
        value = raw.get(key)
        return (
            value
            if isinstance(value, str)
            else frozen_map(value if isinstance(value, Mapping) else None)
        )

    flag = raw.get("continue-on-error", False)
    minutes = raw.get("timeout-minutes")
    return Step(
        index=index,
        id=text("id"),
        name=text("name"),
        if_=text("if"),
        run=text("run"),
        shell=text("shell"),
        working_directory=text("working-directory"),
        uses=text("uses"),
        with_=mapping("with"),
        env=mapping("env"),
        continue_on_error=flag if isinstance(flag, bool | str) else False,
        timeout_minutes=minutes
        if isinstance(minutes, int | float | str) and not isinstance(minutes, bool)
        else None,
    )


def _tree_tar(folder: Path) -> bytes:
    """The files under ``folder`` without ``.git``, as a tar stream."""
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for entry in sorted(os.listdir(folder)):
                if entry not in (".git", ".vmrunner-complete"):
                    tar.add(os.path.join(folder, entry), arcname=entry)
    except OSError as exc:
        raise ActionError(f"cannot read the action at {folder}: {exc}") from exc
    return buffer.getvalue()


def _read_on_host(folder: str) -> tuple[str, str] | None:
    for name in ACTION_FILES:
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as handle:
                return handle.read(), name
        except OSError:
            continue
    return None


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def host_local_action_using(repo_root: str, uses: str) -> str | None:
    """``runs.using`` of a local action in the repository on the host (None if absent)."""
    action = host_local_action(repo_root, uses)
    return action.using if action is not None else None


def host_local_action(repo_root: str, uses: str) -> Action | None:
    """A local action in the repository on the host (None if absent or invalid).

    Only a hint, to refuse a Docker action before a machine is allocated; the action itself is
    read from the machine. Nothing outside the repository is read: a symlink leading out of it
    counts as absent.
    """
    root = os.path.realpath(repo_root)
    folder = os.path.realpath(os.path.join(root, uses))
    if not _inside(root, folder):
        return None
    for name in ACTION_FILES:
        if not _inside(root, os.path.realpath(os.path.join(folder, name))):
            return None
    found = _read_on_host(folder)
    if found is None:
        return None
    try:
        return parse_action(found[0], found[1], uses, "")
    except ActionError:
        return None


#: Finds a local action inside the machine: $1 the workspace, $2 the action's folder relative
#: to it. Resolves symlinks there (``readlink -m``; ``-f`` where only that exists) and stops
#: at the first path that leads outside the workspace. Exit 0: the file's name, a newline, its
#: text; 3: no action file; 4: the path and where it leads, printed; 5: no workspace; 6: a
#: Dockerfile only.
_FIND_LOCAL = r"""
ws=$(cd -P -- "$1" 2>/dev/null && pwd -P) || exit 5
real() { readlink -m -- "$1" 2>/dev/null || readlink -f -- "$1" 2>/dev/null; }
inside() { case $2 in "$ws"|"$ws"/*) return 0;; esac; printf '%s\n%s' "$1" "$2"; exit 4; }
dir=$(real "$ws${2:+/$2}") || exit 3
[ -n "$dir" ] || exit 3
inside "$1${2:+/$2}" "$dir"
[ -d "$dir" ] || exit 3
for name in action.yml action.yaml; do
  [ -e "$dir/$name" ] || [ -L "$dir/$name" ] || continue
  file=$(real "$dir/$name") || continue
  inside "$1${2:+/$2}/$name" "$file"
  [ -f "$file" ] || continue
  printf '%s\n' "$name"
  exec cat -- "$file"
done
[ -e "$dir/Dockerfile" ] && exit 6
exit 3
"""
#: Bound on the look-up: it is one small shell in the machine.
FIND_TIMEOUT = 60.0


def local_action_folder(workspace: str, uses: str) -> tuple[str, str]:
    """``./path`` as (path relative to the workspace, its folder in the machine).

    Refuses what leaves the workspace on its face (``..`` above it); symlinks are judged in the
    machine by ``load_local_action``.
    """
    posix = PurePosixPath(uses)
    if posix.is_absolute():
        raise ActionError(f"step uses {uses}: a local action must be a path inside the workspace")
    relative = os.path.normpath(posix.as_posix()).strip("/")
    relative = "" if relative == "." else relative
    if relative == ".." or relative.startswith("../"):
        raise ActionError(f"step uses {uses}: the path leaves the workspace {workspace}; refused")
    return relative, f"{workspace}/{relative}" if relative else workspace


async def load_local_action(machine: Machine, uses: str, workspace: str) -> Action:
    """A ``./path`` action, read from the job's workspace in the machine (never from the host).

    As GitHub's runner: the workspace must hold it (normally through ``actions/checkout``).
    A path that resolves outside the workspace, through ``..`` or a symlink (resolved inside
    the machine), is refused: the action would not be the repository's.
    """
    relative, folder = local_action_folder(workspace, uses)
    try:
        result = await machine.exec(
            ["sh", "-c", _FIND_LOCAL, "sh", workspace, relative], timeout=FIND_TIMEOUT
        )
    except MachineError as exc:
        raise ActionError(
            f"step uses {uses}: cannot read the action in the machine: {exc}"
        ) from exc
    if result.exit_code == 4:
        path, _, target = result.stdout.decode(errors="replace").partition("\n")
        raise ActionError(
            f"step uses {uses}: {path} leads to {target}, outside the workspace {workspace}; "
            "refused (a local action must be a folder of the repository checked out into the "
            "workspace)"
        )
    if result.exit_code == 6:  # a folder with a Dockerfile only: a Docker action, as on GitHub
        return Action(uses, folder, "docker", image="Dockerfile")
    if result.exit_code in (3, 5):
        raise ActionError(
            f"Can't find 'action.yml', 'action.yaml' or 'Dockerfile' under '{folder}'. "
            "Did you forget to run actions/checkout before running your local action?"
        )
    if result.exit_code != 0 or b"\n" not in result.stdout:
        detail = result.stderr.decode(errors="replace").strip() or f"exit code {result.exit_code}"
        raise ActionError(f"step uses {uses}: cannot read the action in the machine: {detail}")
    name, _, text = result.stdout.partition(b"\n")
    return parse_action(text.decode(errors="replace"), name.decode(errors="replace"), uses, folder)


async def load_remote_action(
    machine: Machine, uses: str, sources: Sources, uploaded: set[str],
    notes: list[str] | None = None, progress: FetchProgress | None = None,
) -> Action:
    """An ``owner/repo[/path]@ref`` action, from ``repository_folder``, copied into the machine.

    ``uploaded`` holds the folders already copied into this machine (copied once per job);
    ``notes`` receives what the user should hear about the fetch, ``progress`` how it goes.
    """
    parts = split_remote(uses)
    if parts is None:
        raise ActionError(f"invalid action reference {uses!r}: expected owner/repo[/path]@ref")
    owner, repo, subpath, ref = parts
    found = await repository_folder(owner, repo, ref, sources, progress)
    if found.note and notes is not None:
        notes.append(found.note)
    clone = found.path
    name = found.sha or "local-" + hashlib.sha256(f"{ref}\0{clone}".encode()).hexdigest()[:16]
    root = f"{machine.paths.temp}/{ACTIONS_DIR}/{owner}/{repo}/{name}"
    if root not in uploaded:
        await machine.put(root, await asyncio.to_thread(_tree_tar, clone))
        uploaded.add(root)
    folder = f"{root}{subpath}" if subpath else root
    host_folder = os.path.join(clone, subpath.strip("/")) if subpath else str(clone)
    found_file = _read_on_host(host_folder)
    if found_file is None:
        raise ActionError(f"action {uses} has no action.yml or action.yaml")
    return parse_action(
        found_file[0], found_file[1], uses, folder, repository=f"{owner}/{repo}",
        ref=ref,
    )


#: Where ``$/`` actions of the repository being run are copied, under ``RUNNER_TEMP``.
SELF_DIR = "_self"


async def load_self_action(
    machine: Machine, uses: str, origin: Origin, sources: Sources, uploaded: set[str],
    notes: list[str] | None = None,
) -> Action:
    """A ``$/path`` action: ``path`` in the repository of the file that names it, at the same
    commit, no checkout needed (GitHub's self-repository reference).

    In a fetched repository (a remote reusable workflow or action) it is that repository's
    action at its ref; in the repository being run it is copied from the host: the commit
    being run, or the working tree (nothing outside the repository is read).
    """
    relative = uses.strip()[len(SELF) :].strip("/")
    if ".." in relative.split("/"):
        raise ActionError(f"step uses {uses}: the path leaves the repository; refused")
    if origin.remote:
        path = f"/{relative}" if relative else ""
        return await load_remote_action(
            machine, f"{origin.repository}{path}@{origin.ref}", sources, uploaded, notes
        )
    parent = f"{machine.paths.temp}/{ACTIONS_DIR}/{SELF_DIR}"
    folder = f"{parent}/{relative}" if relative else parent
    found: tuple[str, str] | None = None
    for name in ACTION_FILES:
        with contextlib.suppress(ConfigError):
            found = await read_file(origin, f"{relative}/{name}".lstrip("/"), uses), name
            break
    if found is None:
        raise ActionError(f"step uses {uses}: no action.yml or action.yaml under '{relative}'")
    if folder not in uploaded:
        if origin.commit:
            _, data, _ = await git(
                "archive", "--format=tar", origin.commit, *([relative] if relative else []),
                cwd=origin.root,
            )
            await machine.put(parent, data)
        else:
            host = Path(origin.root, relative)  # its action file was found inside the repository
            await machine.put(folder, await asyncio.to_thread(_tree_tar, host))
        uploaded.add(folder)
    return parse_action(found[0], found[1], uses, folder)
