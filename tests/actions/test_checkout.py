"""actions/checkout's inputs and the workspace layout, on real sandboxes with real git
repositories served from local folders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.runner.engine import run
from vmrunner.actions.checkout import CheckoutError, CheckoutSettings, read_inputs
from vmrunner.errors import ConfigError
from vmrunner.reports.events import Annotation, LogLine

WORKSPACE = "/home/runner/work/app/app"


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )
    return done.stdout.strip()


def commits(repo: Path, *names: str) -> list[str]:
    """One commit per name, each adding the file ``name``; their shas."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        git("init", "-q", "-b", "main", cwd=repo)
    shas = []
    for name in names:
        (repo / name).write_text(f"{name}\n")
        git("add", name, cwd=repo)
        git("commit", "-q", "-m", f"add {name}", cwd=repo)
        shas.append(git("rev-parse", "HEAD", cwd=repo))
    return shas


def serve(work: Path, server: Path, owner: str, name: str) -> Path:
    """A bare clone of ``work`` at ``server/owner/name`` (what a git server holds)."""
    target = server / owner / name
    target.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", str(work), str(target), cwd=server)
    return target


def errors(ran: object) -> list[str]:
    return [a.message for a in ran.of(Annotation) if a.level == "error"]  # type: ignore[attr-defined]


def warnings(ran: object) -> list[str]:
    return [a.message for a in ran.of(Annotation) if a.level == "warning"]  # type: ignore[attr-defined]


async def test_workspace_layout_and_token(tmp_path: Path) -> None:
    """``/home/runner/work/<repo>/<repo>``, ``runner.workspace`` its parent, the step's folder;
    ``github.token`` is the GITHUB_TOKEN secret, masked."""
    repo = tmp_path / "app"
    commits(repo, "a.txt")
    ran = await run(
        f"""
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: |
          test "$GITHUB_WORKSPACE" = {WORKSPACE} && test "$(pwd)" = {WORKSPACE}
          test "${{{{ github.workspace }}}}" = {WORKSPACE}
          test "${{{{ runner.workspace }}}}" = /home/runner/work/app
          test "$RUNNER_WORKSPACE" = /home/runner/work/app
          test "${{{{ github.token }}}}" = "${{{{ secrets.GITHUB_TOKEN }}}}"
          echo "token ${{{{ github.token }}}}"
""",
        repo_root=repo,
        repository="octo/app",
        secrets={"GITHUB_TOKEN": "ghs_sekret123"},
    )
    assert ran.result("a") == "success", (ran.logs("a"), errors(ran))
    assert "token ***" in ran.logs("a")
    assert "ghs_sekret123" not in repr(ran.events)


async def test_workspace_named_after_the_folder_without_a_repository(tmp_path: Path) -> None:
    repo = tmp_path / "plain-folder"
    repo.mkdir()
    (repo / "f.txt").write_text("x")
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: test "$(pwd)" = /home/runner/work/plain-folder/plain-folder && test -f f.txt
""",
        repo_root=repo,
    )
    assert ran.result("a") == "success", (ran.logs("a"), errors(ran))


async def test_default_checkout_is_a_shallow_repository_with_the_working_tree(
    tmp_path: Path,
) -> None:
    """fetch-depth 1 (one commit), origin the repository's address, the branch checked out,
    and the uncommitted changes on top, as they are on the host."""
    repo = tmp_path / "app"
    shas = commits(repo, "one.txt", "two.txt", "three.txt")
    (repo / "two.txt").write_text("changed\n")
    (repo / "new.txt").write_text("untracked\n")
    (repo / "one.txt").unlink()
    ran = await run(
        f"""
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: |
          test "$(git rev-list --count HEAD)" = 1
          test "$(git rev-parse HEAD)" = {shas[-1]}
          test "$(git branch --show-current)" = main
          test "$(git remote get-url origin)" = https://github.com/octo/app
          test "$(cat two.txt)" = changed && test -f new.txt && test ! -e one.txt
          git status --porcelain
""",
        repo_root=repo,
        repository="octo/app",
    )
    assert ran.result("a") == "success", (ran.logs("a"), errors(ran))
    assert sorted(ran.logs("a")[-3:]) == [" D one.txt", " M two.txt", "?? new.txt"]


async def test_fetch_depth_ref_and_describe(tmp_path: Path) -> None:
    """fetch-depth 0: all history and tags (``git describe`` works); a tag, a branch and a sha
    as ``ref``; ``path`` under the workspace."""
    repo = tmp_path / "app"
    shas = commits(repo, "one.txt", "two.txt")
    git("tag", "-a", "v1.0", "-m", "release", cwd=repo)
    git("checkout", "-q", "-b", "feature", cwd=repo)
    commits(repo, "feature.txt")
    git("checkout", "-q", "main", cwd=repo)
    shas += commits(repo, "three.txt")
    ran = await run(
        f"""
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
      - run: |
          test "$(git rev-list --count HEAD)" = 3
          test "$(git describe --tags)" = "v1.0-1-g$(git rev-parse --short HEAD)"
          git rev-parse -q --verify refs/remotes/origin/feature
      - uses: actions/checkout@v4
        with:
          ref: v1.0
          path: tagged
      - run: |
          cd tagged && test -f two.txt && test ! -e three.txt
          test "$(git rev-list --count HEAD)" = 1 && test -z "$(git branch --show-current)"
          test "$(git describe)" = v1.0
      - uses: actions/checkout@v4
        with:
          ref: feature
          path: ./branch/
          fetch-depth: 2
      - run: |
          cd branch && test -f feature.txt
          test "$(git branch --show-current)" = feature && test "$(git rev-list --count HEAD)" = 2
      - uses: actions/checkout@v4
        with:
          ref: {shas[0]}
          path: {WORKSPACE}/bysha
      - run: cd bysha && test "$(git rev-parse HEAD)" = {shas[0]} && test ! -e two.txt
      - run: test -d tagged && test -d branch && test -d bysha && test -f three.txt
""",
        repo_root=repo,
        repository="octo/app",
    )
    assert ran.result("a") == "success", (ran.logs("a"), errors(ran))


async def test_path_outside_the_workspace_and_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    repo = tmp_path / "app"
    commits(repo, "one.txt")
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          path: ../elsewhere
      - if: always()
        uses: actions/checkout@v4
        with:
          ref: no-such-branch
      - if: always()
        uses: actions/checkout@v4
        with:
          lfs: true
          fetch-deep: 3
      - if: always()
        run: test -f one.txt
""",
        repo_root=repo,
        repository="octo/app",
    )
    assert [s.outcome for s in ran.steps("a")] == ["failure", "failure", "success", "success"]
    assert errors(ran)[:2] == [
        f"actions/checkout: repository path '../elsewhere' is not under '{WORKSPACE}'",
        "actions/checkout: a branch or tag with the name 'no-such-branch' could not be found in "
        "octo/app",
    ]
    found = warnings(ran)
    assert any(w.startswith("actions/checkout: unexpected input(s) 'fetch-deep'") for w in found)
    assert any(w.startswith("actions/checkout: input 'lfs' is not honoured") for w in found)


async def test_another_repository_from_the_server_and_from_a_mirror_with_submodules(
    tmp_path: Path,
) -> None:
    """``repository:`` through git from the server (with a relative submodule, recursive) and
    from a mirror the user maps; a submodule naming a host path is refused."""
    server = tmp_path / "server"
    deep = tmp_path / "src" / "deep"
    commits(deep, "deep.txt")
    serve(deep, server, "octo", "deep")
    lib = tmp_path / "src" / "lib"
    commits(lib, "lib.txt")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(deep), "vendor/deep",
        cwd=lib)  # fmt: skip
    # an absolute URL on GitHub, fetched here from the mirror the user maps
    git("config", "-f", ".gitmodules", "submodule.vendor/deep.url", "https://github.com/octo/deep",
        cwd=lib)  # fmt: skip
    git("commit", "-q", "-am", "deep", cwd=lib)
    serve(lib, server, "octo", "lib")
    tools = tmp_path / "src" / "tools"
    commits(tools, "tool.txt", "tool2.txt")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(server / "octo" / "lib"),
        "lib", cwd=tools)  # fmt: skip
    # as on GitHub: a URL relative to the repository's own address
    git("config", "-f", ".gitmodules", "submodule.lib.url", "../lib", cwd=tools)
    git("commit", "-q", "-am", "lib", cwd=tools)
    serve(tools, server, "octo", "tools")
    mirror = tmp_path / "mirror"
    commits(mirror, "mirrored.txt")
    evil = tmp_path / "src" / "evil"
    commits(evil, "e.txt")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(server / "octo" / "lib"),
        "lib", cwd=evil)  # fmt: skip
    git("commit", "-q", "-m", "host path", cwd=evil)
    serve(evil, server, "octo", "evil")
    ran = await run(
        f"""
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          repository: octo/tools
          path: tools
          submodules: recursive
          token: ghp_given_token
      - run: |
          cd tools && test -f tool2.txt && test -f lib/lib.txt && test -f lib/vendor/deep/deep.txt
          test "$(git rev-list --count HEAD)" = 1
          test "$(git remote get-url origin)" = "{server.as_uri()}/octo/tools"
          test "$(git -C lib remote get-url origin)" = "{server.as_uri()}/octo/lib"
          git config --get-regexp 'http\\..*extraheader' | grep -q 'AUTHORIZATION: basic'
          git submodule status --recursive
      - uses: actions/checkout@v4
        with:
          repository: Other/Mirrored
          path: mirrored
          persist-credentials: false
      - run: |
          test -f mirrored/mirrored.txt
          ! git -C mirrored config --get-regexp 'http\\..*extraheader'
      - if: always()
        uses: actions/checkout@v4
        with:
          repository: octo/evil
          path: evil
          submodules: true
""",
        repo_root=tmp_path / "app",
        repository="octo/app",
        server_url=server.as_uri(),
        repository_mirrors={"other/mirrored": str(mirror), "octo/deep": str(deep)},
    )
    assert [s.outcome for s in ran.steps("a")] == ["success"] * 4 + ["failure"], (
        ran.logs("a"), errors(ran),
    )
    assert errors(ran) == [
        f"actions/checkout: submodule 'lib' has the URL '{server / 'octo' / 'lib'}', a path on "
        "the host: refused (map the repository with --repository-mirror OWNER/REPO=PATH)"
    ]
    assert "ghp_given_token" not in repr(ran.events)
    logs = " ".join(e.text for e in ran.of(LogLine))
    assert "submodule lib/vendor/deep from https://github.com/octo/deep" in logs


async def test_offline_checkout_of_another_repository_needs_a_mirror(tmp_path: Path) -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          repository: octo/elsewhere
""",
        repository="octo/app",
        offline=True,
    )
    assert errors(ran) == [
        "actions/checkout: repository octo/elsewhere has no mirror (--repository-mirror) and "
        "--offline forbids fetching it from https://github.com"
    ]


def test_inputs_are_read_and_checked() -> None:
    settings = CheckoutSettings(repo_root=".", repository="octo/app", server_url="https://x")
    request = read_inputs(
        {"fetch-depth": "0", "submodules": "Recursive", "sparse-checkout": "src\n docs \n"},
        settings, WORKSPACE,
    )
    assert (request.depth, request.submodules, request.sparse) == (0, "recursive", ("src", "docs"))
    assert request.own
    assert request.clean
    assert request.persist
    assert request.target == WORKSPACE
    for bad in ({"fetch-depth": "-1"}, {"fetch-depth": "all"}, {"submodules": "yes"},
                {"clean": "maybe"}, {"repository": "not a repo"}, {"path": "/etc"}):  # fmt: skip
        with pytest.raises(CheckoutError):
            read_inputs(bad, settings, WORKSPACE)
    assert isinstance(CheckoutError("x"), ConfigError)
