"""``vmrunner insights``: what vmrunner learned from the runs it kept (``learning/history.py``).

``vmrunner insights [--repo R] [--json]`` shows the active lessons and the suggestions (cache a
slow dependency step, avoid a known failure, a flaky step, jobs that could run in parallel);
``vmrunner insights lessons`` lists lessons (``--all``: dismissed ones too);
``vmrunner insights dismiss ID`` dismisses one; ``vmrunner insights predict COMMAND [--after C]``
gives the odds that a command succeeds (after another one, from the command graph).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from vmrunner.reports.insights import Insights, Lesson

_REPO_HELP = "Only this repository (owner/name, as `vmrunner run` recorded it)."


@click.group("insights", invoke_without_command=True)
@click.option("--repo", default=None, help=_REPO_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def command(ctx: click.Context, repo: str | None, as_json: bool) -> None:
    """Lessons and suggestions learned from earlier runs."""
    if ctx.invoked_subcommand is not None:
        return
    from vmrunner.learning.history import Learning

    with Learning.open() as learning:
        insights = learning.insights(repo)
    if as_json:
        from vmrunner.cli import terminal

        terminal.print_json(insights.to_json())
        return
    _show(insights)


@command.command("lessons")
@click.option("--repo", default=None, help=_REPO_HELP)
@click.option("--all", "include_dismissed", is_flag=True, help="Dismissed lessons too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def lessons(repo: str | None, include_dismissed: bool, as_json: bool) -> None:
    """List lessons: failures seen the same way the threshold number of times."""
    from vmrunner.cli import terminal
    from vmrunner.learning.history import Learning

    with Learning.open() as learning:
        found = learning.lessons(repo, include_dismissed=include_dismissed)
    if as_json:
        terminal.print_json({"lessons": [lesson.to_json() for lesson in found]})
        return
    if not found:
        terminal.info("no lessons")
        return
    for lesson in found:
        _lesson(lesson)


@command.command("dismiss")
@click.argument("lesson_id", type=int)
def dismiss(lesson_id: int) -> None:
    """Dismiss lesson LESSON_ID: it is kept, and no longer shown."""
    from vmrunner.cli import terminal
    from vmrunner.errors import ConfigError
    from vmrunner.learning.history import Learning

    with Learning.open() as learning:
        if not learning.dismiss(lesson_id):
            raise ConfigError(
                f"no active lesson {lesson_id} (`vmrunner insights lessons --all` lists them)"
            )
    terminal.info(f"lesson {lesson_id} dismissed")


@command.command("predict")
@click.argument("cmd", metavar="COMMAND")
@click.option("--repo", required=True, help=_REPO_HELP)
@click.option(
    "--after", default=None, help="The command that runs just before (the command graph)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(cmd: str, repo: str, after: str | None, as_json: bool) -> None:
    """The odds that COMMAND succeeds: (successes + 1) / (runs + 2)."""
    from vmrunner.cli import terminal
    from vmrunner.learning.history import Learning

    with Learning.open() as learning:
        odds = learning.predict(repo, cmd, after=after)
    if as_json:
        terminal.print_json(
            {
                "probability": odds.probability,
                "successes": odds.successes,
                "failures": odds.failures,
            }
        )
        return
    terminal.info(f"{odds.probability:.0%} ({odds.successes} successes, {odds.failures} failures)")


def _show(insights: Insights) -> None:
    from vmrunner.cli import terminal

    if not insights:
        terminal.info("nothing learned yet")
        return
    for lesson in insights.lessons:
        _lesson(lesson)
    for suggestion in insights.suggestions:
        paths = f" (paths: {', '.join(suggestion.paths)})" if suggestion.paths else ""
        job = f" [job {suggestion.job}]" if suggestion.job else ""
        terminal.info(
            f"{suggestion.kind} {suggestion.confidence:.0%}{job}: {suggestion.message}{paths}"
        )
        terminal.info(f"    evidence: {suggestion.evidence}")


def _lesson(lesson: Lesson) -> None:
    from vmrunner.cli import terminal

    state = " (dismissed)" if lesson.dismissed else ""
    first = lesson.command.strip().splitlines()[0] if lesson.command.strip() else ""
    terminal.info(
        f"lesson {lesson.id}{state} [{lesson.repository}]: {first!s} failed {lesson.occurrences} "
        f"times the same way"
    )
    if lesson.excerpt:
        terminal.info(f"    {lesson.excerpt}")
