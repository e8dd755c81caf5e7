"""``vmrunner graph``: the job graph (``needs``) of each workflow, as text, JSON or Graphviz."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from vmrunner.cli.options import workflow_options

if TYPE_CHECKING:
    from vmrunner.workflow.planner import Plan


@click.command("graph")
@workflow_options
@click.option("--dot", is_flag=True, help="Print the graph in Graphviz dot format.")
def command(
    event: str | None,
    workflows: str,
    event_path: str | None,
    jobs: tuple[str, ...],
    as_json: bool,
    dot: bool,
) -> None:
    """Show the job graph of the workflows: stages, and which job needs which."""
    from vmrunner.cli import terminal
    from vmrunner.cli.options import select, selected_jobs
    from vmrunner.workflow.planner import plan

    selection = select(workflows, event, event_path, jobs)
    plans = [plan(w, jobs=selected_jobs(w, jobs)) for w in selection.workflows]
    if as_json:
        terminal.print_json(
            {
                "workflows": [_as_dict(p) for p in plans],
                "errors": [str(d) for e in selection.errors for d in e.diagnostics],
            }
        )
    elif dot:
        terminal.info("\n".join(_dot(p) for p in plans))
    else:
        for index, graph in enumerate(plans):
            if index:
                terminal.info("")
            _draw(graph)
    for error in selection.errors:
        for diagnostic in error.diagnostics:
            terminal.error(str(diagnostic))
    if selection.errors:
        sys.exit(1)


def _as_dict(graph: Plan) -> dict[str, Any]:
    workflow = graph.workflow
    return {
        "file": workflow.path,
        "name": workflow.display_name,
        "order": list(graph.order),
        "stages": graph.stages(),
        "jobs": {
            job_id: {
                "name": workflow.jobs[job_id].display_name,
                "needs": list(graph.dependencies(job_id)),
            }
            for job_id in graph.order
        },
        "edges": [
            [needed, job_id] for job_id in graph.order for needed in graph.dependencies(job_id)
        ],
    }


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot(graph: Plan) -> str:
    workflow = graph.workflow
    lines = [f"digraph {_quote(workflow.display_name)} {{", "  rankdir=LR;"]
    for job_id in graph.order:
        lines.append(f"  {_quote(job_id)} [label={_quote(workflow.jobs[job_id].display_name)}];")
    for job_id in graph.order:
        for needed in graph.dependencies(job_id):
            lines.append(f"  {_quote(needed)} -> {_quote(job_id)};")
    lines.append("}")
    return "\n".join(lines)


def _draw(graph: Plan) -> None:
    """Stages top to bottom, each job with the jobs it needs; arrows point from need to job."""
    from rich.markup import escape
    from rich.text import Text

    from vmrunner.cli import terminal

    out = terminal.console()
    workflow = graph.workflow
    out.print(f"[bold]{escape(workflow.display_name)}[/]  [dim]{escape(workflow.path)}[/]")
    stages = graph.stages()
    for number, stage in enumerate(stages):
        boxes = Text("  ")
        for job_id in stage:
            boxes.append(f"[ {job_id} ]", style="bold cyan")
            boxes.append("  ")
        out.print(Text(f"  stage {number}") + boxes)
        for job_id in stage:
            needs = graph.dependencies(job_id)
            if needs:
                out.print(Text(f"      {', '.join(needs)} ──▶ {job_id}", style="dim"))
        if number + 1 < len(stages):
            out.print("        │")
            out.print("        ▼")
