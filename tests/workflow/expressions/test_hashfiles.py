"""``hashFiles`` on real files in a temporary workspace."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import pytest

from vmrunner.workflow.expressions import EvaluationHooks, evaluate, hash_files


def _digest_of(*paths: Path) -> str:
    """GitHub's documented algorithm: SHA-256 over the files' SHA-256 digests, in order."""
    outer = hashlib.sha256()
    for path in paths:
        outer.update(hashlib.sha256(path.read_bytes()).digest())
    return outer.hexdigest()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    for name, content in {
        "package-lock.json": "{}",
        "src/a.py": "a",
        "src/b.py": "b",
        "src/sub/c.py": "c",
        "src-x/d.py": "d",
        ".hidden/e.py": "e",
        "docs/readme.md": "readme",
    }.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return tmp_path


def test_one_file(workspace: Path) -> None:
    assert hash_files(workspace, ["package-lock.json"]) == _digest_of(
        workspace / "package-lock.json"
    )


def test_globstar_walks_depth_first_in_sorted_order(workspace: Path) -> None:
    # ".hidden" < "src" < "src-x" by name; "src/sub" is visited before "src-x" (depth first).
    expected = [".hidden/e.py", "src/a.py", "src/b.py", "src/sub/c.py", "src-x/d.py"]
    assert hash_files(workspace, ["**/*.py"]) == _digest_of(*(workspace / p for p in expected))


def test_negation_and_later_patterns(workspace: Path) -> None:
    only_src = hash_files(workspace, ["src/**/*.py\n!src/sub/**"])
    assert only_src == _digest_of(workspace / "src/a.py", workspace / "src/b.py")
    readded = hash_files(workspace, ["src/*.py", "!src/b.py", "src/b*"])
    assert readded == _digest_of(workspace / "src/a.py", workspace / "src/b.py")


def test_directory_pattern_takes_everything_below(workspace: Path) -> None:
    assert hash_files(workspace, ["src/sub"]) == _digest_of(workspace / "src/sub/c.py")


def test_character_classes_and_wildcards(workspace: Path) -> None:
    assert hash_files(workspace, ["src/[ab].py"]) == _digest_of(
        workspace / "src/a.py", workspace / "src/b.py"
    )
    assert hash_files(workspace, ["src/[!a].p?"]) == _digest_of(workspace / "src/b.py")


def test_no_match_comments_and_outside_paths_give_empty(workspace: Path) -> None:
    assert hash_files(workspace, ["*.nothing"]) == ""
    assert hash_files(workspace, ["# just a comment\n\n"]) == ""
    assert hash_files(workspace / "src", ["../docs/*"]) == ""


def test_content_changes_change_the_hash(workspace: Path) -> None:
    before = hash_files(workspace, ["**/*.md"])
    (workspace / "docs/readme.md").write_text("changed")
    assert hash_files(workspace, ["**/*.md"]) != before


def test_symlinked_directories_are_not_followed(workspace: Path) -> None:
    os.symlink(workspace / "src", workspace / "link")
    assert hash_files(workspace, ["link/**"]) == ""
    os.symlink(workspace / "src/a.py", workspace / "zz-link.py")
    assert hash_files(workspace, ["zz-link.py"]) == _digest_of(workspace / "src/a.py")


def test_as_an_expression_function(workspace: Path) -> None:
    hooks = EvaluationHooks(hash_files=partial(hash_files, workspace))
    value = evaluate(
        "format('deps-{0}', hashFiles('**/package-lock.json', 'docs/*'))", {}, hooks=hooks
    )
    assert value == "deps-" + _digest_of(
        workspace / "docs/readme.md", workspace / "package-lock.json"
    )
