"""Reusable workflows a job calls: where their files come from, read and checked.

A workflow file belongs to a repository on the host, its ``Origin``: the repository being run
(its working tree, or one commit of it), or a clone of another one in the actions cache. A call
to ``./.github/workflows/x.yml`` (or ``$/...``) reads the file from the caller's own origin, so
inside a workflow fetched from ``owner/repo@ref`` it is that repository's file at that ref; a
call to ``owner/repo/.github/workflows/x.yml@ref`` is fetched the way remote actions are
(``repository.fetch_action``, cached under ``VMRUNNER_HOME``). A file that leads (through a
symlink) out of its repository is refused.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from vmrunner.errors import ConfigError, WorkflowError
from vmrunner.repository import fetch_action, git
from vmrunner.workflow.calls import CallInterface, CallTarget, call_interface, parse_target
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.models import Workflow

#: Diagnostics of an invalid called workflow quoted in the caller's reason.
SHOWN_DIAGNOSTICS = 3


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


@dataclass(frozen=True, slots=True)
class CalledWorkflow:
    """A reusable workflow, loaded: what it declares, and the origin its own calls resolve in."""

    target: CallTarget
    workflow: Workflow
    interface: CallInterface
    origin: Origin

    @property
    def identity(self) -> str:
        """The same for every call of this file at this commit (GitHub's unique workflows)."""
        if self.origin.remote:
            return f"{self.origin.repository}/{self.target.path}@{self.origin.ref}"
        return os.path.join(os.path.realpath(self.origin.root), self.target.path)


async def load_called_workflow(uses: str, origin: Origin, actions_url: str) -> CalledWorkflow:
    """The workflow a job's ``uses:`` calls, from ``origin`` (the caller's) or fetched.

    Raises ``ConfigError`` saying what is wrong: a bad reference, a file that cannot be found
    or fetched, an invalid workflow, or one without ``on: workflow_call``.
    """
    target = parse_target(uses)
    if target.remote:
        try:
            clone = await fetch_action(actions_url, target.owner, target.repo, target.ref)
        except ConfigError as exc:
            raise ConfigError(f"cannot fetch the called workflow {target}: {exc}") from exc
        origin = Origin(str(clone), repository=f"{target.owner}/{target.repo}", ref=target.ref)
        filename = str(target)
    else:
        filename = (
            f"{origin.repository}/{target.path}@{origin.ref}" if origin.remote else target.path
        )
    text = await read_file(origin, target.path, f"the called workflow {uses}")
    try:
        workflow = load_workflow_text(text, filename)
    except WorkflowError as exc:
        shown = "; ".join(str(d) for d in exc.diagnostics[:SHOWN_DIAGNOSTICS])
        more = len(exc.diagnostics) - SHOWN_DIAGNOSTICS
        raise ConfigError(
            f"the called workflow {uses} is invalid: {shown}"
            + (f" (and {more} more)" if more > 0 else "")
        ) from exc
    interface = call_interface(workflow)
    if interface is None:
        raise ConfigError(
            f"the called workflow {uses} cannot be called: its 'on' has no workflow_call"
        )
    return CalledWorkflow(target, workflow, interface, origin)


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
