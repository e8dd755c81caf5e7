"""What a job uses that vmrunner cannot run, as one pure check shared by the engine (which
refuses such a job before allocating a machine), ``vmrunner run -n`` and the coverage
benchmark (``python -m bench coverage``).

Nothing is started and nothing is fetched: the actions a step ``uses`` are looked up through a
``Resolve`` the caller gives (the engine's reads local actions from the repository on the host,
the benchmark's reads a folder of repositories), and an action it does not know is taken to be
one that runs (JavaScript or composite).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from vmrunner.actions.sources import Action, host_local_action, is_docker_reference
from vmrunner.workflow.models import Job, Step, operating_system

#: The kinds of blockers, the names they are counted by.
CONTAINER = "container"
SERVICES = "services"
DOCKER_IMAGE = "docker:// step"
DOCKER_ACTION = "Docker action"
OTHER_SYSTEM = "Windows or macOS runner"

#: Levels of composite actions followed inside one another (GitHub allows ten).
MAX_DEPTH = 10

#: An action's metadata from a step's ``uses``, or None when it is not known here.
Resolve = Callable[[str], Action | None]


@dataclass(frozen=True, slots=True)
class Blocker:
    """One reason a job cannot run: ``kind`` to count it by, ``reason`` to show."""

    kind: str
    reason: str


def local_actions(repo_root: str) -> Resolve:
    """The engine's lookup: ``./`` actions of the repository on the host, nothing else."""

    def resolve(uses: str) -> Action | None:
        return host_local_action(repo_root, uses) if uses.startswith("./") else None

    return resolve


def walk_steps(
    steps: tuple[Step, ...], resolve: Resolve, *, deep: bool = False
) -> Iterator[tuple[Step, str]]:
    """Every step (those of ``parallel`` groups too) with the composite actions leading to it
    (``''`` for the job's own); ``deep`` also walks the steps of the composite actions that
    ``resolve`` knows, up to ``MAX_DEPTH`` levels."""
    yield from _walk(steps, resolve, deep, (), 0)


def _walk(
    steps: tuple[Step, ...], resolve: Resolve, deep: bool, via: tuple[str, ...], depth: int
) -> Iterator[tuple[Step, str]]:
    for step in (s for top in steps for s in (top, *top.parallel)):
        yield step, " → ".join(via)
        uses = (step.uses or "").strip()
        if not deep or not uses or depth >= MAX_DEPTH or uses in via:
            continue
        action = resolve(uses) if not is_docker_reference(uses) else None
        if action is not None and action.is_composite:
            yield from _walk(action.steps, resolve, deep, (*via, uses), depth + 1)


def job_blockers(
    job: Job, provider: str, resolve: Resolve, *, deep: bool = False, containers: bool = False
) -> list[Blocker]:
    """Every reason the job cannot run on ``provider``, the engine's first: ``container:``,
    ``services:``, then each Docker step (a ``docker://`` image, or an action
    whose ``runs.using`` is ``docker``), in step order. ``deep`` also looks inside composite
    actions (the engine only finds those when the step runs). Windows and macOS runners are
    judged apart (``other_system_reason``): their labels may need the matrix. ``containers``:
    the provider's machines can run images (``container:``, ``services:`` and Docker steps
    with a prebuilt image are no blockers then, nor a Dockerfile to build where the host has
    buildah)."""
    found: list[Blocker] = []
    def refuse(kind: str, what: str) -> None:
        found.append(Blocker(kind, f"job '{job.id}' uses {what}: not supported by the "
                                   f"{provider} provider"))

    if job.container is not None and not containers:
        refuse(CONTAINER, f"a container ({job.container.image})")
    if job.services and not containers:
        refuse(SERVICES, f"service containers ({', '.join(job.services)})")
    for step, via in walk_steps(job.steps, resolve, deep=deep):
        uses = (step.uses or "").strip()
        inside = f", inside {via}" if via else ""
        if is_docker_reference(uses) and not containers:
            refuse(DOCKER_IMAGE, f"a Docker image step ({uses}{inside})")
        elif uses and (action := resolve(uses)) is not None and action.is_docker:
            if not containers:
                refuse(DOCKER_ACTION, f"a Docker action ({uses}{inside})")
            elif not action.image.startswith("docker://") and shutil.which("buildah") is None:
                found.append(Blocker(DOCKER_ACTION, (
                    f"job '{job.id}' uses a Docker action built from a Dockerfile ({uses}"
                    f"{inside}): building its image needs buildah on the host (apt-get install"
                    " buildah)"
                )))  # fmt: skip
    return found


def unsupported_reason(job: Job, repo_root: str, provider: str, containers: bool = False) -> str:
    """Why the engine refuses the job on this provider ('' when it does not): the first of
    ``job_blockers``, with the repository's local actions."""
    found = job_blockers(job, provider, local_actions(repo_root), containers=containers)
    return found[0].reason if found else ""


def other_system_reason(job_id: str, labels: list[str], machine_types: Mapping[str, str]) -> str:
    """Why a job asking for Windows or macOS cannot run here ('' when it can: it does not, or
    one of its labels is mapped to a machine type)."""
    system = operating_system(labels)
    if not system or any(label in machine_types for label in labels):
        return ""
    asked = next(label for label in labels if operating_system([label]))
    return (
        f"job '{job_id}' needs {system} (runs-on: {', '.join(labels)}); this runner runs Linux "
        f"machines: map the label with --machine-type {asked}=TYPE to run it anyway"
    )
