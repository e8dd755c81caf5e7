"""A real PostgreSQL cluster for the fleet tests, started once per test session, and a fresh
database on it for each test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from vmrunner.errors import ConfigError
from vmrunner.fleet.testing import TemporaryCluster

Cluster = TemporaryCluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[TemporaryCluster]:
    try:
        cluster = TemporaryCluster()
    except ConfigError as exc:
        pytest.fail(str(exc))
    with cluster:
        yield cluster


@pytest.fixture
def database(postgres_cluster: TemporaryCluster) -> str:
    return postgres_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
