"""``vmrunner validate``: every problem of every workflow file, as ``file:line:column: message``.

Warnings (what GitHub accepts but is most likely a mistake) are shown the same way, marked
``warning:``; only errors make the exit status 1.
"""

from __future__ import annotations

import sys

import click

from vmrunner.cli.options import workflow_options


@click.command("validate")
@workflow_options
def command(
    event: str | None, workflows: str, event_path: str | None, jobs: tuple[str, ...], as_json: bool
) -> None:
    """Check the workflows and report every error; exit status 1 when there is any."""
    from vmrunner.cli import terminal
    from vmrunner.cli.options import select, selected_jobs
    from vmrunner.errors import Diagnostic, PlanError
    from vmrunner.workflow.planner import plan

    selection = select(workflows, event, event_path, jobs)
    diagnostics: list[Diagnostic] = [d for error in selection.errors for d in error.diagnostics]
    for workflow in selection.workflows:
        try:
            plan(workflow, jobs=selected_jobs(workflow, jobs))
        except PlanError as exc:
            diagnostics.extend(exc.diagnostics)
    warnings = [d for workflow in selection.workflows for d in workflow.warnings]
    failed = sorted({d.file for d in diagnostics})
    checked = len(selection.workflows) + len(selection.errors)
    if as_json:
        terminal.print_json(
            {
                "ok": not diagnostics,
                "files": list(selection.files),
                "checked": checked,
                "diagnostics": [
                    {"file": d.file, "line": d.line, "column": d.column, "message": d.message}
                    for d in diagnostics
                ],
                "warnings": [
                    {"file": d.file, "line": d.line, "column": d.column, "message": d.message}
                    for d in warnings
                ],
            }
        )
    else:
        for diagnostic in sorted(
            [*diagnostics, *warnings], key=lambda d: (d.file, d.line, d.column)
        ):
            terminal.info(str(diagnostic))
        also = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
        if diagnostics:
            noun = "error" if len(diagnostics) == 1 else "errors"
            terminal.console(stderr=True).print(
                f"{len(diagnostics)} {noun} in {len(failed)} of {checked} workflow files{also}",
                markup=False,
            )
        else:
            terminal.info(f"{checked} workflow{'s' if checked != 1 else ''} OK{also}")
    if diagnostics:
        sys.exit(1)
