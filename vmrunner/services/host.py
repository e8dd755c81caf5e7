"""Serving the artifact and cache services, and handing them to a job's machine.

``serve_services()`` runs the app (``services/app.py``) under uvicorn on a unix socket of its
own, for as long as its ``async with`` lasts (``run_workflow`` opens one per run that has
``uses:`` steps). ``ServiceHost.for_job(machine, ...)`` opens the machine's forward: a listener
on ``127.0.0.1:<port>`` inside the machine whose connections reach that socket, and gives the
environment GitHub gives actions (``ACTIONS_RUNTIME_TOKEN``, ``ACTIONS_RESULTS_URL``, ...),
with a token for that job only. The machine never sees the host's network: only this one
socket, through its agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmrunner.errors import ConfigError, ForwardUnsupported, VmrunnerError

if TYPE_CHECKING:  # the app, its tokens and artifacts load only when a run serves them
    from vmrunner.machines.base import Machine
    from vmrunner.services.settings import ServiceSettings
    from vmrunner.services.tokens import JobGrant, Signer
    from vmrunner.workflow.models import Workflow

log = logging.getLogger(__name__)
SOCKET_NAME = "services.sock"
#: The default branch when the event does not name one (GitHub's payloads always do).
FALLBACK_DEFAULT_BRANCH = "main"


def needs_services(workflow: Workflow) -> bool:
    """Whether a run of ``workflow`` may call an action (or a workflow) that wants them: any
    ``uses:`` but checkout and Docker images."""
    for job in workflow.jobs.values():
        if job.calls_workflow:
            return True
        for step in job.steps:
            uses = (step.uses or "").strip()
            if uses and not uses.startswith("docker://") and not uses.startswith(
                "actions/checkout@"
            ):
                return True
    return False


def job_grant(run_id: str, job_key: str, github: Mapping[str, Any]) -> JobGrant:
    """What a job may reach, from its ``github`` context: its run's artifacts; the caches of
    its ref, then of its pull request's base branch and of the default branch."""
    from vmrunner.services.tokens import JobGrant

    ref = str(github.get("ref") or "")
    event = github.get("event")
    repository_data = event.get("repository") if isinstance(event, Mapping) else None
    default = (
        repository_data.get("default_branch") if isinstance(repository_data, Mapping) else None
    )
    readable = [ref]
    if github.get("base_ref"):
        readable.append(f"refs/heads/{github['base_ref']}")
    readable.append(f"refs/heads/{default or FALLBACK_DEFAULT_BRANCH}")
    unique = tuple(dict.fromkeys(r for r in readable if r))
    return JobGrant(run_id, job_key, str(github.get("repository") or ""), ref, unique)


class ServiceHost:
    """The running services: their socket, and the environment each job's actions get."""

    def __init__(self, socket: Path, signer: Signer, settings: ServiceSettings) -> None:
        self.socket = socket
        self.signer = signer
        self.settings = settings

    def action_env(self, grant: JobGrant, port: int) -> dict[str, str]:
        """What GitHub sets for actions (not for ``run:`` scripts), for a job whose machine
        reaches the services at ``127.0.0.1:port``."""
        url = f"http://127.0.0.1:{port}/"
        return {
            "ACTIONS_RUNTIME_TOKEN": self.signer.token(grant),
            "ACTIONS_RESULTS_URL": url,
            "ACTIONS_RUNTIME_URL": url,
            "ACTIONS_CACHE_URL": url,
            "ACTIONS_CACHE_SERVICE_V2": "True",
            "GITHUB_RETENTION_DAYS": str(self.settings.retention_days),
        }

    @contextlib.asynccontextmanager
    async def for_job(
        self, machine: Machine, grant: JobGrant, warn: Callable[[str], None]
    ) -> AsyncIterator[dict[str, str]]:
        """The actions' environment while the machine's forward to the services is open; empty
        when the machine cannot forward (quietly: its provider says so), or after a warning when
        the forward could not be opened."""
        stack = contextlib.AsyncExitStack()
        try:
            port = await stack.enter_async_context(machine.forward(self.socket, 0))
        except ForwardUnsupported:
            log.debug("services: machine %s cannot forward", machine.id)
            yield {}
            return
        except VmrunnerError as exc:
            warn(f"the artifact and cache services are not reachable from this machine: {exc}")
            yield {}
            return
        async with stack:
            yield self.action_env(grant, int(port))


@contextlib.asynccontextmanager
async def serve_services(
    settings: ServiceSettings | None = None, *, enabled: bool = True
) -> AsyncIterator[ServiceHost | None]:
    """The services on a fresh unix socket until the block ends (None when not ``enabled``);
    expired artifacts are pruned first."""
    if not enabled:
        yield None
        return
    import uvicorn  # here: ``vmrunner --help`` and runs without actions never load it

    class QuietServer(uvicorn.Server):
        """uvicorn without its signal handlers: Ctrl-C belongs to the command that runs us."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    from vmrunner.services.app import create_services_app
    from vmrunner.services.artifacts import ArtifactStore
    from vmrunner.services.settings import ServiceSettings
    from vmrunner.services.tokens import Signer, load_secret

    settings = settings or ServiceSettings.from_env()
    signer = Signer(load_secret())
    store = ArtifactStore(settings.artifacts_dir, settings.retention_days)
    try:
        await asyncio.to_thread(store.prune)
    except (OSError, VmrunnerError) as exc:
        log.warning("services: cannot prune expired artifacts: %s", exc)
    folder = Path(tempfile.mkdtemp(prefix="vmrunner-services-"))
    socket = folder / SOCKET_NAME
    config = uvicorn.Config(
        create_services_app(settings, signer), uds=str(socket), lifespan="off",
        access_log=False, log_level="warning", http="httptools", timeout_keep_alive=30,
    )
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(), name="vmrunner services")
    try:
        while not server.started:
            if task.done():
                raise ConfigError(f"the artifact and cache services did not start on {socket}")
            await asyncio.sleep(0.005)
        yield ServiceHost(socket, signer, settings)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait({task}, timeout=10)
        finally:
            if not task.done():
                task.cancel()
            shutil.rmtree(folder, ignore_errors=True)
