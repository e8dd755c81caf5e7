"""A run's artifacts on disk: what ``actions/upload-artifact`` makes and the jobs after it read.

Layout, under the artifacts folder (``settings.ENV_ARTIFACTS_DIR``)::

    <run>/.lock                 taken while ids are given out and names checked
    <run>/<id>/upload.json      an upload under way: created, not yet finalized
    <run>/<id>/artifact.zip     the blob the client uploaded (a zip, as on GitHub)
    <run>/<id>/artifact.json    the manifest, written (atomically) when the upload is finalized

An artifact is listed only once its manifest exists, so an unfinished upload is never seen.
Names are unique in a run (GitHub answers 409 to a second upload of a name), ids are numbers
given in order within the run. Artifacts expire after their retention and ``prune`` removes
them, with uploads left unfinished for a day.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmrunner.errors import ArtifactNotFound, ServiceError
from vmrunner.services.tokens import JobGrant

UPLOAD = "upload.json"
MANIFEST = "artifact.json"
BLOB = "artifact.zip"
#: An upload neither finalized nor touched for this long is abandoned (seconds).
ABANDONED_AFTER = 24 * 3600.0
#: Characters ``@actions/artifact`` refuses in a name, and that vmrunner refuses too.
_BAD_NAME = re.compile(r'["\:<>|*?\r\n\\/\x00]')
_SAFE_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


@dataclass(frozen=True, slots=True)
class Artifact:
    """One finalized artifact of a run."""

    run_id: str
    artifact_id: int
    name: str
    size: int
    #: ``sha256:<hex>`` of the zip.
    digest: str
    created_at: float
    expires_at: float
    job_key: str
    job_id: str
    #: The zip on disk.
    path: Path

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def validate_name(name: str) -> str:
    """The artifact name, or ``ServiceError`` (400) saying what is wrong with it."""
    if not name or not name.strip():
        raise ServiceError("the artifact name is empty")
    if len(name) > 256:
        raise ServiceError("the artifact name is longer than 256 characters")
    bad = _BAD_NAME.search(name)
    if bad or name.strip() in (".", ".."):
        shown = repr(bad.group()) if bad else repr(name)
        raise ServiceError(f"the artifact name {name!r} contains {shown}, which is not allowed")
    return name


def parse_timestamp(value: Any) -> float | None:
    """A protobuf JSON ``Timestamp`` (RFC 3339, up to nanoseconds) as epoch seconds."""
    if value in (None, ""):
        return None
    match = _TIMESTAMP.fullmatch(str(value))
    if match is None:
        raise ServiceError(f"expected an RFC 3339 timestamp, got {value!r}")
    base, fraction, zone = match.groups()
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return moment.timestamp() + (int(fraction.ljust(9, "0")) / 1e9 if fraction else 0.0)


def format_timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_folder_name(run_id: str) -> str:
    """A run's folder: its id when that is a plain name, else a hash of it."""
    if _SAFE_RUN.fullmatch(run_id):
        return run_id
    return "run-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a temporary file, flushed, then renamed over ``path``."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with partial.open("w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _lock_folder(folder: Path, *, create: bool) -> Iterator[Path]:
    """Hold the run folder's lock; a lock file that ``prune`` removed meanwhile is taken anew."""
    while True:
        try:
            if create:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ServiceError(f"cannot open the run's artifacts: {exc}", 507) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(folder / ".lock").st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield folder
                return
        finally:
            os.close(fd)


class ArtifactStore:
    """Every run's artifacts under ``root``; safe for many processes (and hosts sharing
    ``root``) at once: ids and names are decided under a lock on the run's folder."""

    def __init__(self, root: Path, retention_days: int) -> None:
        self.root = root
        self.retention_days = retention_days

    def run_folder(self, run_id: str) -> Path:
        return self.root / run_folder_name(run_id)

    @contextlib.contextmanager
    def _locked(self, run_id: str) -> Iterator[Path]:
        with _lock_folder(self.run_folder(run_id), create=True) as folder:
            yield folder

    def _entries(self, folder: Path) -> Iterator[tuple[int, Path]]:
        with contextlib.suppress(FileNotFoundError):
            for entry in folder.iterdir():
                if entry.name.isdigit() and entry.is_dir():
                    yield int(entry.name), entry

    def _pending(self, folder: Path, name: str) -> tuple[int, Path, dict[str, Any]] | None:
        for artifact_id, entry in self._entries(folder):
            upload = _read_json(entry / UPLOAD)
            if upload is not None and upload.get("name") == name:
                return artifact_id, entry, upload
        return None

    def expiry(self, requested: float | None, now: float) -> float:
        """When an artifact expires: as asked, but within the retention (the default too)."""
        longest = now + self.retention_days * 86400.0
        return longest if requested is None else min(max(requested, now), longest)

    def create(self, grant: JobGrant, name: str, expires_at: float | None) -> int:
        """Start an upload of ``name`` for the job; its id. 409 if the run has that name."""
        validate_name(name)
        now = time.time()
        with self._locked(grant.run_id) as folder:
            if any(a.name == name for a in self._finalized(grant.run_id, folder, now)):
                raise ServiceError(
                    f"an artifact named {name!r} already exists in run {grant.run_id}", 409
                )
            pending = self._pending(folder, name)
            if pending is not None and pending[2].get("job_id") != grant.job_id:
                if now - float(pending[2].get("created_at", 0)) < ABANDONED_AFTER:
                    raise ServiceError(
                        f"job {pending[2].get('job_key')!r} is uploading an artifact named "
                        f"{name!r}", 409,
                    )
                shutil.rmtree(pending[1], ignore_errors=True)
                pending = None
            if pending is not None:  # the same job tries again: start over
                artifact_id, entry = pending[0], pending[1]
                shutil.rmtree(entry, ignore_errors=True)
            else:
                artifact_id = 1 + max((i for i, _ in self._entries(folder)), default=0)
            entry = folder / str(artifact_id)
            entry.mkdir(mode=0o700)
            _write_json(entry / UPLOAD, {
                "name": name, "job_key": grant.job_key, "job_id": grant.job_id,
                "created_at": now, "expires_at": self.expiry(expires_at, now),
            })
        return artifact_id

    def _entry(self, folder_name: str, artifact_id: int) -> Path:
        if not _SAFE_RUN.fullmatch(folder_name):
            raise ArtifactNotFound(f"no such run folder: {folder_name!r}")
        return self.root / folder_name / str(artifact_id)

    def upload_blob(self, folder_name: str, artifact_id: int) -> Path:
        """Where the client writes the zip of an upload under way; 409 once it is finalized."""
        entry = self._entry(folder_name, artifact_id)
        if not (entry / UPLOAD).is_file():
            if (entry / MANIFEST).is_file():
                raise ServiceError("the artifact is finalized: it cannot be written again", 409)
            raise ArtifactNotFound(f"no upload {artifact_id} in {folder_name}")
        return entry / BLOB

    def finalized_blob(self, folder_name: str, artifact_id: int) -> Path:
        """The zip of a finalized, unexpired artifact."""
        entry = self._entry(folder_name, artifact_id)
        manifest = _read_json(entry / MANIFEST)
        if manifest is None or float(manifest.get("expires_at", 0)) <= time.time():
            raise ArtifactNotFound(f"no artifact {artifact_id} in {folder_name}")
        return entry / BLOB

    def finalize(self, grant: JobGrant, name: str, size: int, digest: str) -> int:
        """Finish the job's upload of ``name``: its blob is checked and its manifest written."""
        with self._locked(grant.run_id) as folder:
            pending = self._pending(folder, name)
            if pending is None or pending[2].get("job_id") != grant.job_id:
                raise ArtifactNotFound(
                    f"no upload of an artifact named {name!r} by this job in run {grant.run_id}"
                )
            artifact_id, entry, upload = pending
            blob = entry / BLOB
            if not blob.is_file():
                raise ServiceError(f"artifact {name!r}: nothing was uploaded", 400)
            actual = blob.stat().st_size
            if size and size != actual:
                raise ServiceError(
                    f"artifact {name!r}: the upload says {size} bytes, {actual} arrived"
                )
            computed = f"sha256:{_sha256(blob)}"
            if digest and digest != computed:
                raise ServiceError(f"artifact {name!r}: digest {digest} does not match {computed}")
            _write_json(entry / MANIFEST, {
                **upload, "artifact_id": artifact_id, "size": actual, "digest": computed,
                "created_at": time.time(),
            })
            (entry / UPLOAD).unlink()
        return artifact_id

    def _finalized(self, run_id: str, folder: Path, now: float) -> list[Artifact]:
        found: list[Artifact] = []
        for artifact_id, entry in self._entries(folder):
            data = _read_json(entry / MANIFEST)
            if data is None or float(data.get("expires_at", 0)) <= now:
                continue
            found.append(Artifact(
                run_id, artifact_id, str(data["name"]), int(data["size"]), str(data["digest"]),
                float(data["created_at"]), float(data["expires_at"]), str(data["job_key"]),
                str(data["job_id"]), entry / BLOB,
            ))
        return sorted(found, key=lambda artifact: artifact.artifact_id)

    def list(self, run_id: str) -> list[Artifact]:
        """The run's finalized, unexpired artifacts, by id."""
        return self._finalized(run_id, self.run_folder(run_id), time.time())

    def get(self, run_id: str, name: str) -> Artifact:
        for artifact in self.list(run_id):
            if artifact.name == name:
                return artifact
        known = ", ".join(a.name for a in self.list(run_id)) or "none"
        raise ArtifactNotFound(f"run {run_id} has no artifact named {name!r} (it has: {known})")

    def delete(self, run_id: str, name: str) -> int:
        with self._locked(run_id):
            artifact = self.get(run_id, name)
            shutil.rmtree(artifact.path.parent, ignore_errors=True)
        return artifact.artifact_id

    def remove_run(self, run_id: str) -> int:
        """Remove every artifact of a run that is forgotten (``vmrunner runs rm``), unfinished
        uploads too; how many finalized ones there were."""
        folder = self.run_folder(run_id)
        if not (folder / ".lock").exists():
            return 0
        try:
            with _lock_folder(folder, create=False):
                count = len(self._finalized(run_id, folder, float("-inf")))
                shutil.rmtree(folder)
        except ServiceError:
            if folder.exists():
                raise
            return 0  # removed meanwhile (by ``prune``, another ``runs rm``)
        except OSError as exc:
            raise ServiceError(f"cannot remove the artifacts of run {run_id}: {exc}", 507) from exc
        return count

    def prune(self, now: float | None = None) -> int:
        """Remove expired artifacts and abandoned uploads (and emptied runs); how many."""
        now = time.time() if now is None else now
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for folder in list(self.root.iterdir()):
                if folder.is_dir() and (folder / ".lock").exists():
                    removed += self._prune_run(folder, now)
        return removed

    def _prune_run(self, folder: Path, now: float) -> int:
        removed = 0
        with _lock_folder(folder, create=False):
            for _, entry in list(self._entries(folder)):
                manifest = _read_json(entry / MANIFEST)
                upload = _read_json(entry / UPLOAD)
                expired = manifest is not None and float(manifest["expires_at"]) <= now
                abandoned = manifest is None and (
                    upload is None or now - float(upload.get("created_at", 0)) > ABANDONED_AFTER
                )
                if expired or abandoned:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            if not any(self._entries(folder)):
                shutil.rmtree(folder, ignore_errors=True)
        return removed


def extract(artifact: Artifact, folder: Path) -> list[Path]:
    """Unzip ``artifact`` into ``folder`` (made if missing); the files written. An entry that
    would land outside ``folder`` (``..``, an absolute path, a link) is refused, not written."""
    import zipfile

    root = folder.resolve()
    written: list[Path] = []
    try:
        with zipfile.ZipFile(artifact.path) as archive:
            members = archive.infolist()
            for member in members:
                target = (root / member.filename).resolve()
                if not target.is_relative_to(root) or member.filename.startswith("/"):
                    raise ServiceError(
                        f"artifact {artifact.name!r}: entry {member.filename!r} leaves the folder"
                    )
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ServiceError(
                        f"artifact {artifact.name!r}: entry {member.filename!r} is a link"
                    )
            root.mkdir(parents=True, exist_ok=True)
            for member in members:
                archive.extract(member, root)
                if not member.is_dir():
                    written.append(root / member.filename)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ServiceError(
            f"artifact {artifact.name!r}: cannot unzip {artifact.path}: {exc}"
        ) from exc
    return written
