"""Background steps, as GitHub's workflow syntax documents them: ``background: true`` starts a
step and the job goes on; ``wait`` (ids), ``wait-all`` and ``cancel`` (one id) are control steps
that always run and take no ``if``. What a background step leaves (outputs, outcome,
``GITHUB_ENV``, ``GITHUB_PATH``) counts from the control step that ends it, and a failed one
fails that step. After a job's last step, a wait for whatever still runs (``IMPLICIT_WAIT``).

Pure: which running steps a control step names and what it says about them. Running them is
the engine's (``JobExecution.run_control``).
"""

from __future__ import annotations

from collections.abc import Iterable

from vmrunner.workflow.models import Step

#: The ``wait-all`` GitHub's runner adds after a job's last step when background steps still
#: run (shown as a step; its id is the runner's own).
IMPLICIT_WAIT = Step(
    index=-1, id="__implicit_wait_all", name="Wait for all background steps", wait_all=True
)


def step_key(step: Step) -> str:
    """The step's name in the ``steps`` context, which ``wait`` and ``cancel`` use too."""
    return step.id or f"__{step.position}"


def targets(step: Step, running: Iterable[str]) -> tuple[list[str], list[str]]:
    """The running background steps a control step names, and the ids it names that are not
    running (ended already, never started, not background steps: nothing to wait for)."""
    running = list(running)
    named = running if step.wait_all else list(step.wait) or ([step.cancel] if step.cancel else [])
    return [k for k in named if k in running], [k for k in named if k not in running]


def command(step: Step) -> str:
    """A control step as the live view and the records show its command."""
    if step.wait:
        return f"wait: {', '.join(step.wait)}"
    return f"cancel: {step.cancel}" if step.cancel else "wait-all"


def announce(step: Step, names: list[str], missing: list[str]) -> list[str]:
    """The log lines a control step starts with."""
    doing = "Cancelling" if step.cancel else "Waiting for"
    lines = [f"{doing} background steps: {', '.join(names)}" if names else
             f"No background step to {'cancel' if step.cancel else 'wait for'}"]
    return lines + [f"'{key}' is not a running background step" for key in missing]

