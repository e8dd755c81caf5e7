"""Suite-wide fixtures: every test gets its own VMRUNNER_HOME, never the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_dir() -> Path:
    """The shared material (conformance data, fixtures, specs) beside the checkout."""
    import os

    explicit = os.environ.get("VMRUNNER_SHARED")
    return Path(explicit) if explicit else SHARED


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("vmrunner-home")
    monkeypatch.setenv("VMRUNNER_HOME", str(home))
    return home
