"""Options shared by the commands that read workflows (``list``, ``graph``, ``validate``).

``-W`` names a workflow file or folder, the optional EVENT argument keeps only the workflows
that event triggers (with ``-e`` giving the event payload, filters are applied too), and ``-j``
selects jobs (with what they need).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vmrunner.errors import ConfigError

if TYPE_CHECKING:
    from vmrunner.errors import WorkflowError
    from vmrunner.workflow.models import Workflow

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable for ``-W``.
WORKFLOWS_ENV = "VMRUNNER_WORKFLOWS"
DEFAULT_WORKFLOWS = os.path.join(".github", "workflows")


def workflows_option(function: F) -> F:
    """``-W``: the workflows, a file or a folder (``run``, ``list``, ``graph``, ``validate``)."""
    return click.option(
        "-W",
        "--workflows",
        "workflows",
        default=DEFAULT_WORKFLOWS,
        show_default=True,
        envvar=WORKFLOWS_ENV,
        help=f"A workflow file, or a folder of them [env: {WORKFLOWS_ENV}].",
    )(function)


def jobs_option(function: F) -> F:
    """``-j``: only these jobs and what they need, job ids completed from the workflows."""
    return click.option(
        "-j",
        "--job",
        "jobs",
        multiple=True,
        shell_complete=complete_jobs,
        help="Only this job and the jobs it needs (repeatable).",
    )(function)


def workflow_options(function: F) -> F:
    """Add ``-W``, ``-e``, ``-j``, ``--json`` and the optional EVENT argument to a command."""
    decorators = [
        click.argument("event", required=False),
        workflows_option,
        click.option(
            "-e",
            "--event-path",
            "event_path",
            default=None,
            help="The event payload (JSON file), to apply the event's filters.",
        ),
        jobs_option,
        click.option("--json", "as_json", is_flag=True, help="Print JSON for machines."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def complete_jobs(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """The job ids of the workflows ``-W`` names (default: the repository's) that start with
    what was typed; nothing when they cannot be read (completion never fails)."""
    from click.shell_completion import CompletionItem

    from vmrunner.errors import VmrunnerError
    from vmrunner.workflow.loader import load_workflows

    workflows = ctx.params.get("workflows") or DEFAULT_WORKFLOWS
    try:
        loaded = load_workflows(resolve_workflows(str(workflows)))
    except (VmrunnerError, OSError):
        return []
    names = sorted({job for workflow in loaded.workflows for job in workflow.jobs})
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


@dataclass(frozen=True, slots=True)
class Selection:
    """The workflows a command works on, and the files that failed to load."""

    workflows: tuple[Workflow, ...]
    errors: tuple[WorkflowError, ...]
    files: tuple[str, ...]
    jobs: tuple[str, ...]


def read_payload(event_path: str | None) -> dict[str, Any] | None:
    """The JSON event payload at ``event_path``; ``ConfigError`` when unreadable or not an
    object."""
    if event_path is None:
        return None
    try:
        with open(event_path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the event payload {event_path}: {exc.strerror or exc}"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the event payload {event_path} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError(f"the event payload {event_path} must be a JSON object")
    return payload


def resolve_workflows(workflows: str) -> str:
    """``workflows`` as given when it exists; a relative path that does not is taken from the
    top of the repository holding the current folder (so ``vmrunner run`` works from any of
    its folders, as git does)."""
    if os.path.isabs(workflows) or os.path.exists(workflows):
        return workflows
    from vmrunner.config import find_root

    root = find_root(os.getcwd())
    if root is not None and os.path.exists(os.path.join(root, workflows)):
        return os.path.join(root, workflows)
    return workflows


def unknown_jobs_message(jobs: Sequence[str], workflows: Sequence[Workflow]) -> str:
    """What to say for ``-j`` names no workflow has: the closest job names, and where to see
    them all."""
    import difflib

    names = sorted({job for workflow in workflows for job in workflow.jobs})
    parts = []
    for job in jobs:
        close = difflib.get_close_matches(job, names, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"{job!r}{hint}")
    known = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return (
        f"no workflow has a job named {', '.join(parts)}; jobs: {known or '(none)'} "
        f"(`vmrunner list` shows them all)"
    )


def select(
    workflows: str,
    event: str | None,
    event_path: str | None,
    jobs: Sequence[str],
    *,
    assumed_payload: Mapping[str, Any] | None = None,
) -> Selection:
    """Load the workflows at ``workflows``; keep those ``event`` triggers and that have ``jobs``.

    Without a payload an event matches every workflow listening to it (like ``act -l EVENT``);
    with one, branch, tag, path and type filters apply as on GitHub. ``assumed_payload`` is the
    payload to filter with when no file is given (``vmrunner run`` passes the repository's
    current ref for ``push``, so a tags-only workflow does not run for a branch).
    """
    from vmrunner.errors import WorkflowError
    from vmrunner.workflow.loader import load_workflows
    from vmrunner.workflow.triggers import match_event, payload_changed_files

    payload = read_payload(event_path)
    if payload is not None and event is None:
        raise ConfigError("-e/--event-path needs the EVENT argument (e.g. push)")
    workflows = resolve_workflows(workflows)
    try:
        result = load_workflows(workflows)
    except WorkflowError as exc:
        raise ConfigError(f"no workflows at {workflows}: {exc.diagnostics[0].message}") from exc
    if payload is None:
        payload = dict(assumed_payload) if assumed_payload else None
    chosen = []
    for workflow in result.workflows:
        if event is not None:
            if payload is None:
                if event not in workflow.triggers.events:
                    continue
            elif not match_event(
                workflow.triggers, event, payload, changed_files=payload_changed_files(payload)
            ):
                continue
        if jobs and not any(job in workflow.jobs for job in jobs):
            continue
        chosen.append(workflow)
    missing = [job for job in jobs if not any(job in w.jobs for w in result.workflows)]
    if missing and not result.errors:
        raise ConfigError(unknown_jobs_message(missing, result.workflows))
    return Selection(tuple(chosen), result.errors, result.files, tuple(jobs))


def selected_jobs(workflow: Workflow, jobs: Sequence[str]) -> list[str] | None:
    """The requested jobs that exist in ``workflow`` (``None``: no selection, all jobs)."""
    return [job for job in jobs if job in workflow.jobs] if jobs else None


class Size(click.ParamType[int]):
    """A size option (``--memory 256M``) as whole MiB; a clear usage error for bad input."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from vmrunner.machines.limits import MIN_DISK_MIB, MIN_MEMORY_MIB, parse_size

        if isinstance(value, int):
            return value
        disk = param is not None and param.name == "disk_mib"
        what = "disk" if disk else "memory"
        try:
            return parse_size(value, what, minimum=MIN_DISK_MIB if disk else MIN_MEMORY_MIB)
        except ConfigError as exc:
            self.fail(str(exc).removeprefix(f"{what}: "), param, ctx)


class RepositoryName(click.ParamType[str]):
    """An ``owner/name`` option (``--repository``), checked as GitHub names repositories."""

    name = "owner/name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from vmrunner.repository import OWNER_NAME

        if not OWNER_NAME.match(str(value)):
            self.fail(f"expected OWNER/NAME, got {value!r}", param, ctx)
        return str(value)


def _count(minimum: int) -> Callable[[click.Context, click.Parameter, int | None], int | None]:
    def check(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        if value is not None and 0 < value < minimum:
            raise click.BadParameter(
                f"at least {minimum} (or 0 for no limit), got {value}", ctx, param
            )
        return value

    return check


def limit_options(function: F) -> F:
    """Add ``--cpus``, ``--memory``, ``--pids`` and ``--disk``: every machine's limits."""
    from vmrunner.machines.limits import MIN_PIDS

    decorators = [
        click.option(
            "--cpus",
            type=click.IntRange(min=0),
            default=None,
            help="CPUs of each machine (default: 2, at most the host's; 0: no limit).",
        ),
        click.option(
            "--memory",
            "memory_mib",
            type=Size(),
            default=None,
            help="Memory of each machine, e.g. 512M, 7G (default: 7G, at most half the host's; "
            "0: no limit).",
        ),
        click.option(
            "--pids",
            type=click.IntRange(min=0),
            default=None,
            callback=_count(MIN_PIDS),
            help="Processes and threads of each machine, at most (default: 4096; 0: no limit).",
        ),
        click.option(
            "--disk",
            "disk_mib",
            type=Size(),
            default=None,
            help="Disk budget of each machine's writable space, e.g. 20G (default: 14G, less if "
            "the host has less free; 0: none).",
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function
