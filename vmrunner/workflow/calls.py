"""Reusable workflows, on the language side: what a job's ``uses:`` names, what the called
workflow declares under ``on.workflow_call``, and whether a call fits it.

GitHub's rules ("Reusing workflows"): the called file must listen to ``workflow_call``; the
caller's ``with`` may only name declared inputs, must give the required ones, and each value
must have the input's type (a string input also takes a number or a boolean, as text);
``secrets`` may only name declared secrets and must give the required ones, unless it is
``inherit``. At most ten levels of workflows (the top-level caller and nine levels of called
workflows) and at most 50 unique reusable workflows in one run; a workflow that ends up calling
itself can never run.

``./path`` and ``$/path`` (the self-repository reference) both name a file of the calling
file's own repository at the same commit; ``owner/repo/path@ref`` one of another repository.
Everything here is pure: reading a called file is the caller's business (``check_calls``
takes a loader).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmrunner.errors import ConfigError, Diagnostic, WorkflowError
from vmrunner.workflow.models import Job, Workflow
from vmrunner.workflow.problems import Path
from vmrunner.workflow.triggers import DispatchInput

#: Levels of workflows GitHub connects: the top-level caller and up to nine called ones.
MAX_LEVELS = 10
#: Unique reusable workflows one top-level workflow may reach, nested ones included.
MAX_WORKFLOWS = 50
#: How a ``uses:`` names the file's own repository at the running commit.
SELF = "$/"
_REMOTE = re.compile(r"([\w.-]+)/([\w.-]+)/(\.github/workflows/[^@\s]+\.ya?ml)@([^@\s]+)")
_LOCAL = re.compile(r"(?:\./|\$/)(\.github/workflows/[^@\s]+\.ya?ml)")


@dataclass(frozen=True, slots=True)
class CallTarget:
    """The workflow file a job calls: ``path`` inside the caller's own repository (at the
    caller's commit), or inside ``owner/repo`` at ``ref``."""

    path: str
    owner: str = ""
    repo: str = ""
    ref: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.owner)

    def __str__(self) -> str:
        if self.remote:
            return f"{self.owner}/{self.repo}/{self.path}@{self.ref}"
        return f"./{self.path}"


def parse_target(uses: str) -> CallTarget:
    """What a job's ``uses:`` names; ``ConfigError`` when it names no reusable workflow."""
    text = uses.strip()
    local = _LOCAL.fullmatch(text)
    if local is not None and ".." not in local.group(1).split("/"):
        return CallTarget(local.group(1))
    remote = _REMOTE.fullmatch(text)
    if remote is not None and ".." not in remote.group(3).split("/"):
        owner, repo, path, ref = remote.groups()
        return CallTarget(path, owner, repo, ref)
    raise ConfigError(
        f"uses: '{uses}' names no reusable workflow: expected './.github/workflows/FILE.yml', "
        f"'$/.github/workflows/FILE.yml' or 'OWNER/REPO/.github/workflows/FILE.yml@REF'"
    )


@dataclass(frozen=True, slots=True)
class CallInterface:
    """What a reusable workflow declares under ``on.workflow_call``."""

    inputs: Mapping[str, DispatchInput] = field(default_factory=dict)
    #: Secret name -> required.
    secrets: Mapping[str, bool] = field(default_factory=dict)
    #: Output name -> its ``value`` (an expression over the ``jobs`` context).
    outputs: Mapping[str, str] = field(default_factory=dict)


def call_interface(workflow: Workflow) -> CallInterface | None:
    """The workflow's ``on.workflow_call`` declarations; None when it cannot be called."""
    trigger = workflow.triggers.get("workflow_call")
    if trigger is None:
        return None
    raw = trigger.raw if isinstance(trigger.raw, Mapping) else {}
    secrets = _section(raw, "secrets")
    outputs = _section(raw, "outputs")
    return CallInterface(
        dict(trigger.inputs),
        {
            str(name): isinstance(spec, Mapping) and spec.get("required") is True
            for name, spec in secrets.items()
        },
        {
            str(name): str(spec.get("value", ""))
            for name, spec in outputs.items()
            if isinstance(spec, Mapping)
        },
    )


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, Mapping) else {}


def typed_input(spec: DispatchInput, value: Any, target: str) -> Any:
    """``value`` as input ``spec`` of ``target`` takes it; ``ConfigError`` when the type is wrong.

    Numbers come back as ``float`` (the expression language has one number type).
    """
    if spec.type == "boolean" and isinstance(value, bool):
        return value
    if (
        spec.type == "number"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        return float(value)
    if spec.type == "string" and not isinstance(value, Mapping | list | tuple):
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    shown = f"the string {value!r}" if isinstance(value, str) else _kind(value)
    raise ConfigError(f"input '{spec.name}' of {target} is a {spec.type}; got {shown}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"the number {value:g}"
    if value is None:
        return "null"
    return "a list" if isinstance(value, list | tuple) else "a mapping"


def call_inputs(
    interface: CallInterface,
    given: Mapping[str, Any],
    target: str,
    evaluate: Callable[[str], Any] = lambda text: text,
) -> dict[str, Any]:
    """The called workflow's ``inputs`` context: ``given`` (the caller's evaluated ``with``)
    typed, defaults applied (``evaluate`` computes a default written as an expression).

    Raises ``ConfigError`` for an undeclared input, a missing required one, or a wrong type.
    """
    for name in given:
        if name not in interface.inputs:
            known = ", ".join(interface.inputs) or "none"
            raise ConfigError(
                f"input '{name}' is not declared by {target} (its inputs: {known})"
            )
    inputs: dict[str, Any] = {}
    for name, spec in interface.inputs.items():
        if name in given:
            inputs[name] = typed_input(spec, given[name], target)
        elif spec.default is not None:
            default = spec.default
            if isinstance(default, str) and "${{" in default:
                default = evaluate(default)
            inputs[name] = typed_input(spec, default, target)
        elif spec.required:
            raise ConfigError(f"input '{name}' is required by {target}")
        else:
            inputs[name] = {"boolean": False, "number": 0.0}.get(spec.type, "")
    return inputs


def call_secrets(
    interface: CallInterface, given: Mapping[str, str] | str | None,
    caller: Mapping[str, str], target: str,
) -> dict[str, str]:
    """The called workflow's ``secrets`` context: the caller's own with ``inherit``, else the
    ones ``given`` (evaluated), and ``GITHUB_TOKEN`` always."""
    token = {"GITHUB_TOKEN": caller.get("GITHUB_TOKEN", "")}
    if given == "inherit":
        return {**token, **caller}
    passed = dict(given) if isinstance(given, Mapping) else {}
    for name in passed:
        if name not in interface.secrets:
            known = ", ".join(interface.secrets) or "none"
            raise ConfigError(
                f"secret '{name}' is not declared by {target} (its secrets: {known})"
            )
    for name, required in interface.secrets.items():
        if required and name not in passed:
            raise ConfigError(f"secret '{name}' is required by {target}")
    return {**token, **passed}


# --- static checks ------------------------------------------------------------------------


def check_call(job: Job, interface: CallInterface, target: str) -> list[tuple[Path, str, bool]]:
    """What GitHub rejects before running a call: (path in the caller, message, at the key).

    Values written as expressions are checked when the call runs (``call_inputs``).
    """
    where: Path = ("jobs", job.id)
    problems: list[tuple[Path, str, bool]] = []
    given = job.with_ if isinstance(job.with_, Mapping) else {}
    for name, value in given.items():
        spec = interface.inputs.get(name)
        if spec is None:
            known = ", ".join(interface.inputs) or "none"
            problems.append(
                ((*where, "with", name),
                 f"input '{name}' is not declared by {target} (its inputs: {known})", True)
            )
        elif not (isinstance(value, str) and "${{" in value):
            try:
                typed_input(spec, value, target)
            except ConfigError as exc:
                problems.append(((*where, "with", name), str(exc), False))
    for name, spec in interface.inputs.items():
        if spec.required and spec.default is None and name not in given:
            problems.append(((*where, "uses"), f"input '{name}' is required by {target}", False))
    if job.secrets != "inherit":
        passed = job.secrets if isinstance(job.secrets, Mapping) else {}
        for name in passed:
            if name not in interface.secrets:
                known = ", ".join(interface.secrets) or "none"
                problems.append(
                    ((*where, "secrets", name),
                     f"secret '{name}' is not declared by {target} (its secrets: {known})", True)
                )
        for name, required in interface.secrets.items():
            if required and name not in passed:
                problems.append(
                    ((*where, "uses"), f"secret '{name}' is required by {target}", False)
                )
    return problems


def repository_root(path: str) -> str:
    """The repository a workflow file belongs to: the folder holding ``.github/workflows``,
    else (a file elsewhere, as ``-W`` allows) the current folder, as act does."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == "workflows":
        github = os.path.dirname(folder)
        if os.path.basename(github) == ".github":
            return os.path.dirname(github)
    return os.getcwd()


#: Reads a called workflow of the local repository: (its path, the loaded workflow).
Loader = Callable[[str], tuple[str, Workflow]]


@dataclass(slots=True)
class _Walk:
    top: Workflow
    root: str
    load: Loader
    diagnostics: list[Diagnostic] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    #: Called files already walked, with the longest chain that reached them.
    walked: dict[str, int] = field(default_factory=dict)
    #: The checked file's call being followed.
    entry: Path = ()


def check_calls(workflow: Workflow, root: str, load: Loader) -> list[Diagnostic]:
    """Every call problem reachable from ``workflow``, each at the ``uses:`` (file and line)
    that causes it: a called file that is missing, invalid or not callable, a ``with`` or
    ``secrets`` that does not fit, a cycle, more than ``MAX_LEVELS`` levels, more than
    ``MAX_WORKFLOWS`` unique workflows. Calls into other repositories are counted but not read
    (they are checked when they run); ``$/`` action steps must name a folder with an action."""
    walk = _Walk(workflow, root, load)
    _visit(workflow, (_identity(workflow.path),), walk, own=True)
    return sorted(set(walk.diagnostics), key=lambda d: (d.file, d.line, d.column, d.message))


def _identity(path: str) -> str:
    return os.path.realpath(path)


def _report(walk: _Walk, workflow: Workflow, path: Path, message: str, key: bool = False) -> None:
    """A problem at ``path``; one found in a called file is told at the checked file's call
    that leads there, with where it is (each file gets only diagnostics of its own)."""
    line, column = _locate(workflow, path, key)
    if workflow is not walk.top:
        message = f"{message} (at {workflow.path}:{line}, reached through this call)"
        line, column = _locate(walk.top, walk.entry, False)
    walk.diagnostics.append(Diagnostic(walk.top.path, line, column, message))


def _locate(workflow: Workflow, path: Path, key: bool) -> tuple[int, int]:
    source = workflow.source
    if source is None:
        return 0, 0
    return source.locate_key(path) if key else source.locate(path)


def _visit(workflow: Workflow, chain: tuple[str, ...], walk: _Walk, *, own: bool) -> None:
    if own:
        _check_self_steps(workflow, walk)
    for job in workflow.jobs.values():
        if job.uses is None:
            continue
        at: Path = ("jobs", job.id, "uses")
        if own:
            walk.entry = at
        try:
            target = parse_target(job.uses)
        except ConfigError:
            continue  # the schema reported it
        walk.seen.add(str(target) if target.remote else os.path.join(walk.root, target.path))
        if len(walk.seen) > MAX_WORKFLOWS:
            _report(
                walk, workflow, at,
                f"{target}: more than {MAX_WORKFLOWS} unique reusable workflows are reached from "
                f"one workflow (GitHub's limit)",
            )
            return
        if len(chain) + 1 > MAX_LEVELS:
            _report(
                walk, workflow, at,
                f"{target}: more than {MAX_LEVELS} levels of workflows (GitHub connects the "
                f"caller and up to {MAX_LEVELS - 1} levels of reusable workflows)",
            )
            continue
        if target.remote:
            continue
        file = os.path.join(walk.root, target.path)
        if not os.path.isabs(workflow.path):  # name it as the caller is named
            file = os.path.relpath(file)
        try:
            path, called = walk.load(file)
        except WorkflowError as exc:
            first = exc.diagnostics[0] if exc.diagnostics else None
            detail = (
                "no such file in the repository"
                if first and first.message.startswith("cannot read")
                else f"it is invalid ({first})"
            )
            _report(walk, workflow, at, f"the called workflow {target}: {detail}")
            continue
        interface = call_interface(called)
        if interface is None:
            _report(
                walk, workflow, at,
                f"the called workflow {target} cannot be called: its 'on' has no workflow_call",
            )
            continue
        if own:
            for path_in, message, key in check_call(job, interface, str(target)):
                _report(walk, workflow, path_in, message, key)
        identity = _identity(path)
        if identity in chain:
            cycle = (*chain[chain.index(identity):], identity)
            names = " → ".join(os.path.basename(item) for item in cycle)
            _report(walk, workflow, at, f"a cycle of reusable workflow calls: {names}")
            continue
        if walk.walked.get(identity, -1) < len(chain):
            # again when reached by a longer chain: its own calls are then deeper
            walk.walked[identity] = len(chain)
            _visit(called, (*chain, identity), walk, own=False)


def _check_self_steps(workflow: Workflow, walk: _Walk) -> None:
    """``uses: $/PATH`` steps: the folder must hold an action (``action.yml``/``.yaml``)."""
    for job in workflow.jobs.values():
        for step in job.steps:
            uses = (step.uses or "").strip()
            if not uses.startswith(SELF):
                continue
            relative = uses[len(SELF):].strip("/")
            folder = os.path.join(walk.root, relative)
            inside = ".." not in relative.split("/")
            if inside and any(
                os.path.isfile(os.path.join(folder, name))
                for name in ("action.yml", "action.yaml")
            ):
                continue
            _report(
                walk, workflow, ("jobs", job.id, "steps", step.index, "uses"),
                f"{uses}: no action.yml or action.yaml under '{relative}' in the repository",
            )


def is_self_reference(uses: str) -> bool:
    """Whether a ``uses:`` names something in the file's own repository with ``$/``."""
    return uses.strip().startswith(SELF)
