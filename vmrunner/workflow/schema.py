"""GitHub's workflow syntax as data, and the checker that walks a loaded document with it.

Facts (allowed keys, types, where expressions may appear and which contexts they may use) come
from GitHub's "Workflow syntax" and "Contexts → Context availability" documentation. A rule may
accept several kinds at once (``runs-on`` is a string, a list or a mapping); ``context`` says
that expressions are allowed there and what they may name; it holds for everything below, and
a nested rule's own ``context`` adds to it (so ``container.credentials`` may also use secrets).

The checker reports ``Finding``s: a ``Problem`` plus whether it points at a key (unknown keys)
and, for a bad expression, the offset inside the string, so the loader can show the exact column.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmrunner.errors import ExpressionLexingError, ExpressionParsingError
from vmrunner.workflow.problems import Path, dotted

# --- where expressions may appear, and what they may use -----------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """Named values and special functions an expression may use at some key."""

    names: frozenset[str]
    functions: frozenset[str] = frozenset()

    def plus(self, *names: str, functions: tuple[str, ...] = ()) -> Context:
        return Context(self.names | set(names), self.functions | set(functions))


STATUS = ("always", "cancelled", "failure", "success")
WORKFLOW = Context(frozenset({"github", "inputs", "vars"}))
WORKFLOW_ENV = WORKFLOW.plus("secrets")
NEEDS = WORKFLOW.plus("needs")
JOB_IF = NEEDS.plus(functions=STATUS)
STRATEGY = NEEDS.plus("strategy", "matrix")
RUNNER = STRATEGY.plus("secrets", "steps", "job", "runner", "env")
RUNNER_NO_SECRETS = STRATEGY.plus("steps", "job", "runner", "env")
STEP = RUNNER.plus(functions=("hashFiles",))
STEP_IF = RUNNER_NO_SECRETS.plus(functions=(*STATUS, "hashFiles"))
JOB_DEFAULTS = STRATEGY.plus("env")
CREDENTIALS = WORKFLOW.plus("secrets", "env")
CALL_SECRETS = STRATEGY.plus("secrets")
CALL_INPUT_DEFAULT = WORKFLOW
CALL_OUTPUT_VALUE = WORKFLOW.plus("jobs")


# --- rules ----------------------------------------------------------------------------------

_KIND_WORDS = {
    "string": "a string",
    "number": "a number",
    "boolean": "a boolean",
    "null": "empty",
    "mapping": "a mapping",
    "sequence": "a list",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """What a value may be. ``kinds`` ⊆ string, number, boolean, null, mapping, sequence, any."""

    kinds: frozenset[str]
    properties: Mapping[str, Rule] | None = None
    required: tuple[str, ...] = ()
    values: Rule | None = None
    items: Rule | None = None
    allowed: tuple[str, ...] = ()
    non_empty: bool = False
    context: Context | None = None
    condition: bool = False

    def expected(self, expression: bool) -> str:
        if self.allowed:
            words = ["one of: " + ", ".join(self.allowed)]
        else:
            words = [
                _KIND_WORDS[k]
                for k in ("string", "number", "boolean", "mapping", "sequence")
                if k in self.kinds
            ]
            words = words or [_KIND_WORDS["null"]]
        if expression:
            words.append("an expression")
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def rule(*kinds: str, **options: Any) -> Rule:
    return Rule(frozenset(kinds), **options)


def mapping(
    properties: Mapping[str, Rule], *, required: tuple[str, ...] = (), **options: Any
) -> Rule:
    return rule("mapping", properties=properties, required=required, **options)


def strings(**options: Any) -> Rule:
    """A map of names to scalar values (``env``, ``with``), or one expression."""
    return rule("mapping", values=rule("string", "number", "boolean", "null"), **options)


STRING = rule("string")
TEXT = rule("string", non_empty=True)
BOOLEAN = rule("boolean")
ANY = rule("any")
STRING_LIST = rule("sequence", items=TEXT)
ONE_OR_MORE = rule("string", "sequence", items=TEXT, non_empty=True)

_LEVEL = ("read", "write", "none")
PERMISSIONS = rule(
    "string",
    "mapping",
    allowed=("read-all", "write-all"),
    properties={
        scope: rule("string", allowed=_LEVEL)
        for scope in (
            "actions",
            "artifact-metadata",
            "attestations",
            "checks",
            "contents",
            "copilot-requests",
            "deployments",
            "discussions",
            "id-token",
            "issues",
            "models",
            "packages",
            "pages",
            "pull-requests",
            "repository-projects",
            "security-events",
            "statuses",
            "vulnerability-alerts",
        )
    },
)
DEFAULTS_RUN = mapping({"shell": TEXT, "working-directory": TEXT})
CONCURRENCY_MAP = {
    "group": TEXT,
    "cancel-in-progress": BOOLEAN,
    "queue": rule("string", allowed=("single", "max")),
}
CREDENTIALS_RULE = mapping({"username": TEXT, "password": TEXT}, context=CREDENTIALS)
_CONTAINER = {
    "image": TEXT,
    "options": STRING,
    "env": strings(context=RUNNER),
    "ports": rule("sequence", items=rule("string", "number")),
    "volumes": STRING_LIST,
    "credentials": CREDENTIALS_RULE,
}
SERVICE = rule(
    "string",
    "mapping",
    non_empty=True,
    properties={**_CONTAINER, "entrypoint": STRING, "command": STRING},
)

WORKFLOW_RULE = mapping(
    {
        "on": ANY,
        "name": STRING,
        "description": STRING,
        "run-name": rule("string", context=WORKFLOW),
        "defaults": mapping({"run": DEFAULTS_RUN}),
        "env": strings(context=WORKFLOW_ENV),
        "permissions": PERMISSIONS,
        "concurrency": rule(
            "string", "mapping", properties=CONCURRENCY_MAP, required=("group",), context=WORKFLOW
        ),
        "jobs": rule("mapping", values=ANY),
    },
    required=("on", "jobs"),
)

_JOB_COMMON = {
    "name": rule("string", context=STRATEGY),
    "needs": rule("string", "sequence", items=TEXT),
    "if": rule("string", "boolean", "number", "null", context=JOB_IF, condition=True),
    "strategy": rule("any", context=NEEDS),
    "permissions": PERMISSIONS,
    "concurrency": rule(
        "string",
        "mapping",
        properties=CONCURRENCY_MAP,
        required=("group",),
        non_empty=True,
        context=STRATEGY,
    ),
}
STEPS_JOB = mapping(
    {
        **_JOB_COMMON,
        "runs-on": rule(
            "string",
            "sequence",
            "mapping",
            items=TEXT,
            non_empty=True,
            context=STRATEGY,
            properties={"group": TEXT, "labels": ONE_OR_MORE},
        ),
        "timeout-minutes": rule("number", context=STRATEGY),
        "cancel-timeout-minutes": rule("number", context=STRATEGY),
        "continue-on-error": rule("boolean", context=STRATEGY),
        "container": rule("string", "mapping", properties=_CONTAINER, context=STRATEGY),
        "services": rule("mapping", values=SERVICE, context=STRATEGY),
        "env": strings(context=STRATEGY.plus("secrets")),
        "environment": rule(
            "string",
            "mapping",
            properties={
                "name": STRING,
                "url": rule("string", context=RUNNER_NO_SECRETS),
                "deployment": BOOLEAN,
            },
            required=("name",),
            context=STRATEGY,
        ),
        "outputs": rule("mapping", values=rule("string", "number", "boolean"), context=RUNNER),
        "defaults": mapping({"run": mapping(DEFAULTS_RUN.properties or {}, context=JOB_DEFAULTS)}),
        "steps": rule("sequence"),
        "snapshot": rule(
            "string",
            "mapping",
            non_empty=True,
            properties={
                "image-name": TEXT,
                "if": rule("string", context=STRATEGY, condition=True),
                "version": TEXT,
            },
        ),
    },
    required=("runs-on",),
)
CALL_JOB = mapping(
    {
        **_JOB_COMMON,
        "uses": TEXT,
        "with": rule(
            "mapping", values=rule("string", "number", "boolean", "null"), context=STRATEGY
        ),
        "secrets": rule(
            "string",
            "mapping",
            allowed=("inherit",),
            values=rule("string", "number", "boolean"),
            context=CALL_SECRETS,
        ),
    }
)
_STEP_COMMON = {
    "id": TEXT,
    "name": rule("string", context=STEP),
    "if": rule("string", "boolean", "number", "null", context=STEP_IF, condition=True),
    "continue-on-error": rule("boolean", context=STEP),
    "timeout-minutes": rule("number", context=STEP),
    "env": strings(context=STEP),
}
RUN_STEP = mapping(
    {**_STEP_COMMON, "run": rule("string", "number", "boolean", context=STEP), "shell": TEXT,
     "working-directory": rule("string", non_empty=True, context=STEP), "background": BOOLEAN}
)
USES_STEP = mapping(
    {**_STEP_COMMON, "uses": TEXT, "with": strings(context=STEP), "background": BOOLEAN}
)
# Background steps and their control steps (GitHub's "jobs.<job_id>.steps[*].background",
# "wait", "wait-all", "cancel" and "parallel"): a control step has no `if` and does no work.
_CONTROL_COMMON = {
    "id": TEXT,
    "name": rule("string", context=STEP),
    "continue-on-error": rule("boolean", context=STEP),
}
CONTROL_STEPS = {
    "wait": mapping(
        {**_CONTROL_COMMON, "wait": rule("string", "sequence", items=TEXT, non_empty=True)}
    ),
    "wait-all": mapping({**_CONTROL_COMMON, "wait-all": rule("null", "boolean")}),
    "cancel": mapping({**_CONTROL_COMMON, "cancel": TEXT}),
    "parallel": mapping({"parallel": rule("sequence")}),
}

#: GitHub's rule for job and step ids.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: ``uses:`` of a step: a local action, a Docker image, or OWNER/REPO[/PATH]@REF.
_ACTION = re.compile(r"\./\S*|\$/\S+|docker://\S+|[^/@\s]+/[^@\s]+@[^@\s]+")
#: ``uses:`` of a job: a reusable workflow in this repository or in another one at a ref.
_REUSABLE = re.compile(
    r"(?:\./|\$/)\.github/workflows/[^@\s]+\.ya?ml"
    r"|[^/@\s]+/[^/@\s]+/\.github/workflows/[^@\s]+\.ya?ml@[^@\s]+"
)
_INSERT = re.compile(r"\$\{\{\s*insert\s*\}\}")


# --- expressions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpressionProblem:
    """A bad expression: ``offset`` into the string, ``message`` in words."""

    offset: int
    message: str


def has_expression(text: str) -> bool:
    return "${{" in text


def check_expression_text(
    text: str, context: Context, *, condition: bool
) -> list[ExpressionProblem]:
    """Parse every expression in ``text`` and check what it names against ``context``.

    A condition (``if:``) is an expression even without ``${{ }}``.
    """
    from vmrunner.workflow.expressions import parse, parse_template

    names = sorted(context.names)
    functions = sorted(context.functions)
    try:
        if condition and not has_expression(text):
            if text.strip():
                parse(text, contexts=names, functions=functions)
        else:
            parse_template(text, contexts=names, functions=functions)
    except (ExpressionLexingError, ExpressionParsingError) as exc:
        message = exc.message
        lowered = message.lower()
        if "named-value" in lowered or "function" in lowered:
            message += f" (available here: {', '.join(names)}"
            message += f"; special functions: {', '.join(functions)})" if functions else ")"
        return [ExpressionProblem(getattr(exc, "offset", 0) + exc.position, message)]
    return []


# --- the checker ------------------------------------------------------------------------


@dataclass(slots=True)
class Finding:
    """A problem at ``path``; ``at_key`` for key problems, ``offset`` inside a string value."""

    path: Path
    message: str
    at_key: bool = False
    offset: int | None = None
    warning: bool = False


@dataclass(slots=True)
class Checker:
    """Walks a workflow's plain value with the rules above, collecting every finding."""

    findings: list[Finding] = field(default_factory=list)

    def report(
        self, path: Path, message: str, *, at_key: bool = False, offset: int | None = None
    ) -> None:
        self.findings.append(Finding(path, message, at_key, offset))

    def workflow(self, value: dict[str, Any]) -> None:
        self.check(value, WORKFLOW_RULE, (), None)
        self.on_expressions(value.get("on"))
        jobs = value.get("jobs")
        if isinstance(jobs, dict):
            if not jobs:
                self.report(("jobs",), "'jobs' must define at least one job")
            for job_id, job in jobs.items():
                self.job(job_id, job)

    def job(self, job_id: str, job: Any) -> None:
        path: Path = ("jobs", job_id)
        if not IDENTIFIER.fullmatch(job_id):
            self.report(
                path,
                f"invalid job id '{job_id}': a job id must start with a letter or '_' and contain "
                f"only letters, digits, '-' and '_'",
                at_key=True,
            )
        if not isinstance(job, dict):
            self.report(
                path,
                f"job '{job_id}' must be a mapping with 'runs-on' and 'steps', or 'uses' to call "
                f"a reusable workflow",
            )
            return
        calls = "uses" in job
        if calls and "steps" in job:
            self.report(
                path,
                f"job '{job_id}' has both 'steps' and 'uses'; a job either runs steps or calls a "
                f"reusable workflow",
            )
        elif not calls and "steps" not in job:
            self.report(
                path,
                f"job '{job_id}' has neither 'steps' nor 'uses'; a job either runs steps or calls "
                f"a reusable workflow",
            )
        self.check(
            job,
            CALL_JOB if calls else STEPS_JOB,
            path,
            None,
            other=STEPS_JOB if calls else CALL_JOB,
        )
        if (
            calls
            and isinstance(job["uses"], str)
            and job["uses"]
            and not _REUSABLE.fullmatch(job["uses"].strip())
        ):
            self.report(
                (*path, "uses"),
                f"jobs.{job_id}.uses must name a reusable workflow as "
                f"'./.github/workflows/FILE.yml', '$/.github/workflows/FILE.yml' or "
                f"'OWNER/REPO/.github/workflows/FILE.yml@REF', not '{job['uses']}'",
            )
        steps = job.get("steps")
        if isinstance(steps, list):
            ids: dict[str, str] = {}
            for index, step in enumerate(steps):
                self.step(job_id, ("jobs", job_id, "steps", index), step, ids)

    def step(
        self, job_id: str, path: Path, step: Any, ids: dict[str, str], *, grouped: bool = False
    ) -> None:
        """One step; ``ids`` maps the ids of the job's earlier steps to how messages name them;
        ``grouped``: inside a ``parallel`` block, where only ``run`` and ``uses`` steps go."""
        label = _describe(path)
        if not isinstance(step, dict):
            self.report(path, f"{label} must be a mapping with 'run' or 'uses'")
            return
        runs, uses = "run" in step, "uses" in step
        controls = [key for key in CONTROL_STEPS if key in step]
        kinds = (["run"] if runs else []) + (["uses"] if uses else []) + controls
        if grouped and (controls or "background" in step):
            for key in controls or ["background"]:
                self.report(
                    (*path, key),
                    f"'{key}' is not allowed inside a parallel block"
                    + ("; its steps already run in the background" if key == "background" else ""),
                    at_key=True,
                )
            return
        if runs and uses:
            self.report(
                path,
                f"{label} has both 'run' and 'uses'; a step runs a command or an action, not both",
            )
        elif len(kinds) > 1:
            self.report(
                path, f"{label} has both '{kinds[0]}' and '{kinds[1]}'; a step does one of them"
            )
            return
        elif not kinds:
            self.report(
                path,
                f"{label} has neither 'run' nor 'uses' (nor 'parallel', 'wait', 'wait-all' or "
                f"'cancel')",
            )
        if controls:
            self.control(job_id, path, step, controls[0], ids)
            return
        chosen = USES_STEP if uses and not runs else RUN_STEP
        if runs and uses:
            chosen = mapping({**(RUN_STEP.properties or {}), **(USES_STEP.properties or {})})
        self.check(step, chosen, path, None, other=RUN_STEP if chosen is USES_STEP else USES_STEP)
        action = step.get("uses")
        if isinstance(action, str) and action and not _ACTION.fullmatch(action.strip()):
            self.report(
                (*path, "uses"),
                f"{dotted((*path, 'uses'))} must be './PATH', '$/PATH', 'docker://IMAGE' or "
                f"'OWNER/REPO[/PATH]@REF', not '{action}'",
            )
        self.step_id(job_id, path, step, ids)

    def step_id(self, job_id: str, path: Path, step: dict[str, Any], ids: dict[str, str]) -> None:
        step_id = step.get("id")
        if isinstance(step_id, str) and step_id:
            if not IDENTIFIER.fullmatch(step_id) or step_id.startswith("__"):
                self.report(
                    (*path, "id"),
                    f"invalid step id '{step_id}': a step id must start with a letter or '_' and "
                    f"contain only letters, digits, '-' and '_' ('__' starts the ids GitHub "
                    f"makes up)",
                )
            elif step_id in ids:
                self.report(
                    (*path, "id"),
                    f"duplicate step id '{step_id}' in job '{job_id}' (also {ids[step_id]})",
                )
            else:
                ids[step_id] = _describe(path).removesuffix(f" of job '{job_id}'")

    def control(
        self, job_id: str, path: Path, step: dict[str, Any], kind: str, ids: dict[str, str]
    ) -> None:
        """A ``parallel`` group, or a ``wait``/``wait-all``/``cancel`` of background steps."""
        self.check(step, CONTROL_STEPS[kind], path, None)
        value = step.get(kind)
        if kind == "parallel":
            for index, inner in enumerate(value if isinstance(value, list) else []):
                self.step(job_id, (*path, "parallel", index), inner, ids, grouped=True)
            return
        if kind == "wait-all" and value is False:
            self.report((*path, kind), "wait-all must be true or empty")
        targets = [value] if isinstance(value, str) else value if kind == "wait" else []
        for index, target in enumerate(targets if isinstance(targets, list) else []):
            where = (*path, kind) if isinstance(value, str) else (*path, kind, index)
            if not isinstance(target, str) or not target:
                continue
            if target == step.get("id"):
                self.report(where, f"{_describe(path)} cannot {kind} for itself")
            elif target not in ids:
                known = ", ".join(ids) or "none"
                self.report(
                    where,
                    f"{kind}: '{target}' is not the id of an earlier step of job '{job_id}' "
                    f"(earlier ids: {known})",
                )
        self.step_id(job_id, path, step, ids)

    def on_expressions(self, on: Any) -> None:
        """The few places under ``on:`` that take expressions (reusable workflow inputs/outputs)."""
        if not isinstance(on, dict):
            return
        call = on.get("workflow_call")
        if not isinstance(call, dict):
            return
        for section, key, context in (
            ("inputs", "default", CALL_INPUT_DEFAULT),
            ("outputs", "value", CALL_OUTPUT_VALUE),
        ):
            entries = call.get(section)
            if not isinstance(entries, dict):
                continue
            for name, entry in entries.items():
                if isinstance(entry, dict) and isinstance(entry.get(key), str):
                    self.expressions(
                        entry[key],
                        context,
                        ("on", "workflow_call", section, name, key),
                        condition=False,
                    )

    def expressions(self, text: str, context: Context, path: Path, *, condition: bool) -> None:
        for problem in check_expression_text(text, context, condition=condition):
            self.report(
                path,
                f"invalid expression in {dotted(path)}: {problem.message}",
                offset=problem.offset,
            )

    def check(
        self,
        value: Any,
        rule: Rule,
        path: Path,
        context: Context | None,
        *,
        other: Rule | None = None,
    ) -> None:
        if rule.context is not None:
            context = rule.context if context is None else _union(context, rule.context)
        if (
            isinstance(value, str)
            and (has_expression(value) or rule.condition)
            and context is not None
        ):
            self.expressions(value, context, path, condition=rule.condition)
            whole = value.strip().startswith("${{") and value.strip().endswith("}}")
            if whole or rule.condition or "any" in rule.kinds or "string" in rule.kinds:
                return
            self.report(path, f"{dotted(path)} must be {rule.expected(True)}")
            return
        if "any" in rule.kinds:
            if context is not None:
                self.scan(value, path, context)
            return
        kind = _kind(value)
        if kind not in rule.kinds and not (
            kind in {"number", "boolean"} and "string" in rule.kinds
        ):
            self.report(path, f"{dotted(path)} must be {rule.expected(context is not None)}")
            return
        if kind == "string":
            if rule.allowed and value not in rule.allowed:
                self.report(path, f"{dotted(path)} must be {rule.expected(False)}, not '{value}'")
            elif rule.non_empty and not value:
                self.report(path, f"{dotted(path)} must not be empty")
        elif kind == "mapping":
            self.mapping(value, rule, path, context, other)
        elif kind == "sequence":
            if rule.non_empty and not value:
                self.report(path, f"{dotted(path)} must not be an empty list")
            if rule.items is not None:
                for index, item in enumerate(value):
                    self.check(item, rule.items, (*path, index), context)

    def mapping(
        self,
        value: dict[str, Any],
        rule: Rule,
        path: Path,
        context: Context | None,
        other: Rule | None,
    ) -> None:
        properties = rule.properties or {}
        for key, item in value.items():
            if key in properties:
                self.check(item, properties[key], (*path, key), context)
            elif rule.values is not None:
                if not key:
                    self.report((*path, key), f"{dotted(path)} has an empty key", at_key=True)
                elif has_expression(key) and not _INSERT.fullmatch(key):
                    self.report(
                        (*path, key),
                        f"{dotted(path)} keys cannot be expressions ('{key}')",
                        at_key=True,
                    )
                self.check(item, rule.values, (*path, key), context)
            else:
                self.report((*path, key), _unknown_key(key, path, properties, other), at_key=True)
        for key in rule.required:
            if key not in value:
                self.report(path, f"{_describe(path)} is missing the required key '{key}'")

    def scan(self, value: Any, path: Path, context: Context) -> None:
        """Check the expressions in a free-form value (e.g. a matrix): every string, every key."""
        if isinstance(value, str):
            if has_expression(value):
                self.expressions(value, context, path, condition=False)
        elif isinstance(value, dict):
            for key, item in value.items():
                if has_expression(key) and not _INSERT.fullmatch(key):
                    self.expressions(key, context, (*path, key), condition=False)
                self.scan(item, (*path, key), context)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.scan(item, (*path, index), context)


@functools.cache
def _union(inherited: Context, own: Context) -> Context:
    """What a key allows: what its parents allow plus its own (GitHub's template reader rule)."""
    return Context(inherited.names | own.names, inherited.functions | own.functions)


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    return "sequence"


def _describe(path: Path) -> str:
    """How messages name the mapping at ``path``."""
    if not path:
        return "the workflow"
    if len(path) == 2 and path[0] == "jobs":
        return f"job '{path[1]}'"
    if len(path) == 4 and path[0] == "jobs" and path[2] == "steps" and isinstance(path[3], int):
        return f"step {path[3] + 1} of job '{path[1]}'"
    if len(path) == 6 and path[4] == "parallel" and isinstance(path[3], int):
        return f"step {path[3] + 1}.{int(path[5]) + 1} of job '{path[1]}'"
    return f"'{dotted(path)}'"


def _unknown_key(key: str, path: Path, properties: Mapping[str, Rule], other: Rule | None) -> str:
    hint = (
        _variant_hint(key, other) if other is not None and key in (other.properties or {}) else ""
    )
    message = (
        f"unknown key '{key}' in {_describe(path)}{hint}; expected one of: "
        f"{', '.join(sorted(properties))}"
    )
    close = difflib.get_close_matches(key, list(properties), n=1)
    return message + (f" (did you mean '{close[0]}'?)" if close else "")


def _variant_hint(key: str, other: Rule) -> str:
    if other is CALL_JOB:
        return f" ('{key}' is only for a job that calls a reusable workflow with 'uses')"
    if other is STEPS_JOB:
        return f" ('{key}' is not allowed in a job that calls a reusable workflow)"
    if other is USES_STEP:
        return f" ('{key}' is only for a step that runs an action with 'uses')"
    if other is RUN_STEP:
        return f" ('{key}' is only for a step with 'run')"
    return ""
