"""Steps: env, defaults, working directories, file commands, workflow commands, masking,
contexts."""

from __future__ import annotations

from tests.runner.engine import run
from vmrunner.reports.events import Annotation, GroupEnded, GroupStarted, LogLine, StepFinished


async def test_env_precedence_defaults_and_working_directory() -> None:
    ran = await run(
        """
on: push
env:
  LEVEL: workflow
  W_ONLY: w
defaults:
  run:
    shell: sh
jobs:
  a:
    runs-on: ubuntu-latest
    env:
      LEVEL: job
      J_ONLY: j
    defaults:
      run:
        working-directory: sub
    steps:
      - run: mkdir -p sub/deeper
        working-directory: .
      - run: |
          test "$LEVEL" = step && test "$W_ONLY" = w && test "$J_ONLY" = j
          test "$(pwd)" = "$GITHUB_WORKSPACE/sub"
          test -z "${BASH:-}"
        env:
          LEVEL: step
      - run: test "$LEVEL" = job && test "$(pwd)" = "$GITHUB_WORKSPACE/sub/deeper"
        working-directory: sub/deeper
      - shell: python
        run: |
          import os, sys
          assert os.environ["LEVEL"] == "job", os.environ["LEVEL"]
          print(sys.argv[0].endswith(".py"))
"""
    )
    assert [s.outcome for s in ran.steps("a")] == ["success"] * 4
    assert ran.logs("a")[-1] == "True"


async def test_file_commands_env_output_path_summary() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - id: first
        run: |
          echo "ONE=1" >> "$GITHUB_ENV"
          printf 'MULTI<<EOF\\nline a\\nline b\\nEOF\\n' >> "$GITHUB_ENV"
          echo "out=value=x" >> "$GITHUB_OUTPUT"
          mkdir -p "$HOME/tools" && printf '#!/bin/sh\\necho my-tool\\n' > "$HOME/tools/mytool" && chmod +x "$HOME/tools/mytool"
          echo "$HOME/tools" >> "$GITHUB_PATH"
          echo "### Hello summary" >> "$GITHUB_STEP_SUMMARY"
      - run: |
          test "$ONE" = 1
          test "$MULTI" = "$(printf 'line a\\nline b')"
          test "${{ steps.first.outputs.out }}" = value=x
          test "${{ env.ONE }}" = 1
          mytool
          test -z "$(cat "$GITHUB_STEP_SUMMARY")"
          test -z "$(cat "$GITHUB_ENV")"
      - run: echo "BROKEN<<EOF" >> "$GITHUB_ENV"
"""  # noqa: E501
    )
    steps = ran.steps("a")
    assert [s.outcome for s in steps] == ["success", "success", "failure"]
    assert steps[0].outputs == {"out": "value=x"}
    assert "my-tool" in ran.logs("a")
    assert ran.finished("a").summary.strip() == "### Hello summary"
    assert any("delimiter" in a.message for a in ran.of(Annotation))


async def test_workflow_commands() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - id: s
        run: |
          echo "::group::Build"
          echo inside
          echo "::endgroup::"
          echo "::warning file=app.js,line=10,col=4,title=T::careful%0Anow"
          echo "::error::bad"
          echo "::notice::fyi"
          echo "::add-mask::hide-me-please"
          echo "the value is hide-me-please"
          echo "::set-output name=legacy::old"
          echo "::save-state name=x::y"
          echo "::stop-commands::abc"
          echo "::error::not a command now"
          echo "::abc::"
          echo "::set-env name=X::1"
      - run: test -z "$X"
"""
    )
    annotations = [
        (a.level, a.message) for a in ran.of(Annotation) if a.job_key == "a" and a.level != "debug"
    ]
    assert ("warning", "careful\nnow") in annotations
    assert ("error", "bad") in annotations
    assert ("notice", "fyi") in annotations
    assert not any(m == "not a command now" for _, m in annotations)
    assert any("set-env" in m for level, m in annotations if level == "error")
    warning = next(a for a in ran.of(Annotation) if a.level == "warning")
    assert (warning.file, warning.line, warning.column, warning.title) == ("app.js", 10, 4, "T")
    logs = ran.logs("a")
    assert "the value is ***" in logs
    assert "::error::not a command now" in logs
    inside = next(e for e in ran.of(LogLine) if e.text == "inside")
    assert inside.group_depth == 1
    assert [e.title for e in ran.of(GroupStarted)] == ["Build"]
    assert len(ran.of(GroupEnded)) == 1
    assert ran.steps("a")[0].outputs == {"legacy": "old"}
    assert ran.result("a") == "success"


async def test_secrets_appear_only_masked_in_every_log_line() -> None:
    secret = "s3cr3t-VALUE"
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - name: uses ${{ secrets.TOKEN }}
        run: |
          echo "token ${{ secrets.TOKEN }}"
          echo "env $TOKEN" >&2
          printf '%s\\n' "$MULTI"
          echo "::warning::${{ secrets.TOKEN }}"
          echo "two"
        env:
          TOKEN: ${{ secrets.TOKEN }}
          MULTI: ${{ secrets.MULTI }}
      - id: o
        run: echo "leak=${{ secrets.TOKEN }}" >> "$GITHUB_OUTPUT"
    outputs:
      leak: ${{ steps.o.outputs.leak }}
""",
        secrets={"TOKEN": secret, "MULTI": "first-line\nsecond-line"},
    )
    texts = [
        str(getattr(e, field, ""))
        for e in ran.events
        for field in ("text", "message", "name", "reason")
    ]
    texts += [v for e in ran.of(StepFinished) for v in e.outputs.values()]
    texts += list(ran.finished("a").outputs.values())
    assert not [t for t in texts if secret in t or "first-line" in t or "second-line" in t]
    logs = ran.logs("a")
    assert "token ***" in logs
    assert "env ***" in logs
    assert logs.count("***") == 2
    assert ran.finished("a").outputs == {"leak": "***"}


async def test_contexts_and_default_environment(tmp_path: object) -> None:
    ran = await run(
        """
on: push
jobs:
  ctx:
    runs-on: ubuntu-latest
    steps:
      - id: check
        run: |
          test "$CI" = true && test "$GITHUB_ACTIONS" = true
          test "$GITHUB_JOB" = ctx && test "$GITHUB_EVENT_NAME" = push
          test "$GITHUB_REF" = refs/heads/main && test "$GITHUB_REF_NAME" = main
          test "$GITHUB_SHA" = "${{ github.sha }}" && test -n "$GITHUB_SHA"
          test "$GITHUB_REPOSITORY" = octo/hello && test "${{ github.repository_owner }}" = octo
          test "$GITHUB_ACTOR" = mona && test "$RUNNER_OS" = Linux
          test "$GITHUB_WORKSPACE" = "${{ github.workspace }}" && test "$RUNNER_TEMP" = "${{ runner.temp }}"
          test -f "$GITHUB_EVENT_PATH" && grep -q refs/heads/main "$GITHUB_EVENT_PATH"
          test "${{ github.event.head_commit.message }}" = "hello"
          test "${{ vars.COLOR }}" = blue
          test "${{ job.status }}" = success
          test "${{ runner.os }}" = Linux
          test "${{ github.run_number }}" = 1
      - if: failure()
        run: exit 1
      - if: success() && steps.check.outcome == 'success'
        run: echo fine
""",  # noqa: E501
        payload={"ref": "refs/heads/main", "after": "abc123", "head_commit": {"message": "hello"}},
        repository="octo/hello",
        actor="mona",
        vars={"COLOR": "blue"},
    )
    assert [s.outcome for s in ran.steps("ctx")] == ["success", "skipped", "success"]
    assert ran.outcome.conclusion == "success"


async def test_step_if_expression_errors_fail_the_step() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - if: fromJSON('not json')
        run: echo no
"""
    )
    assert ran.steps("a")[0].outcome == "failure"
    assert ran.result("a") == "failure"


async def test_hash_files_hashes_the_workspace() -> None:
    ran = await run(
        """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: mkdir -p src && echo one > src/a.txt && echo two > src/b.txt && echo x > other.md
      - run: |
          echo "${{ hashFiles('src/**/*.txt') }}"
          echo "${{ hashFiles('nothing/*') }}."
          test "${{ hashFiles('src/a.txt', 'src/b.txt') }}" = "${{ hashFiles('src/*.txt') }}"
      - run: echo changed >> src/a.txt
      - run: echo "${{ hashFiles('src/**/*.txt') }}"
"""
    )
    logs = ran.logs("a")
    assert ran.result("a") == "success", logs
    first, empty, second = logs[0], logs[1], logs[2]
    assert len(first) == 64
    assert empty == "."
    assert second != first
    assert len(second) == 64


async def test_large_scripts_and_events_are_uploaded_and_file_commands_survive_a_timeout() -> None:
    """Scripts and event payloads above the inline limit take the upload path; the file
    commands a step wrote before its timeout killed it still come back."""
    from vmrunner.runner.steps import INLINE_LIMIT

    padding = "# " + "x" * 78 + "\n"
    big_script = (
        padding * (INLINE_LIMIT // len(padding) + 10)
        + 'echo "big=$(wc -c < "$0")" >> "$GITHUB_OUTPUT"'
    )
    payload = {"padding": "é" * INLINE_LIMIT, "marker": "event-ok"}
    ran = await run(
        f"""
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - id: big
        run: |
{"".join("          " + line + chr(10) for line in big_script.splitlines())}
      - run: test "$(python3 -c 'import json,os; print(json.load(open(os.environ["GITHUB_EVENT_PATH"]))["marker"])')" = event-ok
      - id: slow
        timeout-minutes: 0.02
        run: |
          echo "before=kept" >> "$GITHUB_OUTPUT"
          echo "### written before the timeout" >> "$GITHUB_STEP_SUMMARY"
          sleep 30
""",  # noqa: E501
        payload=payload,
    )
    steps = ran.steps("a")
    assert [s.outcome for s in steps] == ["success", "success", "failure"]
    assert int(steps[0].outputs["big"]) > INLINE_LIMIT
    assert "written before the timeout" in ran.finished("a").summary
