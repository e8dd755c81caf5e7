"""``vmrunner run`` on a full disk, for real: VMRUNNER_HOME is a small tmpfs (root only).

The sandbox's writable directories live under ``VMRUNNER_HOME/machines``, so a job that fills
its own disk fills the state database's disk too: both sides are tested at once.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import vmrunner

FILL = """
on: push
jobs:
  fill:
    runs-on: ubuntu-latest
    steps:
      - run: echo before
      - run: for i in $(seq 1 200); do echo "line $i"; done; dd if=/dev/zero of=big bs=1M count=64
      - if: always()
        run: echo after
"""
FILLED_AND_FINE = """
on: push
jobs:
  fine:
    runs-on: ubuntu-latest
    steps:
      - run: dd if=/dev/zero of=big bs=1M count=64 || echo "disk full, and fine"
"""
OK = """
on: push
jobs:
  ok:
    runs-on: ubuntu-latest
    steps:
      - run: for i in $(seq 1 50); do echo "ok line $i"; done
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    # The sandbox's unprivileged bubblewrap passes through here to its machines.
    tmp_path.chmod(0o711)
    mount.chmod(0o711)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def project(root: Path, workflow: str) -> Path:
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(workflow)
    return root


def run_in(home: Path, root: Path) -> subprocess.CompletedProcess[str]:
    # No disk budget (--disk 0): the machine writes where the state database lives, the case a
    # budget exists to prevent, and the one the runner must still survive whole.
    return vmrunner(
        "run", "--repo-root", str(root), "--disk", "0", cwd=root,
        env={**os.environ, "VMRUNNER_HOME": str(home)}, timeout=180,
    )


def fill(disk: Path) -> None:
    """Take every free byte of ``disk`` (unbuffered: a buffered file would fail again on close)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError:
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    break
    finally:
        os.close(fd)


def machines_left(home: Path) -> list[str]:
    folder = home / "machines"
    return sorted(os.listdir(folder)) if folder.exists() else []


def processes_of(machine_ids: list[str]) -> list[int]:
    """Live processes started for these machines (their agent's environment names them)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if any(f"VMRUNNER_MACHINE_ID={m}".encode() in environ for m in machine_ids):
            found.append(int(pid))
    return found


def database(home: Path) -> sqlite3.Connection:
    db = sqlite3.connect(home / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return db


def test_a_job_filling_the_disk_fails_keeps_its_logs_and_the_run_says_so(
    small_disk: Path, tmp_path: Path
) -> None:
    home = small_disk / "home"
    result = run_in(home, project(tmp_path / "repo", FILL))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: the disk holding {home} was full or failing during the run: the run was recorded"
    )
    assert "disk is full" in last or "disk I/O error" in last
    assert "No space left on device" in result.stdout  # the job's own write failed in its machine
    assert "✗  fill  failure" in result.stdout
    machine_ids = [word for word in result.stdout.split() if word.startswith("sandbox-")]
    assert machine_ids
    assert machines_left(home) == []
    assert processes_of(machine_ids) == []
    db = database(home)
    assert db.execute("SELECT status, conclusion FROM runs").fetchall() == [
        ("completed", "failure")
    ]
    assert db.execute("SELECT conclusion FROM run_jobs").fetchall() == [("failure",)]
    assert db.execute("SELECT conclusion FROM run_steps ORDER BY step_index").fetchall() == [
        ("success",),
        ("failure",),
        ("success",),
    ]
    logs = [text for (text,) in db.execute("SELECT text FROM run_logs ORDER BY seq")]
    assert "line 200" in logs
    assert "after" in logs
    assert any("No space left on device" in text for text in logs)
    assert db.execute("SELECT state FROM sessions").fetchall() == [("released",)]
    assert db.execute("SELECT released_at IS NOT NULL FROM machines").fetchall() == [(1,)]


def test_a_successful_job_leaving_the_disk_full_stays_a_success(
    small_disk: Path, tmp_path: Path
) -> None:
    """Its session's last states cannot be written until its machine is gone: no matter."""
    home = small_disk / "home"
    result = run_in(home, project(tmp_path / "repo", FILLED_AND_FINE))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # the job succeeded, the disk did not
    assert "Traceback" not in output
    assert "cancelled" not in output
    assert "✓  fine  success" in result.stdout
    assert "the run was recorded whole" in result.stderr.strip().splitlines()[-1]
    assert machines_left(home) == []
    db = database(home)
    assert db.execute("SELECT status, conclusion FROM runs").fetchall() == [
        ("completed", "success")
    ]
    assert db.execute("SELECT state FROM sessions").fetchall() == [("released",)]
    assert "disk full, and fine" in [text for (text,) in db.execute("SELECT text FROM run_logs")]


def test_a_disk_full_before_the_run_gives_up_its_reserve_to_record_it(
    small_disk: Path, tmp_path: Path
) -> None:
    home = small_disk / "home"
    root = project(tmp_path / "repo", OK)
    assert run_in(home, root).returncode == 0  # keeps a reserve beside the database
    assert (home / "state.db.reserve").exists()
    fill(small_disk)
    result = run_in(home, root)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: the disk holding {home} was full or failing during the run: "
        "the run was recorded whole;"
    ), last
    assert machines_left(home) == []
    db = database(home)
    assert (
        db.execute("SELECT status, conclusion FROM runs").fetchall()
        == [("completed", "success")] * 2
    )
    count = db.execute("SELECT count(*) FROM run_logs WHERE text LIKE 'ok line %'").fetchone()
    assert count == (100,)


def test_a_full_disk_without_reserve_fails_cleanly_and_records_whole_or_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    home = small_disk / "home"
    root = project(tmp_path / "repo", OK)
    assert run_in(home, root).returncode == 0
    (home / "state.db.reserve").unlink()
    fill(small_disk)
    result = run_in(home, root)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    assert "disk is full" in last or "disk I/O error" in last, last
    assert machines_left(home) == []
    (small_disk / "filler").unlink()
    db = database(home)
    rows = db.execute("SELECT status, conclusion FROM runs ORDER BY started_at").fetchall()
    assert rows[0] == ("completed", "success")
    # never half a transaction
    assert rows[1:] in ([], [("completed", "failure")], [("in_progress", None)])
