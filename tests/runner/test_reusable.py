"""Reusable workflows run for real: the called jobs are jobs of the run, each in its own sandbox.

Cases follow GitHub's "Reusing workflows" and act's ``uses-workflow`` testdata (typed inputs
and defaults, explicit and inherited secrets, outputs read by a later job), plus matrix callers,
nesting, GitHub's limits, cycles, calls into another repository (a local git server) and the
``$/`` self-repository references.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.runner.engine import run
from vmrunner.reports.events import Annotation, JobQueued, JobStarted
from vmrunner.workflow.loader import load_workflow_text


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


#: A reusable workflow whose steps assert what the call gave it (act's local-reusable-workflow).
TYPED = """
name: typed
on:
  workflow_call:
    inputs:
      string_required: {type: string, required: true}
      string_optional: {type: string, default: fallback}
      bool_required: {type: boolean, required: true}
      bool_optional: {type: boolean, default: true}
      number_required: {type: number, required: true}
      number_optional: {type: number, default: "${{ 1 }}"}
    secrets:
      secret: {required: false}
    outputs:
      output:
        value: ${{ jobs.check.outputs.said }}
      status:
        value: ${{ jobs.check.result }}
env:
  OWN: callee
jobs:
  check:
    runs-on: ubuntu-latest
    outputs:
      said: ${{ steps.say.outputs.value }}
    steps:
      - run: test "${{ inputs.string_required }}" = given
      - run: test "${{ inputs.string_optional }}" = fallback
      - run: test "${{ tojson(inputs.bool_required) }}" = true
      - run: test "${{ tojson(inputs.bool_optional) }}" = true
      - run: test "${{ tojson(inputs.number_required) }}" = 1
      - run: test "${{ tojson(inputs.number_optional) }}" = 1
      - run: test "${{ github.event_name }}" = push
      - run: test "${{ github.workflow }}" = caller
      - run: test "$OWN" = callee && test -z "$CALLER_ONLY"
      - run: echo "the secret is ${{ secrets.secret }}"
      - id: say
        run: echo "value=${{ inputs.string_required }}-${{ secrets.secret != '' }}" >> "$GITHUB_OUTPUT"
"""  # noqa: E501


async def test_local_call_with_typed_inputs_secrets_and_outputs(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".github/workflows/typed.yml": TYPED,
            ".github/workflows/caller.yml": """
name: caller
on: push
env:
  CALLER_ONLY: not-passed
jobs:
  explicit:
    uses: ./.github/workflows/typed.yml
    permissions: {contents: read}
    concurrency: {group: "explicit-${{ github.ref }}"}
    with: {string_required: given, bool_required: "${{ true }}", number_required: 1}
    secrets:
      secret: ${{ secrets.TOP }}
  inherited:
    name: Inherited
    uses: ./.github/workflows/typed.yml
    with: {string_required: given, bool_required: true, number_required: 1}
    secrets: inherit
  after:
    needs: [explicit, inherited]
    runs-on: ubuntu-latest
    steps:
      - run: test "${{ needs.explicit.outputs.output }}" = given-true
      - run: test "${{ needs.explicit.outputs.status }}" = success
      - run: test "${{ needs.inherited.result }}" = success
      - run: test "${{ needs.inherited.outputs.output }}" = given-false
""",
        },
    )
    ran = await run(
        tmp_path / ".github/workflows/caller.yml", repo_root=tmp_path,
        secrets={"TOP": "hush-hush"},
    )
    assert ran.outcome.conclusion == "success", [a.message for a in ran.of(Annotation)]
    results = {e.job_key: e.result for e in ran.of(type(ran.finished("after")))}
    assert results == {
        "explicit": "success", "explicit / check": "success", "inherited": "success",
        "inherited / check": "success", "after": "success",
    }
    names = {e.job_key: e.name for e in ran.of(JobQueued)}
    assert names["inherited / check"] == "Inherited / check"
    assert {e.job_id for e in ran.of(JobQueued)} >= {"explicit / check", "inherited / check"}
    # the called jobs got machines of their own; the calling jobs none
    started = [e.job_key for e in ran.of(JobStarted)]
    assert sorted(started) == ["after", "explicit / check", "inherited / check"]
    assert len({e.machine_id for e in ran.of(JobStarted)}) == 3
    assert "the secret is ***" in ran.logs("explicit / check")
    assert "the secret is " in ran.logs("inherited / check")  # inherit: TOP, not 'secret'
    assert all("hush-hush" not in line for line in ran.logs())
    assert ran.finished("explicit").outputs == {"output": "given-true", "status": "success"}


async def test_inherit_passes_every_secret_and_derived_ones_are_masked(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".github/workflows/show.yml": """
on: [workflow_call]
jobs:
  show:
    runs-on: ubuntu-latest
    steps:
      - run: echo "top=${{ secrets.TOP }} derived=${{ secrets.derived }}"
      - run: test "${{ secrets.TOP }}" = hush-hush
""",
            ".github/workflows/derive.yml": """
on:
  workflow_call:
    secrets:
      derived: {required: true}
jobs:
  show:
    runs-on: ubuntu-latest
    steps:
      - run: echo "derived=${{ secrets.derived }} top=[${{ secrets.TOP }}]"
""",
            ".github/workflows/ci.yml": """
on: push
jobs:
  inherit:
    uses: ./.github/workflows/show.yml
    secrets: inherit
  derive:
    uses: ./.github/workflows/derive.yml
    secrets:
      derived: prefix-${{ secrets.TOP }}
""",
        },
    )
    ran = await run(
        tmp_path / ".github/workflows/ci.yml", repo_root=tmp_path, secrets={"TOP": "hush-hush"}
    )
    assert ran.outcome.conclusion == "success", [a.message for a in ran.of(Annotation)]
    assert ran.logs("inherit / show") == ["top=*** derived="]
    # an explicit mapping passes only what it names; the derived value is masked whole
    assert ran.logs("derive / show") == ["derived=*** top=[]"]


async def test_matrix_caller_makes_one_call_per_combination(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".github/workflows/build.yml": """
on:
  workflow_call:
    inputs:
      flavour: {type: string, required: true}
      size: {type: number, required: true}
    outputs:
      built:
        value: ${{ jobs.build.outputs.built }}
jobs:
  build:
    runs-on: ubuntu-latest
    outputs:
      built: ${{ steps.b.outputs.built }}
    steps:
      - id: b
        run: echo "built=${{ inputs.flavour }}${{ inputs.size }}" >> "$GITHUB_OUTPUT"
""",
            ".github/workflows/ci.yml": """
on: push
jobs:
  call:
    strategy:
      matrix:
        flavour: [plain, spicy]
        size: [1, 2]
      max-parallel: 2
    uses: ./.github/workflows/build.yml
    with:
      flavour: ${{ matrix.flavour }}
      size: ${{ matrix.size }}
  after:
    needs: call
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ needs.call.outputs.built }} ${{ needs.call.result }}"
""",
        },
    )
    ran = await run(tmp_path / ".github/workflows/ci.yml", repo_root=tmp_path)
    assert ran.outcome.conclusion == "success", [a.message for a in ran.of(Annotation)]
    keys = [e.job_key for e in ran.of(JobStarted)]
    assert sorted(keys) == sorted(
        [f"call ({f}, {s}) / build" for f in ("plain", "spicy") for s in (1, 2)] + ["after"]
    )
    assert len({e.machine_id for e in ran.of(JobStarted)}) == 5
    for flavour in ("plain", "spicy"):
        for size in (1, 2):
            key = f"call ({flavour}, {size})"
            assert ran.finished(key).outputs == {"built": f"{flavour}{size}"}
    [line] = ran.logs("after")
    assert line.endswith(" success")
    assert line.split()[0] in {"plain1", "plain2", "spicy1", "spicy2"}


async def test_nested_calls_pass_outputs_up_and_failures_through(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".github/workflows/leaf.yml": """
on:
  workflow_call:
    inputs:
      word: {type: string, required: true}
      fail: {type: boolean, default: false}
    outputs:
      echoed: {value: "${{ jobs.say.outputs.echoed }}"}
jobs:
  say:
    runs-on: ubuntu-latest
    outputs:
      echoed: ${{ steps.s.outputs.echoed }}
    steps:
      - id: s
        run: echo "echoed=leaf:${{ inputs.word }}" >> "$GITHUB_OUTPUT"
      - if: inputs.fail
        run: exit 4
""",
            ".github/workflows/middle.yml": """
on:
  workflow_call:
    inputs:
      word: {type: string, required: true}
      fail: {type: boolean, default: false}
    outputs:
      echoed: {value: "middle:${{ jobs.inner.outputs.echoed }}"}
jobs:
  inner:
    uses: ./.github/workflows/leaf.yml
    with: {word: "${{ inputs.word }}", fail: "${{ inputs.fail }}"}
  also:
    needs: inner
    runs-on: ubuntu-latest
    steps:
      - run: test "${{ needs.inner.outputs.echoed }}" = "leaf:${{ inputs.word }}"
""",
            ".github/workflows/ci.yml": """
on: push
jobs:
  outer:
    uses: ./.github/workflows/middle.yml
    with: {word: deep}
  broken:
    uses: ./.github/workflows/middle.yml
    with: {word: deep, fail: true}
  after:
    needs: [outer, broken]
    if: always()
    runs-on: ubuntu-latest
    steps:
      - run: test "${{ needs.outer.outputs.echoed }}" = middle:leaf:deep
      - run: test "${{ needs.broken.result }}" = failure
""",
        },
    )
    ran = await run(tmp_path / ".github/workflows/ci.yml", repo_root=tmp_path)
    assert ran.result("outer / inner / say") == "success"
    assert ran.result("outer / also") == "success"
    assert ran.result("outer") == "success"
    assert ran.result("broken / inner / say") == "failure"
    assert ran.result("broken / also") == "skipped"
    assert ran.result("broken") == "failure"
    assert "broken / inner" in ran.finished("broken").reason
    assert ran.result("after") == "success"
    assert ran.outcome.conclusion == "failure"


def chain(count: int) -> dict[str, str]:
    """Workflows w1 → w2 → … → w<count>, each calling the next; the last runs one step."""
    files = {}
    for level in range(1, count + 1):
        on = "push" if level == 1 else "workflow_call"
        if level < count:
            body = f"  next:\n    uses: ./.github/workflows/w{level + 1}.yml\n"
        else:
            body = "  last:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo bottom\n"
        files[f".github/workflows/w{level}.yml"] = f"on: {on}\njobs:\n{body}"
    return files


async def test_ten_levels_run_and_eleven_are_refused(tmp_path: Path) -> None:
    ten = write(tmp_path / "ten", chain(10))
    ran = await run(ten / ".github/workflows/w1.yml", repo_root=ten)
    assert ran.result("next / next / next / next / next / next / next / next / next / last") == (
        "success"
    )
    eleven = write(tmp_path / "eleven", chain(11))
    top = (eleven / ".github/workflows/w1.yml").read_text()
    # loaded without the loader's checks, so that the engine's own check is what stops it
    ran = await run(
        load_workflow_text(top, str(eleven / ".github/workflows/w1.yml")), repo_root=eleven
    )
    deepest = " / ".join(["next"] * 10)  # the job of w10 that would call w11
    assert ran.result(deepest) == "failure"
    assert "more than 10 levels" in ran.finished(deepest).reason
    assert ran.result("next") == "failure"
    assert not ran.of(JobStarted)
    assert ran.outcome.conclusion == "failure"


async def test_a_cycle_and_a_missing_callee_fail_the_calling_job(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".github/workflows/a.yml": "on: workflow_call\njobs:\n  b:\n"
            "    uses: ./.github/workflows/b.yml\n",
            ".github/workflows/b.yml": "on: workflow_call\njobs:\n  a:\n"
            "    uses: ./.github/workflows/a.yml\n",
            ".github/workflows/plain.yml": "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n"
            "    steps:\n      - run: echo\n",
        },
    )
    text = """
on: push
jobs:
  loop:
    uses: ./.github/workflows/a.yml
  missing:
    uses: ./.github/workflows/gone.yml
  plain:
    uses: ./.github/workflows/plain.yml
  typed:
    uses: ./.github/workflows/leafless.yml
  after:
    needs: [loop, missing]
    if: always()
    runs-on: ubuntu-latest
    steps:
      - run: test "${{ needs.loop.result }}/${{ needs.missing.result }}" = failure/failure
"""
    ran = await run(load_workflow_text(text, str(tmp_path / "ci.yml")), repo_root=tmp_path)
    assert "a cycle of reusable workflow calls: a.yml → b.yml → a.yml" in (
        ran.finished("loop / b / a").reason
    )
    assert ran.result("loop") == "failure"
    assert "no file .github/workflows/gone.yml" in ran.finished("missing").reason
    assert "has no workflow_call" in ran.finished("plain").reason
    assert ran.result("after") == "success"
    assert [e.job_key for e in ran.of(JobStarted)] == ["after"]


async def test_a_value_of_the_wrong_type_fails_the_call(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".github/workflows/flag.yml": """
on:
  workflow_call:
    inputs:
      flag: {type: boolean, required: true}
jobs:
  x:
    runs-on: ubuntu-latest
    steps:
      - run: echo never
""",
        },
    )
    text = """
on: push
jobs:
  call:
    uses: ./.github/workflows/flag.yml
    with:
      flag: ${{ 'true' }}
"""
    ran = await run(load_workflow_text(text, str(tmp_path / "ci.yml")), repo_root=tmp_path)
    assert ran.result("call") == "failure"
    assert "input 'flag' of ./.github/workflows/flag.yml is a boolean; got the string 'true'" in (
        ran.finished("call").reason
    )
    assert not ran.of(JobStarted)


def remote_repository(tmp_path: Path) -> None:
    """``octo/pipelines`` on a local git server: a reusable workflow that calls another file of
    its own repository and uses an action of it through ``$/``."""
    work = write(
        tmp_path / "work" / "pipelines",
        {
            ".github/workflows/release.yml": """
on:
  workflow_call:
    inputs:
      version: {type: string, required: true}
    outputs:
      tag: {value: "${{ jobs.inner.outputs.tag }}"}
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: $/actions/stamp
        with: {text: "${{ inputs.version }}"}
  inner:
    uses: ./.github/workflows/tag.yml
    with: {version: "${{ inputs.version }}"}
""",
            ".github/workflows/tag.yml": """
on:
  workflow_call:
    inputs:
      version: {type: string, required: true}
    outputs:
      tag: {value: "${{ jobs.tag.outputs.tag }}"}
jobs:
  tag:
    runs-on: ubuntu-latest
    outputs:
      tag: ${{ steps.t.outputs.tag }}
    steps:
      - id: t
        run: echo "tag=v${{ inputs.version }}-remote" >> "$GITHUB_OUTPUT"
""",
            "actions/stamp/action.yml": """
inputs:
  text: {required: true}
runs:
  using: composite
  steps:
    - run: echo "stamped ${{ inputs.text }} by $(cat "$GITHUB_ACTION_PATH/mark.txt")"
      shell: bash
""",
            "actions/stamp/mark.txt": "the remote stamp\n",
        },
    )
    git("init", "-q", "-b", "main", cwd=work)
    git("add", ".", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "pipelines", cwd=work)
    git("tag", "v2", cwd=work)
    (tmp_path / "server" / "octo").mkdir(parents=True)
    git("clone", "-q", "--bare", str(work), str(tmp_path / "server/octo/pipelines"), cwd=tmp_path)


async def test_remote_call_through_a_git_server(tmp_path: Path) -> None:
    remote_repository(tmp_path)
    repo = write(
        tmp_path / "repo",
        {
            ".github/workflows/ci.yml": """
on: push
jobs:
  release:
    uses: octo/pipelines/.github/workflows/release.yml@v2
    with: {version: "1.2"}
  after:
    needs: release
    runs-on: ubuntu-latest
    steps:
      - run: test "${{ needs.release.outputs.tag }}" = v1.2-remote
  missing:
    uses: octo/pipelines/.github/workflows/nothing.yml@v2
  unfetchable:
    uses: octo/elsewhere/.github/workflows/release.yml@v1
""",
        },
    )
    ran = await run(
        repo / ".github/workflows/ci.yml", repo_root=repo,
        actions_url=f"file://{tmp_path / 'server'}",
    )
    assert ran.logs("release / build") == ["stamped 1.2 by the remote stamp"]
    assert ran.result("release / inner / tag") == "success"
    assert ran.result("after") == "success"
    assert "no file .github/workflows/nothing.yml" in ran.finished("missing").reason
    assert "cannot fetch the called workflow octo/elsewhere" in (
        ran.finished("unfetchable").reason
    )


async def test_local_repository_and_offline_cover_called_workflows(tmp_path: Path) -> None:
    """act's ``--local-repository`` maps a called workflow's repository to a folder, used as it
    is (no git server needed); ``--offline`` calls only what the actions cache holds."""
    remote_repository(tmp_path)
    folder = tmp_path / "work" / "pipelines"
    (folder / "actions/stamp/mark.txt").write_text("the local stamp\n")  # not committed
    caller = """
on: push
jobs:
  release:
    uses: octo/pipelines/.github/workflows/release.yml@v2
    with: {version: "3"}
"""
    repo = write(tmp_path / "repo", {".github/workflows/ci.yml": caller})
    workflow = repo / ".github/workflows/ci.yml"
    mapped = await run(
        workflow, repo_root=repo, actions_url="file:///nowhere",
        local_repositories={"octo/pipelines@v2": str(folder)},
    )
    assert mapped.logs("release / build") == ["stamped 3 by the local stamp"]
    assert mapped.result("release / inner / tag") == "success"
    offline = await run(
        workflow, repo_root=repo, actions_url=f"file://{tmp_path / 'server'}", offline=True
    )
    assert "--offline" in offline.finished("release").reason
    fetched = await run(workflow, repo_root=repo, actions_url=f"file://{tmp_path / 'server'}")
    assert fetched.logs("release / build") == ["stamped 3 by the remote stamp"]
    cached = await run(workflow, repo_root=repo, actions_url="file:///nowhere", offline=True)
    assert cached.logs("release / build") == ["stamped 3 by the remote stamp"]


async def test_self_repository_references_need_no_checkout(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            ".github/workflows/plan.yml": """
on: workflow_call
jobs:
  plan:
    runs-on: ubuntu-latest
    steps:
      - uses: $/.github/actions/hello
        with: {who: plan}
""",
            ".github/actions/hello/action.yml": """
inputs:
  who: {required: true}
runs:
  using: composite
  steps:
    - run: echo "hello ${{ inputs.who }} from $(cat "$GITHUB_ACTION_PATH/word.txt")"
      shell: bash
    - uses: $/.github/actions/bye
""",
            ".github/actions/hello/word.txt": "the repository\n",
            ".github/actions/bye/action.yml": """
runs:
  using: composite
  steps:
    - run: echo bye
      shell: bash
""",
            ".github/workflows/ci.yml": """
on: push
jobs:
  call:
    uses: $/.github/workflows/plan.yml
  direct:
    runs-on: ubuntu-latest
    steps:
      - run: test ! -e .github
      - uses: $/.github/actions/hello
        with: {who: direct}
""",
        },
    )
    ran = await run(repo / ".github/workflows/ci.yml", repo_root=repo)
    assert ran.outcome.conclusion == "success", [a.message for a in ran.of(Annotation)]
    assert ran.logs("call / plan") == ["hello plan from the repository", "bye"]
    assert ran.logs("direct") == ["hello direct from the repository", "bye"]


async def test_self_reference_reads_the_commit_being_run(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            ".github/actions/say/action.yml": "runs:\n  using: composite\n  steps:\n"
            "    - run: echo committed\n      shell: bash\n",
        },
    )
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one", cwd=repo)
    sha = git("rev-parse", "HEAD", cwd=repo)
    (repo / ".github/actions/say/action.yml").write_text(
        "runs:\n  using: composite\n  steps:\n    - run: echo edited\n      shell: bash\n"
    )
    text = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n" \
        "      - uses: $/.github/actions/say\n"
    ran = await run(load_workflow_text(text, "ci.yml"), repo_root=repo, commit=sha)
    assert ran.logs("a") == ["committed"]
    ran = await run(load_workflow_text(text, "ci.yml"), repo_root=repo)
    assert ran.logs("a") == ["edited"]


async def test_fail_fast_stops_the_jobs_of_sibling_calls_with_its_reason(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".github/workflows/w.yml": """
on:
  workflow_call:
    inputs:
      n: {type: number, required: true}
jobs:
  first:
    runs-on: x
    steps:
      - run: if [ "${{ inputs.n }}" = 1 ]; then sleep 1; exit 1; fi; sleep 60
  second:
    needs: first
    runs-on: x
    steps:
      - run: echo never
""",
            ".github/workflows/ci.yml": """
on: push
jobs:
  call:
    strategy:
      matrix: {n: [1, 2]}
    uses: ./.github/workflows/w.yml
    with: {n: "${{ matrix.n }}"}
""",
        },
    )
    ran = await run(tmp_path / ".github/workflows/ci.yml", repo_root=tmp_path)
    assert ran.result("call (1) / first") == "failure"
    assert ran.result("call (1)") == "failure"
    reason = "cancelled by fail-fast: a matrix sibling failed"
    assert (ran.result("call (2)"), ran.finished("call (2)").reason) == ("cancelled", reason)
    assert ran.result("call (2) / first") == "cancelled"
    assert ran.finished("call (2) / first").reason == reason
    assert not ran.provider.alive
