"""Called workflows found and read: the caller's repository (working tree or commit), another
repository through a git server, and nothing outside a repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmrunner.actions.origin import Origin, workflow_origin
from vmrunner.actions.sources import Sources
from vmrunner.actions.workflows import load_called_workflow
from vmrunner.errors import ConfigError

CALLED = "on:\n  workflow_call:\n    inputs:\n      x: {type: string}\njobs:\n  a:\n" \
    "    runs-on: x\n    steps: [{run: echo %s}]\n"


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def repository(root: Path, text: str) -> str:
    (root / ".github/workflows").mkdir(parents=True)
    (root / ".github/workflows/lib.yml").write_text(text)
    git("init", "-q", "-b", "main", cwd=root)
    git("add", ".", cwd=root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c", cwd=root)
    return git("rev-parse", "HEAD", cwd=root)


async def test_local_calls_read_the_working_tree_or_the_commit(tmp_path: Path) -> None:
    sha = repository(tmp_path, CALLED % "committed")
    (tmp_path / ".github/workflows/lib.yml").write_text(CALLED % "edited")
    uses = "./.github/workflows/lib.yml"
    nowhere = Sources("file:///nowhere")
    tree = await load_called_workflow(uses, Origin(str(tmp_path)), nowhere)
    at_commit = await load_called_workflow(uses, Origin(str(tmp_path), sha), nowhere)
    assert tree.workflow.jobs["a"].steps[0].run == "echo edited"
    assert at_commit.workflow.jobs["a"].steps[0].run == "echo committed"
    assert list(tree.interface.inputs) == ["x"]
    assert tree.identity == at_commit.identity
    assert tree.identity.endswith(f"{tmp_path.name}/.github/workflows/lib.yml")
    with pytest.raises(ConfigError, match=r"no file \.github/workflows/new\.yml at commit"):
        await load_called_workflow(
            "./.github/workflows/new.yml", Origin(str(tmp_path), sha), Sources("file:///nowhere")
        )


async def test_a_symlink_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text(CALLED % "outside")
    repo = tmp_path / "repo"
    (repo / ".github/workflows").mkdir(parents=True)
    (repo / ".github/workflows/lib.yml").symlink_to(outside)
    with pytest.raises(ConfigError, match="leads out of the repository"):
        await load_called_workflow(
            "./.github/workflows/lib.yml", Origin(str(repo)), Sources("file:///nowhere")
        )


async def test_remote_calls_are_fetched_and_resolve_their_own_calls_there(
    tmp_path: Path,
) -> None:
    repository(tmp_path / "work", CALLED % "remote")
    git("tag", "v1", cwd=tmp_path / "work")
    (tmp_path / "server/octo").mkdir(parents=True)
    git("clone", "-q", "--bare", str(tmp_path / "work"), str(tmp_path / "server/octo/lib"),
        cwd=tmp_path)
    called = await load_called_workflow(
        "octo/lib/.github/workflows/lib.yml@v1", Origin(str(tmp_path)),
        Sources(f"file://{tmp_path / 'server'}"),
    )
    assert called.workflow.jobs["a"].steps[0].run == "echo remote"
    assert called.workflow.path == "octo/lib/.github/workflows/lib.yml@v1"
    assert (called.origin.repository, called.origin.ref) == ("octo/lib", "v1")
    assert called.identity == "octo/lib/.github/workflows/lib.yml@v1"
    # a local call made by that workflow reads that repository's file at that ref
    again = await load_called_workflow(
        "./.github/workflows/lib.yml", called.origin, Sources("unused")
    )
    assert again.workflow.path == "octo/lib/.github/workflows/lib.yml@v1"


async def test_an_invalid_called_workflow_says_where(tmp_path: Path) -> None:
    (tmp_path / ".github/workflows").mkdir(parents=True)
    (tmp_path / ".github/workflows/bad.yml").write_text("on: workflow_call\njobs:\n  a: 3\n")
    with pytest.raises(ConfigError, match=r"is invalid: \.github/workflows/bad\.yml:3"):
        await load_called_workflow(
            "./.github/workflows/bad.yml", Origin(str(tmp_path)), Sources("file:///nowhere")
        )


def test_a_workflow_belongs_to_the_folder_holding_its_github_workflows(tmp_path: Path) -> None:
    nested = tmp_path / "examples/.github/workflows"
    nested.mkdir(parents=True)
    (tmp_path / "loose").mkdir()
    assert workflow_origin(str(nested / "ci.yml"), str(tmp_path), None) == Origin(
        str(tmp_path / "examples")
    )
    assert workflow_origin(str(tmp_path / "loose/ci.yml"), str(tmp_path), None) == Origin(
        str(tmp_path)
    )
    # at a commit, paths are the repository's: its root, whatever folder the file is in
    assert workflow_origin(str(nested / "ci.yml"), str(tmp_path), "abc") == Origin(
        str(tmp_path), "abc"
    )
