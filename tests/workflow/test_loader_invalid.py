"""The corpus of invalid workflows in ``invalid/``: each file says what must be reported.

Every file starts with ``# expect: LINE: text`` lines; loading it must report exactly those
problems (one diagnostic per line of expectation, at that line, containing that text).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmrunner.errors import PlanError, WorkflowError
from vmrunner.workflow.loader import load_workflow, load_workflows

CORPUS = Path(__file__).parent / "invalid"
FILES = sorted(CORPUS.glob("*.yml"))
EXPECT = re.compile(r"^# expect: (\d+): (.*)$", re.M)


def expectations(path: Path) -> list[tuple[int, str]]:
    return [
        (int(line), text.rstrip())
        for line, text in EXPECT.findall(path.read_text(encoding="utf-8"))
    ]


def test_the_corpus_is_large_enough() -> None:
    assert len(FILES) >= 30
    assert all(expectations(path) for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_invalid_workflow_reports_what_it_expects(path: Path) -> None:
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    diagnostics = info.value.diagnostics
    expected = expectations(path)
    found = [(d.line, d.message) for d in diagnostics]
    assert len(diagnostics) == len(expected), found
    for line, text in expected:
        assert any(d.line == line and text in d.message for d in diagnostics), (line, text, found)
    assert all(d.file == str(path) for d in diagnostics)
    assert [(d.line, d.column) for d in diagnostics] == sorted(
        (d.line, d.column) for d in diagnostics
    )
    for diagnostic in diagnostics:
        assert str(diagnostic).startswith(f"{path}:")


def test_graph_only_problems_are_plan_errors() -> None:
    with pytest.raises(PlanError):
        load_workflow(CORPUS / "needs-cycle.yml")
    with pytest.raises(WorkflowError) as info:
        load_workflow(CORPUS / "several-errors.yml")
    assert not isinstance(info.value, PlanError)


def test_load_workflows_reports_every_file_together() -> None:
    result = load_workflows(CORPUS)
    assert result.workflows == ()
    assert len(result.errors) == len(FILES)
    assert len(result.files) == len(FILES)
    assert {d.file for d in result.diagnostics} == {str(p) for p in FILES}
    with pytest.raises(WorkflowError) as info:
        result.raise_errors()
    assert len(info.value.diagnostics) == sum(len(expectations(p)) for p in FILES)
