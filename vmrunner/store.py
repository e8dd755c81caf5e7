"""Persistence on one host: one SQLite database, ``VMRUNNER_HOME/state.db``.

The store keeps what must survive the runner process: sessions with every state transition,
the machines they hold (enough to find and release them after a crash), and snapshots. Later
layers add runs, jobs, steps and logs by appending a migration to ``MIGRATIONS``.

Choices, and why:
- WAL journal with ``synchronous=NORMAL``: readers never block the writer, and a commit costs
  no fsync; only the automatic checkpoint (every ~1000 pages) does. Measured (``python -m
  bench pool``): a state transition takes p50 ~0.08 ms, p99 ~5 ms (the checkpoint's fsync).
  The session manager therefore writes inline from the event loop: a hop to a thread costs
  more than the typical write, and the rare checkpoint stall stays a few milliseconds.
- ``BEGIN IMMEDIATE`` for every write: the write lock is taken up front, so two runner
  processes sharing ``VMRUNNER_HOME`` queue on ``busy_timeout`` instead of failing half-way.
- Every public write is one transaction; a failure rolls it all back (never a half record).
  ``transaction()`` lets a caller group several writes; nested calls join the outer one.
- The store knows nothing of machines or sessions as objects: it reads and writes plain rows,
  so it sits below every other layer.
- A full or failing disk raises ``StoreDiskError`` (a ``StoreError``): callers keep what they
  could not write and try again. A small reserve file beside the database
  (``keep_reserve``/``release_reserve``) is given up when the disk is full, so that a run's
  final record still fits.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from vmrunner.config import ensure_home
from vmrunner.errors import StoreDiskError, StoreError

DATABASE_NAME = "state.db"
#: Bytes kept free beside the database (``keep_reserve``), enough for a run's final record.
RESERVE_BYTES = 1 << 20
RESERVE_SUFFIX = ".reserve"
#: sqlite's primary result codes meaning the disk is full or failing (SQLITE_IOERR, SQLITE_FULL).
_DISK_CODES = frozenset({10, 13})
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
#: How long a writer waits for another process's write lock before giving up (ms).
BUSY_TIMEOUT_MS = 5000
_Row = TypeVar("_Row")

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
    # 2: workflow runs, their jobs, steps, logs and annotations (written as events arrive).
    (
        """CREATE TABLE runs (
            id            TEXT PRIMARY KEY,
            workflow_name TEXT NOT NULL,
            workflow_file TEXT NOT NULL,
            event_name    TEXT NOT NULL,
            sha           TEXT NOT NULL DEFAULT '',
            ref           TEXT NOT NULL DEFAULT '',
            status        TEXT NOT NULL,
            conclusion    TEXT,
            started_at    REAL NOT NULL,
            finished_at   REAL,
            duration      REAL,
            owner_pid     INTEGER NOT NULL,
            owner_start   INTEGER,
            note          TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX runs_started ON runs (started_at)",
        "CREATE INDEX runs_workflow ON runs (workflow_name, started_at)",
        """CREATE TABLE run_jobs (
            run_id             TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            job_key            TEXT NOT NULL,
            seq                INTEGER NOT NULL,
            job_id             TEXT NOT NULL,
            name               TEXT NOT NULL,
            status             TEXT NOT NULL,
            conclusion         TEXT,
            matrix             TEXT NOT NULL DEFAULT '{}',
            needs              TEXT NOT NULL DEFAULT '[]',
            queued_at          REAL,
            started_at         REAL,
            finished_at        REAL,
            duration           REAL,
            allocation_seconds REAL NOT NULL DEFAULT 0,
            session_id         TEXT NOT NULL DEFAULT '',
            machine_id         TEXT NOT NULL DEFAULT '',
            provider           TEXT NOT NULL DEFAULT '',
            vm_type            TEXT NOT NULL DEFAULT '',
            from_pool          INTEGER NOT NULL DEFAULT 0,
            outputs            TEXT NOT NULL DEFAULT '{}',
            snapshots          TEXT NOT NULL DEFAULT '[]',
            rolled_back        INTEGER NOT NULL DEFAULT 0,
            reason             TEXT NOT NULL DEFAULT '',
            summary            TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, job_key)
        )""",
        """CREATE TABLE run_steps (
            run_id      TEXT NOT NULL,
            job_key     TEXT NOT NULL,
            step_index  INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            name        TEXT NOT NULL,
            step_id     TEXT NOT NULL DEFAULT '',
            status      TEXT NOT NULL,
            outcome     TEXT,
            conclusion  TEXT,
            started_at  REAL NOT NULL,
            finished_at REAL,
            duration    REAL,
            exit_code   INTEGER,
            timed_out   INTEGER NOT NULL DEFAULT 0,
            snapshot_id TEXT NOT NULL DEFAULT '',
            outputs     TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (run_id, job_key, step_index),
            FOREIGN KEY (run_id, job_key) REFERENCES run_jobs (run_id, job_key) ON DELETE CASCADE
        )""",
        """CREATE TABLE run_logs (
            seq         INTEGER PRIMARY KEY,
            run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            job_key     TEXT NOT NULL,
            step_index  INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            stream      TEXT NOT NULL,
            text        TEXT NOT NULL,
            time        REAL NOT NULL,
            group_depth INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX run_logs_step ON run_logs (run_id, job_key, step_index, seq)",
        """CREATE TABLE run_annotations (
            seq        INTEGER PRIMARY KEY,
            run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            job_key    TEXT NOT NULL,
            step_index INTEGER NOT NULL,
            level      TEXT NOT NULL,
            message    TEXT NOT NULL,
            time       REAL NOT NULL,
            file       TEXT NOT NULL DEFAULT '',
            line       INTEGER NOT NULL DEFAULT 0,
            "column"   INTEGER NOT NULL DEFAULT 0,
            title      TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX run_annotations_run ON run_annotations (run_id, seq)",
    ),
    (  # vmrunner serve: webhook deliveries, its run queue, and the pull request comments it owns
        """CREATE TABLE server_deliveries (
            id          TEXT PRIMARY KEY,
            event       TEXT NOT NULL,
            repository  TEXT NOT NULL DEFAULT '',
            received_at REAL NOT NULL,
            status      TEXT NOT NULL,
            note        TEXT NOT NULL DEFAULT '',
            payload     TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX server_deliveries_status ON server_deliveries (status, received_at)",
        """CREATE TABLE server_runs (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id        TEXT NOT NULL UNIQUE,
            delivery_id   TEXT NOT NULL REFERENCES server_deliveries (id),
            repository    TEXT NOT NULL,
            workflow_file TEXT NOT NULL,
            event_name    TEXT NOT NULL,
            sha           TEXT NOT NULL,
            ref           TEXT NOT NULL DEFAULT '',
            pull_request  INTEGER,
            state         TEXT NOT NULL,
            conclusion    TEXT,
            queued_at     REAL NOT NULL,
            started_at    REAL,
            finished_at   REAL,
            owner_pid     INTEGER,
            owner_start   INTEGER,
            note          TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX server_runs_state ON server_runs (state, seq)",
        """CREATE TABLE server_comments (
            repository   TEXT NOT NULL,
            pull_request INTEGER NOT NULL,
            comment_id   INTEGER NOT NULL,
            PRIMARY KEY (repository, pull_request)
        )""",
    ),
    (  # vmrunner rerun: a run that re-ran a job of another from one of its steps
        "ALTER TABLE runs ADD COLUMN rerun_of TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE runs ADD COLUMN from_step INTEGER",
    ),
    (  # the machine lifecycle timeline of each job of a run (reports/timeline.py)
        """CREATE TABLE IF NOT EXISTS run_timeline (
            seq         INTEGER PRIMARY KEY,
            run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            job_key     TEXT NOT NULL,
            time        REAL NOT NULL,
            kind        TEXT NOT NULL,
            session_id  TEXT NOT NULL DEFAULT '',
            machine_id  TEXT NOT NULL DEFAULT '',
            state       TEXT NOT NULL DEFAULT '',
            step_index  INTEGER,
            step_kind   TEXT NOT NULL DEFAULT '',
            name        TEXT NOT NULL DEFAULT '',
            exit_code   INTEGER,
            outcome     TEXT NOT NULL DEFAULT '',
            seconds     REAL,
            detail      TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX IF NOT EXISTS run_timeline_run ON run_timeline (run_id, seq)",
    ),
    (  # learning from runs (learning/history.py): commands, their averages, sequences, lessons
        """CREATE TABLE learning_commands (
            seq         INTEGER PRIMARY KEY,
            repository  TEXT NOT NULL,
            workflow    TEXT NOT NULL,
            job_id      TEXT NOT NULL,
            run_id      TEXT NOT NULL,
            sha         TEXT NOT NULL DEFAULT '',
            command_key TEXT NOT NULL,
            command     TEXT NOT NULL,
            outcome     TEXT NOT NULL,
            exit_code   INTEGER,
            duration    REAL NOT NULL,
            time        REAL NOT NULL,
            signature   TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX learning_commands_key ON learning_commands (repository, command_key, sha)",
        "CREATE INDEX learning_commands_signature ON learning_commands (repository, signature)",
        """CREATE TABLE learning_patterns (
            repository  TEXT NOT NULL,
            command_key TEXT NOT NULL,
            successes   INTEGER NOT NULL DEFAULT 0,
            failures    INTEGER NOT NULL DEFAULT 0,
            mean        REAL NOT NULL DEFAULT 0,
            m2          REAL NOT NULL DEFAULT 0,
            last_seen   REAL NOT NULL,
            PRIMARY KEY (repository, command_key)
        )""",
        """CREATE TABLE learning_edges (
            repository TEXT NOT NULL,
            before_key TEXT NOT NULL,
            after_key  TEXT NOT NULL,
            successes  INTEGER NOT NULL DEFAULT 0,
            failures   INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (repository, before_key, after_key)
        )""",
        """CREATE TABLE learning_lessons (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            repository   TEXT NOT NULL,
            signature    TEXT NOT NULL,
            command      TEXT NOT NULL,
            command_key  TEXT NOT NULL,
            excerpt      TEXT NOT NULL DEFAULT '',
            occurrences  INTEGER NOT NULL,
            first_seen   REAL NOT NULL,
            last_seen    REAL NOT NULL,
            dismissed_at REAL,
            UNIQUE (repository, signature)
        )""",
    ),
    (  # REST API tokens (server/tokens.py): a token's SHA-256, never the token itself
        """CREATE TABLE api_tokens (
            name         TEXT PRIMARY KEY,
            hash         TEXT NOT NULL UNIQUE,
            scope        TEXT NOT NULL,
            created_at   REAL NOT NULL,
            last_used_at REAL
        )""",
        # a run's output read a page at a time, in order (Store.iter_run_logs)
        "CREATE INDEX run_logs_run ON run_logs (run_id, seq)",
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
    """A snapshot taken in a session: what ``Session.snapshot`` returns and the store keeps."""

    session_id: str
    snapshot_id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class RunRow(Generic[_Row]):
    """A workflow run as kept: the reports' record of it (``reports.results.RunResult``, whose
    fields are the columns; its jobs, steps and annotations have tables of their own) and what
    only the store keeps.

    ``owner_pid``/``owner_start`` name the runner process writing it, so that a run whose runner
    died can be told from one still going; ``note`` says why it ended so, or what it lost.
    """

    run: _Row
    owner_pid: int
    owner_start: int | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class LogRow:
    """One line of a run's output (``kind`` "line"), or a group opening ("group", ``text`` is
    its title) or closing ("endgroup"). ``step_index`` -1 is the job itself."""

    run_id: str
    job_key: str
    step_index: int
    kind: str
    stream: str
    text: str
    time: float
    group_depth: int = 0


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A REST API token as kept: its name, the SHA-256 (hex) of its value, its scope."""

    name: str
    hash: str
    scope: str
    created_at: float
    last_used_at: float | None = None


#: Log lines read per query when a run's output is read as a stream (bounded memory).
LOG_PAGE = 200

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


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full or failing rather than the statement is wrong."""
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DISK_CODES
    return isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS


def store_error(path: object, doing: str, exc: BaseException) -> StoreError:
    """The ``StoreError`` for ``exc`` met while ``doing``: a ``StoreDiskError`` for a full or
    failing disk, so that callers can keep the write for later."""
    if not is_disk_error(exc):
        return StoreError(f"{path}: cannot {doing}: {exc}")
    return StoreDiskError(
        f"{path}: cannot {doing}: {exc} ({free_space(os.path.dirname(str(path)))})"
    )


def free_space(folder: str) -> str:
    """How much room the disk holding ``folder`` has left, said for people."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return "free space unknown"
    return f"{stats.f_bavail * stats.f_frsize // 1024} KiB free on the disk holding {folder}"


def connect(path: str | Path | None = None, *pragmas: str) -> tuple[sqlite3.Connection, Path]:
    """A connection of its own to the state database (created and migrated first), for a part
    that keeps its tables there (learning, the server's state), with ``pragmas`` beside ours."""
    target = Path(path) if path is not None else default_path()
    Store.open(target).close()
    try:
        connection = sqlite3.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "synchronous = NORMAL", *pragmas):
            connection.execute(f"PRAGMA {pragma}")
    except sqlite3.Error as exc:
        raise store_error(target, "open the state database", exc) from exc
    return connection, target


@contextmanager
def immediate_transaction(
    db: sqlite3.Connection, path: object, doing: str
) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on an autocommit connection, rolled back on any error;
    sqlite errors become ``StoreError`` naming the database and what was being done."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
    except sqlite3.Error as exc:
        raise store_error(path, doing, exc) from exc


def _roll_back(db: sqlite3.Connection) -> None:
    """Roll back what is left of a failed transaction; sqlite may have done it already (a full
    disk does), and the error that made it fail is the one worth raising."""
    if db.in_transaction:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def fetch_all(
    db: sqlite3.Connection, path: object, sql: str, params: Sequence[Any], doing: str
) -> list[Any]:
    """Every row of one query; sqlite errors become ``StoreError``."""
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise store_error(path, doing, exc) from exc


class Store:
    """A connection to the state database; use as a context manager, from one thread."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._depth = 0
        self.path = path

    @classmethod
    def open(cls, path: str | Path | None = None) -> Store:
        """Open (creating and migrating if needed) the database at ``path``.

        On a disk too full to open it (sqlite needs room for its shared-memory file), the
        reserve is given up and the open tried once more: a run then still gets recorded.
        """
        target = Path(path) if path is not None else default_path()
        try:
            return cls._open(target)
        except StoreDiskError:
            try:
                target.with_name(target.name + RESERVE_SUFFIX).unlink()
            except OSError:
                gave_up = False  # no reserve left
            else:
                gave_up = True
            if not gave_up:
                raise
        return cls._open(target)

    @classmethod
    def _open(cls, target: Path) -> Store:
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not target.exists():  # private, even in a state directory others may enter
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            connection = sqlite3.connect(
                target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except (OSError, sqlite3.Error) as exc:
            raise store_error(target, "open the state database", exc) from exc
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
            raise store_error(self.path, doing, exc) from exc

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
            _roll_back(self._db)
            raise
        self._depth = 0
        try:
            with self._errors("commit"):
                self._db.execute("COMMIT")
        except StoreError:
            _roll_back(self._db)
            raise

    # The reserve

    @property
    def reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + RESERVE_SUFFIX)

    def keep_reserve(self, size: int = RESERVE_BYTES) -> bool:
        """Set ``size`` bytes of the database's disk aside (a file beside it) unless already
        done. ``StoreDiskError`` when the disk has not that much room (it is nearly full);
        False when the reserve cannot be made for another reason (never needed to run)."""
        target = self.reserve_path
        try:
            if target.stat().st_size >= size:
                return True
        except OSError:
            pass
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)  # blocks really taken, not a sparse file
            finally:
                os.close(fd)
        except OSError as exc:
            with suppress(OSError):
                target.unlink()
            if is_disk_error(exc):
                raise store_error(target, f"set {size // 1024} KiB aside", exc) from exc
            return False
        return True

    def release_reserve(self) -> bool:
        """Give the reserved bytes back to the disk (when it is full); False if none were kept."""
        try:
            self.reserve_path.unlink()
        except OSError:
            return False
        return True

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
        cursor = self._execute(
            f"UPDATE sessions SET {assignments} WHERE id = ?", (*params, session_id)
        )
        if cursor.rowcount != 1:
            raise StoreError(f"{self.path}: no session {session_id}")

    def _transition(self, session_id: str, state: str, at: float, note: str) -> None:
        self._execute(
            "INSERT INTO session_transitions (session_id, state, at, note) VALUES (?,?,?,?)",
            (session_id, state, at, note),
        )

    def session(self, session_id: str) -> SessionRow | None:
        row = self._execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return _session_row(row) if row else None

    def sessions(self, *, include_released: bool = False) -> list[SessionRow]:
        """Sessions in creation order; without released ones unless asked."""
        where = "" if include_released else "WHERE state != 'released'"
        rows = self._execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY created_at, id"
        )
        return [_session_row(row) for row in rows.fetchall()]

    def transitions(self, session_id: str) -> list[TransitionRow]:
        rows = self._execute(
            "SELECT session_id, state, at, note FROM session_transitions WHERE session_id = ? "
            "ORDER BY seq",
            (session_id,),
        )
        return [TransitionRow(*row) for row in rows.fetchall()]

    # Machines

    def put_machine(self, row: MachineRow) -> None:
        """Insert or replace a machine's row (a pool machine handed to a session is re-put)."""
        with self.transaction():
            self._execute(
                f"INSERT OR REPLACE INTO machines ({_MACHINE_COLUMNS}) VALUES "
                f"(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.machine_id,
                    row.provider,
                    row.vm_type,
                    row.pid,
                    row.pid_start,
                    row.state_dir,
                    row.owner_pid,
                    row.owner_start,
                    row.created_at,
                    json.dumps(dict(row.data)),
                    row.session_id,
                    row.allocated_at,
                    row.released_at,
                    row.note,
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
        rows = self._execute(
            f"SELECT {_MACHINE_COLUMNS} FROM machines {where} ORDER BY allocated_at"
        )
        return [_machine_row(row) for row in rows.fetchall()]

    def mark_machine_released(
        self, machine_id: str, at: float, *, note: str = "", session_id: str | None = None
    ) -> bool:
        """Record a machine as released; with ``session_id``, only while that session holds it.

        Returns whether a row changed (False: already released, or handed on since).
        """
        sql = (
            "UPDATE machines SET released_at = ?, note = ? WHERE machine_id = ? AND released_at "
            "IS NULL"
        )
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
                "INSERT INTO snapshots (session_id, snapshot_id, name, created_at)"
                " VALUES (?,?,?,?)",
                (row.session_id, row.snapshot_id, row.name, row.created_at),
            )

    def snapshots(self, session_id: str) -> list[SnapshotRow]:
        rows = self._execute(
            "SELECT session_id, snapshot_id, name, created_at FROM snapshots"
            " WHERE session_id = ? ORDER BY created_at, rowid",
            (session_id,),
        )
        return [SnapshotRow(*row) for row in rows.fetchall()]

    # Runs (written by ``reports.storage.StoreSink`` as a run's events arrive)

    def put_run(self, row: RunRow[Any]) -> None:
        """Insert or update a run (its jobs, steps and logs stay)."""
        with self.transaction():
            self._upsert("runs", row.run, _run_columns(row), ("id",))

    def put_run_job(self, run_id: str, seq: int, job: Any) -> None:
        """Insert or update a job (a ``reports.results.JobResult``; ``seq``: its place in the
        run). Its steps, annotations and timeline have their own tables."""
        with self.transaction():
            self._upsert("run_jobs", job, {"run_id": run_id, "seq": seq}, ("run_id", "job_key"))

    def put_run_step(self, run_id: str, job_key: str, step: Any) -> None:
        """Insert or update a step (a ``reports.results.StepResult``) of a run's job."""
        with self.transaction():
            self._upsert(
                "run_steps", step, {"run_id": run_id, "job_key": job_key},
                ("run_id", "job_key", "step_index"),
            )

    def add_run_logs(self, rows: Sequence[LogRow]) -> None:
        """Append log lines, in order, with one statement."""
        self._insert_many("run_logs", LogRow, rows)

    def add_run_annotations(self, run_id: str, annotations: Sequence[Any]) -> None:
        """Append annotations (``reports.results.AnnotationResult``) of a run."""
        self._insert_many("run_annotations", None, annotations, {"run_id": run_id})

    def add_run_timeline(self, run_id: str, entries: Sequence[Any]) -> None:
        """Append machine lifecycle entries (``reports.timeline.TimelineEntry``), in order, with
        one statement."""
        self._insert_many("run_timeline", None, entries, {"run_id": run_id})

    def run_timeline(self, run_id: str, kind: type[_Row]) -> list[_Row]:
        """A run's machine lifecycle entries (as ``kind``) in the order they were written."""
        return self._records(kind, "run_timeline", run_id, "seq")

    def finish_unfinished_run(self, run_id: str, conclusion: str, at: float, note: str) -> bool:
        """Close a run that never finished (its runner died); False if it had finished."""
        with self.transaction():
            cursor = self._execute(
                "UPDATE runs SET status = 'completed', conclusion = ?, finished_at = ?,"
                " duration = MAX(0, ? - started_at), note = ? WHERE id = ? AND status != "
                "'completed'",
                (conclusion, at, at, note, run_id),
            )
            return cursor.rowcount == 1

    def delete_run(self, run_id: str) -> bool:
        """Forget a run with its jobs, steps, logs and annotations."""
        with self.transaction():
            return self._execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 1

    def runs(
        self,
        kind: type[_Row],
        *,
        limit: int | None = 20,
        workflow: str | None = None,
        unfinished: bool = False,
    ) -> list[RunRow[_Row]]:
        """Runs (their record as ``kind``), newest first; only those of ``workflow`` (name or
        file) or not completed if asked."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if workflow is not None:
            where.append("(workflow_name = ? OR workflow_file = ?)")
            params += [workflow, workflow]
        if unfinished:
            where.append("status != 'completed'")
        sql = (
            f"SELECT owner_pid, owner_start, note, {_columns(kind)} FROM runs WHERE "
            f"{' AND '.join(where)} ORDER BY started_at DESC, id DESC"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_run_row(kind, row) for row in self._execute(sql, params).fetchall()]

    def run(self, run_id: str, kind: type[_Row]) -> RunRow[_Row] | None:
        """The run ``run_id`` (its record as ``kind``), or None."""
        row = self._execute(
            f"SELECT owner_pid, owner_start, note, {_columns(kind)} FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        return _run_row(kind, row) if row else None

    def run_ids(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids of runs starting with ``prefix`` (like git's abbreviated commit ids)."""
        rows = self._execute(
            "SELECT id FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT ?",
            (len(prefix), prefix, limit),
        )
        return [row[0] for row in rows.fetchall()]

    def run_jobs(self, run_id: str, kind: type[_Row]) -> list[_Row]:
        """A run's jobs (as ``kind``, without their steps), in the order the run saw them."""
        return self._records(kind, "run_jobs", run_id, "seq")

    def run_steps(self, run_id: str, kind: type[_Row]) -> list[tuple[str, _Row]]:
        """A run's steps (as ``kind``) with their job's key, job by job, in order."""
        rows = self._execute(
            f"SELECT job_key, {_columns(kind)} FROM run_steps WHERE run_id = ?"
            " ORDER BY job_key, step_index",
            (run_id,),
        )
        return [(row[0], _from_row(kind, row[1:])) for row in rows.fetchall()]

    def run_logs(
        self, run_id: str, job_key: str | None = None, step_index: int | None = None
    ) -> list[LogRow]:
        """A run's output in the order it was written; only one job's, or one step's, if asked."""
        return [row for _, row in self.iter_run_logs(run_id, job_key, step_index)]

    def iter_run_logs(
        self,
        run_id: str,
        job_key: str | None = None,
        step_index: int | None = None,
        *,
        after: int = 0,
    ) -> Iterator[tuple[int, LogRow]]:
        """``run_logs`` as (sequence number, row) pairs read ``LOG_PAGE`` at a time, from the
        line after ``after``: a run with hundreds of MiB of output is never held whole."""
        while page := self.run_log_page(run_id, job_key, step_index, after=after):
            yield from page
            after = page[-1][0]

    def run_log_page(
        self,
        run_id: str,
        job_key: str | None = None,
        step_index: int | None = None,
        *,
        after: int = 0,
        limit: int = LOG_PAGE,
    ) -> list[tuple[int, LogRow]]:
        """Up to ``limit`` lines after sequence number ``after``, with their numbers."""
        sql = f"SELECT seq, {_columns(LogRow)} FROM run_logs WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, after]
        if job_key is not None:
            sql += " AND job_key = ?"
            params.append(job_key)
        if step_index is not None:
            sql += " AND step_index = ?"
            params.append(step_index)
        rows = self._execute(sql + " ORDER BY seq LIMIT ?", [*params, limit]).fetchall()
        return [(int(row[0]), _from_row(LogRow, row[1:])) for row in rows]

    def run_annotations(self, run_id: str, kind: type[_Row]) -> list[_Row]:
        """A run's annotations (as ``kind``) in the order they were written."""
        return self._records(kind, "run_annotations", run_id, "seq")

    # REST API tokens

    def add_token(self, row: TokenRow) -> bool:
        """Keep a new token; False when a token of that name exists already."""
        with self.transaction():
            cursor = self._execute(
                "INSERT INTO api_tokens (name, hash, scope, created_at, last_used_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (row.name, row.hash, row.scope, row.created_at, row.last_used_at),
            )
            return cursor.rowcount == 1

    def tokens(self) -> list[TokenRow]:
        rows = self._execute(
            "SELECT name, hash, scope, created_at, last_used_at FROM api_tokens ORDER BY name"
        )
        return [TokenRow(*row) for row in rows.fetchall()]

    def token_by_hash(self, digest: str) -> TokenRow | None:
        row = self._execute(
            "SELECT name, hash, scope, created_at, last_used_at FROM api_tokens WHERE hash = ?",
            (digest,),
        ).fetchone()
        return TokenRow(*row) if row else None

    def delete_token(self, name: str) -> bool:
        with self.transaction():
            return self._execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount == 1

    def touch_token(self, name: str, at: float) -> None:
        with self.transaction():
            self._execute("UPDATE api_tokens SET last_used_at = ? WHERE name = ?", (at, name))

    def _records(self, kind: type[_Row], table: str, run_id: str, order: str) -> list[_Row]:
        rows = self._execute(
            f"SELECT {_columns(kind)} FROM {table} WHERE run_id = ? ORDER BY {order}", (run_id,)
        )
        return [_from_row(kind, row) for row in rows.fetchall()]

    def _upsert(
        self, table: str, row: Any, keys: Mapping[str, Any], conflict: tuple[str, ...]
    ) -> None:
        """Insert ``row``'s columns and ``keys`` (more columns), or update them on ``conflict``."""
        names = [*keys, *_layout(type(row)).names]
        updates = ", ".join(
            f'"{name}" = excluded."{name}"' for name in names if name not in conflict
        )
        self._execute(
            f"INSERT INTO {table} ({_quoted(names)}) VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updates}",
            (*keys.values(), *_to_values(row)),
        )

    def _insert_many(
        self,
        table: str,
        kind: type[Any] | None,
        rows: Sequence[Any],
        keys: Mapping[str, Any] | None = None,
    ) -> None:
        if not rows:
            return
        keys = keys or {}
        names = [*keys, *_layout(kind or type(rows[0])).names]
        sql = f"INSERT INTO {table} ({_quoted(names)}) VALUES ({', '.join('?' * len(names))})"
        with self.transaction(), self._errors(f"write {table}"):
            self._db.executemany(sql, [(*keys.values(), *_to_values(row)) for row in rows])


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


def _run_columns(row: RunRow[Any]) -> dict[str, Any]:
    return {"owner_pid": row.owner_pid, "owner_start": row.owner_start, "note": row.note}


def _run_row(kind: type[_Row], row: Sequence[Any]) -> RunRow[_Row]:
    owner_pid, owner_start, note, *columns = row
    return RunRow(_from_row(kind, columns), owner_pid, owner_start, note)


#: Field metadata of a record kept in the store: the field has no column (it is kept elsewhere).
NOT_A_COLUMN: Mapping[str, Any] = {"column": None}


def column(name: str) -> Mapping[str, Any]:
    """Field metadata of a record kept in the store: the field's column is called ``name``."""
    return {"column": name}


@dataclass(frozen=True, slots=True)
class _Columns:
    """How a dataclass is kept in a table: one column per field (as its metadata says), named
    after it; mappings and tuples as JSON (tuples of dataclasses as their fields), booleans as
    0/1, ``Literal`` words checked on the way back (a word of a newer writer becomes the field's
    ``unknown`` metadata, else its default, else None)."""

    fields: tuple[str, ...]
    names: tuple[str, ...]
    get: Callable[[Any], Any]
    json: frozenset[str]
    booleans: frozenset[str]
    #: Field → (its Literal words, the value for any other word).
    words: Mapping[str, tuple[tuple[Any, ...], Any]]
    #: Field → the dataclass of its tuple's items.
    items: Mapping[str, type[Any]]


_COLUMN_LAYOUTS: dict[type[Any], _Columns] = {}


def _layout(kind: type[Any]) -> _Columns:
    """``kind``'s layout (computed once per class)."""
    layout = _COLUMN_LAYOUTS.get(kind)
    if layout is None:
        hints = get_type_hints(kind)
        kept = [f for f in fields(kind) if f.metadata.get("column", f.name) is not None]
        json_fields: set[str] = set()
        booleans: set[str] = set()
        items: dict[str, type[Any]] = {}
        words: dict[str, tuple[tuple[Any, ...], Any]] = {}
        for item in kept:
            hint = hints[item.name]
            args = get_args(hint)
            if get_origin(hint) in (Union, types.UnionType):
                hint = next(arg for arg in args if arg is not type(None))
                args = get_args(hint)
            origin = get_origin(hint)
            if hint is bool:
                booleans.add(item.name)
            elif origin in (tuple, Mapping, dict):
                json_fields.add(item.name)
                if origin is tuple and args and isinstance(args[0], type) and is_dataclass(args[0]):
                    items[item.name] = args[0]
            elif origin is Literal:
                default = None if item.default is MISSING else item.default
                words[item.name] = (args, item.metadata.get("unknown", default))
        names = tuple(f.name for f in kept)
        layout = _Columns(
            fields=names,
            names=tuple(f.metadata.get("column", f.name) for f in kept),
            get=attrgetter(*names) if len(names) > 1 else lambda row: (getattr(row, names[0]),),
            json=frozenset(json_fields),
            booleans=frozenset(booleans),
            words=words,
            items=items,
        )
        _COLUMN_LAYOUTS[kind] = layout
    return layout


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _columns(kind: type[Any]) -> str:
    """The quoted column list of a dataclass kept in a table (see ``_Columns``)."""
    return _quoted(_layout(kind).names)


def _to_values(row: Any) -> tuple[Any, ...]:
    """A row's values for SQLite, in column order: mappings and sequences as JSON."""
    layout = _layout(type(row))
    values: tuple[Any, ...] = layout.get(row)
    if not layout.json:
        return values
    return tuple(
        json.dumps(_plain(value), default=str) if name in layout.json else value
        for name, value in zip(layout.fields, values, strict=True)
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return [
        asdict(item) if is_dataclass(item) and not isinstance(item, type) else item
        for item in value
    ]


def _from_row(kind: type[_Row], row: Sequence[Any]) -> _Row:
    """The dataclass ``kind`` from a row read with ``_columns(kind)`` (see ``_Columns``)."""
    layout = _layout(kind)
    if not (layout.json or layout.booleans or layout.words):
        return kind(**dict(zip(layout.fields, row, strict=True)))
    values: dict[str, Any] = {}
    for name, value in zip(layout.fields, row, strict=True):
        if name in layout.json:
            value = json.loads(value)
            if isinstance(value, list):
                item = layout.items.get(name)
                value = tuple(item(**v) for v in value) if item else tuple(value)
        elif name in layout.booleans:
            value = bool(value)
        elif name in layout.words:
            choices, unknown = layout.words[name]
            if value not in choices:
                value = unknown
        values[name] = value
    return kind(**values)
