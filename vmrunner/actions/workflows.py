"""Reusable workflows a job calls: where their files come from, read and checked.

A workflow file belongs to a repository on the host, its ``Origin``: the repository being run
(its working tree, or one commit of it), or a clone of another one in the actions cache. A call
to ``./.github/workflows/x.yml`` (or ``$/...``) reads the file from the caller's own origin, so
inside a workflow fetched from ``owner/repo@ref`` it is that repository's file at that ref; a
call to ``owner/repo/.github/workflows/x.yml@ref`` is fetched the way remote actions are
(``sources.repository_folder``: a ``--local-repository`` folder, or the actions cache). A file
that leads (through a symlink) out of its repository is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vmrunner.actions.origin import Origin, read_file
from vmrunner.actions.sources import ActionError, Sources, repository_folder
from vmrunner.errors import ConfigError, WorkflowError
from vmrunner.workflow.calls import CallInterface, CallTarget, call_interface, parse_target
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.models import Workflow

#: Diagnostics of an invalid called workflow quoted in the caller's reason.
SHOWN_DIAGNOSTICS = 3


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


async def load_called_workflow(uses: str, origin: Origin, sources: Sources) -> CalledWorkflow:
    """The workflow a job's ``uses:`` calls, from ``origin`` (the caller's) or fetched.

    Raises ``ConfigError`` saying what is wrong: a bad reference, a file that cannot be found
    or fetched, an invalid workflow, or one without ``on: workflow_call``.
    """
    target = parse_target(uses)
    if target.remote:
        try:
            found = await repository_folder(target.owner, target.repo, target.ref, sources)
        except ActionError as exc:
            raise ConfigError(f"cannot fetch the called workflow {target}: {exc}") from exc
        origin = Origin(str(found.path), repository=f"{target.owner}/{target.repo}", ref=target.ref)
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
