"""Running commands of one job in its machine: scripts, their output, and what they leave behind.

``JobRuntime`` is the state of one job while it runs: the session, the job's environment (as
``GITHUB_ENV`` and ``GITHUB_PATH`` changed it), the masker, the event sink. ``run_script``
runs one script the GitHub way, in one command: the script is written to ``RUNNER_TEMP`` with
a fresh set of file-command files (``GITHUB_ENV``, ``GITHUB_OUTPUT``, ``GITHUB_PATH``,
``GITHUB_STATE``, ``GITHUB_STEP_SUMMARY``), it runs with its output streamed line by line
through the workflow-command reader and the masker, and the files come back after it.

``Scope`` is the state of a list of steps (a job's, or a composite action's): their ``steps``
context and whether one failed; ``StepOutcome`` is a step's outcome and conclusion.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmrunner.actions.sources import Action
from vmrunner.errors import ExecError, MachineError
from vmrunner.machines.base import ImageRun
from vmrunner.reports.events import (
    Annotation,
    AnnotationLevel,
    EventSink,
    GroupEnded,
    GroupStarted,
    LogLine,
    Result,
    Stream,
)
from vmrunner.runner.masking import Masker
from vmrunner.sessions import Session
from vmrunner.workflow.commands import (
    CommandReader,
    FileCommandError,
    WorkflowCommand,
    parse_file_commands,
)
from vmrunner.workflow.lines import LineSplitter

FILE_COMMANDS_DIR = "_runner_file_commands"
#: Where a Docker action's container sees that folder (as GitHub mounts it).
IMAGE_FILE_COMMANDS = "/github/file_commands"
#: The script of the running step, in ``RUNNER_TEMP`` (with the shell's extension).
STEP_SCRIPT = "_step"
#: The file-command files of a step: env var name -> file name in the step's folder.
FILE_COMMANDS = {
    "GITHUB_ENV": "env", "GITHUB_OUTPUT": "output", "GITHUB_PATH": "path", "GITHUB_STATE": "state",
    "GITHUB_STEP_SUMMARY": "summary",
}
#: Files (scripts, the event) up to this size travel in the exec request itself; larger ones
#: are uploaded first (the request's header is limited to MAX_HEADER).
INLINE_LIMIT = 128 * 1024  # at most 6 escaped bytes each: well below MAX_HEADER
_LEVELS: dict[str, AnnotationLevel] = {
    "error": "error", "warning": "warning", "notice": "notice", "debug": "debug",
}


@dataclass(slots=True)
class ScriptOutcome:
    """How a script ended and what it asked for through workflow and file commands."""

    exit_code: int | None
    timed_out: bool = False
    duration: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.error


@dataclass(slots=True)
class Scope:
    """The steps of a job, or of one composite action: their ``steps`` context and status."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    failed: bool = False
    action: Action | None = None
    parent: Scope | None = None

    def any_failed(self) -> bool:
        return self.failed or (self.parent is not None and self.parent.any_failed())


@dataclass(slots=True)
class StepOutcome:
    outcome: Result
    conclusion: Result
    exit_code: int | None = None
    timed_out: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    #: The step's place in the job's execution order (its events' index).
    index: int = -1


class JobRuntime:
    """One job's state in its machine; every event of the job goes out through ``emit_*``."""

    def __init__(
        self, *, run_id: str, job_key: str, session: Session, sink: EventSink, masker: Masker
    ) -> None:
        self.run_id = run_id
        self.job_key = job_key
        self.session = session
        self.machine = session.machine
        self.sink = sink
        self.masker = masker
        self.paths = self.machine.paths
        #: The job's environment as ``GITHUB_ENV`` changed it (above job env, below step env).
        self.env: dict[str, str] = {}
        #: ``GITHUB_PATH`` entries, newest first.
        self.path_entries: list[str] = []
        #: The machine's own PATH, and which interpreters it has (probed at setup).
        self.base_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.has_bash = True
        self.has_python = True
        self.has_node = True
        self.summary: list[str] = []
        #: Open ``::group::``s per step (steps of a ``parallel`` group run at the same time).
        self.groups: dict[int, int] = {}
        #: Steps running in the background, with the ``GITHUB_ENV`` and ``GITHUB_PATH`` changes
        #: they made, held until they are waited for (GitHub's rule for background steps).
        self.held: dict[int, tuple[dict[str, str], list[str]]] = {}
        #: The machine's limits this job ran into (``out of memory: ...``), each once.
        self.limits_hit: list[str] = []

    # Events

    def log(self, step_index: int, text: str, stream: Stream = "stdout") -> None:
        self.sink.emit(
            LogLine(
                self.run_id, self.job_key, step_index, stream, self.masker.mask(text), time.time(),
                self.groups.get(step_index, 0),
            )
        )

    def annotate(
        self, step_index: int, level: AnnotationLevel, message: str,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        props = properties or {}
        self.sink.emit(
            Annotation(
                self.run_id, self.job_key, step_index, level, self.masker.mask(message),
                time.time(), file=self.masker.mask(props.get("file", "")),
                line=_int(props.get("line")), column=_int(props.get("col") or props.get("column")),
                title=self.masker.mask(props.get("title", "")),
            )
        )

    def end_groups(self, step_index: int) -> None:
        """Close the step's open groups (every step's, for -1)."""
        for index in [step_index] if step_index >= 0 else list(self.groups):
            for _ in range(self.groups.pop(index, 0)):
                self.sink.emit(GroupEnded(self.run_id, self.job_key, index, time.time()))

    def release(self, step_index: int) -> None:
        """A background step was waited for: its environment changes now apply."""
        env, path = self.held.pop(step_index, ({}, []))
        self.env.update(env)
        self.path_entries[:0] = path

    # Probing the machine

    async def probe(self, event_path: str, event: bytes, workspace: str) -> None:
        """In one command: write the event file, make the workspace, learn the machine's PATH
        and which interpreters it has."""
        script = (
            'mkdir -p -- "$1" || exit 1; printf "%s\\n" "$PATH"; for t in bash python node; do '
            "command -v $t >/dev/null && echo $t; done; true"
        )
        try:
            write = await self._inline({event_path: event})
            result = await self.session.exec(["sh", "-c", script, "sh", workspace], write=write)
        except MachineError as exc:
            raise ExecError(f"cannot set up the job's files in {self.paths.temp}: {exc}") from exc
        if not result.ok:
            error = result.stderr.decode(errors="replace").strip()
            raise ExecError(
                f"cannot set up the job's files in {self.paths.temp}: {error or result.exit_code}"
            )
        lines = result.stdout.decode(errors="replace").splitlines()
        if lines:
            self.base_path = lines[0] or self.base_path
            found = set(lines[1:])
            self.has_bash, self.has_python, self.has_node = (
                "bash" in found, "python" in found, "node" in found,
            )

    def process_env(self, base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
        """The environment of a process: defaults, then ``env``, with ``GITHUB_PATH`` prepended."""
        merged = {**base, **env}
        path = merged.get("PATH") or self.base_path
        if self.path_entries:
            path = ":".join([*self.path_entries, path])
        merged["PATH"] = path
        return merged

    # Running a script

    async def run_script(
        self,
        step_index: int,
        argv_for: Any,
        script: str,
        extension: str,
        *,
        env: Mapping[str, str],
        cwd: str,
        timeout: float | None,  # noqa: ASYNC109 - enforced inside the machine
        image: ImageRun | None = None,
    ) -> ScriptOutcome:
        """Write ``script``, run ``argv_for(path)`` in the machine (or in a container of
        ``image`` there, which sees the file commands at ``IMAGE_FILE_COMMANDS``), apply the
        file commands.

        One request does it all: the agent writes the script and empties the file-command
        files, runs the step, and sends the files back with its exit, however the step ended
        (killed by its timeout too).
        """
        # The same paths for every step of the job, emptied before each: steps run one at a
        # time, and a new file costs an inode allocation (and its removal at restore). Steps
        # running in the background have paths of their own.
        lane = f"_{step_index}" if step_index in self.held else ""
        prefix = f"{self.paths.temp}/{FILE_COMMANDS_DIR}{lane}/"
        script_path = f"{self.paths.temp}/{STEP_SCRIPT}{lane}{extension}"
        files = {variable: f"{prefix}{file}" for variable, file in FILE_COMMANDS.items()}
        write = dict.fromkeys(files.values(), "")
        result = ScriptOutcome(exit_code=None)
        reader = CommandReader()
        splitter = LineSplitter(cut=self.masker.cut)
        allow_unsecure = env.get("ACTIONS_ALLOW_UNSECURE_COMMANDS", "").lower() == "true"

        def line(stream: Stream, text: str) -> None:
            command = reader.feed(text)
            if command is None or not self._command(step_index, command, result, allow_unsecure):
                self.log(step_index, text, stream)

        def on_output(stream: Stream, chunk: bytes) -> None:
            for text in splitter.feed(stream, chunk):
                line(stream, text)

        started = time.monotonic()
        try:
            write.update(await self._inline({script_path: script}))
            seen = files if image is None else {
                name: f"{IMAGE_FILE_COMMANDS}/{file}" for name, file in FILE_COMMANDS.items()
            }  # fmt: skip
            outcome = await self.session.exec(
                argv_for(script_path), env={**env, **seen}, cwd=cwd, timeout=timeout,
                on_output=on_output, write=write, collect=list(files.values()), image=image,
            )
        except MachineError as exc:
            result.error = f"cannot start the step in {cwd}: {exc}"
            await self.explain_failure(step_index)
            return result
        finally:
            streams: tuple[Stream, ...] = ("stdout", "stderr")
            for stream in streams:
                for text in splitter.flush(stream):
                    line(stream, text)
            result.duration = time.monotonic() - started
        result.exit_code, result.timed_out = outcome.exit_code, outcome.timed_out
        if not outcome.ok:
            await self.explain_failure(step_index)
        try:
            if outcome.truncated:
                raise FileCommandError(
                    f"{', '.join(sorted(outcome.truncated))}: larger than vmrunner reads of a "
                    f"file command"
                )
            self._file_commands(
                step_index,
                {
                    file: outcome.files.get(f"{prefix}{file}", b"")
                    for file in FILE_COMMANDS.values()
                },
                result,
            )
        except FileCommandError as exc:
            result.error = str(exc)
        return result

    async def explain_failure(self, step_index: int) -> None:
        """Say which of the machine's limits (memory, processes, disk) a failed step ran into:
        an error annotation and a log line, once per limit in the job."""
        try:
            reasons = await self.machine.limits_hit()
        except MachineError:
            return
        for reason in reasons:
            if reason not in self.limits_hit:
                self.limits_hit.append(reason)
                self.log(step_index, f"Error: {reason}", "stderr")
                self.annotate(step_index, "error", reason)

    async def _inline(self, files: Mapping[str, str | bytes]) -> dict[str, str]:
        """The files small enough to travel in an exec request (its ``write``); larger ones
        are uploaded now."""
        inline: dict[str, str] = {}
        for path, data in files.items():
            if len(data) > INLINE_LIMIT:
                await self.machine.write_file(
                    path, data.encode() if isinstance(data, str) else data
                )
            else:
                inline[path] = (
                    data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")
                )
        return inline

    def _file_commands(
        self, step_index: int, contents: Mapping[str, bytes], result: ScriptOutcome
    ) -> None:
        text = {
            file: contents.get(file, b"").decode(errors="replace")
            for file in FILE_COMMANDS.values()
        }
        env, path = self.held.get(step_index, (self.env, self.path_entries))
        env.update(parse_file_commands(text["env"], "GITHUB_ENV"))
        result.outputs.update(parse_file_commands(text["output"], "GITHUB_OUTPUT"))
        result.state.update(parse_file_commands(text["state"], "GITHUB_STATE"))
        for entry in text["path"].splitlines():
            if entry.strip():
                path.insert(0, entry.strip())
        if text["summary"].strip():
            self.summary.append(self.masker.mask(text["summary"]))

    def _command(
        self, step_index: int, command: WorkflowCommand, result: ScriptOutcome, allow_unsecure: bool
    ) -> bool:
        """Apply one workflow command; False when the line is not a command we know (it is
        shown)."""
        name, props, message = command.name, command.properties, command.message
        if name == "add-mask":
            self.masker.add(message)
        elif name in _LEVELS:
            self.annotate(step_index, _LEVELS[name], message, props)
        elif name == "group":
            self.sink.emit(
                GroupStarted(
                    self.run_id, self.job_key, step_index, self.masker.mask(message), time.time()
                )
            )
            self.groups[step_index] = self.groups.get(step_index, 0) + 1
        elif name == "endgroup":
            if self.groups.get(step_index):
                self.groups[step_index] -= 1
                self.sink.emit(GroupEnded(self.run_id, self.job_key, step_index, time.time()))
        elif name == "set-output" and props.get("name"):
            result.outputs[props["name"]] = message
            self.annotate(
                step_index, "debug", "the set-output command is deprecated: write to GITHUB_OUTPUT"
            )
        elif name == "save-state" and props.get("name"):
            result.state[props["name"]] = message
        elif name in ("set-env", "add-path"):
            if not allow_unsecure:
                self.annotate(
                    step_index,
                    "error",
                    f"the '{name}' command is disabled: use GITHUB_ENV/GITHUB_PATH, or set "
                    f"ACTIONS_ALLOW_UNSECURE_COMMANDS=true",
                )
            elif name == "set-env" and props.get("name"):
                self.held.get(step_index, (self.env, []))[0][props["name"]] = message
            elif name == "add-path" and message:
                self.held.get(step_index, ({}, self.path_entries))[1].insert(0, message)
        elif name in ("echo", "debug", "add-matcher", "remove-matcher", "save-state", "set-output"):
            pass
        else:
            return False
        return True

    async def run_command(
        self, step_index: int, command: str, *, env: Mapping[str, str], cwd: str
    ) -> ScriptOutcome:
        """A setup or cleanup command: ``bash -e`` (or ``sh -e``) on a script holding it."""
        shell = "bash" if self.has_bash else "sh"
        return await self.run_script(
            step_index, lambda path: [shell, "-e", path], command, ".sh", env=env, cwd=cwd,
            timeout=None,
        )


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
