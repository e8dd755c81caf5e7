"""The fleet's tables in PostgreSQL, beside procrastinate's own.

procrastinate owns the queue (``procrastinate_jobs``: fetching with ``SKIP LOCKED``, priorities,
queueing locks, aborts, worker heartbeats). These tables own what vmrunner must know: runs, their
jobs with status, attempt and outputs, every attempt's history, logs, events, and the agents. A
job's ``attempt`` is the fencing token: each write of an attempt says which attempt it is, and
only the current one is accepted.

A matrix job is one row (``status`` ``matrix`` while its combinations run, then their aggregate
result) plus one row per combination (``parent`` is the matrix job's id, ``job_id`` its key
``test (linux, 1)``), each queued, fenced and retried like any job.
"""

from __future__ import annotations

from typing import Any

import psycopg
from procrastinate.schema import SchemaManager

#: Serialises schema creation when several agents start at once.
SCHEMA_LOCK = 0x766D72756E6E6572  # "vmrunner"

TABLES = """
CREATE SEQUENCE IF NOT EXISTS vmrunner_run_ids;
CREATE TABLE IF NOT EXISTS vmrunner_runs (
    id text PRIMARY KEY,
    delivery_id text UNIQUE,
    workflow_path text NOT NULL,
    workflow_text text NOT NULL,
    options jsonb NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    status text NOT NULL DEFAULT 'running',
    conclusion text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE IF NOT EXISTS vmrunner_jobs (
    run_id text NOT NULL REFERENCES vmrunner_runs (id) ON DELETE CASCADE,
    job_id text NOT NULL,
    needs text[] NOT NULL,
    labels text[] NOT NULL,
    queue text NOT NULL,
    status text NOT NULL,
    attempt integer NOT NULL DEFAULT 0,
    host text,
    procrastinate_id bigint,
    heartbeat_at timestamptz,
    outputs jsonb NOT NULL DEFAULT '{}',
    reason text NOT NULL DEFAULT '',
    started_at timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (run_id, job_id)
);
CREATE INDEX IF NOT EXISTS vmrunner_jobs_running ON vmrunner_jobs (heartbeat_at) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS vmrunner_attempts (
    run_id text NOT NULL,
    job_id text NOT NULL,
    attempt integer NOT NULL,
    host text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    result text,
    PRIMARY KEY (run_id, job_id, attempt),
    FOREIGN KEY (run_id, job_id) REFERENCES vmrunner_jobs ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS vmrunner_logs (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    job_id text NOT NULL,
    attempt integer NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    line text NOT NULL
);
CREATE INDEX IF NOT EXISTS vmrunner_logs_run ON vmrunner_logs (run_id, id);
-- Columns added after the first release: kept as ALTERs so an existing store is upgraded in place.
ALTER TABLE vmrunner_jobs ADD COLUMN IF NOT EXISTS parent text;
ALTER TABLE vmrunner_jobs ADD COLUMN IF NOT EXISTS matrix_index integer;
ALTER TABLE vmrunner_jobs ADD COLUMN IF NOT EXISTS matrix jsonb NOT NULL DEFAULT '{}';
ALTER TABLE vmrunner_jobs ADD COLUMN IF NOT EXISTS strategy jsonb NOT NULL DEFAULT '{}';
ALTER TABLE vmrunner_jobs ADD COLUMN IF NOT EXISTS continue_on_error boolean NOT NULL DEFAULT false;
-- What the runner reports besides log lines (steps, annotations, the job's lifecycle), as
-- ``reports/events.py`` defines them: ``kind`` is the event's class, ``data`` its fields (masked).
CREATE TABLE IF NOT EXISTS vmrunner_events (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    job_id text NOT NULL,
    attempt integer NOT NULL,
    seq integer NOT NULL,
    kind text NOT NULL,
    data jsonb NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS vmrunner_events_run ON vmrunner_events (run_id, job_id, attempt, seq);
CREATE TABLE IF NOT EXISTS vmrunner_agents (
    name text PRIMARY KEY,
    labels text[] NOT NULL,
    capacity integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
"""  # noqa: E501


async def ensure_schema(connection: psycopg.AsyncConnection[Any]) -> None:
    """Create procrastinate's schema and ours when missing; safe to call from many hosts."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        row = await (
            await connection.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        ).fetchone()
        if not (row and row[0]):
            await connection.execute(SchemaManager.get_schema())
        await connection.execute(TABLES)
