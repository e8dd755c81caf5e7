"""``GET /api/runs/{id}/artifacts`` and the download of one."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from tests.server.helpers import config, live_server
from tests.services.kept import keep_artifact


async def test_a_runs_artifacts_are_listed_and_downloadable(tmp_path: Path) -> None:
    keep_artifact("880", "report", {"r.txt": b"all good"})
    async with live_server(config({})) as client:
        listed = await client.get("/api/runs/880/artifacts")
        assert listed.status_code == 200
        [artifact] = listed.json()["artifacts"]
        assert (artifact["name"], artifact["job_key"], artifact["artifact_id"]) == (
            "report", "build", 1,
        )
        assert "path" not in artifact
        got = await client.get("/api/runs/880/artifacts/report")
        assert got.status_code == 200
        assert zipfile.ZipFile(io.BytesIO(got.content)).read("r.txt") == b"all good"
        missing = await client.get("/api/runs/880/artifacts/nope")
        assert missing.status_code == 404
        assert "no artifact named 'nope'" in missing.json()["error"]
        assert (await client.get("/api/runs/881/artifacts")).json() == {"artifacts": []}
