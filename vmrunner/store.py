"""Persistence on one host: one SQLite database, ``VMRUNNER_HOME/state.db``.

The store keeps what must survive the runner process: sessions with every state transition,
the machines they hold (enough to find and release them after a crash), and snapshots. Later
layers add runs, jobs, steps and logs by appending a migration to ``MIGRATIONS``.

Choices, and why:
- WAL journal with ``synchronous=NORMAL``: readers never block the writer, and a commit costs
  no fsync (only checkpoints do), so a write is a few tens of microseconds (``python -m bench
  pool`` prints the figure). The session manager therefore calls the store inline from the
  event loop instead of hopping to a thread, which would cost more than the write itself.
- ``BEGIN IMMEDIATE`` for every write: the write lock is taken up front, so two runner
  processes sharing ``VMRUNNER_HOME`` queue on ``busy_timeout`` instead of failing half-way.
- Every public write is one transaction; a failure rolls it all back (never a half record).
  ``transaction()`` lets a caller group several writes; nested calls join the outer one.
- The store knows nothing of machines or sessions as objects: it reads and writes plain rows,
  so it sits below every other layer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from vmrunner.config import ensure_home
from vmrunner.errors import StoreError

DATABASE_NAME = "state.db"
#: How long a writer waits for another process's write lock before giving up (ms).
BUSY_TIMEOUT_MS = 5000

#: Schema migrations: version N is ``MIGRATIONS[N - 1]``, a sequence of SQL statements run in
#: one transaction. Append new versions; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE machines (
            machine_id   TEXT PRIMARY KEY,
            provider     TEXT NOT NULL,
            vm_type      TEXT NOT NULL,
            pid          INTEGER,
            pid_start    INTEGER,
            state_dir    TEXT NOT NULL,
            owner_pid    INTEGER NOT NULL,
            owner_start  INTEGER,
            created_at   REAL NOT NULL,
            data         TEXT NOT NULL DEFAULT '{}',
            session_id   TEXT,
            allocated_at REAL NOT NULL,
            released_at  REAL,
            note         TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX machines_live ON machines (released_at)",
        """CREATE TABLE sessions (
            id            TEXT PRIMARY KEY,
            state         TEXT NOT NULL,
            vm_type       TEXT NOT NULL,
            provider      TEXT NOT NULL,
            machine_id    TEXT REFERENCES machines (machine_id),
            owner_pid     INTEGER NOT NULL,
            owner_start   INTEGER,
            labels        TEXT NOT NULL DEFAULT '{}',
            created_at    REAL NOT NULL,
            updated_at    REAL NOT NULL,
            last_activity REAL NOT NULL,
            note          TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX sessions_state ON sessions (state)",
        """CREATE TABLE session_transitions (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            state      TEXT NOT NULL,
            at         REAL NOT NULL,
            note       TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX session_transitions_session ON session_transitions (session_id, seq)",
        """CREATE TABLE snapshots (
            session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            snapshot_id TEXT NOT NULL,
            name        TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL,
            PRIMARY KEY (session_id, snapshot_id)
        )""",
    ),
)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session as persisted; ``state`` is a ``SessionState`` value."""

    id: str
    state: str
    vm_type: str
    provider: str
    owner_pid: int
    owner_start: int | None
    created_at: float
    updated_at: float
    last_activity: float
    machine_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True, slots=True)
class TransitionRow:
    """One state a session entered, and when (wall-clock seconds)."""

    session_id: str
    state: str
    at: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class MachineRow:
    """A machine record (see ``machines.base.MachineRecord``) plus who holds it and since when.

    ``session_id`` is None while the machine is idle in a warm pool.
    """

    machine_id: str
    provider: str
    vm_type: str
    pid: int | None
    pid_start: int | None
    state_dir: str
    owner_pid: int
    owner_start: int | None
    created_at: float
    allocated_at: float
    data: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    released_at: float | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """A snapshot taken in a session."""

    session_id: str
    snapshot_id: str
    name: str
    created_at: float


_MACHINE_COLUMNS = (
    "machine_id, provider, vm_type, pid, pid_start, state_dir, owner_pid, owner_start,"
    " created_at, data, session_id, allocated_at, released_at, note"
)
_SESSION_COLUMNS = (
    "id, state, vm_type, provider, machine_id, owner_pid, owner_start, labels, created_at,"
    " updated_at, last_activity, note"
)


def default_path() -> Path:
    """``VMRUNNER_HOME/state.db`` (the directory is created if missing)."""
    return ensure_home() / DATABASE_NAME


class Store:
    """A connection to the state database; use as a context manager, from one thread."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._depth = 0
        self.path = path

    @classmethod
    def open(cls, path: str | Path | None = None) -> Store:
        """Open (creating and migrating if needed) the database at ``path``."""
        target = Path(path) if path is not None else default_path()
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            connection = sqlite3.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state database {target}: {exc}") from exc
        store = cls(connection, target)
        try:
            with store._errors("configure"):
                connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")
                connection.execute("PRAGMA foreign_keys = ON")
            store.migrate()
        except BaseException:
            connection.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection; a second call is a no-op."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot {doing}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write: everything inside commits together or not at all.

        Nested calls join the outermost transaction.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._errors("begin a transaction"):
            self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            with self._errors("roll back"):
                self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            with self._errors("commit"):
                self._db.execute("COMMIT")
        except StoreError:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._errors(sql.split(None, 1)[0].lower()):
            return self._db.execute(sql, params)

    # Schema

    @property
    def schema_version(self) -> int:
        exists = self._execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        row = self._execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def migrate(self, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
        """Bring the schema to the latest version; returns the version reached."""
        with self.transaction():
            self._execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = self.schema_version
            if current > len(migrations):
                raise StoreError(
                    f"{self.path}: schema version {current} is newer than this vmrunner"
                    f" (knows {len(migrations)}); upgrade vmrunner"
                )
            for statements in migrations[current:]:
                for statement in statements:
                    self._execute(statement)
            if current < len(migrations):
                self._execute("DELETE FROM schema_version")
                self._execute("INSERT INTO schema_version (version) VALUES (?)", (len(migrations),))
        return len(migrations)

    # Sessions

    def add_session(self, row: SessionRow) -> None:
        """Insert a new session and its first transition."""
        with self.transaction():
            self._execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.id, row.state, row.vm_type, row.provider, row.machine_id, row.owner_pid,
                    row.owner_start, json.dumps(dict(row.labels)), row.created_at,
                    row.updated_at, row.last_activity, row.note,
                ),
            )
            self._transition(row.id, row.state, row.created_at, row.note)

    def set_session_state(
        self,
        session_id: str,
        state: str,
        at: float,
        *,
        note: str = "",
        last_activity: float | None = None,
    ) -> None:
        """Record that a session entered ``state`` at ``at`` (and its activity time)."""
        with self.transaction():
            self._update_session(
                session_id,
                "state = ?, updated_at = ?, last_activity = COALESCE(?, last_activity),"
                " note = CASE WHEN ? = '' THEN note ELSE ? END",
                (state, at, last_activity, note, note),
            )
            self._transition(session_id, state, at, note)

    def touch_session(self, session_id: str, last_activity: float) -> None:
        """Record the session's latest activity (wall-clock seconds)."""
        with self.transaction():
            self._update_session(session_id, "last_activity = ?", (last_activity,))

    def attach_machine(self, session_id: str, machine: MachineRow) -> None:
        """Record the machine (insert or replace its row) and bind it to the session, atomically."""
        with self.transaction():
            self.put_machine(machine)
            self._update_session(session_id, "machine_id = ?", (machine.machine_id,))

    def _update_session(self, session_id: str, assignments: str, params: Sequence[Any]) -> None:
        cursor = self._execute(f"UPDATE sessions SET {assignments} WHERE id = ?", (*params, session_id))
        if cursor.rowcount != 1:
            raise StoreError(f"{self.path}: no session {session_id}")

    def _transition(self, session_id: str, state: str, at: float, note: str) -> None:
        self._execute(
            "INSERT INTO session_transitions (session_id, state, at, note) VALUES (?,?,?,?)",
            (session_id, state, at, note),
        )

    def session(self, session_id: str) -> SessionRow | None:
        row = self._execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _session_row(row) if row else None

    def sessions(self, *, include_released: bool = False) -> list[SessionRow]:
        """Sessions in creation order; without released ones unless asked."""
        where = "" if include_released else "WHERE state != 'released'"
        rows = self._execute(f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY created_at, id")
        return [_session_row(row) for row in rows.fetchall()]

    def transitions(self, session_id: str) -> list[TransitionRow]:
        rows = self._execute(
            "SELECT session_id, state, at, note FROM session_transitions WHERE session_id = ? ORDER BY seq",
            (session_id,),
        )
        return [TransitionRow(*row) for row in rows.fetchall()]

    # Machines

    def put_machine(self, row: MachineRow) -> None:
        """Insert or replace a machine's row (a pool machine handed to a session is re-put)."""
        with self.transaction():
            self._execute(
                f"INSERT OR REPLACE INTO machines ({_MACHINE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.machine_id, row.provider, row.vm_type, row.pid, row.pid_start,
                    row.state_dir, row.owner_pid, row.owner_start, row.created_at,
                    json.dumps(dict(row.data)), row.session_id, row.allocated_at,
                    row.released_at, row.note,
                ),
            )

    def machine(self, machine_id: str) -> MachineRow | None:
        row = self._execute(
            f"SELECT {_MACHINE_COLUMNS} FROM machines WHERE machine_id = ?", (machine_id,)
        ).fetchone()
        return _machine_row(row) if row else None

    def machines(self, *, include_released: bool = False) -> list[MachineRow]:
        """Machines in allocation order; only those not released unless asked."""
        where = "" if include_released else "WHERE released_at IS NULL"
        rows = self._execute(f"SELECT {_MACHINE_COLUMNS} FROM machines {where} ORDER BY allocated_at")
        return [_machine_row(row) for row in rows.fetchall()]

    def mark_machine_released(
        self, machine_id: str, at: float, *, note: str = "", session_id: str | None = None
    ) -> bool:
        """Record a machine as released; with ``session_id``, only while that session holds it.

        Returns whether a row changed (False: already released, or handed on since).
        """
        sql = "UPDATE machines SET released_at = ?, note = ? WHERE machine_id = ? AND released_at IS NULL"
        params: tuple[Any, ...] = (at, note, machine_id)
        if session_id is not None:
            sql += " AND session_id = ?"
            params += (session_id,)
        with self.transaction():
            return self._execute(sql, params).rowcount == 1

    def note_machine(self, machine_id: str, note: str) -> None:
        """Attach a note (e.g. why its release failed) to a machine still recorded as live."""
        with self.transaction():
            self._execute("UPDATE machines SET note = ? WHERE machine_id = ?", (note, machine_id))

    # Snapshots

    def add_snapshot(self, row: SnapshotRow) -> None:
        with self.transaction():
            self._execute(
                "INSERT INTO snapshots (session_id, snapshot_id, name, created_at) VALUES (?,?,?,?)",
                (row.session_id, row.snapshot_id, row.name, row.created_at),
            )

    def snapshots(self, session_id: str) -> list[SnapshotRow]:
        rows = self._execute(
            "SELECT session_id, snapshot_id, name, created_at FROM snapshots"
            " WHERE session_id = ? ORDER BY created_at, rowid",
            (session_id,),
        )
        return [SnapshotRow(*row) for row in rows.fetchall()]


def _session_row(row: Sequence[Any]) -> SessionRow:
    (id_, state, vm_type, provider, machine_id, owner_pid, owner_start, labels, created_at,
     updated_at, last_activity, note) = row
    return SessionRow(
        id=id_, state=state, vm_type=vm_type, provider=provider, machine_id=machine_id,
        owner_pid=owner_pid, owner_start=owner_start, labels=json.loads(labels),
        created_at=created_at, updated_at=updated_at, last_activity=last_activity, note=note,
    )


def _machine_row(row: Sequence[Any]) -> MachineRow:
    (machine_id, provider, vm_type, pid, pid_start, state_dir, owner_pid, owner_start,
     created_at, data, session_id, allocated_at, released_at, note) = row
    return MachineRow(
        machine_id=machine_id, provider=provider, vm_type=vm_type, pid=pid, pid_start=pid_start,
        state_dir=state_dir, owner_pid=owner_pid, owner_start=owner_start, created_at=created_at,
        data=json.loads(data), session_id=session_id, allocated_at=allocated_at,
        released_at=released_at, note=note,
    )
