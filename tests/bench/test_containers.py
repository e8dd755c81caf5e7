"""``python -m bench containers`` on a tiny image: every figure is there and plausible."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import containers
from tests.machines.oci_fixtures import tools_missing

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(tools_missing()), reason="container machines need root and tools"
)


def test_the_random_ish_layer_has_the_size_asked() -> None:
    files = containers.random_ish_layer(3)
    data = [v for v in files.values() if isinstance(v, bytes)]
    assert len(data) == 3
    assert {len(v) for v in data} == {1 << 20}
    assert data[0] != data[1]  # not one file repeated: the registry stores each blob


async def test_the_bench_measures_pull_starts_and_a_service(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(mode=0o711)
    work.mkdir()
    results = await containers.run(home, work, size=2, count=1)
    assert results["first_pull_unpack_s"] > 0
    assert results["compressed_mib"] > 1  # the random half does not compress
    for kind in ("plain", "container", "service"):
        assert results[kind]["n"] == 1
        assert results[kind]["p50_ms"] > 0
    assert "service start to healthy" in containers.report(results)
