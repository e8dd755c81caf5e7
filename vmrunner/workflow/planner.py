"""The job graph of a workflow: which job needs which, and in what order they can run.

A job is ready as soon as every job it ``needs`` is done: the graph is a true DAG, not a series
of stages (``stages()`` exists only to draw it). Matrices are expanded by the runner, because a
matrix may depend on the outputs of other jobs; ``static_matrix`` expands the ones that do not,
for display.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from vmrunner.errors import Diagnostic, MatrixError, PlanError, WorkflowError
from vmrunner.workflow.models import Job, Workflow
from vmrunner.workflow.problems import Path, Problem


def needs_path(workflow: Workflow, job_id: str, index: int) -> Path:
    """The path of one entry of a job's ``needs`` (a list entry, or the single string)."""
    raw = workflow.source.value.get("jobs", {}).get(job_id) if workflow.source else None
    written = raw.get("needs") if isinstance(raw, dict) else None
    return (
        ("jobs", job_id, "needs", index) if isinstance(written, list) else ("jobs", job_id, "needs")
    )


def graph_problems(workflow: Workflow) -> list[Problem]:
    """Every ``needs`` that names an unknown job, and every cycle (once, as ``a -> b -> a``)."""
    jobs = workflow.jobs
    problems: list[Problem] = []
    for job_id, job in jobs.items():
        for index, needed in enumerate(job.needs):
            if needed not in jobs:
                known = ", ".join(jobs)
                problems.append(
                    Problem(
                        needs_path(workflow, job_id, index),
                        f"job '{job_id}' needs unknown job '{needed}' (jobs in this workflow: "
                        f"{known})",
                    )
                )
    for cycle in _cycles({job_id: job.needs for job_id, job in jobs.items()}):
        first, second = cycle[0], cycle[1]
        index = jobs[first].needs.index(second)
        arrows = " -> ".join(cycle)
        problems.append(
            Problem(
                needs_path(workflow, first, index),
                f"jobs depend on each other in a cycle: {arrows}",
            )
        )
    return problems


def _cycles(needs: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """Each cycle once, starting from the job that comes first in the file."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    found: list[list[str]] = []
    for root in needs:
        if root in state:
            continue
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(needs[root]))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if c in needs), None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                loop = path[path.index(child):]
                start = min(range(len(loop)), key=lambda i: list(needs).index(loop[i]))
                loop = loop[start:] + loop[:start]
                found.append([*loop, loop[0]])
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(needs[child])))
    return found


def _plan_error(workflow: Workflow, problems: list[Problem]) -> PlanError:
    diagnostics = []
    for problem in problems:
        line, column = workflow.locate(problem.path)
        diagnostics.append(Diagnostic(workflow.path, line, column, problem.message))
    return PlanError(sorted(diagnostics, key=lambda d: (d.line, d.column)))


@dataclass(frozen=True, slots=True)
class Plan:
    """The selected jobs of one workflow and their ``needs`` edges."""

    workflow: Workflow
    order: tuple[str, ...]
    needs: Mapping[str, tuple[str, ...]]

    @property
    def jobs(self) -> tuple[Job, ...]:
        return tuple(self.workflow.jobs[job_id] for job_id in self.order)

    def dependencies(self, job_id: str) -> tuple[str, ...]:
        """The jobs ``job_id`` needs directly."""
        return self.needs[job_id]

    def dependents(self, job_id: str) -> tuple[str, ...]:
        """The jobs that need ``job_id`` directly, in plan order."""
        return tuple(other for other in self.order if job_id in self.needs[other])

    def ready(self, done: Set[str]) -> list[str]:
        """Jobs not yet done whose own needs are all done, in plan order."""
        return [j for j in self.order if j not in done and all(n in done for n in self.needs[j])]

    def stages(self) -> list[list[str]]:
        """Jobs grouped by the length of their longest ``needs`` chain (for display only)."""
        depth: dict[str, int] = {}
        for job_id in self.order:
            depth[job_id] = 1 + max((depth[n] for n in self.needs[job_id]), default=-1)
        stages: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for job_id in self.order:
            stages[depth[job_id]].append(job_id)
        return stages

    def static_matrix(self, job_id: str) -> list[dict[str, Any]] | None:
        """The matrix combinations of a job when they are known before running, else ``None``."""
        from vmrunner.workflow.matrix import expand_matrix

        strategy = self.workflow.jobs[job_id].strategy
        matrix = strategy.matrix if strategy else None
        if not isinstance(matrix, Mapping) or _has_expression(matrix):
            return None
        try:
            return expand_matrix(matrix)
        except (MatrixError, WorkflowError):
            return None


def _has_expression(value: Any) -> bool:
    if isinstance(value, str):
        return "${{" in value
    if isinstance(value, Mapping):
        return any(_has_expression(k) or _has_expression(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_expression(item) for item in value)
    return False


def plan(workflow: Workflow, *, jobs: Collection[str] | None = None) -> Plan:
    """The job graph of ``workflow``; with ``jobs``, only those and what they transitively need.

    Raises ``PlanError`` (with file and line) for unknown jobs in ``needs``, cycles, or a
    selected job that does not exist.
    """
    problems = graph_problems(workflow)
    if problems:
        raise _plan_error(workflow, problems)
    needs = {job_id: tuple(dict.fromkeys(job.needs)) for job_id, job in workflow.jobs.items()}
    selected = set(needs)
    if jobs is not None:
        unknown = [j for j in jobs if j not in needs]
        if unknown:
            names = ", ".join(f"'{j}'" for j in unknown)
            raise PlanError(
                Diagnostic(
                    workflow.path,
                    0,
                    0,
                    f"no job {names} in this workflow (jobs: {', '.join(needs)})",
                )
            )
        selected = set()
        pending = list(jobs)
        while pending:
            job_id = pending.pop()
            if job_id not in selected:
                selected.add(job_id)
                pending.extend(needs[job_id])
    order: list[str] = []
    placed: set[str] = set()
    remaining = [j for j in needs if j in selected]
    while remaining:
        batch = [j for j in remaining if all(n in placed for n in needs[j])]
        order.extend(batch)
        placed.update(batch)
        remaining = [j for j in remaining if j not in placed]
    return Plan(workflow, tuple(order), {j: needs[j] for j in order})
