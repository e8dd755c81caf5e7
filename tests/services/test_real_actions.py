"""GitHub's own built actions, run by node on the host against the services (through a TCP
listener piped to their unix socket): the protocol as the real clients speak it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services.actions import built_actions
from tests.services.conftest import Served
from tests.services.node import run_action
from vmrunner.services.tokens import JobGrant

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/node"), reason="needs node")


def grant(job: str, ref: str = "refs/heads/main", run: str = "1700000000001") -> JobGrant:
    return JobGrant(run, job, "octo/repo", ref, (ref, "refs/heads/main"))


@pytest.fixture(scope="module")
def build() -> Path:
    return built_actions() / "build"


async def test_upload_then_download_in_another_job(
    served: Served, build: Path, tmp_path: Path
) -> None:
    first = tmp_path / "a"
    (first / "out" / "sub").mkdir(parents=True)
    (first / "out" / "hello.txt").write_text("hello from job a\n")
    (first / "out" / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    upload = await run_action(
        build / "upload-artifact" / "dist" / "upload" / "index.js", first, served.env(grant("a")),
        {"name": "things", "path": "out/", "if-no-files-found": "error", "retention-days": "3",
         "compression-level": "6", "overwrite": "false", "include-hidden-files": "false"},
    )
    assert upload.exit_code == 0, upload.output
    assert upload.outputs["artifact-id"] == "1"
    second = tmp_path / "b"
    second.mkdir()
    download = await run_action(
        build / "download-artifact" / "dist" / "index.js", second, served.env(grant("b")),
        {"name": "things", "path": "got", "merge-multiple": "false", "repository": "octo/repo",
         "run-id": "1", "github-token": ""},
    )
    assert download.exit_code == 0, download.output
    assert (second / "got" / "hello.txt").read_text() == "hello from job a\n"
    assert (second / "got" / "sub" / "data.bin").read_bytes() == (
        first / "out" / "sub" / "data.bin"
    ).read_bytes()


async def test_cache_saved_by_one_run_is_restored_by_the_next(
    served: Served, build: Path, tmp_path: Path
) -> None:
    cache = build / "cache" / "dist"
    restore_js = cache / "restore" / "index.js"
    inputs = {"path": "deps", "key": "deps-v1-abc", "restore-keys": "deps-v1-\ndeps-",
              "enableCrossOsArchive": "false", "fail-on-cache-miss": "false",
              "lookup-only": "false", "save-always": "false"}
    first = tmp_path / "run1"
    first.mkdir()
    restore = await run_action(restore_js, first, served.env(grant("a")), inputs)
    assert restore.exit_code == 0, restore.output
    assert restore.outputs.get("cache-hit") != "true", restore.output
    assert "Cache not found for input keys" in restore.output
    (first / "deps").mkdir()
    (first / "deps" / "lib.txt").write_text("built once\n")
    save = await run_action(
        cache / "save" / "index.js", first, served.env(grant("a")), inputs, restore.state
    )
    assert save.exit_code == 0, save.output
    assert "Cache saved with key: deps-v1-abc" in save.output, save.output
    second = tmp_path / "run2"
    second.mkdir()
    again = await run_action(restore_js, second, served.env(grant("a2")), inputs)
    assert again.exit_code == 0, again.output
    assert again.outputs["cache-hit"] == "true", again.output
    assert (second / "deps" / "lib.txt").read_text() == "built once\n"
    # A restore key matches by prefix: a hit on it is not a cache hit.
    other = tmp_path / "run3"
    other.mkdir()
    partial = await run_action(
        cache / "restore" / "index.js", other, served.env(grant("a3")),
        {**inputs, "key": "deps-v1-new"},
    )
    assert partial.outputs["cache-hit"] == "false", partial.output
    assert "Cache restored from key: deps-v1-abc" in partial.output
    assert (other / "deps" / "lib.txt").read_text() == "built once\n"
