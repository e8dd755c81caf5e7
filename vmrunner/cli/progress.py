"""What ``vmrunner run`` shows while a run goes on: ``ProgressView`` (people) and ``JsonView``
(machines).

Both are ``EventSink``s. Wiring, in ``vmrunner/cli/run.py``::

    from vmrunner.cli import terminal
    from vmrunner.cli.progress import JsonView, ProgressView

    view = JsonView() if as_json else ProgressView(terminal.console(), quiet=quiet)
    with view:                # stops the live region whatever happens; JsonView prints here
        await run_workflow(..., FanOut(view, keep))    # one view for every workflow run
    results = view.results()  # RunResults, e.g. for the exit code

``ProgressView(console, *, quiet=False, logs=True, live=None, clock=time.time)`` prints one
line per job and per step as they start and finish, with a status symbol and the duration;
output lines are indented under their step (and ``::group::``), annotations are coloured, and
every line starts with ``[workflow/job_key]`` so that parallel jobs stay readable (as act
does). Steps of one job running at the same time (a ``parallel`` group, background steps)
keep their output apart: the first one started streams (its name shown again when another
step's came last), the others' lines are held and shown as one block, under their step's
name, when it finishes or becomes the first. On a terminal a live region below the lines
shows a spinner per running job and its current step, then the queued jobs, one line each,
cut to the terminal's width; elsewhere (pipes, CI,
tests) the output is plain lines without control codes. ``quiet`` prints only what failed:
the failing steps with their output, errors, and then the final table of every job. The run
ends with a table of the jobs and the total time.

``JsonView(out=None)`` prints nothing while the runs go on, and when it is closed one JSON
document, ``{"runs": [RunResult.to_json(), ...]}`` (on stdout by default).

One view may follow several runs at once (``vmrunner run`` with several workflows): lines
carry their workflow's name, the live region shows the running jobs of all of them, and each
run ends with its own table.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, Group, RenderableType
from rich.segment import Segment, Segments
from rich.style import Style
from rich.table import Table
from rich.text import Text

from vmrunner.reports.events import (
    Annotation,
    Event,
    GroupEnded,
    GroupStarted,
    JobFinished,
    JobQueued,
    JobStarted,
    LogLine,
    Progress,
    RunFinished,
    RunStarted,
    SnapshotRestored,
    SnapshotTaken,
    StepFinished,
    StepStarted,
)
from vmrunner.reports.results import (
    AnnotationResult,
    JobResult,
    ResultCollector,
    RunResult,
    StepResult,
    human_duration,
)

if TYPE_CHECKING:  # only a live region on a terminal needs them
    from rich.live import Live
    from rich.spinner import Spinner

#: Symbol and style for each result (``continued``: failed, but ``continue-on-error``).
SYMBOLS: dict[str, tuple[str, str]] = {
    "success": ("✓", "green"),
    "failure": ("✗", "bold red"),
    "cancelled": ("⊘", "yellow"),
    "skipped": ("↷", "dim"),
    "continued": ("!", "yellow"),
    "interrupted": ("!", "yellow"),
    "rolled_back": ("↩", "magenta"),
    "in_progress": ("…", "cyan"),
    "queued": ("·", "dim"),
}
#: ANSI escape sequences (CSI and OSC) and other control characters, dropped from plain output.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PREFIX_STYLE = Style(color="blue")
_STDERR_STYLE = Style(color="red")
ANNOTATION_STYLES = {"error": "bold red", "warning": "yellow", "notice": "blue", "debug": "dim"}
#: Output lines kept per step in quiet mode, to show when the step fails (the tail).
QUIET_TAIL = 200
#: Queued jobs the live region lists by name; beyond, it says how many more.
LIVE_QUEUED = 5


@dataclass
class _Running:
    """What a running job is doing, for the live region."""

    started: float
    step: str = ""
    step_started: float = 0.0
    #: Made by the live region when it first shows the job (plain output needs none).
    spinner: Spinner | None = None
    #: A long operation under way (an action fetched, snapshots exported), shown as a bar.
    progress: Progress | None = None


@dataclass
class _RunState:
    """One run the view follows (``vmrunner run`` may run several workflows at once)."""

    workflow: str
    collector: ResultCollector = field(default_factory=ResultCollector)
    running: dict[str, _Running] = field(default_factory=dict)
    #: Jobs known and waiting (for their needs or a slot): job key -> since when.
    queued: dict[str, float] = field(default_factory=dict)
    #: Quiet mode: each open step's output tail, lines dropped off it, steps with an error.
    tails: dict[tuple[str, int], deque[Text]] = field(default_factory=dict)
    dropped: dict[tuple[str, int], int] = field(default_factory=dict)
    flagged: set[tuple[str, int]] = field(default_factory=set)
    #: Open ``::group::``s per step, to indent a nested group's title.
    groups: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Running steps per job, first started first; lines of all but the first are held.
    open_steps: dict[str, list[int]] = field(default_factory=dict)
    held: dict[tuple[str, int], list[Text]] = field(default_factory=dict)
    names: dict[tuple[str, int], str] = field(default_factory=dict)
    #: The step whose name or output came last, per job.
    shown: dict[str, int] = field(default_factory=dict)
    finished: bool = False

    def prefixed(self, job_key: str, text: Text) -> Text:
        line = Text()
        line.append(
            f"[{self.workflow}/{job_key}] " if job_key else f"[{self.workflow}] ", "blue"
        )  # no job: the run's own
        return line.append_text(text)


class ProgressView:
    """An ``EventSink`` showing runs live on a Rich console (see the module docstring)."""

    def __init__(
        self,
        console: Console,
        *,
        quiet: bool = False,
        logs: bool = True,
        live: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.console = console
        self.quiet = quiet
        self.logs = logs
        self._clock = clock
        self._runs: dict[str, _RunState] = {}
        self._use_live = console.is_terminal if live is None else live
        #: No colours, no live region, no recording: lines go straight to the file as text,
        #: many times faster than Rich's rendering (chatty builds print thousands of lines).
        self._plain = not self._use_live and console.color_system is None and not console.record
        self._live: Live | None = None
        self._broken = False

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def result(self, run_id: str | None = None) -> RunResult:
        """The result of run ``run_id`` (default: the last one started) as known so far."""
        if run_id is None:
            run_id = next(reversed(self._runs), "")
        return self._state(run_id).collector.result()

    def results(self) -> list[RunResult]:
        """Every run seen, in the order they started."""
        return [state.collector.result() for state in self._runs.values()]

    def close(self) -> None:
        """Stop the live region (a second call is a no-op)."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def emit(self, event: Event) -> None:
        state = self._state(event.run_id, event)
        state.collector.emit(event)
        if self._broken:
            return
        try:
            self._show(state, event)
        except (OSError, SystemExit):
            # stdout is gone (EIO, or a pipe to `head`: Rich turns EPIPE into SystemExit). The run
            # goes on and is still kept; only its display stops.
            self._broken = True
            self.close()

    def _state(self, run_id: str, event: Event | None = None) -> _RunState:
        state = self._runs.get(run_id)
        if state is None or isinstance(event, RunStarted):
            name = (
                event.workflow_name or event.workflow_file if isinstance(event, RunStarted) else ""
            )
            state = self._runs[run_id] = _RunState(workflow=name or run_id)
        return state

    # What each event prints.

    def _show(self, state: _RunState, event: Event) -> None:
        match event:
            case RunStarted():
                line = Text.assemble(
                    ("▶ ", "bold"), (state.workflow, "bold"), f" on {event.event_name}"
                )
                if event.ref:
                    line.append(f" {event.ref}", "dim")
                line.append(f"  run {event.run_id}", "dim")
                self._print(line)
                if self._use_live and self._live is None:
                    from rich.live import Live

                    self._live = Live(
                        _LiveJobs(self), console=self.console, transient=True, refresh_per_second=8
                    )
                    self._live.start()
            case JobQueued():
                state.queued[event.job_key] = event.time
            case JobStarted():
                state.queued.pop(event.job_key, None)
                state.running[event.job_key] = _Running(started=event.time)
                if not self.quiet:
                    where = f"{event.provider} {event.machine_id}" + (
                        " from the warm pool" if event.from_pool else ""
                    )
                    self._print(state.prefixed(event.job_key, Text.assemble(
                        ("● ", "cyan"), "started on ", (where, "cyan"),
                        (f" ({human_duration(event.allocation_seconds)} to allocate)", "dim"),
                    )))
            case StepStarted():
                running = state.running.setdefault(event.job_key, _Running(started=event.time))
                running.step, running.step_started = event.name, event.time
                state.open_steps.setdefault(event.job_key, []).append(event.index)
                state.names[(event.job_key, event.index)] = event.name
                state.shown[event.job_key] = event.index
                if not self.quiet:
                    self._print(
                        state.prefixed(
                            event.job_key,
                            Text.assemble("  ", ("▸ ", "cyan"), event.name, _kind(event.kind)),
                        )
                    )
            case LogLine():
                concurrent = self._held(state, event.job_key, event.step_index) is not None
                if self.logs and not (self.quiet or concurrent):
                    self._named(state, event.job_key, event.step_index)
                if self.logs and not (
                    self._plain or self.quiet or concurrent or "\x1b" in event.text
                ):
                    # The common case on a terminal, as ready-made segments: several times
                    # cheaper than rendering a Text, which matters for chatty builds.
                    self.console.print(
                        Segments(
                            [
                                Segment(f"[{state.workflow}/{event.job_key}] ", _PREFIX_STYLE),
                                Segment("    " + "  " * event.group_depth),
                                Segment(
                                    _CONTROL.sub("", event.text),
                                    _STDERR_STYLE if event.stream == "stderr" else None,
                                ),
                                Segment.line(),
                            ]
                        ),
                        soft_wrap=True,
                        highlight=False,
                    )
                elif self.logs:
                    line = Text("    " + "  " * event.group_depth)
                    if self._plain:
                        line.append(_CONTROL.sub("", _ANSI.sub("", event.text)))
                    elif "\x1b" in event.text:
                        line.append_text(
                            Text.from_ansi(
                                event.text, style="red" if event.stream == "stderr" else ""
                            )
                        )
                    else:
                        line.append(event.text, "red" if event.stream == "stderr" else "")
                    self._output(state, event.job_key, event.step_index, line)
            case GroupStarted():
                key = (event.job_key, event.step_index)
                depth = state.groups.get(key, 0)
                state.groups[key] = depth + 1
                if self.logs:
                    title = Text.assemble(
                        "    " + "  " * depth, ("▾ ", "bold"), (event.title, "bold")
                    )
                    self._output(state, event.job_key, event.step_index, title)
            case GroupEnded():
                key = (event.job_key, event.step_index)
                state.groups[key] = max(0, state.groups.get(key, 0) - 1)
            case Annotation():
                self._annotation(state, event)
            case Progress():
                if event.job_key in state.running:
                    state.running[event.job_key].progress = None if event.finished else event
            case StepFinished():
                self._step_finished(state, event)
            case SnapshotTaken():
                if not self.quiet:
                    self._print(
                        state.prefixed(
                            event.job_key,
                            Text(
                                f"    snapshot {event.snapshot_id} "
                                f"({human_duration(event.duration)})",
                                style="dim",
                            ),
                        )
                    )
            case SnapshotRestored():
                self._print(state.prefixed(event.job_key, Text.assemble(
                    ("  ↩ ", "magenta"), f"rolled back to snapshot {event.snapshot_id}",
                    (f" ({human_duration(event.duration)})", "dim"),
                )))
            case JobFinished():
                state.running.pop(event.job_key, None)
                state.queued.pop(event.job_key, None)
                job = state.collector.job_result(event.job_key)
                tail = state.tails.pop((event.job_key, -1), None)  # quiet: the job's own output
                state.dropped.pop((event.job_key, -1), None)
                if job is not None and not (
                    self.quiet and job.conclusion in ("success", "skipped")
                ):
                    for line in tail or ():
                        self._print(line)
                    self._print(state.prefixed(event.job_key, job_line(job)))
            case RunFinished():
                state.finished = True
                state.running.clear()
                state.queued.clear()
                if all(s.finished for s in self._runs.values()):
                    self.close()
                self._final(state, state.collector.result())

    def _held(self, state: _RunState, job_key: str, step_index: int) -> list[Text] | None:
        """Where a line of a step that runs beside an earlier one waits (None: print it)."""
        running = state.open_steps.get(job_key) or []
        if self.quiet or step_index not in running[1:]:
            return None
        return state.held.setdefault((job_key, step_index), [])

    def _named(self, state: _RunState, job_key: str, step_index: int) -> None:
        """Before a line of a step running beside others, its name again when another step's
        came last: no line seems to be another step's."""
        running = state.open_steps.get(job_key) or []
        if len(running) > 1 and state.shown.get(job_key, step_index) != step_index:
            name = state.names.get((job_key, step_index), "")
            self._print(state.prefixed(job_key, Text.assemble("  ", ("▸ ", "cyan"), name)))
        state.shown[job_key] = step_index

    def _release(self, state: _RunState, job_key: str, step_index: int) -> None:
        """Print a held step's lines as one block under its name."""
        lines = state.held.pop((job_key, step_index), None)
        if lines:
            state.shown[job_key] = step_index
            name = state.names.get((job_key, step_index), "")
            self._print(state.prefixed(job_key, Text.assemble("  ", ("▸ ", "cyan"), name)))
            for line in lines:
                self._print(line)

    def _step_finished(self, state: _RunState, event: StepFinished) -> None:
        running = state.open_steps.get(event.job_key) or []
        first = bool(running) and running[0] == event.index
        self._release(state, event.job_key, event.index)
        if event.index in running:
            running.remove(event.index)
        self._step_line(state, event)
        if first and running:  # the next step streams from now on
            self._release(state, event.job_key, running[0])
        state.names.pop((event.job_key, event.index), None)

    def _step_line(self, state: _RunState, event: StepFinished) -> None:
        job = state.collector.job_result(event.job_key)
        step = job.step(event.index) if job else None
        key = (event.job_key, event.index)
        tail, dropped = state.tails.pop(key, None), state.dropped.pop(key, 0)
        if step is None:
            return
        failed = step.outcome == "failure" or step.conclusion in ("failure", "cancelled")
        if key in state.flagged:
            state.flagged.discard(key)
            failed = True
        if self.quiet and not failed:
            return
        self._print(state.prefixed(event.job_key, Text("  ") + step_line(step)))
        if self.quiet and tail is not None:
            if dropped:
                self._print(
                    state.prefixed(
                        event.job_key, Text(f"    ... {dropped} earlier lines", style="dim")
                    )
                )
            for line in tail:
                self._print(line)

    def _annotation(self, state: _RunState, event: Annotation) -> None:
        if self.quiet and event.level != "error":
            return
        text = Text("    ").append_text(annotation_line(event))
        if self.quiet and event.step_index >= 0:
            state.flagged.add(
                (event.job_key, event.step_index)
            )  # show this step even if it ends well
        self._output(state, event.job_key, event.step_index, text)

    def _output(self, state: _RunState, job_key: str, step_index: int, text: Text) -> None:
        """An output line: printed now, or in quiet mode kept until its step's result is known."""
        line = state.prefixed(job_key, text)
        held = self._held(state, job_key, step_index)
        if held is not None:
            held.append(line)
            return
        if not self.quiet:
            self._print(line)
            return
        key = (job_key, step_index)
        tail = state.tails.setdefault(key, deque(maxlen=QUIET_TAIL))
        if len(tail) == QUIET_TAIL:
            state.dropped[key] = state.dropped.get(key, 0) + 1
        tail.append(line)

    def _final(self, state: _RunState, result: RunResult) -> None:
        self.console.print()
        if result.jobs:
            self.console.print(jobs_table(list(result.jobs)))
        conclusion = result.conclusion or result.status
        symbol, style = SYMBOLS.get(conclusion, ("?", ""))
        self._print(Text.assemble(
            (f"{symbol} ", style), (state.workflow, "bold"), ": ", (conclusion, style),
            f" in {human_duration(result.duration)}", (f"  (run {result.run_id})", "dim"),
        ))

    def _print(self, text: Text) -> None:
        if self._plain:
            self.console.file.write(_CONTROL.sub("", text.plain) + "\n")
        else:
            self.console.print(text, soft_wrap=True, highlight=False)

    # The live region.

    def _live_rows(self) -> RenderableType:
        """One line per running job, then the queued ones (a few, and how many more): each
        cut to the terminal's width (the step's name gives way first), never wrapped."""
        now, width = self._clock(), self.console.width
        lines: list[Text] = []

        def row(mark: Text, label: str, what: Text, elapsed: str, dim: str = "") -> None:
            tail = Text(f" {elapsed}", style="dim")
            line = Text.assemble(mark, " ", (label, f"{dim} blue".strip()), " ", what)
            line.truncate(max(1, width - tail.cell_len), overflow="ellipsis")
            line.append_text(tail)
            line.no_wrap = True
            lines.append(line)

        waiting: list[tuple[str, str, float]] = []
        for state in list(self._runs.values()):
            for job_key, running in list(state.running.items()):
                if running.spinner is None:
                    from rich.spinner import Spinner

                    running.spinner = Spinner("dots", style="cyan")
                spinner = running.spinner.render(self.console.get_time())
                mark = spinner if isinstance(spinner, Text) else Text("*")
                elapsed = human_duration(now - (running.step_started or running.started))
                what = (
                    progress_bar(running.progress)
                    if running.progress
                    else Text(running.step or "starting", style="cyan")
                )
                row(mark, f"[{state.workflow}/{job_key}]", what, elapsed)
            waiting.extend((state.workflow, key, since) for key, since in state.queued.items())
        for workflow, job_key, since in waiting[:LIVE_QUEUED]:
            label, queued = f"[{workflow}/{job_key}]", Text("queued", style="dim")
            row(Text("·", style="dim"), label, queued, human_duration(now - since), "dim")
        if len(waiting) > LIVE_QUEUED:
            lines.append(Text(f"  +{len(waiting) - LIVE_QUEUED} more queued", style="dim"))
        return Group(*lines)


#: Cells of a progress bar in the live region (it leaves room for the task at 80 columns).
BAR_CELLS = 12


def progress_bar(progress: Progress) -> Text:
    """``━━━━━━╺━━━━━ 45% fetching owner/action@v4: receiving objects``: the bar first, so
    that a narrow terminal cuts the task's words, not the figures."""
    if not progress.total:
        return Text.assemble((progress.task, "cyan"), f" ({progress.done})")
    share = min(1.0, max(0.0, progress.done / progress.total))
    full = round(share * BAR_CELLS)
    return Text.assemble(
        ("━" * full, "cyan"), ("━" * (BAR_CELLS - full), "grey37"),
        f" {share:4.0%} ", (progress.task, "cyan"),
    )  # fmt: skip


class _LiveJobs:
    """Renders the running jobs each time the live region refreshes (so durations tick)."""

    def __init__(self, view: ProgressView) -> None:
        self.view = view

    def __rich__(self) -> RenderableType:
        return self.view._live_rows()


def annotation_line(annotation: Annotation | AnnotationResult) -> Text:
    """``Warning: src/app.py:3:5: title: message``, coloured by level."""
    where = annotation.file + (f":{annotation.line}" if annotation.file and annotation.line else "")
    where += f":{annotation.column}" if where and annotation.line and annotation.column else ""
    style = ANNOTATION_STYLES[annotation.level]
    text = Text.assemble((f"{annotation.level.capitalize()}:", style), " ")
    if where:
        text.append(f"{where}: ", "dim")
    if annotation.title:
        text.append(f"{annotation.title}: ", style)
    return text.append(annotation.message, style if annotation.level != "debug" else "dim")


def jobs_table(jobs: list[JobResult]) -> Table:
    """The final table: one row per job with its result, steps, duration and machine."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("", "Job", "Result", "Steps", "Duration", "Machine"):
        table.add_column(title, overflow="fold")
    for job in jobs:
        symbol, style = _job_symbol(job)
        counted = [s for s in job.steps if s.kind == "step"]
        passed = sum(1 for s in counted if s.conclusion == "success")
        word = (job.conclusion or job.status) + (", rolled back" if job.rolled_back else "")
        if job.reason:
            word += f": {job.reason}"
        machine = f"{job.provider} {job.machine_id}".strip() + (" (pool)" if job.from_pool else "")
        table.add_row(
            Text(symbol, style=style),
            Text(job.job_key),
            Text(word, style=style),
            f"{passed}/{len(counted)}",
            human_duration(job.duration),
            Text(machine or "-", style="dim"),
        )
    return table


def _job_symbol(job: JobResult) -> tuple[str, str]:
    if job.rolled_back:
        return SYMBOLS["rolled_back"]
    return SYMBOLS.get(job.conclusion or job.status, ("?", ""))


def job_line(job: JobResult) -> Text:
    symbol, style = _job_symbol(job)
    word = (job.conclusion or job.status) + (", rolled back" if job.rolled_back else "")
    text = Text.assemble(
        (f"{symbol} ", style),
        ("job ", style),
        (word, style),
        (f" {human_duration(job.duration)}", "dim"),
    )
    if job.reason:
        text.append(f" ({job.reason})", style)
    return text


def step_line(step: StepResult) -> Text:
    continued = step.outcome == "failure" and step.conclusion == "success"
    symbol, style = SYMBOLS["continued" if continued else step.conclusion or step.status]
    text = Text.assemble(
        (f"{symbol} ", style),
        step.name,
        _kind(step.kind),
        (f" {human_duration(step.duration)}", "dim"),
    )
    notes = []
    if step.exit_code not in (None, 0):
        notes.append(f"exit code {step.exit_code}")
    if step.timed_out:
        notes.append("timed out")
    if continued:
        notes.append("continue-on-error")
    elif step.conclusion not in ("success", None):
        notes.insert(0, step.conclusion)
    if notes:
        text.append(f" ({', '.join(notes)})", style)
    return text


def _kind(kind: str) -> Text:
    return Text(f" ({kind})", style="dim") if kind != "step" else Text()


class JsonView:
    """An ``EventSink`` that prints nothing live, then every run's result as one JSON document.

    ``close()`` (or leaving the ``with`` without an exception) prints ``{"runs": [...]}``, each
    run in the shape of ``RUN_RESULT_SCHEMA``, the same document as ``vmrunner runs list --json``.
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out
        self._collectors: dict[str, ResultCollector] = {}
        self._printed = False

    def __enter__(self) -> JsonView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()

    def results(self) -> list[RunResult]:
        return [collector.result() for collector in self._collectors.values()]

    def result(self, run_id: str | None = None) -> RunResult:
        """The result of run ``run_id`` (default: the last one started)."""
        key = next(reversed(self._collectors), "") if run_id is None else run_id
        return self._collectors.setdefault(key, ResultCollector()).result()

    def emit(self, event: Event) -> None:
        self._collectors.setdefault(event.run_id, ResultCollector()).emit(event)

    def close(self) -> None:
        """Print the document (once)."""
        if self._printed:
            return
        self._printed = True
        out = self._out or sys.stdout
        document = {"runs": [result.to_json() for result in self.results()]}
        try:
            out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
            out.flush()
        except OSError:
            pass
