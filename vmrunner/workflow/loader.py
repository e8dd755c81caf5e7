"""Loading workflow files into typed models, after checking them against GitHub's syntax.

Every problem of a file is reported at once, in line order, each with its file, line and
column. ``load_workflows`` goes on past a broken file so that ``validate`` can show the errors of
every file together (``LoadResult``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any, Literal

from vmrunner.errors import Diagnostic, PlanError, WorkflowError
from vmrunner.workflow.matrix import Strategy
from vmrunner.workflow.models import (
    EMPTY,
    Concurrency,
    Container,
    Defaults,
    Environment,
    Job,
    RunsOn,
    Step,
    Workflow,
    frozen_map,
)
from vmrunner.workflow.problems import Problem
from vmrunner.workflow.schema import Checker, Finding
from vmrunner.workflow.triggers import Triggers
from vmrunner.workflow.yaml import Document, load_document

WORKFLOW_SUFFIXES = (".yml", ".yaml")


def load_workflow(path: str | os.PathLike[str], repo_root: str | None = None) -> Workflow:
    """Load and check one workflow file, and the local reusable workflows it calls (read from
    ``repo_root``, by default the folder holding ``.github/workflows``). Raises
    ``WorkflowError`` with every problem found."""
    workflow = _read_workflow(path)
    if any(job.uses is not None or _self_steps(job) for job in workflow.jobs.values()):
        from vmrunner.workflow.calls import check_calls, repository_root

        root = repo_root or repository_root(workflow.path)
        problems = check_calls(workflow, root, lambda file: (file, _read_workflow(file)))
        if problems:
            raise WorkflowError(problems)
    return workflow


def _self_steps(job: Job) -> bool:
    return any((step.uses or "").startswith("$/") for step in job.steps)


def _read_workflow(path: str | os.PathLike[str]) -> Workflow:
    name = os.fspath(path)
    try:
        text = FilePath(name).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError(
            Diagnostic(
                name, 0, 0, f"the file is not valid UTF-8 text ({exc.reason} at byte {exc.start})"
            )
        ) from exc
    except OSError as exc:
        raise WorkflowError(
            Diagnostic(name, 0, 0, f"cannot read the file: {exc.strerror or exc}")
        ) from exc
    return load_workflow_text(text, name)


def load_workflow_text(text: str, filename: str = "<workflow>") -> Workflow:
    """Load and check a workflow from its text; ``filename`` is used in messages."""
    document = load_document(text, filename)
    checker = Checker()
    checker.workflow(document.value)
    builder = _ModelBuilder(document, checker.findings)
    workflow = builder.workflow()
    problems = [f for f in builder.problems if not f.warning]
    from vmrunner.workflow.planner import graph_problems

    graph = [Finding(p.path, p.message) for p in graph_problems(workflow)]
    if problems or graph:
        diagnostics = _diagnostics(document, problems + graph)
        raise (WorkflowError if problems else PlanError)(diagnostics)
    from vmrunner.workflow.lint import lint

    warnings = [f for f in builder.problems if f.warning] + lint(document.value, workflow)
    return dataclasses.replace(workflow, warnings=tuple(_diagnostics(document, warnings)))


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What ``load_workflows`` found: the valid workflows and the problems of the others."""

    workflows: tuple[Workflow, ...]
    errors: tuple[WorkflowError, ...]
    files: tuple[str, ...]

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        return tuple(d for error in self.errors for d in error.diagnostics)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        """The warnings of the valid workflows (a broken file shows only its errors)."""
        return tuple(d for workflow in self.workflows for d in workflow.warnings)

    def raise_errors(self) -> None:
        """Raise one ``WorkflowError`` holding every diagnostic, when there is any."""
        if self.errors:
            raise WorkflowError(self.diagnostics)


def workflow_files(path: str | os.PathLike[str]) -> list[str]:
    """``path`` itself when it is a file, else every ``*.yml``/``*.yaml`` directly in it, sorted."""
    name = os.fspath(path)
    if os.path.isdir(name):
        return sorted(
            os.path.join(name, entry)
            for entry in os.listdir(name)
            if entry.endswith(WORKFLOW_SUFFIXES) and os.path.isfile(os.path.join(name, entry))
        )
    if os.path.exists(name):
        return [name]
    raise WorkflowError(Diagnostic(name, 0, 0, "no such file or folder"))


def load_workflows(path: str | os.PathLike[str]) -> LoadResult:
    """Load a workflow file, or every workflow file of a folder, keeping going past errors."""
    files = workflow_files(path)
    workflows: list[Workflow] = []
    errors: list[WorkflowError] = []
    for name in files:
        try:
            workflows.append(load_workflow(name))
        except WorkflowError as exc:
            errors.append(exc)
    return LoadResult(tuple(workflows), tuple(errors), tuple(files))


def _diagnostics(document: Document, findings: list[Finding]) -> list[Diagnostic]:
    out: set[Diagnostic] = set()
    for finding in findings:
        if finding.at_key:
            line, column = document.locate_key(finding.path)
        elif finding.offset is not None:
            line, column = document.locate_in_string(finding.path, finding.offset)
        else:
            line, column = document.locate(finding.path)
        severity: Literal["error", "warning"] = "warning" if finding.warning else "error"
        out.add(Diagnostic(document.filename, line, column, finding.message, severity))
    return sorted(out, key=lambda d: (d.line, d.column, d.message))


class _ModelBuilder:
    """Builds the models from a checked document; the trigger and strategy parsers add problems."""

    def __init__(self, document: Document, findings: list[Finding]) -> None:
        self.document = document
        self.problems: list[Finding] = list(findings)

    def add(self, problems: list[Problem]) -> None:
        self.problems.extend(
            Finding(
                p.path, p.message, at_key=p.message.startswith("unknown key"), warning=p.warning
            )
            for p in problems
        )

    def workflow(self) -> Workflow:
        from vmrunner.workflow.triggers import parse_on

        raw = self.document.value
        triggers = Triggers()
        if "on" in raw:
            triggers, problems = parse_on(raw["on"])
            self.add(problems)
        jobs_raw = raw.get("jobs")
        jobs: dict[str, Job] = {}
        if isinstance(jobs_raw, dict):
            for job_id, job in jobs_raw.items():
                if isinstance(job, dict):
                    jobs[job_id] = self.job(job_id, job)
        return Workflow(
            path=self.document.filename,
            name=_text(raw.get("name")),
            run_name=_text(raw.get("run-name")),
            triggers=triggers,
            env=_env(raw.get("env")),
            defaults=_defaults(raw.get("defaults")),
            permissions=_permissions(raw.get("permissions")),
            concurrency=self.concurrency(raw.get("concurrency"), ("concurrency",)),
            jobs=frozen_map(jobs),
            source=self.document,
        )

    def concurrency(self, value: Any, path: tuple[str, ...]) -> Concurrency | None:
        concurrency = _concurrency(value)
        if (
            concurrency is not None
            and concurrency.queue == "max"
            and concurrency.cancel_in_progress is True
        ):
            self.problems.append(
                Finding(
                    (*path, "queue"),
                    "queue: max waits its turn, so it cannot go with cancel-in-progress: true",
                )
            )
        return concurrency

    def job(self, job_id: str, raw: dict[str, Any]) -> Job:
        strategy: Strategy | None = None
        if "strategy" in raw:
            from vmrunner.workflow.matrix import parse_strategy

            strategy, problems = parse_strategy(raw["strategy"], ("jobs", job_id, "strategy"))
            self.add(problems)
        needs = raw.get("needs")
        steps = raw.get("steps")
        secrets = raw.get("secrets")
        services = raw.get("services")
        return Job(
            id=job_id,
            name=_text(raw.get("name")),
            runs_on=RunsOn.from_value(raw["runs-on"]) if "runs-on" in raw else None,
            needs=(needs,) if isinstance(needs, str) else tuple(str(n) for n in _list(needs)),
            if_=_condition(raw.get("if")),
            strategy=strategy,
            env=_env(raw.get("env")),
            defaults=_defaults(raw.get("defaults")),
            timeout_minutes=_minutes(raw.get("timeout-minutes")),
            continue_on_error=_flag(raw.get("continue-on-error")),
            outputs=frozen_map(
                {k: _text(v) or "" for k, v in _mapping(raw.get("outputs")).items()}
            ),
            steps=tuple(
                _step(index, step)
                for index, step in enumerate(_list(steps))
                if isinstance(step, dict)
            ),
            services=frozen_map({k: _container(v) for k, v in _mapping(services).items()}),
            container=_container(raw["container"]) if raw.get("container") is not None else None,
            concurrency=self.concurrency(raw.get("concurrency"), ("jobs", job_id, "concurrency")),
            environment=_environment(raw.get("environment")),
            permissions=_permissions(raw.get("permissions")),
            uses=_text(raw.get("uses")),
            with_=_env(raw.get("with")),
            secrets="inherit"
            if secrets == "inherit"
            else (frozen_map(secrets) if isinstance(secrets, dict) else None),
        )


def _step(index: int, raw: dict[str, Any], group: int | None = None) -> Step:
    wait = raw.get("wait")
    return Step(
        index=index,
        group=group,
        parallel=tuple(
            _step(at, inner, index)
            for at, inner in enumerate(_list(raw.get("parallel")))
            if isinstance(inner, dict)
        ),
        background=raw.get("background") is True,
        wait=(wait,) if isinstance(wait, str) else tuple(str(w) for w in _list(wait)),
        wait_all="wait-all" in raw,
        cancel=_text(raw.get("cancel")),
        id=_text(raw.get("id")),
        name=_text(raw.get("name")),
        if_=_condition(raw.get("if")),
        run=_text(raw.get("run")),
        shell=_text(raw.get("shell")),
        working_directory=_text(raw.get("working-directory")),
        uses=_text(raw.get("uses")),
        with_=_env(raw.get("with")),
        env=_env(raw.get("env")),
        continue_on_error=_flag(raw.get("continue-on-error")),
        timeout_minutes=_minutes(raw.get("timeout-minutes")),
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else EMPTY


def _text(value: Any) -> str | None:
    """A scalar as GitHub reads it where a string is expected (``true`` → ``"true"``)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _condition(value: Any) -> str | None:
    """``if:`` as expression text; ``None`` when absent (literal booleans become
    ``true``/``false``)."""
    return _text(value)


def _env(value: Any) -> Mapping[str, Any] | str:
    if isinstance(value, str):
        return value
    return frozen_map(value) if isinstance(value, dict) else EMPTY


def _flag(value: Any) -> bool | str:
    return value if isinstance(value, bool | str) else False


def _minutes(value: Any) -> int | float | str | None:
    return value if isinstance(value, int | float | str) and not isinstance(value, bool) else None


def _defaults(value: Any) -> Defaults:
    run = value.get("run") if isinstance(value, dict) else None
    if not isinstance(run, dict):
        return Defaults()
    return Defaults(
        shell=_text(run.get("shell")), working_directory=_text(run.get("working-directory"))
    )


def _permissions(value: Any) -> Mapping[str, str] | str | None:
    if isinstance(value, dict):
        return frozen_map({k: str(v) for k, v in value.items()})
    return value if isinstance(value, str) else None


def _concurrency(value: Any) -> Concurrency | None:
    if isinstance(value, str):
        return Concurrency(group=value)
    if isinstance(value, dict) and value.get("group") is not None:
        cancel = value.get("cancel-in-progress", False)
        queue = "max" if value.get("queue") == "max" else "single"
        return Concurrency(
            group=str(value["group"]),
            cancel_in_progress=cancel if isinstance(cancel, bool | str) else False,
            queue=queue,
        )
    return None


def _environment(value: Any) -> Environment | None:
    if isinstance(value, str):
        return Environment(name=value)
    if isinstance(value, dict) and value.get("name") is not None:
        return Environment(name=str(value["name"]), url=_text(value.get("url")))
    return None


def _container(value: Any) -> Container:
    if not isinstance(value, dict):
        return Container(image=_text(value) or "")
    credentials = value.get("credentials")
    return Container(
        image=_text(value.get("image")) or "",
        env=_env(value.get("env")),
        ports=tuple(str(p) for p in _list(value.get("ports"))),
        volumes=tuple(str(v) for v in _list(value.get("volumes"))),
        options=_text(value.get("options")),
        credentials=frozen_map({k: str(v) for k, v in credentials.items()})
        if isinstance(credentials, dict)
        else None,
        entrypoint=_text(value.get("entrypoint")),
        command=_text(value.get("command")),
    )

