"""The fleet's shared store and queue: runs and jobs in PostgreSQL, jobs queued with procrastinate.

Every change that moves a run forward is one transaction: a run, its jobs and the deferral of
its ready jobs; a job's end, its outputs and the deferral of the dependents it made ready. A
deferral is guarded twice: the job row goes from ``pending`` to ``queued`` only once, and its
procrastinate job carries a queueing lock named after the job and attempt.

Fencing: a job's ``attempt`` only grows (a retry increments it). Every write an agent makes for
an attempt (start, heartbeat, logs, end) says which attempt it is and is applied only if that is
still the current one, so a host that was presumed lost cannot overwrite its successor.

A matrix job becomes one fleet job per combination when it is ready (``fleet/matrix.py``); its
own row then waits in ``matrix`` status and takes the aggregate result when every combination
is final. ``fail-fast`` and ``max-parallel`` are applied here, in the same transactions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import procrastinate
import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from vmrunner.errors import ConfigError, RunNotFound, StoreError
from vmrunner.fleet.labels import queue_name
from vmrunner.fleet.matrix import expand, has_matrix, static_labels
from vmrunner.fleet.queue import FollowedLine, LogEntry, QueuedJob, QueuedRun
from vmrunner.fleet.schema import ensure_schema
from vmrunner.reports.events import run_conclusion
from vmrunner.runner.options import RunOptions, options_data, options_from_data, plain
from vmrunner.runner.run import FAIL_FAST_REASON, aggregate
from vmrunner.workflow.loader import load_workflow_text
from vmrunner.workflow.planner import plan

#: The procrastinate task every fleet job runs as.
TASK_NAME = "vmrunner.job"
#: What runs one attempt on an agent: (context, run id, job id, attempt).
JobRunner = Callable[[procrastinate.JobContext, str, str, int], Awaitable[None]]
FINAL = ("success", "failure", "cancelled", "skipped")
#: Statuses of a job that has not ended (``matrix``: a matrix job whose combinations run).
ACTIVE = ("pending", "queued", "running", "matrix")
#: Event kinds that make up a job's steps, as ``steps()`` reads them.
_STEP_KINDS = ("StepStarted", "StepFinished")
#: Options that travel with a run to the agents (secrets never go into the database).
_SHARED_OPTIONS = (
    "event_name", "payload", "vars", "env", "inputs", "job_timeout_minutes", "setup_commands",
    "cleanup_commands", "repo_root", "commit", "actor", "repository", "sha", "ref", "run_number",
    "machine_types", "default_vm_type", "network", "server_url", "actions_url",
    "cpus", "memory_mib", "pids", "disk_mib", "machine_limits",
)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What an agent needs to run one attempt of one job."""

    run_id: str
    job_id: str
    attempt: int
    workflow_path: str
    workflow_text: str
    options: RunOptions
    needs: Mapping[str, Mapping[str, Any]]
    #: The workflow's job id: ``job_id`` itself, or the matrix job of a combination.
    parent: str = ""
    #: The combination's ``strategy.job-index``; None for a job without a matrix.
    matrix_index: int | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One runner event of an attempt, as an agent writes it: ``kind`` is the event's class name,
    ``data`` its fields (text already masked by the runner)."""

    seq: int
    kind: str
    time: float
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EventRow:
    job_id: str
    attempt: int
    seq: int
    kind: str
    data: Mapping[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class StepRow:
    """One step of a job's latest attempt; ``status`` is running until it ends, then its
    conclusion."""

    index: int
    kind: str
    name: str
    status: str
    outcome: str | None
    conclusion: str | None
    duration: float | None


def options_json(options: RunOptions) -> dict[str, Any]:
    return options_data(options, _SHARED_OPTIONS)


def options_from_json(data: Mapping[str, Any], run_id: str) -> RunOptions:
    return options_from_data(data, run_id=run_id)


def job_labels(workflow_text: str, workflow_path: str) -> dict[str, tuple[str, ...] | None]:
    """Each job's ``runs-on`` label set; None for a matrix job whose labels use the matrix
    (known per combination). Other expressions cannot be routed: ``ConfigError``."""
    workflow = load_workflow_text(workflow_text, workflow_path)
    return {
        job_id: static_labels(job_id, job, workflow_path) for job_id, job in workflow.jobs.items()
    }


class Attempt(NamedTuple):
    """One attempt of a job on a host; ``result`` is None while it runs."""

    job_id: str
    attempt: int
    host: str
    result: str | None


class CombinationRow(NamedTuple):
    """One combination of a matrix job: the matrix job's id and the combination's values."""

    job_id: str
    matrix: Mapping[str, Any]


class AgentInfo(NamedTuple):
    """A registered agent and the seconds since its last heartbeat."""

    name: str
    labels: tuple[str, ...]
    capacity: int
    age: float


async def _fetch_one(
    connection: psycopg.AsyncConnection[Any], sql: str, params: Sequence[Any] = ()
) -> dict[str, Any] | None:
    """The first row of a query, by column name (None when there is none)."""
    cursor = connection.cursor(row_factory=dict_row)
    return await (await cursor.execute(sql, params)).fetchone()


async def _fetch_all(
    connection: psycopg.AsyncConnection[Any], sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """Every row of a query, by column name."""
    cursor = connection.cursor(row_factory=dict_row)
    return await (await cursor.execute(sql, params)).fetchall()


async def _fetch_existing(
    connection: psycopg.AsyncConnection[Any], sql: str, params: Sequence[Any], what: str
) -> dict[str, Any]:
    """The row a query must find (written earlier in the same transaction, or locked);
    ``StoreError`` when it is missing all the same."""
    row = await _fetch_one(connection, sql, params)
    if row is None:
        raise StoreError(f"the fleet store lost {what}")
    return row


class FleetStore:
    """Runs, jobs, attempts, logs and agents in PostgreSQL, with procrastinate as the queue.

    Use ``async with FleetStore(url) as store:``; it opens a connection pool and the
    procrastinate app (to defer and abort jobs), and creates the schema when missing.
    """

    def __init__(
        self, url: str, *, runner: JobRunner | None = None, agent_stale: float = 30.0
    ) -> None:
        self.url = url
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
        self.pool = psycopg_pool.AsyncConnectionPool(
            url, min_size=1, max_size=8, open=False, kwargs={"autocommit": True}
        )
        #: An agent whose heartbeat is older than this (seconds) does not count at enqueue.
        self.agent_stale = agent_stale
        self._task = self.app.task(name=TASK_NAME, pass_context=True)(runner or _unbound)

    async def __aenter__(self) -> FleetStore:
        try:
            await self.pool.open(wait=True, timeout=30)
            async with self.pool.connection() as connection:
                await ensure_schema(connection)
            await self.app.open_async()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await self.pool.close()
            raise StoreError(f"cannot open the fleet store {_safe(self.url)}: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.app.close_async()
        finally:
            await self.pool.close()

    # Runs

    async def submit(
        self,
        workflow_text: str,
        workflow_path: str,
        options: RunOptions,
        *,
        delivery_id: str | None = None,
        priority: int = 0,
    ) -> str:
        """Write a run and its jobs and defer the ready ones, in one transaction; the run id.

        A ``delivery_id`` seen before (a redelivered webhook) returns the existing run.
        Raises ``ConfigError`` when no live agent serves a job's labels.
        """
        workflow = load_workflow_text(workflow_text, workflow_path)
        job_plan = plan(workflow, jobs=options.jobs)
        labels = job_labels(workflow_text, workflow_path)
        try:
            async with self.pool.connection() as connection, connection.transaction():
                if delivery_id is not None:
                    existing = await _fetch_one(
                        connection,
                        "SELECT id FROM vmrunner_runs WHERE delivery_id = %s",
                        (delivery_id,),
                    )
                    if existing:
                        return str(existing["id"])
                await self._check_served(
                    connection,
                    {
                        job_id: found
                        for job_id in job_plan.order
                        if (found := labels[job_id]) is not None
                    },
                )
                row = await _fetch_existing(
                    connection, "SELECT nextval('vmrunner_run_ids') AS id", (), "its run ids"
                )
                run_id = options.run_id or str(row["id"])
                inserted = await (
                    await connection.execute(
                        "INSERT INTO vmrunner_runs (id, delivery_id, workflow_path, "
                        "workflow_text, options, priority)"
                        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (delivery_id) DO NOTHING "
                        "RETURNING id",
                        (
                            run_id,
                            delivery_id,
                            workflow_path,
                            workflow_text,
                            json.dumps(options_json(options)),
                            priority,
                        ),
                    )
                ).fetchone()
                if inserted is None:  # a concurrent delivery won
                    raise _Duplicate
                for job_id in job_plan.order:
                    own = labels[job_id] or ()
                    strategy = {"matrix": True} if has_matrix(workflow.jobs[job_id]) else {}
                    await connection.execute(
                        "INSERT INTO vmrunner_jobs (run_id, job_id, needs, labels, queue, status, "
                        "strategy) VALUES (%s, %s, %s, %s, %s, 'pending', %s)",
                        (
                            run_id,
                            job_id,
                            list(job_plan.dependencies(job_id)),
                            list(own),
                            queue_name(own) if labels[job_id] is not None else "",
                            json.dumps(strategy),
                        ),
                    )
                await self._advance(connection, run_id)
                return run_id
        except _Duplicate:
            async with self.pool.connection() as connection:
                winner = await _fetch_existing(
                    connection,
                    "SELECT id FROM vmrunner_runs WHERE delivery_id = %s",
                    (delivery_id,),
                    f"the run of delivery {delivery_id}",
                )
                return str(winner["id"])
        except psycopg.Error as exc:
            raise StoreError(f"cannot submit the run: {exc}") from exc

    async def _check_served(
        self, connection: psycopg.AsyncConnection[Any], labels: Mapping[str, tuple[str, ...]]
    ) -> None:
        agents = await self._live_agents(connection)
        for job_id, wanted in labels.items():
            if problem := _unserved(job_id, wanted, agents):
                raise ConfigError(problem)

    async def _live_agents(
        self, connection: psycopg.AsyncConnection[Any]
    ) -> list[tuple[str, set[str]]]:
        rows = await _fetch_all(
            connection,
            "SELECT name, labels FROM vmrunner_agents"
            " WHERE heartbeat_at > now() - make_interval(secs => %s)",
            (self.agent_stale,),
        )
        return [(str(row["name"]), set(row["labels"])) for row in rows]

    async def _defer(
        self, connection: psycopg.AsyncConnection[Any], run_id: str, job_id: str, attempt: int
    ) -> bool:
        """Move a job to ``queued`` for ``attempt`` and defer it, on ``connection``'s
        transaction."""
        row = await _fetch_one(
            connection,
            "UPDATE vmrunner_jobs j SET status = 'queued', attempt = %s, host = NULL,"
            " heartbeat_at = NULL"
            " FROM vmrunner_runs r WHERE r.id = j.run_id AND j.run_id = %s AND j.job_id = %s"
            " AND j.attempt = %s AND j.status IN ('pending', 'running')"
            " AND r.status = 'running'"
            " RETURNING j.queue, r.priority",
            (attempt, run_id, job_id, attempt - 1),
        )
        if row is None:
            return False
        procrastinate_id = await self._task.configure(
            queue=str(row["queue"]),
            priority=int(row["priority"]),
            queueing_lock=f"{run_id}/{job_id}/{attempt}",
            connection=connection,
        ).defer_async(run_id=run_id, job_id=job_id, attempt=attempt)
        await connection.execute(
            "UPDATE vmrunner_jobs SET procrastinate_id = %s WHERE run_id = %s AND job_id = %s",
            (procrastinate_id, run_id, job_id),
        )
        return True

    async def run(self, run_id: str) -> QueuedRun:
        async with self.pool.connection() as connection:
            cursor = connection.cursor(row_factory=dict_row)
            run = await (
                await cursor.execute(
                    "SELECT id, status, conclusion FROM vmrunner_runs WHERE id = %s", (run_id,)
                )
            ).fetchone()
            if run is None:
                raise RunNotFound(f"no run {run_id} in the fleet store")
            rows = await (
                await cursor.execute(
                    "SELECT * FROM vmrunner_jobs WHERE run_id = %s ORDER BY job_id", (run_id,)
                )
            ).fetchall()
        jobs = tuple(
            QueuedJob(
                r["run_id"],
                r["job_id"],
                r["status"],
                r["attempt"],
                r["host"],
                r["outputs"],
                r["reason"],
                tuple(r["labels"]),
            )
            for r in rows
        )
        return QueuedRun(run["id"], run["status"], run["conclusion"], jobs)

    async def combinations(self, run_id: str) -> dict[str, CombinationRow]:
        """The run's matrix combinations: job key -> (the matrix job's id, the combination's
        values).
        In ``run()`` a matrix job is one row (``matrix`` status while its combinations run, then
        their aggregate result) and each combination a row of its own, keyed ``test (linux, 1)``."""
        async with self.pool.connection() as connection:
            rows = await _fetch_all(
                connection,
                "SELECT job_id, parent, matrix FROM vmrunner_jobs"
                " WHERE run_id = %s AND parent IS NOT NULL ORDER BY parent, matrix_index",
                (run_id,),
            )
        return {
            str(row["job_id"]): CombinationRow(str(row["parent"]), dict(row["matrix"]))
            for row in rows
        }

    async def attempts(self, run_id: str) -> list[Attempt]:
        """Every attempt of the run's jobs, by job and attempt."""
        async with self.pool.connection() as connection:
            rows = await _fetch_all(
                connection,
                "SELECT job_id, attempt, host, result FROM vmrunner_attempts"
                " WHERE run_id = %s ORDER BY job_id, attempt",
                (run_id,),
            )
        return [
            Attempt(str(row["job_id"]), int(row["attempt"]), str(row["host"]), row["result"])
            for row in rows
        ]

    # One attempt, as an agent sees it (every write fenced by the attempt number)

    async def start(self, run_id: str, job_id: str, attempt: int, host: str) -> Assignment | None:
        """Claim ``attempt`` for ``host``; None when it is no longer the current one."""
        async with self.pool.connection() as connection, connection.transaction():
            row = await _fetch_one(
                connection,
                "UPDATE vmrunner_jobs SET status = 'running', host = %s, heartbeat_at = now(),"
                " started_at = now()"
                " WHERE run_id = %s AND job_id = %s AND attempt = %s AND status = 'queued'"
                " RETURNING needs, parent, matrix_index",
                (host, run_id, job_id, attempt),
            )
            if row is None:
                return None
            await connection.execute(
                "INSERT INTO vmrunner_attempts (run_id, job_id, attempt, host) VALUES (%s, %s, "
                "%s, %s)",
                (run_id, job_id, attempt, host),
            )
            run = await _fetch_existing(
                connection,
                "SELECT workflow_path, workflow_text, options FROM vmrunner_runs WHERE id = %s",
                (run_id,),
                f"run {run_id} of a job it started",
            )
            needs_rows = await _fetch_all(
                connection,
                "SELECT job_id, status, outputs FROM vmrunner_jobs"
                " WHERE run_id = %s AND job_id = ANY(%s)",
                (run_id, list(row["needs"])),
            )
        needs = {
            str(need["job_id"]): {"result": str(need["status"]), "outputs": dict(need["outputs"])}
            for need in needs_rows
        }
        return Assignment(
            run_id,
            job_id,
            attempt,
            str(run["workflow_path"]),
            str(run["workflow_text"]),
            options_from_json(run["options"], run_id),
            needs,
            str(row["parent"] or job_id),
            row["matrix_index"],
        )

    async def heartbeat(self, run_id: str, job_id: str, attempt: int) -> bool:
        """Keep the attempt alive; False when it was given up on (the agent must stop it)."""
        async with self.pool.connection() as connection:
            cursor = await connection.execute(
                "UPDATE vmrunner_jobs SET heartbeat_at = now() WHERE run_id = %s AND job_id = %s "
                "AND attempt = %s AND status = 'running'",
                (run_id, job_id, attempt),
            )
            return cursor.rowcount == 1

    async def append_logs(
        self, run_id: str, job_id: str, attempt: int, lines: Sequence[str]
    ) -> bool:
        """Append log lines of an attempt and wake live tails; rejected (False) for a stale
        attempt."""
        return await self.append(run_id, job_id, attempt, lines, ())

    async def append_events(
        self, run_id: str, job_id: str, attempt: int, events: Sequence[EventRecord]
    ) -> bool:
        """Append runner events of an attempt; rejected (False) for a stale attempt."""
        return await self.append(run_id, job_id, attempt, (), events)

    async def append(
        self,
        run_id: str,
        job_id: str,
        attempt: int,
        lines: Sequence[str],
        events: Sequence[EventRecord],
    ) -> bool:
        """Append an attempt's log lines and events in one transaction (an agent's batch per
        heartbeat) and wake live tails; rejected (False, nothing written) for a stale attempt."""
        if not lines and not events:
            return True
        async with self.pool.connection() as connection, connection.transaction():
            current = await (
                await connection.execute(
                    "SELECT 1 FROM vmrunner_jobs WHERE run_id = %s AND job_id = %s AND attempt = "
                    "%s AND status = 'running' FOR SHARE",
                    (run_id, job_id, attempt),
                )
            ).fetchone()
            if current is None:
                return False
            async with connection.cursor() as cursor:
                if lines:
                    await cursor.executemany(
                        "INSERT INTO vmrunner_logs (run_id, job_id, attempt, line) VALUES (%s, "
                        "%s, %s, %s)",
                        [(run_id, job_id, attempt, line) for line in lines],
                    )
                if events:
                    await cursor.executemany(
                        "INSERT INTO vmrunner_events (run_id, job_id, attempt, seq, kind, data, "
                        "at) VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s))",
                        [
                            (
                                run_id,
                                job_id,
                                attempt,
                                e.seq,
                                e.kind,
                                json.dumps(plain(e.data), default=str),
                                e.time,
                            )
                            for e in events
                        ],
                    )
            if lines:
                await connection.execute("SELECT pg_notify('vmrunner_logs', %s)", (run_id,))
        return True

    async def finish(
        self,
        run_id: str,
        job_id: str,
        attempt: int,
        result: str,
        outputs: Mapping[str, str],
        reason: str = "",
        *,
        continue_on_error: bool = False,
    ) -> bool:
        """Record the attempt's end and defer the dependents it made ready, in one transaction.

        False (nothing written) when ``attempt`` is not the current running attempt: a late
        write from a host that was given up on. ``continue_on_error``: a failure that does not
        fail its matrix job (a combination's ``continue-on-error``).
        """
        async with self.pool.connection() as connection, connection.transaction():
            row = await (
                await connection.execute(
                    "UPDATE vmrunner_jobs SET status = %s, outputs = %s, reason = %s, "
                    "continue_on_error = %s, finished_at = clock_timestamp()"
                    " WHERE run_id = %s AND job_id = %s AND attempt = %s AND status = 'running' "
                    "RETURNING job_id",
                    (
                        result,
                        json.dumps(dict(outputs)),
                        reason,
                        continue_on_error,
                        run_id,
                        job_id,
                        attempt,
                    ),
                )
            ).fetchone()
            if row is None:
                return False
            await connection.execute(
                "UPDATE vmrunner_attempts SET finished_at = now(), result = %s WHERE run_id = %s "
                "AND job_id = %s AND attempt = %s",
                (result, run_id, job_id, attempt),
            )
            await self._advance(connection, run_id)
        return True

    async def _advance(self, connection: psycopg.AsyncConnection[Any], run_id: str) -> None:
        """Move the run forward after a change, until nothing more changes: expand the ready
        matrix jobs, defer the ready jobs and combinations (within ``max-parallel``), apply
        fail-fast, conclude finished matrix jobs, and conclude a finished run.

        A job whose needs did not all succeed is still deferred: its agent evaluates its
        ``if:`` (``always()``, ``failure()``) as one host would, and reports it skipped. A
        matrix job's ``if:`` is evaluated here, before it is expanded.
        """
        run = await _fetch_existing(
            connection,
            "SELECT status, workflow_path, workflow_text, options FROM vmrunner_runs"
            " WHERE id = %s FOR UPDATE",
            (run_id,),
            f"run {run_id} while advancing it",
        )
        while True:
            cursor = connection.cursor(row_factory=dict_row)
            rows = await (
                await cursor.execute(
                    "SELECT job_id, status, needs, parent, matrix_index, strategy, "
                    "continue_on_error, procrastinate_id, outputs, finished_at"
                    " FROM vmrunner_jobs WHERE run_id = %s ORDER BY finished_at NULLS LAST, job_id",
                    (run_id,),
                )
            ).fetchall()
            jobs = {str(r["job_id"]): r for r in rows}
            changed = False
            for job in rows:
                if job["status"] == "matrix":
                    combinations = sorted(
                        (r for r in rows if r["parent"] == job["job_id"]),
                        key=lambda r: int(r["matrix_index"]),
                    )
                    changed |= await self._settle_matrix(connection, run_id, job, combinations)
            for job in rows:
                ready = (
                    job["parent"] is None
                    and job["status"] == "pending"
                    and all(jobs[n]["status"] in FINAL for n in job["needs"])
                )
                if not ready or run["status"] != "running":
                    continue
                if job["strategy"].get("matrix"):
                    await self._expand(connection, run_id, job, jobs, run)
                    changed = True
                else:
                    await self._defer(connection, run_id, str(job["job_id"]), attempt=1)
            if not changed:
                break
        statuses = [str(r["status"]) for r in rows if r["parent"] is None]
        if all(state in FINAL for state in statuses):
            conclusion = run_conclusion(statuses)
            await connection.execute(
                "UPDATE vmrunner_runs SET status = 'completed', conclusion = %s, finished_at = "
                "now() WHERE id = %s AND status = 'running'",
                (conclusion, run_id),
            )

    async def _expand(
        self,
        connection: psycopg.AsyncConnection[Any],
        run_id: str,
        job: Mapping[str, Any],
        jobs: Mapping[str, Mapping[str, Any]],
        run: Mapping[str, Any],
    ) -> None:
        """A ready matrix job becomes one pending row per combination (or ends without any)."""
        job_id = str(job["job_id"])
        workflow = load_workflow_text(str(run["workflow_text"]), str(run["workflow_path"]))
        needs = {
            n: {"result": str(jobs[n]["status"]), "outputs": dict(jobs[n]["outputs"])}
            for n in job["needs"]
        }
        expansion = await expand(
            workflow, job_id, options_from_json(run["options"], run_id), needs
        )
        if expansion.result is not None:
            await connection.execute(
                "UPDATE vmrunner_jobs SET status = %s, reason = %s, finished_at = "
                "clock_timestamp() WHERE run_id = %s AND job_id = %s",
                (expansion.result, expansion.reason, run_id, job_id),
            )
            return
        agents = await self._live_agents(connection)
        for combination in expansion.combinations:
            problem = _unserved(combination.key, combination.labels, agents)
            await connection.execute(
                "INSERT INTO vmrunner_jobs (run_id, job_id, needs, labels, queue, status, reason, "
                "parent, matrix_index, matrix, finished_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN "
                "clock_timestamp() END)",
                (
                    run_id,
                    combination.key,
                    list(job["needs"]),
                    list(combination.labels),
                    queue_name(combination.labels),
                    "failure" if problem else "pending",
                    problem,
                    job_id,
                    combination.index,
                    json.dumps(plain(combination.matrix)),
                    bool(problem),
                ),
            )
        strategy = {
            "matrix": True,
            "fail_fast": expansion.fail_fast,
            "max_parallel": expansion.max_parallel,
        }
        await connection.execute(
            "UPDATE vmrunner_jobs SET status = 'matrix', strategy = %s, started_at = now() WHERE "
            "run_id = %s AND job_id = %s",
            (json.dumps(strategy), run_id, job_id),
        )

    async def _settle_matrix(
        self,
        connection: psycopg.AsyncConnection[Any],
        run_id: str,
        job: Mapping[str, Any],
        combinations: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Apply fail-fast, defer pending combinations within max-parallel, and give the matrix
        job its aggregate result once every combination is final; True when it concluded."""
        strategy = job["strategy"]
        statuses = {str(c["job_id"]): str(c["status"]) for c in combinations}
        failed = any(c["status"] == "failure" and not c["continue_on_error"] for c in combinations)
        if failed and strategy.get("fail_fast", True):
            for c in combinations:
                if c["status"] in ACTIVE:
                    await self._end(connection, run_id, c, "cancelled", FAIL_FAST_REASON)
                    statuses[str(c["job_id"])] = "cancelled"
        else:
            active = sum(state in ("queued", "running") for state in statuses.values())
            limit = int(strategy.get("max_parallel", len(combinations)))
            for c in combinations:
                if (
                    c["status"] == "pending"
                    and active < limit
                    and await self._defer(connection, run_id, str(c["job_id"]), attempt=1)
                ):
                    active += 1
        if not all(state in FINAL for state in statuses.values()):
            return False
        results = [
            "success"
            if c["continue_on_error"] and statuses[str(c["job_id"])] == "failure"
            else statuses[str(c["job_id"])]
            for c in combinations
        ]
        outputs: dict[str, str] = {}
        for c in sorted(
            combinations, key=lambda c: (c["finished_at"] is None, c["finished_at"] or 0)
        ):
            # GitHub: the combination that completes last wins; an empty value never overrides.
            outputs.update({k: v for k, v in dict(c["outputs"]).items() if v or k not in outputs})
        result = aggregate(results)  # type: ignore[arg-type]
        reasons = sorted(
            f"{c['job_id']}: {statuses[str(c['job_id'])]}"
            + (" (continue-on-error)" if c["continue_on_error"] else "")
            for c in combinations
            if statuses[str(c["job_id"])] in ("failure", "cancelled")
        )
        await connection.execute(
            "UPDATE vmrunner_jobs SET status = %s, outputs = %s, reason = %s, finished_at = "
            "clock_timestamp() WHERE run_id = %s AND job_id = %s",
            (result, json.dumps(outputs), "; ".join(reasons), run_id, job["job_id"]),
        )
        return True

    async def _end(
        self,
        connection: psycopg.AsyncConnection[Any],
        run_id: str,
        job: Mapping[str, Any],
        status: str,
        reason: str,
    ) -> None:
        """End an active job without its host's word: a queued one is withdrawn, a running one
        aborted on its host (procrastinate delivers ``CancelledError``); its attempt is bumped
        so the host's late writes are rejected."""
        state, procrastinate_id = str(job["status"]), job["procrastinate_id"]
        if procrastinate_id is not None and state in ("queued", "running"):
            await self.app.job_manager.cancel_job_by_id_async(
                int(procrastinate_id), abort=(state == "running"), connection=connection
            )
        if state == "running":
            await connection.execute(
                "UPDATE vmrunner_attempts SET finished_at = now(), result = %s"
                " WHERE run_id = %s AND job_id = %s AND attempt = (SELECT attempt FROM "
                "vmrunner_jobs WHERE run_id = %s AND job_id = %s)",
                (status, run_id, job["job_id"], run_id, job["job_id"]),
            )
        await connection.execute(
            "UPDATE vmrunner_jobs SET status = %s, reason = %s, finished_at = clock_timestamp(),"
            " attempt = attempt + (CASE WHEN status = 'running' THEN 1 ELSE 0 END) WHERE run_id = "
            "%s AND job_id = %s",
            (status, reason, run_id, job["job_id"]),
        )

    # Lost hosts and cancellation

    async def sweep(self, stall: float, max_attempts: int) -> list[tuple[str, str, int]]:
        """Retry (or fail, past ``max_attempts``) running jobs whose heartbeat is older than
        ``stall`` seconds; the (run, job, new attempt) retried. Aborted runs are never retried."""
        retried: list[tuple[str, str, int]] = []
        async with self.pool.connection() as connection, connection.transaction():
            rows = await _fetch_all(
                connection,
                "SELECT j.run_id, j.job_id, j.attempt, j.procrastinate_id"
                " FROM vmrunner_jobs j JOIN vmrunner_runs r ON r.id = j.run_id"
                " WHERE j.status = 'running' AND r.status = 'running'"
                " AND j.heartbeat_at < now() - make_interval(secs => %s)"
                " FOR UPDATE OF j SKIP LOCKED",
                (stall,),
            )
            for stalled in rows:
                run_id, job_id = stalled["run_id"], stalled["job_id"]
                attempt, procrastinate_id = stalled["attempt"], stalled["procrastinate_id"]
                await connection.execute(
                    "UPDATE vmrunner_attempts SET finished_at = now(), result = 'lost' WHERE "
                    "run_id = %s AND job_id = %s AND attempt = %s",
                    (run_id, job_id, attempt),
                )
                # the lost worker's job must not be retried by procrastinate
                if procrastinate_id is not None:
                    await self.app.job_manager.cancel_job_by_id_async(
                        int(procrastinate_id), abort=True, connection=connection
                    )
                if attempt < max_attempts and await self._defer(
                    connection, run_id, job_id, attempt + 1
                ):
                    retried.append((str(run_id), str(job_id), attempt + 1))
                else:
                    await connection.execute(
                        "UPDATE vmrunner_jobs SET status = 'failure', reason = %s, finished_at = "
                        "now() WHERE run_id = %s AND job_id = %s AND attempt = %s",
                        (
                            f"its host stopped answering ({attempt} attempts)",
                            run_id,
                            job_id,
                            attempt,
                        ),
                    )
                    await self._advance(connection, run_id)
        return retried

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run: queued and pending jobs end cancelled at once; running ones are aborted
        on their host (procrastinate delivers ``CancelledError``). False when already finished."""
        async with self.pool.connection() as connection, connection.transaction():
            row = await (
                await connection.execute(
                    "UPDATE vmrunner_runs SET status = 'cancelling' WHERE id = %s AND status = "
                    "'running' RETURNING id",
                    (run_id,),
                )
            ).fetchone()
            if row is None:
                exists = await (
                    await connection.execute("SELECT 1 FROM vmrunner_runs WHERE id = %s", (run_id,))
                ).fetchone()
                if exists is None:
                    raise RunNotFound(f"no run {run_id} in the fleet store")
                return False
            cursor = connection.cursor(row_factory=dict_row)
            jobs = await (
                await cursor.execute(
                    "SELECT job_id, status, procrastinate_id FROM vmrunner_jobs WHERE run_id = %s "
                    "AND status = ANY(%s)",
                    (run_id, list(ACTIVE)),
                )
            ).fetchall()
            for job in jobs:
                await self._end(connection, run_id, job, "cancelled", "the run was cancelled")
            await connection.execute(
                "UPDATE vmrunner_runs SET status = 'completed', conclusion = 'cancelled', "
                "finished_at = now() WHERE id = %s",
                (run_id,),
            )
        return True

    async def logs(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        """Log lines of a run after id ``after`` (at most ``limit``)."""
        async with self.pool.connection() as connection:
            rows = await _fetch_all(
                connection,
                "SELECT id, job_id, attempt, line FROM vmrunner_logs"
                " WHERE run_id = %s AND id > %s ORDER BY id"
                + (" LIMIT %s" if limit is not None else ""),
                (run_id, after) if limit is None else (run_id, after, limit),
            )
        return [
            LogEntry(int(row["id"]), str(row["job_id"]), int(row["attempt"]), str(row["line"]))
            for row in rows
        ]

    async def follow(
        self, run_id: str, *, poll: float = 1.0
    ) -> AsyncIterator[FollowedLine]:
        """The run's log lines as they arrive, until the run ends.

        Woken by ``NOTIFY vmrunner_logs`` (any host's agent), with a poll as the fallback.
        """
        after = 0
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as listener:
            await listener.execute("LISTEN vmrunner_logs")
            while True:
                finished = (await self.run(run_id)).status == "completed"
                for entry in await self.logs(run_id, after):
                    after = entry.id
                    yield FollowedLine(entry.job_id, entry.attempt, entry.text)
                if finished:
                    return
                async for _ in listener.notifies(timeout=poll, stop_after=1):
                    pass

    async def events(
        self, run_id: str, job_id: str | None = None, kinds: Sequence[str] = ()
    ) -> list[EventRow]:
        """The runner events the run's agents wrote (all attempts, in order), optionally of one
        job and of some kinds (``StepFinished``, ``Annotation``, ``SessionStateChanged`` ...)."""
        async with self.pool.connection() as connection:
            rows = await _fetch_all(
                connection,
                "SELECT job_id, attempt, seq, kind, data, extract(epoch FROM at)::float AS at"
                " FROM vmrunner_events"
                " WHERE run_id = %s AND (%s::text IS NULL OR job_id = %s)"
                " AND (cardinality(%s::text[]) = 0 OR kind = ANY(%s))"
                " ORDER BY job_id, attempt, seq",
                (run_id, job_id, job_id, list(kinds), list(kinds)),
            )
        return [
            EventRow(
                str(row["job_id"]), int(row["attempt"]), int(row["seq"]), str(row["kind"]),
                row["data"], float(row["at"]),
            )
            for row in rows
        ]

    async def steps(self, run_id: str) -> dict[str, list[StepRow]]:
        """Each job's steps (setup, steps, post, cleanup) in its latest attempt that reported
        any."""
        latest = _latest_attempts(await self.events(run_id, kinds=_STEP_KINDS))
        steps: dict[str, dict[int, StepRow]] = {}
        for event in latest:
            data, own = event.data, steps.setdefault(event.job_id, {})
            index = int(data["index"])
            if event.kind == "StepStarted":
                own[index] = StepRow(
                    index, str(data["kind"]), str(data["name"]), "running", None, None, None
                )
            elif index in own:
                own[index] = dataclasses.replace(
                    own[index], status=str(data["conclusion"]), outcome=str(data["outcome"]),
                    conclusion=str(data["conclusion"]), duration=float(data["duration"]),
                )
        return {job_id: [own[i] for i in sorted(own)] for job_id, own in steps.items()}

    async def annotations(self, run_id: str) -> dict[str, list[dict[str, Any]]]:
        """Each job's annotations (``::warning::`` and friends, runner notices) in its latest
        attempt that reported any: level, message, file, line, column, title, step_index."""
        found: dict[str, list[dict[str, Any]]] = {}
        for event in _latest_attempts(await self.events(run_id, kinds=("Annotation",))):
            data = {k: v for k, v in event.data.items() if k not in ("run_id", "job_key", "time")}
            found.setdefault(event.job_id, []).append(data)
        return found

    async def agents(self) -> list[AgentInfo]:
        """Registered agents, by name."""
        async with self.pool.connection() as connection:
            rows = await _fetch_all(
                connection,
                "SELECT name, labels, capacity, extract(epoch FROM now() - heartbeat_at)::float"
                " AS age FROM vmrunner_agents ORDER BY name",
            )
        return [
            AgentInfo(
                str(row["name"]), tuple(row["labels"]), int(row["capacity"]), float(row["age"])
            )
            for row in rows
        ]

    # Agents

    async def register_agent(self, name: str, labels: Sequence[str], capacity: int) -> None:
        async with self.pool.connection() as connection:
            await connection.execute(
                "INSERT INTO vmrunner_agents (name, labels, capacity) VALUES (%s, %s, %s) ON "
                "CONFLICT (name) DO UPDATE"
                " SET labels = excluded.labels, capacity = excluded.capacity, started_at = now(), "
                "heartbeat_at = now()",
                (name, list(labels), capacity),
            )

    async def agent_heartbeat(self, name: str) -> None:
        async with self.pool.connection() as connection:
            await connection.execute(
                "UPDATE vmrunner_agents SET heartbeat_at = now() WHERE name = %s", (name,)
            )


def _latest_attempts(events: Sequence[EventRow]) -> list[EventRow]:
    """The events of each job's highest attempt among ``events``."""
    latest: dict[str, int] = {}
    for event in events:
        latest[event.job_id] = max(latest.get(event.job_id, 0), event.attempt)
    return [event for event in events if event.attempt == latest[event.job_id]]


def _unserved(job_id: str, wanted: Sequence[str], agents: Sequence[tuple[str, set[str]]]) -> str:
    """Why no live agent can run a job with these labels; '' when one can."""
    if any(set(wanted) <= own for _, own in agents):
        return ""
    shown = "; ".join(f"{name} [{','.join(sorted(own))}]" for name, own in agents) or "none"
    return (
        f"job '{job_id}' runs-on {','.join(wanted) or '(no labels)'}: no live agent serves "
        f"these labels (agents: {shown})"
    )


class _Duplicate(Exception):
    """A concurrent delivery of the same webhook inserted the run first."""


async def _unbound(
    context: procrastinate.JobContext, run_id: str, job_id: str, attempt: int
) -> None:
    raise StoreError("this process defers fleet jobs but does not run them")


def _safe(url: str) -> str:
    """The URL without a password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "(invalid URL)"
    return f"{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"
