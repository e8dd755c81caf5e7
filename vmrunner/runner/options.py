"""What a caller decides about a run: the event, secrets and variables, limits, hooks, snapshots.

Defaults are module constants; ``RunOptions`` is immutable, so one value can be shared by many
runs (the CLI builds one per invocation, the server one per event).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from vmrunner.actions.sources import Sources
from vmrunner.machines.base import DEFAULT_VM_TYPE, MachineSpec, NetworkMode

DEFAULT_EVENT = "push"
DEFAULT_CONCURRENT_JOBS = 4
#: GitHub's default job timeout (minutes).
DEFAULT_JOB_TIMEOUT_MINUTES = 360.0
DEFAULT_SERVER_URL = "https://github.com"
#: Where ``owner/repo@ref`` actions are cloned from (``{base}/{owner}/{repo}``).
DEFAULT_ACTIONS_URL = "https://github.com"
DEFAULT_ACTOR = "vmrunner"
#: The limits a machine can be given, as ``MachineSpec`` (and ``RunOptions``) name them.
LIMIT_NAMES = ("cpus", "memory_mib", "pids", "disk_mib")


def _empty() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything about a run that does not come from the workflow file."""

    event_name: str = DEFAULT_EVENT
    #: The event payload (``github.event``).
    payload: Mapping[str, Any] = field(default_factory=_empty)
    secrets: Mapping[str, str] = field(default_factory=_empty)
    vars: Mapping[str, str] = field(default_factory=_empty)
    #: Extra environment for every job, below the workflow's ``env`` (``--env-file``).
    env: Mapping[str, str] = field(default_factory=_empty)
    #: ``workflow_dispatch`` inputs as given (strings); typed with the workflow's definitions.
    inputs: Mapping[str, Any] = field(default_factory=_empty)
    #: Only these jobs and what they need; None: every job.
    jobs: tuple[str, ...] | None = None
    #: Keep only matrix combinations whose values match (``--matrix key:value``).
    matrix_filter: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)
    concurrent_jobs: int = DEFAULT_CONCURRENT_JOBS
    #: For jobs without ``timeout-minutes``.
    job_timeout_minutes: float = DEFAULT_JOB_TIMEOUT_MINUTES
    #: Commands run in each job's machine before its steps, and after them (also on failure).
    setup_commands: tuple[str, ...] = ()
    cleanup_commands: tuple[str, ...] = ()
    #: Take a snapshot after each successful step; restore the last one when the job fails.
    snapshot: bool = False
    rollback_on_failure: bool = False
    #: The repository on the host: what ``actions/checkout`` copies and ``./`` actions come from.
    repo_root: str = "."
    #: Check out this commit (``git archive``) instead of the working tree.
    commit: str | None = None
    actor: str = DEFAULT_ACTOR
    #: ``owner/name``; empty: taken from the repository's ``origin`` remote, else
    #: ``local/<folder name>``.
    repository: str = ""
    sha: str = ""
    ref: str = ""
    run_id: str = ""
    run_number: int = 1
    #: ``runs-on`` label -> machine type; unmapped labels run on ``default_vm_type``.
    machine_types: Mapping[str, str] = field(default_factory=_empty)
    default_vm_type: str = DEFAULT_VM_TYPE
    #: The network of every job's machine (see ``machines/network.py``).
    network: NetworkMode = "private"
    server_url: str = DEFAULT_SERVER_URL
    actions_url: str = DEFAULT_ACTIONS_URL
    #: Use only the actions cache: nothing is fetched (``--offline``).
    offline: bool = False
    #: ``owner/repo@ref`` (or ``URL@ref``) -> a local folder used instead (``--local-repository``).
    local_repositories: Mapping[str, str] = field(default_factory=_empty)
    #: ``owner/repo`` -> a local git repository ``actions/checkout`` fetches it from
    #: (``--repository-mirror``).
    repository_mirrors: Mapping[str, str] = field(default_factory=_empty)
    #: Limits of every job's machine (``--cpus``, ``--memory``...); None: the machine type's
    #: setting, else the provider's default; 0: no limit.
    cpus: int | None = None
    memory_mib: int | None = None
    pids: int | None = None
    disk_mib: int | None = None
    #: Limits per machine type (the server's ``[machine-types.NAME]``), below the ones above:
    #: type -> {"cpus": 2, "memory_mib": 4096, "pids": 4096, "disk_mib": 16384}.
    machine_limits: Mapping[str, Mapping[str, int]] = field(default_factory=_empty)


def action_sources(options: RunOptions) -> Sources:
    """Where the run's actions and called workflows come from (``--offline``,
    ``--local-repository``, the actions server)."""
    return Sources(options.actions_url, options.offline, options.local_repositories)


def machine_spec(
    options: RunOptions, vm_type: str, labels: Mapping[str, str] | None = None
) -> MachineSpec:
    """What to allocate for a job on ``vm_type``: its network and limits (the warm pool's
    machines are made from the same, so that they fit)."""
    per_type = options.machine_limits.get(vm_type, {})
    limits: dict[str, int | None] = {}
    for name in LIMIT_NAMES:
        value = getattr(options, name)
        limits[name] = value if value is not None else per_type.get(name)
    return MachineSpec(
        vm_type=vm_type, network=options.network, labels=dict(labels or {}),
        cpus=limits["cpus"], memory_mib=limits["memory_mib"], pids=limits["pids"],
        disk_mib=limits["disk_mib"],
    )


def plain(value: Any) -> Any:
    """``value`` with its mappings and sequences made JSON's dicts and lists, all the way down."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def options_data(options: RunOptions, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The options (or only ``names`` of them) as JSON data, never with the secrets."""
    chosen = [f.name for f in fields(RunOptions)] if names is None else names
    return {name: plain(getattr(options, name)) for name in chosen if name != "secrets"}


def options_from_data(data: Mapping[str, Any], **changes: Any) -> RunOptions:
    """The options ``options_data`` wrote (unknown keys ignored), with ``changes``."""
    known = {f.name for f in fields(RunOptions)}
    values = {k: v for k, v in data.items() if k in known}
    for name in ("jobs", "setup_commands", "cleanup_commands"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    if "matrix_filter" in values:
        values["matrix_filter"] = {k: tuple(v) for k, v in values["matrix_filter"].items()}
    return RunOptions(**{**values, **changes})
