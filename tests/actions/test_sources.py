"""Actions: native checkout, local composite and node actions, remote actions from a git server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runner.engine import run
from vmrunner.actions.sources import ActionError, host_local_action_using, parse_action
from vmrunner.reports.events import Annotation, StepStarted


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


COMPOSITE = """
name: outer
inputs:
  who:
    required: true
  greeting:
    default: hello
outputs:
  message:
    value: ${{ steps.inner.outputs.message }}
runs:
  using: composite
  steps:
    - run: test "$GITHUB_ACTION_PATH" = "${{ github.action_path }}" && test -f "$GITHUB_ACTION_PATH/action.yml"
      shell: bash
    - run: test "$STEP_ONLY" = yes
      shell: bash
    - id: inner
      uses: ./actions/inner
      with:
        text: ${{ inputs.greeting }} ${{ inputs.who }}
    - run: echo "FROM_COMPOSITE=1" >> "$GITHUB_ENV"
      shell: bash
"""  # noqa: E501
INNER = """
inputs:
  text: {}
outputs:
  message:
    value: ${{ steps.say.outputs.said }}
runs:
  using: composite
  steps:
    - id: say
      run: echo "said=$INPUT_TEXT_SEEN ${{ inputs.text }}" >> "$GITHUB_OUTPUT"
      shell: bash
      env:
        INPUT_TEXT_SEEN: seen
"""
NODE = """
inputs:
  who:
    default: world
runs:
  using: node20
  pre: pre.js
  main: main.js
  post: post.js
"""
PRE_JS = "console.log('pre ran');\n"
MAIN_JS = """
const fs = require('fs');
console.log('hello ' + process.env.INPUT_WHO);
fs.appendFileSync(process.env.GITHUB_OUTPUT, 'greeting=hi ' + process.env.INPUT_WHO + '\\n');
fs.appendFileSync(process.env.GITHUB_STATE, 'started=yes\\n');
"""
POST_JS = "console.log('post state ' + process.env.STATE_started);\n"


async def test_checkout_composite_nested_and_env_scoping(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {"actions/outer/action.yml": COMPOSITE, "actions/inner/action.yml": INNER, "README": "hi"},
    )
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - id: outer
        uses: ./actions/outer
        with:
          who: mona
        env:
          STEP_ONLY: yes
      - run: |
          test "${{ steps.outer.outputs.message }}" = "seen hello mona"
          test -z "$STEP_ONLY" && test "$FROM_COMPOSITE" = 1
          test -f README
      - uses: actions/checkout@v4
        with:
          path: second/copy
      - run: test -f second/copy/README
""",
        repo_root=repo,
    )
    assert [s.outcome for s in ran.steps("a")] == ["success"] * 5, ran.logs("a")
    assert ran.steps("a")[1].outputs == {"message": "seen hello mona"}


async def test_composite_failure_stops_its_steps_and_keeps_outputs(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "act/action.yml": """
outputs:
  out:
    value: got-${{ steps.first.outputs.v }}
runs:
  using: composite
  steps:
    - id: first
      run: echo "v=1" >> "$GITHUB_OUTPUT"
      shell: bash
    - run: exit 1
      shell: bash
    - run: echo should-not-run
      shell: bash
"""
        },
    )
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - id: c
        uses: ./act
        continue-on-error: true
      - run: test "${{ steps.c.outputs.out }}" = got-1 && test "${{ steps.c.outcome }}" = failure
""",
        repo_root=repo,
    )
    assert "should-not-run" not in ran.logs("a")
    assert [(s.outcome, s.conclusion) for s in ran.steps("a")][1:] == [
        ("failure", "success"),
        ("success", "success"),
    ]


async def test_node_action_inputs_outputs_pre_and_post(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "node-act/action.yml": NODE,
            "node-act/pre.js": PRE_JS,
            "node-act/main.js": MAIN_JS,
            "node-act/post.js": POST_JS,
        },
    )
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - id: n
        uses: ./node-act
        with:
          who: octocat
      - run: test "${{ steps.n.outputs.greeting }}" = "hi octocat"
""",
        repo_root=repo,
    )
    logs = ran.logs("a")
    assert logs.index("pre ran") < logs.index("hello octocat") < logs.index("post state yes")
    kinds = [e.kind for e in ran.of(StepStarted)]
    assert kinds == ["step", "step", "step", "post"]
    assert ran.result("a") == "success"


def bare_repo(root: Path, owner: str, name: str, files: dict[str, str], tag: str) -> None:
    work = write(root / "work" / name, files)

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("init", "-q", "-b", "main", cwd=work)
    git("add", ".", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "action", cwd=work)
    git("tag", tag, cwd=work)
    (root / "server" / owner).mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", str(work), str(root / "server" / owner / name), cwd=root)


async def test_remote_action_from_a_git_server(tmp_path: Path) -> None:
    bare_repo(
        tmp_path,
        "octo",
        "greet",
        {
            "action.yml": "inputs:\n  who: {default: you}\nruns:\n  using: composite\n  steps:\n  "
            '  - run: echo "remote says hi ${{ inputs.who }}"\n      shell: bash\n'
        },
        "v1",
    )
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: octo/greet@v1
      - uses: octo/greet@v1
        with:
          who: again
""",
        actions_url=f"file://{tmp_path / 'server'}",
    )
    assert ran.logs("a") == ["remote says hi you", "remote says hi again"]


async def test_remote_action_that_cannot_be_fetched_fails_clearly(tmp_path: Path) -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: octo/missing@v9
      - if: always()
        run: echo still-here
""",
        actions_url=f"file://{tmp_path / 'nowhere'}",
    )
    errors = [a.message for a in ran.of(Annotation) if a.level == "error"]
    assert any("cannot fetch action octo/missing@v9" in e for e in errors)
    assert ran.result("a") == "failure"
    assert "still-here" in ran.logs("a")


async def test_docker_action_and_missing_local_action(tmp_path: Path) -> None:
    repo = write(tmp_path, {"dock/action.yml": "runs:\n  using: docker\n  image: Dockerfile\n"})
    ran = await run(
        """
on: push
jobs:
  dockerish:
    runs-on: ubuntu-latest
    steps:
      - uses: ./dock
  missing:
    runs-on: ubuntu-latest
    steps:
      - uses: ./nope
""",
        repo_root=repo,
        repository="octo/app",
    )
    if shutil.which("buildah") is None:  # refused before a machine: it could not be built
        assert "Docker action built from a Dockerfile (./dock)" in ran.finished("dockerish").reason
    else:  # it can be built, so the job runs: without a checkout the action is not there
        assert ran.result("dockerish") == "failure"
        assert any(
            "Can't find 'action.yml'" in a.message
            for a in ran.of(Annotation)
            if a.job_key == "dockerish"
        )
    assert ran.result("missing") == "failure"
    errors = [
        a.message for a in ran.of(Annotation) if a.level == "error" and a.job_key == "missing"
    ]
    # GitHub's words: a local action comes from the workspace, so without a checkout it is not
    # there.
    assert errors == [
        "Can't find 'action.yml', 'action.yaml' or 'Dockerfile' under "
        "'/home/runner/work/app/app/nope'. "
        "Did you forget to run actions/checkout before running your local action?"
    ]


def repo_with_links(tmp_path: Path, secret: str) -> Path:
    """A git repository committing links: to a host folder holding an action and a secret, to
    /etc, to an action file in that host folder, and to an action of its own."""
    write(
        tmp_path / "host",
        {
            "action.yml": "runs:\n  using: composite\n  steps:\n"
            f"    - run: echo {secret}; cat {tmp_path}/host/secret.txt\n      shell: bash\n",
            "secret.txt": secret,
        },
    )
    repo = tmp_path / "repo"
    committed_repo(repo)
    write(
        repo,
        {
            "actions/real/action.yml": "runs:\n  using: composite\n  steps:\n"
            "    - run: echo real-action-ran\n      shell: bash\n"
        },
    )
    (repo / "evil").symlink_to(tmp_path / "host")
    (repo / "etc").symlink_to("/etc")
    (repo / "alias").symlink_to("actions/real")
    (repo / "leak").mkdir()
    (repo / "leak" / "action.yml").symlink_to(tmp_path / "host" / "action.yml")
    subprocess.run(["git", "add", "."], cwd=repo, check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "links"],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    return repo


async def test_local_actions_come_from_the_machine_and_stay_in_the_workspace(
    tmp_path: Path,
) -> None:
    """A committed symlink to a host folder, to /etc, an action file linked out, or ``..``: each
    step is refused, nothing of the host reaches the job; an in-workspace link still works."""
    secret = "TOPSECRET-4f1c9a"
    repo = repo_with_links(tmp_path, secret)
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: ./alias
      - uses: ./evil
      - if: always()
        uses: ./etc
      - if: always()
        uses: ./leak
      - if: always()
        uses: ./actions/../../outside
""",
        repo_root=repo,
    )
    assert ran.result("a") == "failure"
    assert [s.outcome for s in ran.steps("a")] == [
        "success",
        "success",
        "failure",
        "failure",
        "failure",
        "failure",
    ]
    assert ran.logs("a")[-1] == "real-action-ran"
    errors = {a.step_index: a.message for a in ran.of(Annotation) if a.level == "error"}
    workspace = "/home/runner/work/repo/repo"
    indexes = [s.index for s in ran.steps("a")]
    assert errors[indexes[2]].startswith(
        f"step uses ./evil: {workspace}/evil leads to {tmp_path}/host, outside the workspace"
    )
    assert errors[indexes[3]].startswith(
        f"step uses ./etc: {workspace}/etc leads to /etc, outside the workspace"
    )
    assert errors[indexes[4]].startswith(
        f"step uses ./leak: {workspace}/leak/action.yml leads to {tmp_path}/host/action.yml"
    )
    assert "leaves the workspace" in errors[indexes[5]]
    assert secret not in repr(ran.events)


def committed_repo(repo: Path) -> str:
    write(repo, {"file.txt": "committed\n"})
    for args in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


async def test_checkout_of_a_commit_uses_git_archive(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = committed_repo(repo)
    (repo / "file.txt").write_text("dirty\n")
    (repo / "untracked.txt").write_text("x\n")
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: cat file.txt && test ! -e untracked.txt && test "$GITHUB_SHA" = "${{ github.sha }}"
""",
        repo_root=repo,
        commit=sha,
    )
    assert "committed" in ran.logs("a")
    assert ran.result("a") == "success"


async def test_checkout_of_a_git_working_tree_honours_gitignore(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    committed_repo(repo)
    write(
        repo,
        {
            ".gitignore": "ignored.txt\nbuild/\n",
            "ignored.txt": "no",
            "build/out.bin": "no",
            "new.txt": "yes",
        },
    )
    (repo / "file.txt").unlink()
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: |
          test -f new.txt && test -f .gitignore && test -d .git
          test ! -e ignored.txt && test ! -e build && test ! -e file.txt
          git log --oneline | grep -q c
""",
        repo_root=repo,
    )
    assert ran.result("a") == "success", ran.logs("a")


async def test_remote_node_action_pre_runs_at_the_start_of_the_job(tmp_path: Path) -> None:
    bare_repo(
        tmp_path,
        "octo",
        "setup-thing",
        {
            "action.yml": NODE,
            "pre.js": "console.log('pre ran for ' + "
            "process.env.INPUT_WHO);\n"
            "require('fs').appendFileSync(process.env.GITHUB_STATE, 'from_pre=1\\n');\n",
            "main.js": MAIN_JS,
            "post.js": "console.log('post sees ' + process.env.STATE_from_pre + ' ' + "
            "process.env.STATE_started);\n",
        },
        "v2",
    )
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo first step
      - uses: octo/setup-thing@v2
        with:
          who: early
""",
        actions_url=f"file://{tmp_path / 'server'}",
    )
    logs = ran.logs("a")
    assert (
        logs.index("pre ran for early")
        < logs.index("first step")
        < logs.index("hello early")
        < logs.index("post sees 1 yes")
    )
    assert "pre ran" not in " ".join(logs[logs.index("first step"):])
    assert next(e.name for e in ran.of(StepStarted)) == "Pre Run octo/setup-thing@v2"
    assert ran.result("a") == "success"


def test_the_docker_hint_reads_nothing_outside_the_repository(tmp_path: Path) -> None:
    """Before allocation a Docker local action is spotted on the host, but never through a link
    out."""
    write(tmp_path / "host", {"action.yml": "runs:\n  using: docker\n  image: Dockerfile\n"})
    repo = write(
        tmp_path / "repo", {"dock/action.yml": "runs:\n  using: docker\n  image: Dockerfile\n"}
    )
    (repo / "out").symlink_to(tmp_path / "host")
    (repo / "file").mkdir()
    (repo / "file" / "action.yml").symlink_to(tmp_path / "host" / "action.yml")
    assert host_local_action_using(str(repo), "./dock") == "docker"
    assert host_local_action_using(str(repo), "./out") is None
    assert host_local_action_using(str(repo), "./file") is None
    assert host_local_action_using(str(repo), "./../host") is None


def test_a_composite_action_cannot_declare_background_steps() -> None:
    """GitHub: a composite action may run as a background step, not declare its own."""
    for step in ("{run: a, background: true}", "{wait-all: }", "{cancel: x}", "{parallel: []}"):
        text = f"runs:\n  using: composite\n  steps:\n    - {{run: first}}\n    - {step}\n"
        with pytest.raises(ActionError, match=r"step 1 uses '.*': a composite action cannot"):
            parse_action(text, "action.yml", "./mine", "/w/mine")
