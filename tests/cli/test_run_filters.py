"""`vmrunner run` applies GitHub's event filters to the push it simulates (act does not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BRANCH_ONLY = """on:
  push:
    branches: [main]
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo branch
"""
TAGS_ONLY = """on:
  push:
    tags: ["v*"]
jobs:
  b:
    runs-on: ubuntu-latest
    steps:
      - run: echo tag
"""
OTHER_BRANCH = """on:
  push:
    branches: ["release/**"]
jobs:
  c:
    runs-on: ubuntu-latest
    steps:
      - run: echo release
"""


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    workflows = repo / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "branch.yml").write_text(BRANCH_ONLY)
    (workflows / "tags.yml").write_text(TAGS_ONLY)
    (workflows / "release.yml").write_text(OTHER_BRANCH)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "init"], check=True)
    return repo


def _planned_workflows(repo: Path, *extra: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "vmrunner", "run", "-n", "--json", *extra],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return {Path(job["workflow"]).name for job in json.loads(done.stdout)["jobs"]}


def test_a_push_of_the_current_branch_runs_only_matching_workflows(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert _planned_workflows(repo) == {"branch.yml"}


def test_an_event_file_decides_instead_of_the_current_branch(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"ref": "refs/tags/v1.0.0"}))
    assert _planned_workflows(repo, "push", "-e", str(event)) == {"tags.yml"}
    event.write_text(json.dumps({"ref": "refs/heads/release/2.x"}))
    assert _planned_workflows(repo, "push", "-e", str(event)) == {"release.yml"}
