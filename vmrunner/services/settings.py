"""Where the artifact and cache services keep their data, and their limits.

Defaults are module constants; ``ServiceSettings.from_env`` reads the environment in one
place. A fleet points ``VMRUNNER_ARTIFACTS_DIR`` and ``VMRUNNER_CACHE_DIR`` of every agent at
the same shared storage (``docs/fleet.md``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError

#: The folder of every run's artifacts (default: ``VMRUNNER_HOME/artifacts``).
ENV_ARTIFACTS_DIR = "VMRUNNER_ARTIFACTS_DIR"
#: The folder of every repository's caches (default: ``VMRUNNER_HOME/cache``).
ENV_CACHE_DIR = "VMRUNNER_CACHE_DIR"
#: The most a repository's caches may hold before the least recently used are evicted
#: (bytes, or with a unit: ``10G``, ``500M``; default GitHub's 10 GB).
ENV_CACHE_SIZE = "VMRUNNER_CACHE_SIZE"
#: How long an artifact is kept when its upload does not say (days; default GitHub's 90).
ENV_RETENTION_DAYS = "VMRUNNER_ARTIFACT_RETENTION_DAYS"

DEFAULT_CACHE_SIZE = 10 * 1024**3
DEFAULT_RETENTION_DAYS = 90
#: The largest artifact or cache entry one upload may make (Azure's block blob limit is far
#: above; this keeps a runaway job from filling the disk).
DEFAULT_MAX_BLOB = 10 * 1024**3
#: The largest single request body: a block or a whole blob sent at once.
MAX_BLOCK = 512 * 1024**2
#: The largest twirp (JSON) request body.
MAX_MESSAGE = 1024**2

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, what: str) -> int:
    """``10G``, ``512M``, ``1048576``: a size in bytes; ``ConfigError`` naming ``what`` else."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ConfigError(f"{what}: expected a size such as 10G or 500M, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """The services' folders and limits."""

    artifacts_dir: Path
    cache_dir: Path
    cache_size: int = DEFAULT_CACHE_SIZE
    retention_days: int = DEFAULT_RETENTION_DAYS
    max_blob: int = DEFAULT_MAX_BLOB

    @classmethod
    def from_env(cls) -> ServiceSettings:
        home = vmrunner_home()
        artifacts = os.environ.get(ENV_ARTIFACTS_DIR) or str(home / "artifacts")
        cache = os.environ.get(ENV_CACHE_DIR) or str(home / "cache")
        size = os.environ.get(ENV_CACHE_SIZE)
        days = os.environ.get(ENV_RETENTION_DAYS, "").strip()
        if days and not days.isdigit():
            raise ConfigError(f"{ENV_RETENTION_DAYS}: expected a number of days, got {days!r}")
        return cls(
            artifacts_dir=Path(artifacts).expanduser().absolute(),
            cache_dir=Path(cache).expanduser().absolute(),
            cache_size=parse_size(size, ENV_CACHE_SIZE) if size else DEFAULT_CACHE_SIZE,
            retention_days=int(days) if days else DEFAULT_RETENTION_DAYS,
        )
