"""``vmrunner agent``: one runner host of a fleet.

An agent serves the procrastinate queues of every label set its own labels cover, runs at most
``capacity`` jobs at once, each in a machine of its own session manager (and warm pool), and
keeps every attempt it runs alive with a heartbeat in the shared store.

Self-fencing: when the heartbeat of an attempt is refused (the fleet gave up on it and retried
it elsewhere) or cannot be written for ``fence`` seconds (shorter than the fleet's ``stall``),
the agent cancels the attempt (its machine is released) and reports nothing more for it. When
the database goes away the agent tears everything down and starts again once it is back.
Any agent also sweeps: running jobs whose heartbeat is older than ``stall`` are retried.

What an attempt reports (log lines, and the runner's other events: steps, annotations, the
job's lifecycle) is kept in memory and written with each heartbeat, in one fenced batch. A
combination of a matrix job runs alone, as ``fleet/matrix.OneCombination``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import procrastinate
import psycopg
import psycopg_pool

from vmrunner.config import NETWORKS, default_network, warn_host_network
from vmrunner.errors import ConfigError, SessionError, StoreError, VmrunnerError
from vmrunner.fleet.labels import agent_queues, canonical
from vmrunner.fleet.matrix import OneCombination
from vmrunner.fleet.store import Assignment, EventRecord, FleetStore
from vmrunner.machines.base import DEFAULT_VM_TYPE, MachineSpec, NetworkMode
from vmrunner.reports.events import (
    Event,
    LogLine,
    Progress,
    RunFinished,
    RunInsights,
    RunStarted,
)
from vmrunner.repository import repository_info
from vmrunner.runner.context import RunContext
from vmrunner.runner.run import Run
from vmrunner.services.host import needs_services, serve_services
from vmrunner.sessions import SessionManager
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.planner import plan

log = logging.getLogger("vmrunner.agent")
#: Every job sees which attempt it is (1 first, then 2, ... after its host was lost).
ATTEMPT_ENV = "VMRUNNER_ATTEMPT"
#: Errors that mean the database (or the connection to it) is gone.
DATABASE_ERRORS = (
    psycopg.Error,
    psycopg_pool.PoolTimeout,
    procrastinate.exceptions.ConnectorException,
    StoreError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    url: str
    name: str
    labels: tuple[str, ...]
    capacity: int = 1
    provider: str = "sandbox"
    #: The network of every job's machine on this host, whatever the run asked for (the host's
    #: owner decides what its jobs reach); empty: the provider's default (``default_network``).
    network: str = ""
    #: Machines kept warm per machine type (0: cold start every job).
    pool_size: int = 0
    #: Seconds between heartbeats of each running attempt (and log flushes).
    heartbeat: float = 1.0
    #: A running job whose heartbeat is older than this is retried elsewhere.
    stall: float = 30.0
    #: An attempt that could not heartbeat for this long is killed here (must be < stall).
    fence: float = 20.0
    #: Seconds between sweeps for stalled jobs.
    sweep_interval: float = 5.0
    max_attempts: int = 3
    #: Seconds to wait before starting again after losing the database.
    restart_delay: float = 1.0
    #: The ``secrets`` context of every job this host runs (never written to the database:
    #: each host holds its own, like a self-hosted runner's credentials); masked in all it reports.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.network not in ("", *NETWORKS):
            raise ConfigError(f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        if self.fence >= self.stall:
            raise ConfigError(
                f"the fence interval ({self.fence}s) must be shorter than the stall interval "
                f"({self.stall}s)"
            )


#: Events of the agent's one-job run not kept: about the run (the fleet run has its own), or
#: of the moment (progress bars).
_NOT_KEPT = (RunStarted, RunFinished, RunInsights, Progress)


class _Reports:
    """An event sink that keeps log lines and events until the next heartbeat writes them in
    one batch. Events are masked by the runner; they are kept as they come, numbered."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[EventRecord] = []
        self.seq = 0

    def emit(self, event: Event) -> None:
        if isinstance(event, LogLine):
            self.lines.append(event.text)
        elif not isinstance(event, _NOT_KEPT):
            self.seq += 1
            data = {
                f.name: getattr(event, f.name)
                for f in dataclasses.fields(event)
                if f.name != "run_id"
            }
            self.events.append(EventRecord(self.seq, type(event).__name__, event.time, data))

    def take(self) -> tuple[list[str], list[EventRecord]]:
        taken = self.lines, self.events
        self.lines, self.events = [], []
        return taken

    def put_back(self, lines: list[str], events: list[EventRecord]) -> None:
        """A batch that could not be written goes before what came since."""
        self.lines, self.events = lines + self.lines, events + self.events


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.network = cast(NetworkMode, config.network or default_network(config.provider))
        self.labels = canonical(config.labels)
        self.queues = agent_queues(self.labels)
        self.sessions: SessionManager | None = None
        self.store: FleetStore | None = None

    async def run_forever(self) -> None:
        """Serve until cancelled; after a database outage, start again."""
        while True:
            try:
                await self.serve()
            except* DATABASE_ERRORS as group:
                log.warning(
                    "agent %s lost the database (%s); starting again",
                    self.config.name,
                    group.exceptions[0],
                )
            await asyncio.sleep(self.config.restart_delay)

    async def serve(self) -> None:
        config = self.config
        async with (
            self._sessions() as sessions,
            FleetStore(config.url, runner=self.run_job) as store,
        ):
            self.sessions, self.store = sessions, store
            await store.register_agent(config.name, self.labels, config.capacity)
            log.info("agent %s serving %s", config.name, ", ".join(self.queues))
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_registered(store))
                group.create_task(
                    store.app.run_worker_async(
                        queues=self.queues,
                        name=config.name,
                        concurrency=config.capacity,
                        install_signal_handlers=False,
                        abort_job_polling_interval=0.2,
                        fetch_job_polling_interval=0.5,
                        shutdown_graceful_timeout=0.1,
                        delete_jobs="always",
                    )
                )

    @contextlib.asynccontextmanager
    async def _sessions(self) -> AsyncIterator[SessionManager]:
        from vmrunner.machines.pool import WarmPool
        from vmrunner.machines.providers import get_provider

        provider = get_provider(self.config.provider)
        if self.network == "host":
            warn_host_network(log.warning)
        async with contextlib.AsyncExitStack() as stack:
            if self.config.pool_size:
                spec = MachineSpec(vm_type=DEFAULT_VM_TYPE, network=self.network)
                provider = await stack.enter_async_context(
                    WarmPool(
                        provider,
                        {DEFAULT_VM_TYPE: self.config.pool_size},
                        specs={DEFAULT_VM_TYPE: spec},
                    )
                )
            else:
                stack.push_async_callback(provider.aclose)
            sessions = await stack.enter_async_context(
                SessionManager(provider, limit=self.config.capacity, wait_timeout=None)
            )
            for action in sessions.reclaimed:
                log.info(
                    "reclaimed %s %s left by agent process %d (%s)",
                    action.kind,
                    action.id,
                    action.owner_pid,
                    action.note or "ok",
                )
            yield sessions

    async def _keep_registered(self, store: FleetStore) -> None:
        """The agent's own heartbeat, and the stalled-job sweep; raises when the database is
        unreachable for the fence interval (which tears the agent down)."""
        last_ok, last_sweep = time.monotonic(), 0.0
        while True:
            try:
                await store.agent_heartbeat(self.config.name)
                if time.monotonic() - last_sweep >= self.config.sweep_interval:
                    last_sweep = time.monotonic()
                    for run_id, job_id, attempt in await store.sweep(
                        self.config.stall, self.config.max_attempts
                    ):
                        log.warning(
                            "job %s of run %s stalled: attempt %d queued", job_id, run_id, attempt
                        )
                last_ok = time.monotonic()
            except DATABASE_ERRORS:
                if time.monotonic() - last_ok > self.config.fence:
                    raise
            await asyncio.sleep(self.config.heartbeat)

    # One attempt

    async def run_job(
        self, context: procrastinate.JobContext, run_id: str, job_id: str, attempt: int
    ) -> None:
        """The procrastinate task: run one attempt, unless it is no longer the current one."""
        store = self.store
        if store is None:
            raise StoreError(f"agent {self.config.name} is not serving: it has no fleet store")
        assignment = await store.start(run_id, job_id, attempt, self.config.name)
        if assignment is None:
            log.info(
                "job %s of run %s: attempt %d is not current; dropped", job_id, run_id, attempt
            )
            return
        logs = _Reports()
        execution = asyncio.create_task(
            self._execute(assignment, logs), name=f"{run_id}/{job_id}#{attempt}"
        )
        try:
            fenced = await self._keep_alive(store, assignment, logs, execution)
            if fenced:
                log.warning(
                    "job %s of run %s: attempt %d fenced off; its machine is released, nothing "
                    "reported",
                    job_id,
                    run_id,
                    attempt,
                )
        except (
            asyncio.CancelledError
        ):  # aborted (cancelled run, or retried elsewhere) or shutting down
            log.warning(
                "job %s of run %s: attempt %d aborted; its machine is released",
                job_id,
                run_id,
                attempt,
            )
            raise
        finally:
            if not execution.done():
                execution.cancel()
            # The machine is released by the session manager when the task ends.
            await asyncio.shield(asyncio.wait([execution]))
        if fenced:
            return
        await self._report(store, assignment, logs, *execution.result())

    async def _keep_alive(
        self,
        store: FleetStore,
        assignment: Assignment,
        logs: _Reports,
        execution: asyncio.Task[Any],
    ) -> bool:
        """Heartbeat (with the logs so far) until the attempt ends; True when it must be
        abandoned: refused (retried elsewhere) or unable to heartbeat for ``fence`` seconds."""
        last_ok = time.monotonic()
        a = assignment
        while True:
            done, _ = await asyncio.wait([execution], timeout=self.config.heartbeat)
            if done:
                return False
            try:
                if not await store.heartbeat(a.run_id, a.job_id, a.attempt):
                    return True
                lines, events = logs.take()
                try:
                    await store.append(a.run_id, a.job_id, a.attempt, lines, events)
                except BaseException:
                    logs.put_back(lines, events)  # written with the next heartbeat
                    raise
                last_ok = time.monotonic()
            except DATABASE_ERRORS:
                if time.monotonic() - last_ok > self.config.fence:
                    return True

    async def _report(
        self,
        store: FleetStore,
        a: Assignment,
        logs: _Reports,
        result: str,
        outputs: dict[str, str],
        reason: str,
        continue_on_error: bool,
    ) -> None:
        """Write the end of the attempt, retrying through short outages up to the fence."""
        deadline = time.monotonic() + self.config.fence
        lines, events = logs.take()
        while True:
            try:
                await store.append(a.run_id, a.job_id, a.attempt, lines, events)
                lines, events = [], []
                if not await store.finish(
                    a.run_id,
                    a.job_id,
                    a.attempt,
                    result,
                    outputs,
                    reason,
                    continue_on_error=continue_on_error,
                ):
                    log.warning(
                        "job %s of run %s: attempt %d ended %s but was no longer current; rejected",
                        a.job_id,
                        a.run_id,
                        a.attempt,
                        result,
                    )
                return
            except DATABASE_ERRORS:
                if time.monotonic() > deadline:
                    log.warning(
                        "job %s of run %s: could not report attempt %d",
                        a.job_id,
                        a.run_id,
                        a.attempt,
                    )
                    return
                await asyncio.sleep(self.config.heartbeat)

    async def _execute(
        self, a: Assignment, logs: _Reports
    ) -> tuple[str, dict[str, str], str, bool]:
        """The job (or one matrix combination) in this host's session manager, as
        ``run_workflow`` runs one job of a run: (result, outputs, reason, continue-on-error)."""
        sessions = self.sessions
        if sessions is None:
            raise SessionError(f"agent {self.config.name} is not serving: it has no sessions")
        job_id = a.parent or a.job_id
        try:
            workflow = load_workflow_text(a.workflow_text, a.workflow_path)
            info = await repository_info(a.options.repo_root)
            options = dataclasses.replace(
                a.options,
                env={**a.options.env, ATTEMPT_ENV: str(a.attempt)},
                secrets=dict(self.config.secrets),
                network=self.network,
            )
            # The run's artifacts are found by its id in VMRUNNER_ARTIFACTS_DIR, which every
            # agent of the fleet shares (docs/fleet.md).
            async with serve_services(enabled=needs_services(workflow)) as services:
                context = RunContext(workflow, options, sessions, logs, info, services=services)
                job_plan = plan(workflow, jobs=a.options.jobs)
                run = (
                    Run(context, job_plan)
                    if a.matrix_index is None
                    else OneCombination(context, job_plan, a.matrix_index)
                )
                run.needs_results.update({need: dict(value) for need, value in a.needs.items()})
                stop_observing = sessions.observe(
                    context.session_changed
                )  # the lifecycle timeline, as Run.execute does
                try:
                    await run.run_job(job_id)
                finally:
                    stop_observing()
        except VmrunnerError as exc:
            return "failure", {}, str(exc), False
        reasons = "; ".join(report.reason for report in run.reports if report.reason)
        if a.matrix_index is None:
            ended = run.needs_results[job_id]
            return str(ended["result"]), dict(ended["outputs"]), reasons, False
        report = next((r for r in run.reports if r.job_key == a.job_id), None)
        if report is None:  # skipped by its if:, or the matrix no longer gives this combination
            if not run.reports or run.reports[0].job_key == job_id:
                return str(run.needs_results[job_id]["result"]), {}, reasons, False
            return (
                "failure",
                {},
                f"combination {a.matrix_index} of job '{job_id}' is now "
                f"'{run.reports[0].job_key}', not '{a.job_id}'",
                False,
            )
        return report.result, dict(report.outputs), report.reason, report.continue_on_error
