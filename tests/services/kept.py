"""Artifacts put in the store as a finished upload leaves them, for the CLI and API tests."""

from __future__ import annotations

import io
import zipfile

from vmrunner.services.artifacts import ArtifactStore
from vmrunner.services.settings import ServiceSettings
from vmrunner.services.tokens import JobGrant


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def keep_artifact(run_id: str, name: str, files: dict[str, bytes], job: str = "build") -> None:
    settings = ServiceSettings.from_env()
    store = ArtifactStore(settings.artifacts_dir, settings.retention_days)
    grant = JobGrant(run_id, job, "octo/repo", "refs/heads/main", ())
    artifact_id = store.create(grant, name, None)
    data = zipped(files)
    store.upload_blob(run_id, artifact_id).write_bytes(data)
    store.finalize(grant, name, len(data), "")
