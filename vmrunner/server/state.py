"""The server's own rows: webhook deliveries, the run queue, and the comments it owns.

They live in the same SQLite database as everything else (tables from the store's migration),
through a connection of their own, so that the server's bookkeeping never interleaves with a
``Store`` transaction of the runner. Every write is one short transaction on the event loop
(WAL: a fraction of a millisecond), cheap enough to do while answering a webhook.

Run states: ``queued`` (waiting for a slot) → ``running`` → ``completed`` (with the run's
conclusion); or ``interrupted`` when the server that ran it died or shut down mid-run.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from vmrunner.errors import StoreError
from vmrunner.sessions import Owner
from vmrunner.store import BUSY_TIMEOUT_MS, connect, fetch_all, immediate_transaction

RunState = Literal["queued", "running", "completed", "interrupted"]
DeliveryStatus = Literal["received", "dispatched", "ignored", "failed"]


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    event: str
    repository: str
    received_at: float
    status: str
    note: str
    payload: str


@dataclass(frozen=True, slots=True)
class ServerRun:
    seq: int
    run_id: str
    delivery_id: str
    repository: str
    workflow_file: str
    event_name: str
    sha: str
    ref: str
    pull_request: int | None
    state: str
    conclusion: str | None
    queued_at: float
    started_at: float | None
    finished_at: float | None
    owner_pid: int | None
    owner_start: int | None
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("owner_pid", "owner_start")
        }


_RUN_COLUMNS = ", ".join(f.name for f in fields(ServerRun))
_DELIVERY_COLUMNS = ", ".join(f.name for f in fields(Delivery))


class ServerState:
    """Deliveries, queued runs and owned comments; ``ServerState.open(path)``, used from one
    thread."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._checkpointer: sqlite3.Connection | None = None

    @classmethod
    def open(cls, path: str | Path | None = None) -> ServerState:
        connection, target = connect(
            path, "wal_autocheckpoint = 0"
        )  # ``checkpoint()`` does it, off the event loop
        return cls(connection, target)

    def close(self) -> None:
        self._db.close()
        if self._checkpointer is not None:
            self._checkpointer.close()

    def checkpoint(self) -> None:
        """Move the WAL into the database (the one fsync), from any one thread at a time.

        Our connection never checkpoints on commit, so answering a webhook never waits for a
        disk flush (measured: 50 µs typical, but up to ~200 ms when a commit ran the checkpoint).
        """
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                )
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot checkpoint: {exc}") from exc

    def _write(self, doing: str) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db, self.path, doing)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return fetch_all(self._db, self.path, sql, params, "read")

    # Deliveries

    def add_delivery(
        self,
        delivery_id: str,
        event: str,
        repository: str,
        payload: bytes | str,
        status: DeliveryStatus,
        note: str = "",
    ) -> bool:
        """Record a delivery; False when this id was seen before (a redelivery).

        A redelivery of one that ``failed`` (say the clone failed) is taken afresh: redelivering
        from GitHub is how people retry.
        """
        text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
        with self._write("record a delivery") as db:
            cursor = db.execute(
                f"INSERT INTO server_deliveries ({_DELIVERY_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status, note = excluded.note,"
                " payload = excluded.payload, received_at = excluded.received_at"
                " WHERE server_deliveries.status = 'failed'",
                (delivery_id, event, repository, time.time(), status, note, text),
            )
            return cursor.rowcount == 1

    def finish_delivery(
        self, delivery_id: str, status: DeliveryStatus, note: str, runs: Sequence[ServerRun] = ()
    ) -> None:
        """Mark a delivery handled and queue its runs, in one transaction (payload dropped if no run
        needs it)."""
        with self._write("queue runs") as db:
            for run in runs:
                values = [getattr(run, f.name) for f in fields(ServerRun)][1:]
                db.execute(
                    f"INSERT INTO server_runs ({_RUN_COLUMNS.split(', ', 1)[1]}) VALUES "
                    f"({', '.join('?' * len(values))})",
                    values,
                )
            keep = "payload" if runs else "'{}'"
            db.execute(
                f"UPDATE server_deliveries SET status = ?, note = ?, payload = {keep} WHERE id = ?",
                (status, note, delivery_id),
            )

    def queue_run(self, run: ServerRun) -> None:
        """Queue one more run (a re-run) of a delivery already handled."""
        values = [getattr(run, f.name) for f in fields(ServerRun)][1:]
        with self._write("queue a run") as db:
            db.execute(
                f"INSERT INTO server_runs ({_RUN_COLUMNS.split(', ', 1)[1]}) VALUES "
                f"({', '.join('?' * len(values))})",
                values,
            )

    def delivery(self, delivery_id: str) -> Delivery | None:
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS} FROM server_deliveries WHERE id = ?", (delivery_id,)
        )
        return Delivery(*rows[0]) if rows else None

    def pending_deliveries(self) -> list[Delivery]:
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS} FROM server_deliveries WHERE status = 'received' ORDER "
            f"BY received_at"
        )
        return [Delivery(*row) for row in rows]

    def payload(self, delivery_id: str) -> Mapping[str, Any]:
        rows = self._read("SELECT payload FROM server_deliveries WHERE id = ?", (delivery_id,))
        value = json.loads(rows[0][0]) if rows else {}
        return value if isinstance(value, Mapping) else {}

    # Runs

    def runs(
        self,
        *,
        state: RunState | None = None,
        delivery_id: str | None = None,
        limit: int | None = None,
    ) -> list[ServerRun]:
        where: list[str] = []
        params: list[Any] = []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if delivery_id is not None:
            where.append("delivery_id = ?")
            params.append(delivery_id)
        sql = f"SELECT {_RUN_COLUMNS} FROM server_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq" + (" DESC" if limit is not None else "")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [ServerRun(*row) for row in self._read(sql, params)]

    def run(self, run_id: str) -> ServerRun | None:
        rows = self._read(f"SELECT {_RUN_COLUMNS} FROM server_runs WHERE run_id = ?", (run_id,))
        return ServerRun(*rows[0]) if rows else None

    def pull_request_runs(self, repository: str, number: int) -> list[ServerRun]:
        rows = self._read(
            f"SELECT {_RUN_COLUMNS} FROM server_runs WHERE repository = ? AND pull_request = ? "
            f"ORDER BY seq",
            (repository, number),
        )
        return [ServerRun(*row) for row in rows]

    def start_run(self, run_id: str, owner: Owner) -> None:
        with self._write("start a run") as db:
            db.execute(
                "UPDATE server_runs SET state = 'running', started_at = ?, owner_pid = ?, "
                "owner_start = ? WHERE run_id = ?",
                (time.time(), owner.pid, owner.start, run_id),
            )

    def finish_run(
        self, run_id: str, state: RunState, conclusion: str | None, note: str = ""
    ) -> None:
        with self._write("finish a run") as db:
            db.execute(
                "UPDATE server_runs SET state = ?, conclusion = ?, finished_at = ?, note = ? "
                "WHERE run_id = ?",
                (state, conclusion, time.time(), note, run_id),
            )

    def interrupt_orphans(self) -> list[ServerRun]:
        """Mark ``interrupted`` every running run whose server process is gone; those runs."""
        orphans = [
            run
            for run in self.runs(state="running")
            if not Owner(run.owner_pid or 0, run.owner_start).alive()
        ]
        for run in orphans:
            self.finish_run(
                run.run_id,
                "interrupted",
                "interrupted",
                f"the server (pid {run.owner_pid}) stopped during the run",
            )
        return orphans

    # Comments

    def comment_id(self, repository: str, number: int) -> int | None:
        rows = self._read(
            "SELECT comment_id FROM server_comments WHERE repository = ? AND pull_request = ?",
            (repository, number),
        )
        return int(rows[0][0]) if rows else None

    def set_comment_id(self, repository: str, number: int, comment_id: int) -> None:
        with self._write("remember a comment") as db:
            db.execute(
                "INSERT INTO server_comments VALUES (?,?,?) ON CONFLICT (repository, "
                "pull_request) DO UPDATE SET comment_id = excluded.comment_id",
                (repository, number, comment_id),
            )
