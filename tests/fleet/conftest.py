"""A real PostgreSQL cluster for the fleet tests, started once per test session.

initdb refuses to run as root, so the cluster belongs to the ``postgres`` user and lives in a
temporary folder it owns; it listens on a free port of 127.0.0.1 (and a unix socket in that
folder) and is stopped and deleted at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Cluster:
    folder: str
    port: int
    bin: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str) -> None:
        _as_postgres([f"{self.bin}/pg_ctl", "-D", f"{self.folder}/data", "-w", "-t", "60", *args])

    def stop(self) -> None:
        self.ctl("stop", "-m", "fast")

    def start(self) -> None:
        self.ctl("start", "-l", f"{self.folder}/log")


def _bin_dir() -> str | None:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


def _as_postgres(argv: list[str]) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.fail("PostgreSQL is not installed: run scripts/bootstrap --dev")
    folder = tempfile.mkdtemp(prefix="vmrunner-pg-")
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    cluster = Cluster(folder, _free_port(), bin_dir)
    try:
        _as_postgres([f"{bin_dir}/initdb", "-D", f"{folder}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        with open(f"{folder}/data/postgresql.conf", "a") as conf:  # kept across restarts
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\nunix_socket_directories = '{folder}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
                # Not /dev/shm: other tests clean it up under our feet.
                "dynamic_shared_memory_type = mmap\n"
            )
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database(postgres_cluster: Cluster) -> str:
    """A fresh, empty database on the shared cluster; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres_cluster.url(name)
