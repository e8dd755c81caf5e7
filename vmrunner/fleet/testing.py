"""A throwaway PostgreSQL cluster for tests and benchmarks (never for production).

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user and
lives in a temporary folder it owns; it listens on a free port of 127.0.0.1 and on a unix
socket in that folder, and is deleted by ``close``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile

from vmrunner.errors import ConfigError


def _bin_dir() -> str:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise ConfigError(
            "PostgreSQL is not installed (initdb not found): run scripts/bootstrap --dev"
        )
    return os.path.dirname(candidates[-1])


def _as_postgres(argv: list[str]) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryCluster:
    """``with TemporaryCluster() as cluster:``; ``cluster.url()``; ``stop()``/``start()`` for
    outages."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.folder = tempfile.mkdtemp(prefix="vmrunner-pg-")
        self.port = _free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> TemporaryCluster:
        os.chmod(self.folder, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        try:
            _as_postgres(
                [
                    f"{self.bin}/initdb",
                    "-D",
                    f"{self.folder}/data",
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
            with open(f"{self.folder}/data/postgresql.conf", "a") as conf:  # kept across restarts
                conf.write(
                    f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories "
                    f"= '{self.folder}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = "
                    "off\nmax_connections = 200\n"
                    # Not /dev/shm: other processes may clean it up under our feet.
                    "dynamic_shared_memory_type = mmap\n"
                )
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ctl(self, *args: str) -> None:
        _as_postgres([f"{self.bin}/pg_ctl", "-D", f"{self.folder}/data", "-w", "-t", "60", *args])

    def start(self) -> None:
        self._ctl("start", "-l", f"{self.folder}/log")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # our own identifier
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
