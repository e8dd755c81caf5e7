"""Matrix jobs on a fleet: every combination is a fleet job of its own, routed by its own runs-on.

The store expands a matrix job when it becomes ready (its needs are final, so a matrix built
from ``needs`` outputs works) with the runner's own code: ``Run.run_job`` evaluates the job's
``if:`` and ``Run.instances`` expands the matrix, exactly as one host would; only the running is
left out. An agent runs one combination with the same code, keeping only its combination, so
keys, names and the ``strategy`` context agree everywhere.

``runs-on`` may use the matrix (``${{ matrix.labels }}``, ``[linux, '${{ matrix.extra }}']``):
it is evaluated per combination. Any other context cannot be known when a job is routed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from vmrunner.errors import ConfigError, VmrunnerError
from vmrunner.fleet.labels import canonical
from vmrunner.reports.events import Recorder
from vmrunner.repository import repository_info
from vmrunner.runner.context import RunContext
from vmrunner.runner.job import JobInstance
from vmrunner.runner.options import RunOptions
from vmrunner.runner.run import Run, _MatrixGroup
from vmrunner.sessions import SessionManager
from vmrunner.workflow.evaluation import as_text, render, render_text
from vmrunner.workflow.models import Job, Workflow
from vmrunner.workflow.planner import Plan, plan
from vmrunner.workflow.schema import Context, check_expression_text

#: What a fleet's runs-on expressions may use: only the combination's own values.
_MATRIX_ONLY = Context(frozenset({"matrix"}))


@dataclass(frozen=True, slots=True)
class Combination:
    key: str
    index: int
    matrix: Mapping[str, Any]
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Expansion:
    """What a ready matrix job becomes: its combinations, or a result without running any
    (``skipped`` by its ``if:``, no combination, ``failure`` evaluating it, with ``reason``)."""

    combinations: tuple[Combination, ...] = ()
    fail_fast: bool = True
    max_parallel: int = 1
    result: str | None = None
    reason: str = ""


def has_matrix(job: Job) -> bool:
    return job.strategy is not None and job.strategy.matrix is not None


def static_labels(job_id: str, job: Job, workflow_path: str) -> tuple[str, ...] | None:
    """The job's runs-on labels, or None when they depend on the matrix (known per combination).

    Raises ``ConfigError`` for expressions of anything but the matrix: a job is routed before
    it runs, when no other context is known.
    """
    runs_on = job.runs_on
    if runs_on is None:
        raise ConfigError(
            f"{workflow_path}: job '{job_id}': a fleet routes jobs by their runs-on labels; this "
            f"job has none"
        )
    texts = (
        [runs_on.expression]
        if runs_on.expression
        else [label for label in runs_on.labels if "${{" in label]
    )
    if not texts:
        return canonical(runs_on.labels)
    if not has_matrix(job) or any(
        check_expression_text(text, _MATRIX_ONLY, condition=False) for text in texts
    ):
        raise ConfigError(
            f"{workflow_path}: job '{job_id}': a fleet routes jobs by their runs-on labels, which "
            f"must be plain labels"
            " or expressions of the job's matrix only (${{ matrix.os }}), not of other contexts"
        )
    return None


def combination_labels(job: Job, matrix: Mapping[str, Any]) -> tuple[str, ...]:
    """runs-on of one combination (as ``JobExecution.machine_type`` reads it)."""
    runs_on = job.runs_on
    if runs_on is None:
        raise ConfigError("a fleet routes jobs by their runs-on labels; this job has none")
    contexts = {"matrix": dict(matrix)}
    if runs_on.expression:
        value = render(runs_on.expression, contexts)
        labels = [as_text(v) for v in value] if isinstance(value, list) else [as_text(value)]
    else:
        labels = [render_text(label, contexts) for label in runs_on.labels]
    return canonical(labels)


class _NoMachines:
    """Stands in for the session manager where a job is only evaluated, never run."""

    class provider:  # the attribute RunContext reads
        name = "fleet"


class _Evaluation(Run):
    """``Run.run_job`` that stops where the combinations would start running."""

    def __init__(self, context: RunContext, job_plan: Plan) -> None:
        super().__init__(context, job_plan)
        self.expanded: list[JobInstance] | None = None
        self.group: _MatrixGroup | None = None

    def instances(
        self, job: Job, contexts: dict[str, Any]
    ) -> tuple[list[JobInstance], _MatrixGroup]:
        self.expanded, self.group = super().instances(job, contexts)
        return [], self.group


async def expand(
    workflow: Workflow, job_id: str, options: RunOptions, needs: Mapping[str, Mapping[str, Any]]
) -> Expansion:
    """Evaluate a ready matrix job's ``if:``, matrix and strategy; each combination's labels."""
    info = await repository_info(options.repo_root)
    context = RunContext(workflow, options, cast(SessionManager, _NoMachines()), Recorder(), info)
    evaluation = _Evaluation(context, plan(workflow, jobs=options.jobs))
    evaluation.needs_results.update({need: dict(value) for need, value in needs.items()})
    await evaluation.run_job(job_id)
    if evaluation.expanded is None or evaluation.group is None:
        ended = evaluation.needs_results[job_id]
        return Expansion(
            result=str(ended["result"]),
            reason="; ".join(r.reason for r in evaluation.reports if r.reason),
        )
    if not evaluation.expanded:
        return Expansion(result="skipped", reason="the matrix has no combination")
    job = workflow.jobs[job_id]
    combinations: list[Combination] = []
    for instance in evaluation.expanded:
        try:
            labels = combination_labels(job, instance.matrix)
        except VmrunnerError as exc:
            return Expansion(result="failure", reason=f"job '{instance.job_key}': runs-on: {exc}")
        combinations.append(
            Combination(
                instance.job_key, int(instance.strategy["job-index"]), dict(instance.matrix), labels
            )
        )
    first = evaluation.expanded[0].strategy
    return Expansion(tuple(combinations), bool(first["fail-fast"]), int(first["max-parallel"]))


class OneCombination(Run):
    """A run of one combination of a matrix job (by its ``strategy.job-index``) on an agent."""

    def __init__(self, context: RunContext, job_plan: Plan, index: int) -> None:
        super().__init__(context, job_plan)
        self.index = index

    def instances(
        self, job: Job, contexts: dict[str, Any]
    ) -> tuple[list[JobInstance], _MatrixGroup]:
        instances, group = super().instances(job, contexts)
        return [i for i in instances if i.strategy["job-index"] == self.index], group
