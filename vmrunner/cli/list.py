"""``vmrunner list``: one row per job, like ``act -l``."""

from __future__ import annotations

import sys
from typing import Any

import click

from vmrunner.cli.options import workflow_options


@click.command("list")
@workflow_options
def command(
    event: str | None, workflows: str, event_path: str | None, jobs: tuple[str, ...], as_json: bool
) -> None:
    """List the jobs of the workflows: stage, job, workflow and events."""
    from vmrunner.cli import terminal
    from vmrunner.cli.options import select, selected_jobs
    from vmrunner.workflow.planner import plan

    selection = select(workflows, event, event_path, jobs)
    rows: list[dict[str, Any]] = []
    for workflow in selection.workflows:
        graph = plan(workflow, jobs=selected_jobs(workflow, jobs))
        for stage, job_ids in enumerate(graph.stages()):
            for job_id in job_ids:
                job = workflow.jobs[job_id]
                rows.append(
                    {
                        "stage": stage,
                        "job_id": job_id,
                        "job_name": job.display_name,
                        "workflow_name": workflow.display_name,
                        "workflow_file": workflow.path,
                        "events": list(workflow.triggers.names),
                        "needs": list(graph.dependencies(job_id)),
                        "matrix": graph.static_matrix(job_id),
                    }
                )
    if as_json:
        terminal.print_json(
            {"jobs": rows, "errors": [str(d) for e in selection.errors for d in e.diagnostics]}
        )
    else:
        titles = ("Stage", "Job ID", "Job name", "Workflow name", "Workflow file", "Events")
        cells = [
            (
                str(row["stage"]), row["job_id"], row["job_name"], row["workflow_name"],
                row["workflow_file"], ",".join(row["events"]),
            )
            for row in rows
        ]
        if rows:  # plain columns, as act -l prints them: no Rich to load for a list
            terminal.columns(titles, cells)
        else:
            terminal.info("no jobs" + (f" for event {event}" if event else ""))
    for error in selection.errors:
        for diagnostic in error.diagnostics:
            terminal.error(str(diagnostic))
    if selection.errors:
        sys.exit(1)
