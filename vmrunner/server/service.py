"""The server's engine: deliveries become queued runs, runs wait for a slot, results go to GitHub.

``Service`` is an async context manager owning everything that lives as long as the server:
the state database, the provider (and warm pool), the session manager (whose reaper runs
meanwhile and which reclaims machines of a dead server on start), the GitHub client, and one
``TaskGroup`` holding the dispatcher and every run. The web app's ``lifespan`` enters it.

Flow: ``accept`` (called while answering a webhook) only records the delivery in SQLite and
wakes the dispatcher, so the request returns at once. The dispatcher fetches the event's commit
into the repository's mirror, reads the workflows of that commit, and queues one run per
workflow whose triggers and filters match (in the same transaction that marks the delivery
handled). Each run waits for one of ``concurrent_runs`` slots, and its jobs wait for machines
in the session manager: capacity makes work wait, never fail.

Where runs execute is the ``Executor``'s business (``vmrunner.server.executors``): in this
process (the default), or on a fleet of ``vmrunner agent`` hosts with ``store`` set (a
PostgreSQL URL), where the server only submits each run and watches it. A ``workflow_run``
event that says GitHub cancelled a run, or ``cancel``, cancels our runs of that workflow.

Restart: runs left ``running`` by a dead server are marked ``interrupted`` (and their jobs'
statuses set to error), except on a fleet, where they went on and are watched again; ``queued``
runs and unhandled deliveries are picked up again. Shutdown: ``begin_drain`` refuses new
webhooks (503); leaving the context waits up to ``drain_seconds`` for running runs (not for
fleet runs, which go on without us), then cancels them (jobs run their cleanup commands and
release their machines); queued runs stay queued for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

from vmrunner.config import default_network, warn_host_network
from vmrunner.errors import ConfigError, RunNotFound, StoreError, VmrunnerError
from vmrunner.machines.base import DEFAULT_VM_TYPE, NetworkMode, Provider
from vmrunner.machines.pool import WarmPool
from vmrunner.machines.providers import get_provider
from vmrunner.reports.storage import RunHistory
from vmrunner.runner.options import RunOptions, machine_spec
from vmrunner.server.checks import iso
from vmrunner.server.config import RepositoryConfig, ServerConfig
from vmrunner.server.executors import REPORT_GRACE, Executor, LocalRuns
from vmrunner.server.github import GitHubClient, Status
from vmrunner.server.metrics import Metrics
from vmrunner.server.mirrors import ZERO_SHA, Mirrors
from vmrunner.server.reporting import status_context
from vmrunner.server.rerequests import is_rerequest, runs_to_rerun
from vmrunner.server.state import ServerRun, ServerState
from vmrunner.sessions import Owner, SessionManager
from vmrunner.store import Store
from vmrunner.workflow.models import Workflow
from vmrunner.workflow.triggers import match_event, payload_changed_files

log = logging.getLogger(__name__)
#: One line per webhook delivery: what became of it (JSON after ``delivery``).
delivery_log = logging.getLogger("vmrunner.server.deliveries")

#: Events that can start runs; every other event but a cancelled ``workflow_run`` is acknowledged
#: and ignored.
RUN_EVENTS = frozenset({"push", "pull_request", "workflow_dispatch", "repository_dispatch"})
#: Seconds between WAL checkpoints of the server's own connection (done in a thread).
CHECKPOINT_INTERVAL = 1.0
#: Seconds before deliveries are dispatched again after the store failed (a full disk).
STORE_RETRY_INTERVAL = 5.0

Verdict = Literal["queued", "duplicate", "ignored", "draining"]
_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class Accepted:
    verdict: Verdict
    note: str = ""


def new_run_id() -> str:
    """Numeric like GitHub's, unique even for several runs started in the same millisecond."""
    return str(int(time.time() * 1000) * 1000 + next(_ids) % 1000)


def repository_of(payload: Mapping[str, Any]) -> str:
    repository = payload.get("repository")
    name = repository.get("full_name") if isinstance(repository, Mapping) else None
    return name if isinstance(name, str) else ""


def event_target(event: str, payload: Mapping[str, Any]) -> tuple[str, str, int | None] | str:
    """(commit or ref to fetch, ref, pull request number), or why the event runs nothing."""
    if event == "push":
        after = str(payload.get("after") or "")
        if payload.get("deleted") is True or not after or after == ZERO_SHA:
            return "the push deleted a branch or tag"
        return after, str(payload.get("ref") or ""), None
    if event == "pull_request":
        pull = payload.get("pull_request")
        head = pull.get("head") if isinstance(pull, Mapping) else None
        sha = head.get("sha") if isinstance(head, Mapping) else None
        number = payload.get("number") or (
            pull.get("number") if isinstance(pull, Mapping) else None
        )
        if not isinstance(sha, str) or not isinstance(number, int):
            return "the pull request payload has no head sha or number"
        return sha, f"refs/pull/{number}/head", number
    ref = payload.get("ref")
    if event == "repository_dispatch" or not isinstance(ref, str):
        repository = payload.get("repository")
        branch = repository.get("default_branch") if isinstance(repository, Mapping) else None
        ref = f"refs/heads/{branch}" if isinstance(branch, str) else "HEAD"
    elif not ref.startswith("refs/"):
        ref = f"refs/heads/{ref}"
    return ref, ref, None


class Service:
    """See the module docstring. ``Service(config, provider=None)``; ``provider`` overrides
    ``config.provider``."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        provider: Provider | None = None,
        github_transport: Any = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.mirrors = Mirrors()
        self.owner = Owner.current()
        self.draining = False
        self._drain_deadline = 0.0
        self.pool: WarmPool | None = None
        self._provider = provider
        #: The network of every job's machine.
        self.network = cast(
            NetworkMode,
            config.network or default_network(provider.name if provider else config.provider),
        )
        self._github_transport = github_transport
        self._stack = AsyncExitStack()
        self._wake = asyncio.Event()
        self._slots: contextlib.AbstractAsyncContextManager[Any] = asyncio.Semaphore(
            max(1, config.concurrent_runs)
        )
        self._cancelling: set[str] = set()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._running: set[str] = set()
        self._comment_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._group: asyncio.TaskGroup | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    # Lifecycle

    async def __aenter__(self) -> Service:
        stack = self._stack
        try:
            self.store = stack.enter_context(Store.open())
            self.state = ServerState.open(self.store.path)
            stack.callback(self.state.close)
            if self.network == "host":
                warn_host_network(log.warning)
            provider = self._provider or get_provider(self.config.provider)
            if self.config.pool_size and not self.config.store:
                spec = machine_spec(
                    RunOptions(machine_limits=self.config.machine_limits, network=self.network),
                    DEFAULT_VM_TYPE,
                )
                self.pool = await stack.enter_async_context(
                    WarmPool(
                        provider,
                        {DEFAULT_VM_TYPE: self.config.pool_size},
                        specs={DEFAULT_VM_TYPE: spec},
                    )
                )
                provider = self.pool
            elif self._provider is None:
                stack.push_async_callback(provider.aclose)
            self.sessions = await stack.enter_async_context(
                SessionManager(
                    provider,
                    limit=self.config.concurrent_jobs,
                    store=self.store,
                    wait_timeout=self.config.wait_timeout,
                )
            )
            self.github = await stack.enter_async_context(
                GitHubClient(
                    self.config.github_api_url,
                    token=self.config.github_token,
                    app=self.config.github_app,
                    transport=self._github_transport,
                )
            )
            for value in self.config.secret_values():
                self.github.masker.add(value)
            self.executor = await self._executor(stack)
            self._group = await stack.enter_async_context(asyncio.TaskGroup())
            stack.push_async_callback(self._stop)
        except BaseException:
            await stack.aclose()
            raise
        self.metrics.on_scrape(self._refresh_gauges)
        if self.executor.detached:
            for run in self.state.runs(
                state="running"
            ):  # they went on without us: watch them again
                self._launch(run)
        else:
            interrupted = self.state.interrupt_orphans()
            RunHistory(self.store).mark_interrupted()
            for run in interrupted:
                self._group.create_task(self._report_interrupted(run))
        for run in self.state.runs(state="queued"):
            self._launch(run)
        self._dispatcher = self._group.create_task(self._dispatch_forever(), name="dispatcher")
        self._checkpoints = self._group.create_task(self._checkpoint_forever(), name="checkpoints")
        self._wake.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _executor(self, stack: AsyncExitStack) -> Executor:
        """Runs here, or (with ``store``) on the fleet: the one place the two paths part."""
        if not self.config.store:
            return LocalRuns(
                self.store, self.sessions, self.github, self.metrics,
                max_step_log=self.config.max_step_log_bytes,
                checks=self.config.reporting("checks"),
                statuses=self.config.reporting("statuses"),
            )
        from vmrunner.fleet.store import FleetStore  # the fleet extra
        from vmrunner.server.queued import QueuedRuns

        self._slots = contextlib.nullcontext()  # the agents' capacity limits the fleet, not us
        fleet = await stack.enter_async_context(FleetStore(self.config.store))
        return QueuedRuns(fleet, self.github, self.metrics)

    def begin_drain(self) -> None:
        """Refuse new webhooks from now on; running runs have ``drain_seconds`` from now to
        finish."""
        if not self.draining:
            self.draining = True
            self._drain_deadline = asyncio.get_running_loop().time() + self.config.drain_seconds

    async def wait_idle(self) -> None:
        """Return once no run is running (callers bound the wait with ``asyncio.timeout``);
        fleet runs go on without this server: nothing to wait for."""
        while not self.executor.detached and (
            running := [task for run_id, task in self._runs.items() if run_id in self._running]
        ):
            await asyncio.wait(running)

    async def _stop(self) -> None:
        """Drain: grace for running runs, then cancel every task (queued runs stay queued)."""
        self.begin_drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._drain_deadline):
                await self.wait_idle()
        for background in (self._dispatcher, self._checkpoints):
            if background is not None:
                background.cancel()
        for task in list(self._runs.values()):
            task.cancel()

    # Webhooks

    def accept(
        self, delivery_id: str, event: str, body: bytes, payload: Mapping[str, Any]
    ) -> Accepted:
        """Record one delivery (quickly: this runs while answering the webhook)."""
        if self.draining:
            return Accepted("draining", "the server is shutting down")
        repository = repository_of(payload)
        if (
            event == "workflow_run"
            and cancelled_workflow(payload) is not None
            and self.config.repository(repository) is not None
        ):
            fresh = self.state.add_delivery(delivery_id, event, repository, body, "received")
            if fresh:
                self._wake.set()
            return Accepted("queued" if fresh else "duplicate")
        if is_rerequest(event, payload) and self.config.repository(repository) is not None:
            fresh = self.state.add_delivery(delivery_id, event, repository, body, "received")
            if fresh:
                self._wake.set()
            return Accepted("queued" if fresh else "duplicate")
        if event not in RUN_EVENTS:
            note = f"{event} events start no runs"
        elif self.config.repository(repository) is None:
            note = f"the repository {repository or '(none)'} is not configured"
        else:
            fresh = self.state.add_delivery(delivery_id, event, repository, body, "received")
            if fresh:
                self._wake.set()
            return Accepted("queued" if fresh else "duplicate")
        fresh = self.state.add_delivery(delivery_id, event, repository, b"{}", "ignored", note)
        return Accepted("ignored" if fresh else "duplicate", note)

    async def _checkpoint_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            checkpoint = asyncio.ensure_future(asyncio.to_thread(self.state.checkpoint))
            try:
                await asyncio.shield(checkpoint)
            except asyncio.CancelledError:
                await asyncio.wait([checkpoint])  # the thread must be done before the state closes
                raise
            except VmrunnerError as exc:
                log.warning("%s", exc)

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for delivery in self.state.pending_deliveries():
                try:
                    try:
                        await self._dispatch(delivery.id, delivery.event, delivery.repository)
                    except StoreError:
                        raise
                    except VmrunnerError as exc:
                        log.warning("delivery %s: %s", delivery.id, exc)
                        self.state.finish_delivery(delivery.id, "failed", str(exc))
                    except Exception as exc:  # a bug must cost one delivery, not the server
                        log.exception("delivery %s", delivery.id)
                        self.state.finish_delivery(
                            delivery.id, "failed", f"internal error: {exc!r}"
                        )
                    self._log_dispatched(delivery.id)
                except StoreError as exc:  # nothing was recorded: the delivery waits, not lost
                    log.warning(
                        "delivery %s: the store failed, trying again in %g s: %s",
                        delivery.id, STORE_RETRY_INTERVAL, exc,
                    )
                    await asyncio.sleep(STORE_RETRY_INTERVAL)
                    self._wake.set()
                    break

    def _log_dispatched(self, delivery_id: str) -> None:
        found = self.state.delivery(delivery_id)
        if found is not None:
            runs = [run.run_id for run in self.state.runs(delivery_id=delivery_id)]
            log_delivery(
                delivery_id, found.event, found.repository, found.status, runs,
                self.github.masker.mask(found.note),
            )

    async def _dispatch(self, delivery_id: str, event: str, repository: str) -> None:
        payload = self.state.payload(delivery_id)
        repo = self.config.repository(repository)
        if event == "workflow_run":
            await self._cancel_matching(delivery_id, repository, payload)
            return
        if is_rerequest(event, payload):
            await self._rerequested(delivery_id, event, repository, payload)
            return
        target = event_target(event, payload)
        if repo is None or isinstance(target, str):
            self.state.finish_delivery(
                delivery_id, "ignored", target if isinstance(target, str) else "not configured"
            )
            return
        want, ref, number = target
        mirror, sha = await self.mirrors.commit(repo, want)
        changed = payload_changed_files(payload) if event == "push" else None
        loaded = await self.mirrors.workflows(mirror, sha)
        chosen = [
            relative
            for relative, workflow in loaded.workflows.items()
            if _wanted(event, payload, relative)
            and match_event(workflow.triggers, event, payload, changed_files=changed)
        ]
        now = time.time()
        runs = [
            ServerRun(
                0,
                new_run_id(),
                delivery_id,
                repo.name,
                relative,
                event,
                sha,
                ref,
                number,
                "queued",
                None,
                now,
                None,
                None,
                None,
                None,
                "",
            )
            for relative in chosen
        ]
        problems = "; ".join(loaded.problems)[:500]
        note = f"{len(runs)} run(s) for {sha[:12]}" + (
            f"; invalid workflows: {problems}" if problems else ""
        )
        self.state.finish_delivery(delivery_id, "dispatched" if runs else "ignored", note, runs)
        for run in runs:
            stored = self.state.run(run.run_id)
            if stored is not None:
                self._launch(stored)

    async def _cancel_matching(
        self, delivery_id: str, repository: str, payload: Mapping[str, Any]
    ) -> None:
        """GitHub cancelled a run of a workflow at a commit: cancel ours of that workflow and
        commit."""
        wanted = cancelled_workflow(payload)
        matching = [
            run
            for run in self.state.runs(state="running") + self.state.runs(state="queued")
            if wanted is not None
            and run.repository.lower() == repository.lower()
            and (run.sha, run.workflow_file) == wanted
        ]
        cancelled = [run.run_id for run in matching if await self.cancel(run.run_id)]
        note = (
            f"cancelled run(s) {', '.join(cancelled)}"
            if cancelled
            else "no run of this workflow and commit was running"
        )
        self.state.finish_delivery(delivery_id, "dispatched" if cancelled else "ignored", note)

    async def _rerequested(
        self, delivery_id: str, event: str, repository: str, payload: Mapping[str, Any]
    ) -> None:
        """Someone pressed "Re-run" on our check run or check suite: run those runs again."""
        found = runs_to_rerun(event, payload, repository, self.state.runs())
        if isinstance(found, str):
            self.state.finish_delivery(delivery_id, "ignored", found)
            return
        again, refused = [], []
        for run in found:
            try:
                again.append(self.rerun(run.run_id).run_id)
            except ConfigError as exc:
                refused.append(str(exc))
        note = "; ".join([f"re-ran as {', '.join(again)}" if again else "", *refused]).strip("; ")
        self.state.finish_delivery(delivery_id, "dispatched" if again else "ignored", note)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a queued or running run (a fleet run loses its machines on its hosts); False
        when it is not running. ``RunNotFound`` for a run this server never queued."""
        run = self.state.run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id}")
        if run.state not in ("queued", "running"):
            return False
        self._cancelling.add(run_id)
        if run.state == "queued" or (not self.executor.detached and run_id not in self._running):
            task = self._runs.get(run_id)
            if task is not None:
                task.cancel()
            return task is not None
        return await self.executor.cancel(run_id)

    def rerun(self, run_id: str) -> ServerRun:
        """Queue ``run_id``'s workflow again (same delivery, commit and event) as a new run.
        ``RunNotFound`` for an unknown run, ``ConfigError`` for one still queued or running."""
        run = self.state.run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id}")
        if run.state in ("queued", "running"):
            raise ConfigError(f"run {run_id} is {run.state}: cancel it or wait for its end")
        again = dataclasses.replace(
            run, seq=0, run_id=new_run_id(), state="queued", conclusion=None,
            queued_at=time.time(), started_at=None, finished_at=None, owner_pid=None,
            owner_start=None, note=f"re-run of {run_id}",
        )
        self.state.queue_run(again)
        stored = self.state.run(again.run_id)
        if stored is None:
            raise RunNotFound(f"the re-run of {run_id} was not kept")
        self._launch(stored)
        return stored

    # Runs

    def _launch(self, run: ServerRun) -> None:
        if self._group is None:
            raise VmrunnerError("the service is not running: use `async with` to start it")
        self._runs[run.run_id] = self._group.create_task(
            self._execute(run), name=f"run-{run.run_id}"
        )

    async def _execute(self, run: ServerRun) -> None:
        try:
            async with self._slots:
                if self.draining:
                    return
                self._running.add(run.run_id)
                self.state.start_run(run.run_id, self.owner)
                try:
                    conclusion = await self._run(run)
                except asyncio.CancelledError:
                    if self._cancel_requested(run.run_id):
                        self.state.finish_run(run.run_id, "completed", "cancelled", "cancelled")
                        return
                    if not self.executor.detached:
                        self.state.finish_run(
                            run.run_id,
                            "interrupted",
                            "cancelled",
                            "the server shut down during the run",
                        )
                    raise
                except Exception as exc:
                    # VmrunnerError: a bad workflow, a failed fetch; else a bug: one run lost, not
                    # the server
                    if isinstance(exc, VmrunnerError):
                        log.warning("run %s: %s", run.run_id, exc)
                    else:
                        log.exception("run %s", run.run_id)
                    self.state.finish_run(run.run_id, "completed", "failure", str(exc))
                    self.metrics.runs.labels("failure").inc()
                    await self._report_error(run, str(exc))
                else:
                    self.state.finish_run(run.run_id, "completed", conclusion)
                finally:
                    self._running.discard(run.run_id)
                    if run.pull_request is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(
                                asyncio.shield(
                                    self._update_comment(run.repository, run.pull_request)
                                ),
                                REPORT_GRACE,
                            )
        except asyncio.CancelledError:
            if not self._cancel_requested(run.run_id):
                raise
            self.state.finish_run(
                run.run_id, "completed", "cancelled", "cancelled before it started"
            )
        finally:
            self._runs.pop(run.run_id, None)
            self._cancelling.discard(run.run_id)

    def _cancel_requested(self, run_id: str) -> bool:
        """True (and the cancellation absorbed) when ``cancel`` stopped this run's task, not a
        shutdown."""
        task = asyncio.current_task()
        return run_id in self._cancelling and task is not None and task.uncancel() == 0

    async def _run(self, run: ServerRun) -> str:
        repo = self.config.repository(run.repository)
        if repo is None:
            raise VmrunnerError(f"the repository {run.repository} is no longer configured")
        mirror, sha = await self.mirrors.commit(repo, run.sha)
        workflow = await self._workflow(mirror, sha, run.workflow_file)
        payload = self.state.payload(run.delivery_id)
        options = self._options(run, repo, mirror, payload)
        return await self.executor.execute(run, workflow, options, self._target(run.run_id))

    async def _workflow(self, mirror: Path, sha: str, relative: str) -> Workflow:
        loaded = await self.mirrors.workflows(mirror, sha)
        workflow = loaded.workflows.get(relative)
        if workflow is None:
            raise ConfigError(
                f"{relative} is not a valid workflow at {sha[:12]}: "
                f"{'; '.join(loaded.problems) or 'missing'}"
            )
        return workflow

    def _options(
        self, run: ServerRun, repo: RepositoryConfig, mirror: Path, payload: Mapping[str, Any]
    ) -> RunOptions:
        sender = payload.get("sender")
        actor = sender.get("login") if isinstance(sender, Mapping) else None
        return RunOptions(
            event_name=run.event_name,
            payload=payload,
            secrets=dict(repo.secrets),
            repo_root=str(mirror),
            commit=run.sha,
            repository=repo.name,
            sha=run.sha,
            ref=run.ref,
            run_id=run.run_id,
            concurrent_jobs=self.config.concurrent_jobs,
            actor=actor if isinstance(actor, str) else "vmrunner",
            machine_limits=self.config.machine_limits,
            network=self.network,
        )

    async def _report_error(self, run: ServerRun, message: str) -> None:
        """A run that could not start (a bad workflow, a failed fetch): one failed status or
        check run named after its workflow file."""
        name = status_context(Path(run.workflow_file).stem, "run")
        if self.config.reporting("statuses"):
            await self.github.create_status(
                run.repository, run.sha, Status("error", name, message, self._target(run.run_id))
            )
        if self.config.reporting("checks"):
            await self.github.create_check_run(run.repository, {
                "name": name, "head_sha": run.sha, "external_id": run.run_id,
                "status": "completed", "conclusion": "failure",
                "completed_at": iso(time.time()),
                "output": {"title": "the run could not start", "summary": message[:65535]},
            })

    def _target(self, run_id: str) -> str:
        return f"{self.config.base_url}/api/runs/{run_id}"

    async def _report_interrupted(self, run: ServerRun) -> None:
        try:
            result = RunHistory(self.store).get_run(run.run_id)
        except RunNotFound:
            return
        workflow = result.workflow_name or Path(run.workflow_file).stem
        for job in result.jobs:
            if job.conclusion is None:
                await self.github.create_status(
                    run.repository,
                    run.sha,
                    Status(
                        "error",
                        status_context(workflow, job.job_key),
                        "interrupted: the server stopped",
                        self._target(run.run_id),
                    ),
                )
        if run.pull_request is not None:
            await self._update_comment(run.repository, run.pull_request)

    async def _update_comment(self, repository: str, number: int) -> None:
        """Create or update (in place) our one comment on the pull request."""
        if not self.github.enabled or not self.config.reporting("comment"):
            return
        async with self._comment_locks.setdefault((repository, number), asyncio.Lock()):
            body = await self.executor.comment(self._latest_runs(repository, number), repository)
            comment_id = self.state.comment_id(
                repository, number
            ) or await self.github.find_comment(repository, number)
            if comment_id is not None and await self.github.update_comment(
                repository, comment_id, body
            ):
                self.state.set_comment_id(repository, number, comment_id)
                return
            created = await self.github.create_comment(repository, number, body)
            if created is not None:
                self.state.set_comment_id(repository, number, created)

    def _latest_runs(self, repository: str, number: int) -> list[ServerRun]:
        latest: dict[str, ServerRun] = {}
        for run in self.state.pull_request_runs(repository, number):
            if run.state != "queued":
                latest[run.workflow_file] = run
        return list(latest.values())

    def _refresh_gauges(self) -> None:
        self.metrics.running.set(len(self._running))
        self.metrics.queued.set(len(self._runs) - len(self._running))
        stats = self.sessions.stats()
        self.metrics.machines_busy.set(stats.active)
        self.metrics.sessions_waiting.set(stats.waiting)
        self.metrics.machines_idle.set(
            sum(self.pool.statistics().idle.values()) if self.pool else 0
        )
        self.metrics.github_requests.set(self.github.requests)
        self.metrics.github_failures.set(self.github.failures)

    def delivery_json(self, delivery_id: str) -> dict[str, Any] | None:
        delivery = self.state.delivery(delivery_id)
        if delivery is None:
            return None
        runs = self.state.runs(delivery_id=delivery_id)
        return {
            "id": delivery.id, "event": delivery.event, "repository": delivery.repository,
            "status": delivery.status, "note": self.github.masker.mask(delivery.note),
            "received_at": delivery.received_at, "runs": [run.to_json() for run in runs],
        }


def log_delivery(
    delivery: str, event: str, repository: str, outcome: str, runs: list[str] | None = None,
    note: str = "",
) -> None:
    """The one log line of a delivery: event, repository, delivery id, outcome, run ids."""
    delivery_log.info(
        "delivery %s",
        json.dumps({
            "delivery": delivery, "event": event, "repository": repository, "outcome": outcome,
            "runs": runs or [], "note": note[:300],
        }),
    )


def cancelled_workflow(payload: Mapping[str, Any]) -> tuple[str, str] | None:
    """(commit, workflow file) of a ``workflow_run`` saying GitHub cancelled a run, else None.

    GitHub sends ``completed`` with the conclusion ``cancelled``; ``cancelled`` as the action is
    taken too."""
    run = payload.get("workflow_run")
    if not isinstance(run, Mapping):
        return None
    action = payload.get("action")
    if not (
        action == "cancelled" or (action == "completed" and run.get("conclusion") == "cancelled")
    ):
        return None
    workflow = payload.get("workflow")
    path = run.get("path") or (workflow.get("path") if isinstance(workflow, Mapping) else None)
    sha = run.get("head_sha")
    return (sha, path) if isinstance(sha, str) and isinstance(path, str) and sha and path else None


def _wanted(event: str, payload: Mapping[str, Any], relative: str) -> bool:
    """A workflow_dispatch names its one workflow (by path, or by file name)."""
    if event != "workflow_dispatch":
        return True
    named = str(payload.get("workflow") or "")
    return not named or named == relative or Path(named).name == Path(relative).name
