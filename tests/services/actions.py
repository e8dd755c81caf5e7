"""GitHub's own artifact and cache actions, built from their sources once per machine, and
served as remote actions from local git repositories (``actions/upload-artifact@v4``...).

The build (npm, about 90 s) lands in ``~/.cache/vmrunner-tests/actions-<digest>``, the digest
of the versions and the build script: outside any test's temporary directory, made once under
a lock (concurrent test processes wait for the first), complete or absent (built aside, then
renamed).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import shared_dir

#: The built action folders, by the name the workflows use.
ACTIONS = ("upload-artifact", "download-artifact", "cache")
#: What a remote action needs of a built folder (the sources and node_modules are left out).
_KEEP = ("action.yml", "dist", "restore", "save")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmrunner-tests"


def built_actions() -> Path:
    """A folder holding ``build/<action>`` (built) and ``server/actions/<action>`` (bare git
    repositories tagged ``v4``): pass ``file://<folder>/server`` as ``actions_url``."""
    source = shared_dir() / "actions"
    digest = hashlib.sha256(
        (source / "VERSIONS").read_bytes() + (source / "build").read_bytes()
    ).hexdigest()[:16]
    target = _cache_root() / f"actions-{digest}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"actions-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        partial = target.with_name(f"{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run([str(source / "build"), str(partial / "build")], check=True)
        for name in ACTIONS:
            _bare_repository(partial / "build" / name, partial / "server" / "actions" / name)
        (partial / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _bare_repository(built: Path, bare: Path) -> None:
    work = bare.with_name(f"{bare.name}.work")
    work.mkdir(parents=True)
    for name in _KEEP:
        if (built / name).is_dir():
            shutil.copytree(built / name, work / name)
        elif (built / name).exists():
            shutil.copy2(built / name, work / name)

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", ".", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "built", cwd=work)
    git("tag", "v4", cwd=work)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=work.parent)
    shutil.rmtree(work)
