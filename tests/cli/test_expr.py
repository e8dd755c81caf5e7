"""``vmrunner expr``, run as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def run(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrunner", "expr", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_prints_kind_and_value() -> None:
    done = run("format('{0}-{1}', 1.50, true)")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"kind": "String", "value": "1.5-true"}


def test_reads_contexts_from_a_file(tmp_path: Path) -> None:
    contexts = tmp_path / "contexts.json"
    contexts.write_text(json.dumps({"github": {"event": {"commits": [{"id": "a"}, {"id": "b"}]}}}))
    done = run("github.event.commits.*.id", "--contexts", str(contexts))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"kind": "Array", "value": ["a", "b"]}


@pytest.mark.parametrize(
    ("expr", "kind"),
    [
        ("1 <", "parsing"),
        ("1 @ 2", "lexing"),
        ("fromJSON('{')", "evaluation"),
        ("github", "parsing"),
    ],
)
def test_errors_exit_1_with_an_error_object(expr: str, kind: str) -> None:
    done = run(expr)
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["kind"] == kind
    assert "Located at position" in error["message"]
    assert "Traceback" not in done.stderr


def test_non_finite_numbers_stay_valid_json() -> None:
    done = run("NaN")
    assert json.loads(done.stdout) == {"kind": "Number", "value": "NaN"}


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_bad_contexts_file_is_a_clear_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "contexts.json"
    if content is not None:
        path.write_text(content)
    done = run("1", "--contexts", str(path))
    assert done.returncode in (1, 2)
    assert "--contexts" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_stdin_mode_answers_each_line_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    requests: list[Any] = [
        {"expr": "matrix.os", "contexts": {"matrix": {"os": "linux"}}},
        "this line is not JSON",
        {"expr": 42},
        {"expr": "1 ==", "contexts": {}},
        {"expr": "hashFiles('*.txt') != ''"},
        {"expr": "contains(fromJSON('[1, 2]'), '2')", "contexts": []},
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    done = run("-", stdin="\n".join(lines) + "\n", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[0] == {"kind": "String", "value": "linux"}
    assert answers[1]["error"]["kind"] == "input"
    assert answers[2]["error"]["kind"] == "input"
    assert answers[3]["error"]["kind"] == "parsing"
    assert answers[4] == {"kind": "Boolean", "value": True}
    assert answers[5]["error"]["kind"] == "input"
    assert len(answers) == len(requests)


def test_stdin_mode_flushes_each_answer() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "vmrunner", "expr", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        for expr, expected in [("1 + 1", "lexing"), ("'a' == 'A'", True)]:
            process.stdin.write(json.dumps({"expr": expr}) + "\n")
            process.stdin.flush()
            answer = json.loads(process.stdout.readline())
            if isinstance(expected, str):
                assert answer["error"]["kind"] == expected
            else:
                assert answer == {"kind": "Boolean", "value": expected}
    finally:
        process.stdin.close()
        assert process.wait(timeout=30) == 0
        process.stdout.close()
