"""Suite-wide fixtures: every test gets its own VMRUNNER_HOME, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_dir() -> Path:
    """The shared material (conformance data, fixtures, specs) beside the checkout."""

    explicit = os.environ.get("VMRUNNER_SHARED")
    return Path(explicit) if explicit else SHARED


_OWN_BASETEMP: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Temporary directories of this run's own, below /tmp: sandboxes run as an unprivileged
    host id that must pass through them to its machine (see ``_isolated_home``), and pytest's
    shared per-user directory is closed again by every pytest that starts meanwhile."""
    import tempfile

    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="vmrunner-tests-")
        _OWN_BASETEMP.append(config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for folder in _OWN_BASETEMP:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's, passable (0711: nothing listed) like every folder above a VMRUNNER_HOME must be
    for the sandbox's unprivileged bubblewrap: tests make homes and repositories in it."""
    tmp_path.chmod(0o711)
    return tmp_path


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("vmrunner-home")
    # Sandboxes run as an unprivileged host id that must walk to its machine's directories:
    # let others pass through the temporary directories above the home (nothing is listed).
    folder = home.parent
    if folder.stat().st_uid == os.getuid() and not folder.stat().st_mode & 0o001:
        folder.chmod(0o711)
    monkeypatch.setenv("VMRUNNER_HOME", str(home))
    # nor the user's config file (~/.config/vmrunner/config.toml): none, unless a test writes one
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg-config"))
    return home
