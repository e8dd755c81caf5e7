"""Caches of ``actions/cache``: entries per repository and scope, matched as GitHub matches them.

An entry is (repository, scope, key, version): the scope is the ref of the run that saved it,
the version a hash the client makes of the paths and the compression. Restoring, a job
searches its own ref first, then the refs its token lets it read (a pull request's base branch,
the default branch), never a sibling branch; in each scope it takes an exact match of ``key``,
else the newest entry whose key starts with ``key``, else the same for each restore key in
order; the version must always match (GitHub's "Matching a cache key").

The index is a SQLite database beside the blobs (``<cache>/index.db``); each repository's blobs
are in a folder of their own. Every repository may hold up to ``cache_size`` bytes: saving
past it evicts the least recently used entries (restores count as use) until it fits.
Entries are immutable: saving a key and version the scope already has is refused (409).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmrunner.errors import ServiceError
from vmrunner.services import blobs

INDEX = "index.db"
#: GitHub's limits on a key and on the keys of one restore.
MAX_KEY = 512
MAX_KEYS = 10
#: A reservation not finalized for this long is abandoned and can be taken again (seconds).
ABANDONED_AFTER = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    ready INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    used_at REAL NOT NULL,
    UNIQUE (repository, scope, key, version)
);
CREATE INDEX IF NOT EXISTS entries_lookup ON entries (repository, scope, version, key);
"""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    entry_id: int
    repository: str
    scope: str
    key: str
    version: str
    size: int
    created_at: float
    used_at: float


def check_key(key: str) -> str:
    if not key:
        raise ServiceError("the cache key is empty")
    if len(key) > MAX_KEY:
        raise ServiceError(f"the cache key is longer than {MAX_KEY} characters: {key[:40]}...")
    if "," in key:
        raise ServiceError(f"the cache key {key!r} contains a comma, which is not allowed")
    return key


def _escape_like(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)


class CacheStore:
    """The caches of every repository under ``root``, at most ``size_limit`` bytes each."""

    def __init__(self, root: Path, size_limit: int) -> None:
        self.root = root
        self.size_limit = size_limit
        self._schema_made = False

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One transaction (taken for writing at once, so that two savers never interleave)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            connection = sqlite3.connect(self.root / INDEX, timeout=60, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ServiceError(f"cannot open the cache index: {exc}", 507) from exc
        try:
            # A cache may lose its last entry to a power cut (it is made again), never its
            # consistency: the journal still guards every transaction.
            connection.execute("PRAGMA synchronous = NORMAL")
            if not self._schema_made:
                connection.executescript(_SCHEMA)
                self._schema_made = True
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ServiceError(f"the cache index failed: {exc}", 500) from exc
        finally:
            connection.close()

    def blob(self, entry_id: int, repository: str) -> Path:
        folder = hashlib.sha256(repository.encode()).hexdigest()[:24]
        return self.root / folder / f"{entry_id}.blob"

    def lookup(
        self, repository: str, scopes: Sequence[str], key: str, restore_keys: Sequence[str],
        version: str,
    ) -> CacheEntry | None:
        """The entry a restore gets (and marks used), or None: GitHub's order, scope by scope."""
        keys = [check_key(key), *(check_key(k) for k in restore_keys)]
        if len(keys) > MAX_KEYS:
            raise ServiceError(f"at most {MAX_KEYS} keys (key and restore keys), got {len(keys)}")
        with self._db() as db:
            for scope in scopes:
                found = self._match(db, repository, scope, keys, version)
                if found is not None:
                    now = time.time()
                    db.execute("UPDATE entries SET used_at = ? WHERE id = ?", (now, found[0]))
                    return CacheEntry(*found[:7], now)
        return None

    @staticmethod
    def _match(
        db: sqlite3.Connection, repository: str, scope: str, keys: list[str], version: str
    ) -> tuple[int, str, str, str, str, int, float] | None:
        columns = "id, repository, scope, key, version, size, created_at"
        where = "repository = ? AND scope = ? AND version = ? AND ready = 1"
        exact = db.execute(
            f"SELECT {columns} FROM entries WHERE {where} AND key = ?",
            (repository, scope, version, keys[0]),
        ).fetchone()
        if exact is not None:
            return tuple(exact)
        for prefix in keys:
            row = db.execute(
                f"SELECT {columns} FROM entries WHERE {where} AND key LIKE ? ESCAPE '\\' "
                "AND substr(key, 1, ?) = ? ORDER BY created_at DESC, id DESC LIMIT 1",
                (repository, scope, version, _escape_like(prefix) + "%", len(prefix), prefix),
            ).fetchone()
            if row is not None:
                return tuple(row)
        return None

    def reserve(self, repository: str, scope: str, key: str, version: str) -> int:
        """Reserve (scope, key, version) for an upload; its entry id. 409 if it exists."""
        check_key(key)
        if not version:
            raise ServiceError("the cache version is empty")
        now = time.time()
        with self._db() as db:
            row = db.execute(
                "SELECT id, ready, created_at FROM entries WHERE repository = ? AND scope = ? "
                "AND key = ? AND version = ?", (repository, scope, key, version),
            ).fetchone()
            if row is not None:
                if row[1] or now - row[2] < ABANDONED_AFTER:
                    raise ServiceError(
                        f"cache entry with the same key, version and scope already exists: {key}",
                        409,
                    )
                db.execute("DELETE FROM entries WHERE id = ?", (row[0],))
                blobs.remove(self.blob(row[0], repository))
            cursor = db.execute(
                "INSERT INTO entries (repository, scope, key, version, created_at, used_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (repository, scope, key, version, now, now),
            )
            return int(cursor.lastrowid or 0)

    def pending(self, entry_id: int) -> Path:
        """Where the client uploads a reserved entry; 409 once it is finalized."""
        with self._db() as db:
            row = db.execute(
                "SELECT repository, ready FROM entries WHERE id = ?", (entry_id,)
            ).fetchone()
        if row is None:
            raise ServiceError(f"no cache reservation {entry_id}", 404)
        if row[1]:
            raise ServiceError("the cache entry is finalized: it cannot be written again", 409)
        return self.blob(entry_id, row[0])

    def ready_blob(self, entry_id: int) -> Path:
        """The blob of a finalized entry (404 if it is not, or was evicted)."""
        with self._db() as db:
            row = db.execute(
                "SELECT repository FROM entries WHERE id = ? AND ready = 1", (entry_id,)
            ).fetchone()
        path = self.blob(entry_id, row[0]) if row is not None else None
        if path is None or not path.is_file():
            raise ServiceError(f"no cache entry {entry_id}", 404)
        return path

    def finalize(self, repository: str, scope: str, key: str, version: str, size: int) -> int:
        """Make a reserved entry visible, then evict the least recently used over the limit."""
        refused: ServiceError | None = None
        with self._db() as db:
            row = db.execute(
                "SELECT id FROM entries WHERE repository = ? AND scope = ? AND key = ? "
                "AND version = ? AND ready = 0", (repository, scope, key, version),
            ).fetchone()
            if row is None:
                raise ServiceError(f"no reservation to finalize for cache key {key}", 404)
            entry_id = int(row[0])
            blob = self.blob(entry_id, repository)
            actual = blob.stat().st_size if blob.is_file() else -1
            if actual < 0 or (size and size != actual):
                shown = "nothing" if actual < 0 else f"{actual} bytes"
                refused = ServiceError(f"cache key {key}: {size} bytes announced, {shown} uploaded")
            elif actual > self.size_limit:
                refused = ServiceError(
                    f"cache key {key}: {actual} bytes is more than the repository's limit of "
                    f"{self.size_limit}", 413,
                )
            if refused is not None:  # the reservation is dropped, and that is kept
                db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
                blobs.remove(blob)
            else:
                now = time.time()
                db.execute(
                    "UPDATE entries SET ready = 1, size = ?, created_at = ?, used_at = ? "
                    "WHERE id = ?", (actual, now, now, entry_id),
                )
                self._evict(db, repository, keep=entry_id)
        if refused is not None:
            raise refused
        return entry_id

    def _evict(self, db: sqlite3.Connection, repository: str, keep: int) -> None:
        total = db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM entries WHERE repository = ? AND ready = 1",
            (repository,),
        ).fetchone()[0]
        if total <= self.size_limit:
            return
        oldest = db.execute(
            "SELECT id, size FROM entries WHERE repository = ? AND ready = 1 AND id != ? "
            "ORDER BY used_at, id", (repository, keep),
        ).fetchall()
        for entry_id, size in oldest:
            if total <= self.size_limit:
                break
            db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
            blobs.remove(self.blob(entry_id, repository))
            total -= size

    def entries(self, repository: str | None = None) -> list[CacheEntry]:
        """Finalized entries (of one repository, or all), most recently used first."""
        query = (
            "SELECT id, repository, scope, key, version, size, created_at, used_at FROM entries "
            "WHERE ready = 1"
        )
        args: tuple[str, ...] = ()
        if repository is not None:
            query += " AND repository = ?"
            args = (repository,)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY used_at DESC, id DESC", args).fetchall()
        return [CacheEntry(*row) for row in rows]

    def clear(self, repository: str | None = None, key_prefix: str = "") -> int:
        """Remove entries (of a repository, whose key starts with ``key_prefix``); how many."""
        gone = [
            e for e in self.entries(repository) if e.key.startswith(key_prefix)
        ]
        with self._db() as db:
            for entry in gone:
                db.execute("DELETE FROM entries WHERE id = ?", (entry.entry_id,))
                blobs.remove(self.blob(entry.entry_id, entry.repository))
        return len(gone)
