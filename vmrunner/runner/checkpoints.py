"""Checkpoints: a failed job's snapshots kept beyond its machine, for ``vmrunner rerun``.

A machine's snapshots go with the machine. When a job run with ``--snapshot`` fails, each of its
snapshots (the one after set-up, and one after every successful step) is exported, before the
machine is released, to ``VMRUNNER_HOME/snapshots/<run_id>/<job key>/<n>/`` together with what
the job knew at that point: the ``steps`` context, the environment ``GITHUB_ENV`` built, the
``GITHUB_PATH`` entries, and the job's step counter (``state.json``, beside the run's options
*without secrets*, its matrix values and ``needs``). ``vmrunner rerun`` imports one into a fresh
machine and continues the job from the next step as if the steps before had just run.

Jobs that succeed keep nothing (there is nothing to re-run). ``vmrunner runs rm`` or
``remove_checkpoints`` frees a run's folder. Values added with ``::add-mask::`` are not kept, and
the folder is private to the user (it may hold anything the job wrote, like its machine did).
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError, StoreError
from vmrunner.machines.snapshot_tar import remove_tree
from vmrunner.runner.options import RunOptions, options_from_data, plain

FOLDER = "snapshots"
STATE_FILE = "state.json"
FORMAT = 1
#: Options that name a tuple; JSON gives lists back.
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The job right after one snapshot: ``step_number`` job steps had run (0: after set-up)."""

    snapshot_id: str
    step_number: int
    #: The job's step counter (results' step index of the last step run).
    index: int
    env: Mapping[str, str] = field(default_factory=dict)
    path_entries: tuple[str, ...] = ()
    steps: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeptJob:
    """A failed job's checkpoints and what is needed to run it again (``state.json``)."""

    run_id: str
    workflow_file: str
    job_id: str
    job_key: str
    matrix: Mapping[str, Any]
    strategy: Mapping[str, Any]
    needs: Mapping[str, Any]
    options: Mapping[str, Any]
    checkpoints: tuple[Checkpoint, ...]
    folder: Path

    def checkpoint_before(self, step_number: int) -> Checkpoint | None:
        """The checkpoint right after job step ``step_number - 1`` (0: after set-up), if kept."""
        return next((c for c in self.checkpoints if c.step_number == step_number - 1), None)

    def snapshot_folder(self, checkpoint: Checkpoint) -> Path:
        return self.folder / str(checkpoint.step_number)

    def run_options(self, **changes: Any) -> RunOptions:
        """The original run's options (no secrets), with ``changes``."""
        return options_from_data(self.options, **changes)


def checkpoints_root(home: Path | None = None) -> Path:
    return (home or vmrunner_home()) / FOLDER


def job_folder(run_id: str, job_key: str, home: Path | None = None) -> Path:
    """Where a job's checkpoints go (the job key is quoted: it may hold any character)."""
    return checkpoints_root(home) / run_id / urllib.parse.quote(job_key, safe="")


def write_state(folder: Path, kept: Mapping[str, Any], checkpoints: Sequence[Checkpoint]) -> None:
    """Write ``state.json`` last: a folder without it holds no usable checkpoint."""
    data = {
        **kept, "format": FORMAT,
        "checkpoints": [plain(dataclasses.asdict(c)) for c in checkpoints],
    }
    data["workflow_file"] = os.path.abspath(str(kept["workflow_file"]))
    try:
        temporary = folder / f".{STATE_FILE}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as file:
            json.dump(data, file)
        os.replace(temporary, folder / STATE_FILE)
    except (OSError, TypeError, ValueError) as exc:
        raise StoreError(f"cannot keep the job's checkpoints in {folder}: {exc}") from exc


def load(run_id: str, job_key: str, home: Path | None = None) -> KeptJob | None:
    """A job's kept checkpoints; None when it kept none."""
    folder = job_folder(run_id, job_key, home)
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the checkpoints in {folder}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{folder / STATE_FILE}: not a checkpoint file this vmrunner knows")
    checkpoints = tuple(
        Checkpoint(
            snapshot_id=str(c["snapshot_id"]), step_number=int(c["step_number"]),
            index=int(c["index"]), env=dict(c["env"]), path_entries=tuple(c["path_entries"]),
            steps=dict(c["steps"]),
        )
        for c in data["checkpoints"]
    )
    return KeptJob(
        run_id=str(data["run_id"]), workflow_file=str(data["workflow_file"]),
        job_id=str(data["job_id"]), job_key=str(data["job_key"]), matrix=dict(data["matrix"]),
        strategy=dict(data["strategy"]), needs=dict(data["needs"]), options=dict(data["options"]),
        checkpoints=checkpoints, folder=folder,
    )


def kept_jobs(run_id: str, home: Path | None = None) -> list[str]:
    """The keys of a run's jobs that kept checkpoints."""
    root = checkpoints_root(home) / run_id
    if not root.is_dir():
        return []
    return sorted(
        urllib.parse.unquote(p.name) for p in root.iterdir() if (p / STATE_FILE).is_file()
    )


def remove_checkpoints(run_id: str, home: Path | None = None) -> bool:
    """Free a run's checkpoints; False when it had none."""
    root = checkpoints_root(home) / run_id
    if not root.exists():
        return False
    try:
        remove_tree(root)
    except OSError as exc:
        raise StoreError(f"cannot remove {root}: {exc}") from exc
    return True
