"""``vmrunner artifacts list/download`` and ``vmrunner cache list/clear``, as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.helpers import vmrunner
from tests.services.actions import built_actions
from tests.services.kept import keep_artifact
from vmrunner.services.artifacts import ArtifactStore
from vmrunner.services.cache import CacheStore
from vmrunner.services.settings import ServiceSettings

UPLOADS = """
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: mkdir out && echo "report of the build" > out/report.txt && seq 1000 > out/n.txt
      - uses: actions/upload-artifact@v4
        with: {name: report, path: out/report.txt}
      - uses: actions/upload-artifact@v4
        with: {name: numbers, path: out/n.txt}
"""


def test_list_and_download_an_artifact(tmp_path: Path) -> None:
    keep_artifact("777", "site", {"index.html": b"<h1>hi</h1>", "css/a.css": b"a{}"})
    listed = vmrunner("artifacts", "list", "777")
    assert listed.returncode == 0, listed.stderr
    assert "site" in listed.stdout
    assert "job build" in listed.stdout
    as_json = json.loads(vmrunner("artifacts", "list", "777", "--json").stdout)
    assert [a["name"] for a in as_json] == ["site"]
    got = vmrunner("artifacts", "download", "777", "site", "--dir", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "site" / "index.html").read_bytes() == b"<h1>hi</h1>"
    assert (tmp_path / "site" / "css" / "a.css").read_bytes() == b"a{}"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_runs_show_lists_a_real_runs_artifacts_and_runs_rm_removes_them(tmp_path: Path) -> None:
    action = tmp_path / "upload-artifact"  # the built action, as --local-repository takes it
    bare = built_actions() / "server" / "actions" / "upload-artifact"
    subprocess.run(["git", "clone", "-q", str(bare), str(action)], check=True)
    project = tmp_path / "project"
    (project / ".github" / "workflows").mkdir(parents=True)
    (project / ".github" / "workflows" / "ci.yml").write_text(UPLOADS)
    # upload-artifact needs GITHUB_REPOSITORY's owner and name: with no origin, local/project.
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    ran = vmrunner(
        "run", "--json", "--local-repository", f"actions/upload-artifact@v4={action}",
        cwd=project,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = json.loads(ran.stdout)["runs"][0]["run_id"]
    settings = ServiceSettings.from_env()
    kept = {a.name: a for a in ArtifactStore(settings.artifacts_dir, 90).list(run_id)}
    assert set(kept) == {"report", "numbers"}

    shown = vmrunner("runs", "show", run_id[:8])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.endswith(
        f"Artifacts\n  report  {kept['report'].size} bytes  from job build\n"
        f"  numbers  {kept['numbers'].size} bytes  from job build\n"
    ), shown.stdout

    removed = vmrunner("runs", "rm", run_id)
    assert removed.returncode == 0, removed.stderr
    assert f"removed run {run_id} and its 2 artifact(s)" in removed.stdout
    assert not kept["report"].path.exists()
    assert not ArtifactStore(settings.artifacts_dir, 90).run_folder(run_id).exists()
    gone = vmrunner("artifacts", "list", run_id)
    assert gone.returncode == 1
    assert "Traceback" not in gone.stderr


def test_unknown_runs_names_and_escaping_zips_are_clear_errors(tmp_path: Path) -> None:
    keep_artifact("778", "ok", {"a.txt": b"a"})
    keep_artifact("778", "evil", {"../../outside.txt": b"x"})
    unknown_run = vmrunner("artifacts", "list", "99999")
    assert unknown_run.returncode == 1
    assert "99999" in unknown_run.stderr
    assert "Traceback" not in unknown_run.stderr
    unknown_name = vmrunner("artifacts", "download", "778", "nope", "--dir", str(tmp_path))
    assert unknown_name.returncode == 1
    assert "no artifact named 'nope' (it has: ok, evil)" in unknown_name.stderr
    evil = vmrunner("artifacts", "download", "778", "evil", "--dir", str(tmp_path))
    assert evil.returncode == 1
    assert "leaves the folder" in evil.stderr
    assert not (tmp_path.parent / "outside.txt").exists()
    assert not (tmp_path / "outside.txt").exists()


def test_cache_list_and_clear() -> None:
    settings = ServiceSettings.from_env()
    store = CacheStore(settings.cache_dir, settings.cache_size)
    for key in ("npm-1", "pip-1"):
        entry = store.reserve("octo/repo", "refs/heads/main", key, "v")
        path = store.pending(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"tar")
        store.finalize("octo/repo", "refs/heads/main", key, "v", 3)
    listed = vmrunner("cache", "list")
    assert "octo/repo  refs/heads/main  npm-1  3 bytes" in listed.stdout
    cleared = vmrunner("cache", "clear", "--key", "npm-")
    assert "removed 1 cache entries" in cleared.stdout
    assert [e.key for e in store.entries()] == ["pip-1"]
