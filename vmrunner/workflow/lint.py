"""Latent bugs that GitHub accepts (the workflow runs) but that leave a value always empty.

Reported as warnings, with the file, line and column of the reference, as actionlint reports
them:

- ``needs.X`` in a job that does not list ``X`` in ``needs`` (the context holds only the jobs
  listed there);
- ``steps.ID`` where no earlier step of the job has that id (``outputs`` may name any step; the
  steps of one ``parallel`` group cannot see each other);
- ``inputs.NAME`` that neither ``workflow_dispatch`` nor ``workflow_call`` declares;
- ``matrix.KEY`` that the job's matrix does not define, counting the keys ``include`` adds. A
  matrix (or its ``include``) made by an expression may define anything: it is not checked.

Names are compared ignoring case, as GitHub looks them up. Only a literal key is checked
(``needs.build``, ``needs['build']``); ``needs[format(...)]`` or ``matrix.*`` are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmrunner.errors import ExpressionError
from vmrunner.workflow.expressions import Expression, parse, parse_template
from vmrunner.workflow.expressions.parser import Index, Literal, NamedValue, Node
from vmrunner.workflow.models import Workflow
from vmrunner.workflow.problems import Path
from vmrunner.workflow.schema import Finding

_CHILDREN = ("target", "index", "operand", "left", "right", "inner")


@dataclass(frozen=True, slots=True)
class _Known:
    """What the contexts hold at one place; ``None``: not checked there."""

    job_id: str = ""
    needs: frozenset[str] | None = None
    steps: frozenset[str] | None = None
    later_steps: frozenset[str] = frozenset()
    matrix: frozenset[str] | None = None
    inputs: frozenset[str] | None = None


def lint(document: dict[str, Any], workflow: Workflow) -> list[Finding]:
    """The warnings of a valid workflow (``document`` is its plain value)."""
    inputs = frozenset(
        name.lower()
        for event in ("workflow_dispatch", "workflow_call")
        if (trigger := workflow.triggers.get(event)) is not None
        for name in trigger.inputs
    )
    linter = _Linter()
    top = _Known(inputs=inputs)
    for key, value in document.items():
        if key not in ("on", "jobs"):
            linter.scan(value, (key,), top)
    jobs = document.get("jobs")
    for job_id, job in (jobs if isinstance(jobs, dict) else {}).items():
        if isinstance(job, dict):
            linter.job(str(job_id), job, top)
    return linter.findings


class _Linter:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.seen: set[tuple[Path, str]] = set()

    def job(self, job_id: str, job: dict[str, Any], top: _Known) -> None:
        needs = job.get("needs")
        listed: list[Any] = (
            [needs] if isinstance(needs, str) else needs if isinstance(needs, list) else []
        )
        raw_steps = job.get("steps")
        steps: list[Any] = raw_steps if isinstance(raw_steps, list) else []
        every = [_step_ids(step) for step in steps]
        known = _Known(
            job_id, frozenset(str(n).lower() for n in listed), None, frozenset(),
            _matrix_keys(job), top.inputs,
        )
        for key, value in job.items():
            if key == "steps":
                continue
            visible = frozenset().union(*every) if key == "outputs" else None
            self.scan(value, ("jobs", job_id, key), _replace(known, steps=visible))
        for index, step in enumerate(steps):
            before = frozenset().union(*every[:index])
            after = frozenset().union(*every[index:])
            here = _replace(known, steps=before, later_steps=after)
            self.scan(step, ("jobs", job_id, "steps", index), here)

    def scan(self, value: Any, path: Path, known: _Known) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self.scan(item, (*path, key), known)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.scan(item, (*path, index), known)
        elif isinstance(value, str) and ("${{" in value or (path and path[-1] == "if")):
            for offset, expression in _expressions(value):
                if expression.root is not None:
                    for node in _nodes(expression.root):
                        self.reference(node, offset, path, known)

    def reference(self, node: Node, offset: int, path: Path, known: _Known) -> None:
        if not (
            isinstance(node, Index)
            and isinstance(node.target, NamedValue)
            and isinstance(node.index, Literal)
            and isinstance(node.index.value, str)
        ):
            return
        context, key = node.target.name.lower(), node.index.value
        message = _message(context, key, known)
        if message and (path, f"{context}.{key}") not in self.seen:
            self.seen.add((path, f"{context}.{key}"))
            self.findings.append(
                Finding(path, message, offset=offset + node.index.pos, warning=True)
            )


def _message(context: str, key: str, known: _Known) -> str:
    name, job = key.lower(), known.job_id
    if context == "needs" and known.needs is not None and name not in known.needs:
        return (
            f"needs.{key} is always empty here: job '{job}' does not list '{key}' in needs"
        )
    if context == "steps" and known.steps is not None and name not in known.steps:
        why = "comes later" if name in known.later_steps else "does not exist"
        return (
            f"steps.{key} is empty here: no earlier step of job '{job}' has the id '{key}' "
            f"(a step with that id {why})"
        )
    if context == "inputs" and known.inputs is not None and name not in known.inputs:
        declared = ", ".join(sorted(known.inputs)) or "none"
        return (
            f"inputs.{key} is always empty: neither workflow_dispatch nor workflow_call declares "
            f"an input '{key}' (declared: {declared})"
        )
    if context == "matrix" and known.matrix is not None and name not in known.matrix:
        defined = ", ".join(sorted(known.matrix))
        return f"matrix.{key} is always empty: " + (
            f"the matrix of job '{job}' defines no '{key}' (it defines: {defined})"
            if defined
            else f"job '{job}' has no matrix"
        )
    return ""


def _replace(known: _Known, **changes: Any) -> _Known:
    values = {name: getattr(known, name) for name in known.__slots__}
    return _Known(**{**values, **changes})


def _step_ids(step: Any) -> frozenset[str]:
    """The ids a step (and the steps of its ``parallel`` group) gives the ``steps`` context."""
    if not isinstance(step, dict):
        return frozenset()
    ids = {str(step["id"]).lower()} if isinstance(step.get("id"), str) else set()
    inner = step.get("parallel")
    return frozenset(ids).union(*(_step_ids(s) for s in inner)) if isinstance(inner, list) else (
        frozenset(ids)
    )


def _matrix_keys(job: dict[str, Any]) -> frozenset[str] | None:
    """The keys of the job's matrix; empty without a matrix, ``None`` when unknowable."""
    strategy = job.get("strategy")
    if not isinstance(strategy, dict) or "matrix" not in strategy:
        return frozenset()
    matrix = strategy["matrix"]
    if not isinstance(matrix, dict):
        return None
    keys: set[str] = set()
    for key, value in matrix.items():
        if not isinstance(key, str) or "${{" in key:
            return None
        if key == "include":
            entries: list[Any] = value if isinstance(value, list) else [None]
            if not all(isinstance(e, dict) and all(isinstance(k, str) for k in e) for e in entries):
                return None
            keys.update(str(k).lower() for entry in entries for k in entry)
        elif key != "exclude":
            keys.add(key.lower())
    return frozenset(keys)


def _expressions(text: str) -> Iterator[tuple[int, Expression]]:
    """Each expression of ``text`` with the offset where it starts (a bare ``if:`` is one)."""
    try:
        if "${{" in text:
            for part in parse_template(text).expressions:
                yield part.offset, part.expression
        elif text.strip():
            yield len(text) - len(text.lstrip()), parse(text.strip())
    except ExpressionError:
        return  # reported as an error by the schema, when the workflow was checked


def _nodes(node: Node) -> Iterator[Node]:
    yield node
    for name in _CHILDREN:
        child = getattr(node, name, None)
        if isinstance(child, Node):
            yield from _nodes(child)
    for child in (*getattr(node, "operands", ()), *getattr(node, "args", ())):
        yield from _nodes(child)
