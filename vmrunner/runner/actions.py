"""Actions a step ``uses``: where they come from and what their ``action.yml`` says.

- ``actions/checkout`` is done natively (the repository's files are copied into the machine).
- ``./path``: a local action, read from the job's workspace in the machine (as GitHub does),
  else from the repository on the host (then copied into the machine).
- ``owner/repo[/path]@ref``: cloned into the actions cache under ``VMRUNNER_HOME``, then copied
  into the machine.
- ``docker://image`` and actions with ``runs.using: docker`` cannot run in a sandbox.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vmrunner.errors import ConfigError, MachineError, WorkflowError
from vmrunner.machines.base import Machine
from vmrunner.repository import fetch_action
from vmrunner.workflow.models import Step, frozen_map
from vmrunner.workflow.yaml import load_document

ACTION_FILES = ("action.yml", "action.yaml")
NODE_RUNTIMES = ("node12", "node16", "node20", "node24")
_REMOTE = re.compile(r"^([\w.-]+)/([\w.-]+)((?:/[^@]+)?)@(.+)$")
ACTIONS_DIR = "_actions"


class ActionError(ConfigError):
    """An action could not be found, fetched or understood (the step fails with this reason)."""


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


async def _read_in_machine(machine: Machine, folder: str) -> tuple[str, str] | None:
    for name in ACTION_FILES:
        try:
            return (await machine.read_file(f"{folder}/{name}")).decode(errors="replace"), name
        except MachineError:
            continue
    return None


def _tree_tar(folder: Path) -> bytes:
    """The files under ``folder`` without ``.git``, as a tar stream."""
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for entry in sorted(os.listdir(folder)):
                if entry != ".git":
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


def host_local_action_using(repo_root: str, uses: str) -> str | None:
    """``runs.using`` of a local action found in the repository on the host (None if absent)."""
    found = _read_on_host(os.path.join(repo_root, uses))
    if found is None:
        return None
    try:
        return parse_action(found[0], found[1], uses, "").using
    except ActionError:
        return None


async def load_local_action(
    machine: Machine, repo_root: str, uses: str, uploaded: set[str]
) -> Action:
    """A ``./path`` action: from the workspace in the machine, else from the repository on the host.

    ``uploaded`` holds the folders already copied into this machine (copied once per job).
    """
    relative = PurePosixPath(uses).as_posix().removeprefix("./").strip("/")
    if ".." in PurePosixPath(relative).parts:
        raise ActionError(f"local action {uses} points outside the repository")
    folder = f"{machine.paths.workspace}/{relative}" if relative else machine.paths.workspace
    found = await _read_in_machine(machine, folder)
    if found is None:
        host = os.path.join(repo_root, relative)
        found = _read_on_host(host)
        if found is None:
            raise ActionError(
                f"cannot find action {uses}: no action.yml or action.yaml in the workspace or in "
                f"{host}"
            )
        folder = f"{machine.paths.temp}/{ACTIONS_DIR}/local/{relative or '_root'}"
        if folder not in uploaded:
            await machine.put(folder, await asyncio.to_thread(_tree_tar, Path(host)))
            uploaded.add(folder)
    return parse_action(found[0], found[1], uses, folder)


async def load_remote_action(
    machine: Machine, uses: str, base_url: str, uploaded: set[str]
) -> Action:
    """An ``owner/repo[/path]@ref`` action, fetched into the cache and copied into the machine.

    ``uploaded`` holds the folders already copied into this machine (copied once per job).
    """
    match = _REMOTE.match(uses)
    if match is None:
        raise ActionError(f"invalid action reference {uses!r}: expected owner/repo[/path]@ref")
    owner, repo, subpath, ref = match.groups()
    try:
        clone = await fetch_action(base_url, owner, repo, ref)
    except ConfigError as exc:
        raise ActionError(
            f"{exc} (is the network reachable? remote actions need {base_url})"
        ) from exc
    parent = f"{machine.paths.temp}/{ACTIONS_DIR}/{owner}/{repo}"
    root = f"{parent}/{clone.name}"
    if root not in uploaded:
        await machine.put(root, await asyncio.to_thread(_tree_tar, clone))
        uploaded.add(root)
    folder = f"{root}{subpath}" if subpath else root
    host_folder = os.path.join(clone, subpath.strip("/")) if subpath else str(clone)
    found = _read_on_host(host_folder)
    if found is None:
        raise ActionError(f"action {uses} has no action.yml or action.yaml")
    return parse_action(found[0], found[1], uses, folder, repository=f"{owner}/{repo}", ref=ref)
