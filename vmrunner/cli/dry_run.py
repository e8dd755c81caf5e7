"""``vmrunner run -n``: what a run would do, without starting anything.

One line per job of each triggered workflow (with what it needs and its matrix size), marking
the jobs that could not run on the chosen provider and why (``container:``, Docker actions,
Windows or macOS runners), exactly as the run would refuse them. It says plainly when the event
triggers nothing, and it fails (exit status 1) when a workflow is invalid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vmrunner.actions.blockers import (
    OTHER_SYSTEM,
    Blocker,
    job_blockers,
    local_actions,
    other_system_reason,
)
from vmrunner.errors import PlanError, VmrunnerError
from vmrunner.machines.providers import provider_containers
from vmrunner.runner.options import RunOptions
from vmrunner.workflow.evaluation import render
from vmrunner.workflow.models import Job, Workflow


def dry_run(
    chosen: Sequence[tuple[Workflow, list[str] | None]],
    options: RunOptions,
    provider: str,
    *,
    event: str,
    considered: int,
    as_json: bool,
) -> bool:
    """Show the plan; False when a workflow could not be planned (the errors are printed)."""
    from vmrunner.cli import terminal
    from vmrunner.workflow.planner import plan

    rows: list[dict[str, Any]] = []
    ok = True
    containers = provider_containers(provider)  # the remote provider asks its service
    for workflow, jobs in chosen:
        try:
            graph = plan(workflow, jobs=jobs)
        except PlanError as exc:
            ok = False
            for diagnostic in exc.diagnostics:
                terminal.error(str(diagnostic))
            continue
        for job_id in graph.order:
            combinations = graph.static_matrix(job_id)
            rows.append(
                {
                    "workflow": workflow.path,
                    "job": job_id,
                    "needs": list(graph.dependencies(job_id)),
                    "matrix": combinations,
                    "cannot_run": cannot_run(
                        workflow.jobs[job_id], combinations, options, provider, containers
                    ),
                }
            )
    if as_json:
        terminal.print_json({"dry_run": True, "jobs": rows})
    elif not chosen:
        terminal.info(
            f"nothing to run: event {event} triggers none of the {considered} workflow"
            f"{'s' if considered != 1 else ''} found"
        )
    for row in [] if as_json else rows:
        needs = f" (needs {', '.join(row['needs'])})" if row["needs"] else ""
        combos = f" × {len(row['matrix'])} combinations" if row["matrix"] else ""
        refused = f"  [cannot run: {row['cannot_run']}]" if row["cannot_run"] else ""
        terminal.info(f"{row['workflow']}: {row['job']}{needs}{combos}{refused}")
    return ok


def cannot_run(
    job: Job, combinations: list[dict[str, Any]] | None, options: RunOptions, provider: str,
    containers: bool,
) -> str:
    """Why the job (or one of its matrix combinations) would be refused; '' when it would run."""
    found = job_blockers(job, provider, local_actions(options.repo_root), containers=containers)
    found += other_system(job, combinations, options.machine_types)
    return found[0].reason if found else ""


def other_system(
    job: Job, combinations: list[dict[str, Any]] | None, machine_types: Mapping[str, str]
) -> list[Blocker]:
    """The job as a Windows or macOS job, when one of its known combinations asks for such a
    runner that no machine type is mapped to.

    ``runs-on`` made by an expression is evaluated for each known matrix combination; one that
    needs more than the matrix (``needs``, ``inputs``) is left for the run to judge.
    """
    if job.runs_on is None:
        return []
    for matrix in combinations or [{}]:
        try:
            if job.runs_on.expression:
                value = render(job.runs_on.expression, {"matrix": matrix})
                labels = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            else:
                labels = [str(render(label, {"matrix": matrix})) for label in job.runs_on.labels]
        except VmrunnerError:
            continue
        reason = other_system_reason(job.id, labels, machine_types)
        if reason:
            return [Blocker(OTHER_SYSTEM, reason)]
    return []
