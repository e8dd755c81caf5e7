"""The SQLite store: migrations, atomic writes, durability across reopening."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vmrunner.errors import StoreError
from vmrunner.store import MIGRATIONS, MachineRow, SessionRow, SnapshotRow, Store, default_path


def session_row(session_id: str = "s-1", state: str = "initializing") -> SessionRow:
    now = time.time()
    return SessionRow(
        id=session_id,
        state=state,
        vm_type="default",
        provider="sandbox",
        owner_pid=123,
        owner_start=456,
        created_at=now,
        updated_at=now,
        last_activity=now,
        labels={"job": "build"},
    )


def machine_row(machine_id: str = "m-1", session_id: str | None = "s-1") -> MachineRow:
    now = time.time()
    return MachineRow(
        machine_id=machine_id,
        provider="sandbox",
        vm_type="default",
        pid=10,
        pid_start=20,
        state_dir=f"/tmp/{machine_id}",
        owner_pid=123,
        owner_start=456,
        created_at=now,
        allocated_at=now,
        data={"socket": "x"},
        session_id=session_id,
    )


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "state.db") as opened:
        yield opened


def test_default_path_is_under_vmrunner_home() -> None:
    home = Path(os.environ["VMRUNNER_HOME"])
    with Store.open() as store:
        assert store.path == default_path() == home / "state.db"
    assert (home / "state.db").exists()


def test_open_migrates_to_the_latest_version_and_sets_pragmas(store: Store) -> None:
    assert store.schema_version == len(MIGRATIONS)
    connection = sqlite3.connect(store.path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {
        r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert {"schema_version", "sessions", "session_transitions", "machines", "snapshots"} <= tables
    connection.close()


def test_a_new_migration_applies_once_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        store.add_session(session_row())
    extended = (*MIGRATIONS, ("CREATE TABLE later (id TEXT PRIMARY KEY)",))
    with Store.open(path) as store:
        assert store.migrate(extended) == len(extended)
        assert store.schema_version == len(extended)
        assert store.migrate(extended) == len(extended)  # idempotent: no "table exists" error
        assert store.session("s-1") is not None


def test_a_failed_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    broken = (*MIGRATIONS, ("CREATE TABLE later (id TEXT)", "THIS IS NOT SQL"))
    with Store.open(path) as store:
        with pytest.raises(StoreError, match="syntax error"):
            store.migrate(broken)
        assert store.schema_version == len(MIGRATIONS)
        tables = store._db.execute("SELECT name FROM sqlite_master WHERE name = 'later'").fetchall()
        assert tables == []


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        store.migrate((*MIGRATIONS, ("CREATE TABLE later (x)",)))
    with pytest.raises(StoreError, match="newer than this vmrunner"):
        Store.open(path)


def test_sessions_transitions_and_snapshots_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        store.add_session(session_row())
        store.attach_machine("s-1", machine_row())
        store.set_session_state("s-1", "active", 100.0, last_activity=99.0)
        store.set_session_state("s-1", "executing", 101.0, note="step 1")
        store.add_snapshot(SnapshotRow("s-1", "snap-a", "after step 1", 102.0))
    with Store.open(path) as store:
        session = store.session("s-1")
        assert session is not None
        assert (session.state, session.machine_id, session.last_activity) == (
            "executing",
            "m-1",
            99.0,
        )
        assert session.labels == {"job": "build"}
        assert session.note == "step 1"
        assert [(t.state, t.note) for t in store.transitions("s-1")] == [
            ("initializing", ""),
            ("active", ""),
            ("executing", "step 1"),
        ]
        assert store.snapshots("s-1") == [SnapshotRow("s-1", "snap-a", "after step 1", 102.0)]
        machine = store.machine("m-1")
        expected = machine_row()
        assert machine is not None
        assert replace(machine, created_at=0.0, allocated_at=0.0) == replace(
            expected, created_at=0.0, allocated_at=0.0
        )


def test_attach_machine_is_atomic(store: Store) -> None:
    """The machine row is written first; when the session update fails, it is rolled back too."""
    with pytest.raises(StoreError, match="no session s-missing"):
        store.attach_machine("s-missing", machine_row(session_id="s-missing"))
    assert store.machine("m-1") is None
    assert store.machines(include_released=True) == []


def test_a_failure_inside_a_transaction_writes_nothing(store: Store) -> None:
    def write_then_crash() -> None:
        with store.transaction():
            store.add_session(session_row("s-1"))
            store.put_machine(machine_row("m-1"))
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_then_crash()
    assert store.session("s-1") is None
    assert store.transitions("s-1") == []
    assert store.machine("m-1") is None
    store.add_session(session_row("s-1"))  # the connection is usable afterwards
    assert store.session("s-1") is not None


def test_a_duplicate_session_is_a_store_error_and_adds_no_transition(store: Store) -> None:
    store.add_session(session_row("s-1"))
    with pytest.raises(StoreError, match="UNIQUE"):
        store.add_session(session_row("s-1", state="active"))
    assert [t.state for t in store.transitions("s-1")] == ["initializing"]


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        store.add_snapshot(SnapshotRow("s-none", "snap", "", 1.0))


def test_released_machines_and_sessions_are_filtered(store: Store) -> None:
    store.add_session(session_row("s-1"))
    store.attach_machine("s-1", machine_row("m-1"))
    store.put_machine(machine_row("m-2", session_id=None))
    assert [m.machine_id for m in store.machines()] == ["m-1", "m-2"]
    # Only while the session still holds it:
    assert not store.mark_machine_released("m-1", 5.0, session_id="s-other")
    assert store.mark_machine_released("m-1", 5.0, note="released", session_id="s-1")
    assert not store.mark_machine_released("m-1", 6.0)  # already released
    assert [m.machine_id for m in store.machines()] == ["m-2"]
    released = store.machine("m-1")
    assert released is not None
    assert (released.released_at, released.note) == (5.0, "released")
    store.set_session_state("s-1", "released", 7.0)
    assert store.sessions() == []
    assert [s.id for s in store.sessions(include_released=True)] == ["s-1"]


def test_updates_of_a_missing_session_are_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="no session s-x"):
        store.set_session_state("s-x", "active", 1.0)
    with pytest.raises(StoreError, match="no session s-x"):
        store.touch_session("s-x", 1.0)


def test_two_connections_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as first, Store.open(path) as second:
        first.add_session(session_row("s-1"))
        assert second.session("s-1") is not None
        second.set_session_state("s-1", "active", 2.0)
        row = first.session("s-1")
        assert row is not None
        assert row.state == "active"


def test_an_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the state database"):
        Store.open(blocker / "state.db")


def test_a_corrupt_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store.open(path)
