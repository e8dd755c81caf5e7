"""The ``on:`` section of a workflow, and deciding whether an event runs the workflow.

Works on plain values (what YAML loading gives) and reports ``Problem``s whose paths start at
``"on"``. Which keys each event takes and which activity types exist follow GitHub's "Events
that trigger workflows" and its workflow schema; matching follows the documented rules for
activity types and the branch, tag, path and workflow filters.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from vmrunner.errors import ConfigError
from vmrunner.workflow.filters import matches_any, validate_pattern
from vmrunner.workflow.problems import Path, Problem, kind_of_value

InputType = Literal["string", "boolean", "number", "choice", "environment"]
INPUT_TYPES: tuple[str, ...] = get_args(InputType)
CALL_INPUT_TYPES = ("string", "boolean", "number")

_PR_TYPES = (
    "assigned", "unassigned", "labeled", "unlabeled", "opened", "edited", "closed", "reopened",
    "synchronize", "converted_to_draft", "locked", "unlocked", "enqueued", "dequeued",
    "milestoned", "demilestoned", "ready_for_review", "review_requested",
    "review_request_removed", "auto_merge_enabled", "auto_merge_disabled",
)  # fmt: skip
_CREATED_EDITED_DELETED = ("created", "edited", "deleted")

ACTIVITY_TYPES: Mapping[str, tuple[str, ...]] = {
    "branch_protection_rule": _CREATED_EDITED_DELETED,
    "check_run": ("created", "rerequested", "completed", "requested_action"),
    "check_suite": ("completed",),
    "discussion": (
        "created", "edited", "deleted", "transferred", "pinned", "unpinned", "labeled",
        "unlabeled", "locked", "unlocked", "category_changed", "answered", "unanswered",
    ),
    "discussion_comment": _CREATED_EDITED_DELETED,
    "image_version": ("created", "ready", "deleted"),
    "issue_comment": _CREATED_EDITED_DELETED,
    "issues": (
        "opened", "edited", "deleted", "transferred", "pinned", "unpinned", "closed", "reopened",
        "assigned", "unassigned", "labeled", "unlabeled", "locked", "unlocked", "milestoned",
        "demilestoned", "field_added", "field_removed", "typed", "untyped",
    ),
    "label": _CREATED_EDITED_DELETED,
    "merge_group": ("checks_requested",),
    "milestone": ("created", "closed", "opened", "edited", "deleted"),
    "project": ("created", "closed", "reopened", "edited", "deleted"),
    "project_card": ("created", "moved", "converted", "edited", "deleted"),
    "project_column": ("created", "updated", "moved", "deleted"),
    "pull_request": _PR_TYPES,
    "pull_request_comment": _CREATED_EDITED_DELETED,
    "pull_request_review": ("submitted", "edited", "dismissed"),
    "pull_request_review_comment": _CREATED_EDITED_DELETED,
    "pull_request_target": _PR_TYPES,
    "registry_package": ("published", "updated"),
    "release": (
        "published", "unpublished", "created", "edited", "deleted", "prereleased", "released",
    ),
    "watch": ("started",),
    "workflow_run": ("requested", "completed", "in_progress"),
}  # fmt: skip
"""The activity types GitHub documents per event; other webhook actions start no workflow."""

DEFAULT_TYPES: Mapping[str, tuple[str, ...]] = {
    "pull_request": ("opened", "synchronize", "reopened"),
    "pull_request_target": ("opened", "synchronize", "reopened"),
}
"""Types used when ``types`` is absent, where GitHub's default is not "all documented types"."""

_BRANCH_FILTERS = ("branches", "branches-ignore")
_TAG_FILTERS = ("tags", "tags-ignore")
_PATH_FILTERS = ("paths", "paths-ignore")

EVENT_KEYS: Mapping[str, tuple[str, ...]] = {
    **{event: ("types",) for event in ACTIVITY_TYPES},
    "repository_dispatch": ("types",),
    "image_version": ("types", "names", "versions"),
    "merge_group": ("types", *_BRANCH_FILTERS),
    "pull_request": ("types", *_BRANCH_FILTERS, *_PATH_FILTERS),
    "pull_request_target": ("types", *_BRANCH_FILTERS, *_PATH_FILTERS),
    "push": (*_BRANCH_FILTERS, *_TAG_FILTERS, *_PATH_FILTERS),
    "workflow_run": ("types", "workflows", *_BRANCH_FILTERS),
    "workflow_dispatch": ("inputs",),
    "workflow_call": ("inputs", "outputs", "secrets"),
    "schedule": (),
    **{
        event: ()
        for event in (
            "create", "delete", "deployment", "deployment_status", "fork", "gollum",
            "page_build", "public", "status",
        )
    },
}  # fmt: skip
"""Every event a workflow can listen to, with the keys its configuration may have."""

EVENTS: tuple[str, ...] = tuple(sorted(EVENT_KEYS))

_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_DISPATCH_INPUT_KEYS = ("description", "required", "type", "default", "options")
_CALL_INPUT_KEYS = ("description", "required", "type", "default")
DIFF_FILE_LIMIT = 300
"""GitHub checks path filters against the first 300 changed files only."""


@dataclass(frozen=True, slots=True)
class DispatchInput:
    """One input of ``workflow_dispatch`` or ``workflow_call``; ``default`` is already typed.

    ``default`` is ``None`` when the workflow gives none (``resolve_dispatch_inputs`` then uses
    the type's empty value: ``""``, ``False`` or ``0``).
    """

    name: str
    description: str = ""
    required: bool = False
    type: InputType = "string"
    default: Any = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """One event under ``on:`` with its filters; ``None`` means the filter is absent.

    ``types`` is the configured activity types (``None``: GitHub's default for the event, see
    ``DEFAULT_TYPES``). ``inputs`` is for ``workflow_dispatch``/``workflow_call``, ``cron`` for
    ``schedule``, ``workflows`` for ``workflow_run``. ``raw`` keeps the event's configuration as
    written, for what this model does not interpret (e.g. ``workflow_call`` outputs/secrets).
    """

    event: str
    types: tuple[str, ...] | None = None
    branches: tuple[str, ...] | None = None
    branches_ignore: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    tags_ignore: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    paths_ignore: tuple[str, ...] | None = None
    inputs: Mapping[str, DispatchInput] = field(default_factory=dict)
    cron: tuple[str, ...] = ()
    workflows: tuple[str, ...] | None = None
    raw: Any = None


@dataclass(frozen=True, slots=True)
class Triggers:
    """Every event a workflow listens to, in the order written."""

    events: Mapping[str, EventTrigger] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.events)

    def get(self, event: str) -> EventTrigger | None:
        return self.events.get(event)


# --- parsing ---------------------------------------------------------------------------------


class _Checker:
    """Collects problems while reading one ``on:`` value."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def report(self, path: Path, message: str, *, warning: bool = False) -> None:
        self.problems.append(Problem(path, message, warning))

    def strings(self, value: Any, path: Path, what: str) -> tuple[str, ...] | None:
        """A non-empty string or a list of them, as a tuple; ``None`` (reported) otherwise."""
        if isinstance(value, str):
            if not value:
                self.report(path, f"{what} must not be empty")
                return None
            return (value,)
        if not isinstance(value, list):
            self.report(
                path, f"{what} must be a string or a list of strings, got {kind_of_value(value)}"
            )
            return None
        items = []
        for index, item in enumerate(value):
            if isinstance(item, str) and item:
                items.append(item)
            else:
                got = "an empty string" if item == "" else kind_of_value(item)
                self.report((*path, index), f"{what} entries must be non-empty strings, got {got}")
        return tuple(items)




def parse_on(raw: Any) -> tuple[Triggers, list[Problem]]:
    """Read an ``on:`` value in any of its forms; report every problem found."""
    checker = _Checker()
    root: Path = ("on",)
    configs: dict[str, tuple[Any, Path]] = {}
    if isinstance(raw, str):
        configs[raw] = (None, root)
    elif isinstance(raw, list):
        for index, name in enumerate(raw):
            if not isinstance(name, str):
                checker.report(
                    (*root, index), f"event names must be strings, got {kind_of_value(name)}"
                )
            elif name in configs:
                checker.report((*root, index), f"event {name!r} is listed twice")
            else:
                configs[name] = (None, (*root, index))
    elif isinstance(raw, dict):
        for name, config in raw.items():
            if not isinstance(name, str):
                checker.report(root, f"event names must be strings, got {kind_of_value(name)}")
            else:
                configs[name] = (config, (*root, name))
    else:
        checker.report(
            root,
            f"on must be an event name, a list of event names or a map of events, got "
            f"{kind_of_value(raw)}",
        )
    if not configs and not checker.problems:
        checker.report(root, "on lists no events; the workflow would never run")
    events: dict[str, EventTrigger] = {}
    for name, (config, path) in configs.items():
        if name not in EVENT_KEYS:
            close = difflib.get_close_matches(name, EVENTS, n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; expected one of: {', '.join(EVENTS)}"
            )
            checker.report(path, f"unknown event {name!r}{hint}")
            continue
        events[name] = _parse_event(name, config, path, checker)
    return Triggers(events), checker.problems


def _unknown(what: str, allowed: Sequence[str]) -> str:
    if not allowed:
        return f"unknown {what}"
    return f"unknown {what}; expected one of: {', '.join(allowed)}"


def _parse_event(name: str, config: Any, path: Path, checker: _Checker) -> EventTrigger:
    if name == "schedule":
        return EventTrigger(name, cron=_parse_schedule(config, path, checker), raw=config)
    if config is None:
        return EventTrigger(name, raw=config)
    if not isinstance(config, dict):
        checker.report(path, f"{name} must be empty (null) or a map, got {kind_of_value(config)}")
        return EventTrigger(name, raw=config)
    allowed = EVENT_KEYS[name]
    for key in config:
        if key not in allowed:
            # GitHub reads an event's configuration loosely: a key the event does not take
            # (`create: tags:`) is ignored, and the workflow still runs; so this only warns.
            ignored = f"{name} takes no filters" if not allowed else "it filters nothing"
            checker.report(
                (*path, key),
                f"{_unknown(f'key {key!r} for {name}', allowed)}; GitHub ignores it ({ignored})",
                warning=True,
            )
    values: dict[str, tuple[str, ...] | None] = {}
    for key in (
        "types",
        "workflows",
        "names",
        "versions",
        *_BRANCH_FILTERS,
        *_TAG_FILTERS,
        *_PATH_FILTERS,
    ):
        if key in config and key in allowed:
            values[key] = checker.strings(config[key], (*path, key), key)
    if values.get("types") is not None and name in ACTIVITY_TYPES:
        _check_types(name, config["types"], values["types"] or (), path, checker)
    for include, exclude in (_BRANCH_FILTERS, _TAG_FILTERS, _PATH_FILTERS):
        if include in config and exclude in config:
            checker.report(
                (*path, exclude),
                f"{name} cannot use both {include} and {exclude}; use {include} with "
                f"'!pattern' entries to exclude",
            )
        for key in (include, exclude):
            _check_patterns(config, key, values.get(key), path, checker)
    inputs: dict[str, DispatchInput] = {}
    if "inputs" in config and name in ("workflow_dispatch", "workflow_call"):
        inputs = _parse_inputs(name, config["inputs"], (*path, "inputs"), checker)
    if name == "workflow_call":
        _check_call_definitions(config, path, checker)
    return EventTrigger(
        name,
        types=values.get("types"),
        branches=values.get("branches"),
        branches_ignore=values.get("branches-ignore"),
        tags=values.get("tags"),
        tags_ignore=values.get("tags-ignore"),
        paths=values.get("paths"),
        paths_ignore=values.get("paths-ignore"),
        inputs=inputs,
        workflows=values.get("workflows"),
        raw=config,
    )


def _check_types(
    name: str, raw: Any, types: tuple[str, ...], path: Path, checker: _Checker
) -> None:
    known = ACTIVITY_TYPES[name]
    for index, activity in enumerate(types):
        if activity not in known:
            where = (*path, "types") if isinstance(raw, str) else (*path, "types", index)
            checker.report(where, _unknown(f"activity type {activity!r} for {name}", known))


def _check_patterns(
    config: Mapping[str, Any],
    key: str,
    patterns: tuple[str, ...] | None,
    path: Path,
    checker: _Checker,
) -> None:
    if not patterns:
        return
    single = isinstance(config[key], str)
    for index, pattern in enumerate(patterns):
        message = validate_pattern(pattern)
        if message:
            checker.report((*path, key) if single else (*path, key, index), message)


def _parse_schedule(config: Any, path: Path, checker: _Checker) -> tuple[str, ...]:
    if config is None:
        return ()
    if not isinstance(config, list):
        checker.report(
            path, f"schedule must be a list of {{cron: ...}} entries, got {kind_of_value(config)}"
        )
        return ()
    crons = []
    for index, entry in enumerate(config):
        where = (*path, index)
        if not isinstance(entry, dict) or "cron" not in entry:
            checker.report(
                where, "schedule entries must be maps with a cron key, e.g. cron: '30 5 * * 1'"
            )
            continue
        for key in entry:
            if key != "cron":
                checker.report(
                    (*where, key), _unknown(f"key {key!r} in a schedule entry", ("cron",))
                )
        expr = entry["cron"]
        if not isinstance(expr, str):
            checker.report((*where, "cron"), f"cron must be a string, got {kind_of_value(expr)}")
            continue
        from vmrunner.workflow.cron import validate_cron  # schedules are few: not at import

        message = validate_cron(expr)
        if message:
            checker.report((*where, "cron"), message)
        else:
            crons.append(expr)
    return tuple(crons)


def _parse_inputs(event: str, raw: Any, path: Path, checker: _Checker) -> dict[str, DispatchInput]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        checker.report(
            path, f"inputs must be a map of input names to definitions, got {kind_of_value(raw)}"
        )
        return {}
    inputs: dict[str, DispatchInput] = {}
    for name, definition in raw.items():
        where = (*path, str(name))
        if not isinstance(name, str) or not _INPUT_NAME.match(name):
            checker.report(
                where,
                f"input name {name!r} must start with a letter or _ and hold only letters, "
                "digits, - and _",
            )
            continue
        parsed = _parse_input(event, name, definition, where, checker)
        if parsed is not None:
            inputs[name] = parsed
    return inputs


def _parse_input(
    event: str, name: str, definition: Any, path: Path, checker: _Checker
) -> DispatchInput | None:
    if definition is None and event == "workflow_dispatch":
        return DispatchInput(name)
    if not isinstance(definition, dict):
        checker.report(
            path,
            f"input {name!r} must be a map (description, type, ...), got "
            f"{kind_of_value(definition)}",
        )
        return None
    allowed = _DISPATCH_INPUT_KEYS if event == "workflow_dispatch" else _CALL_INPUT_KEYS
    for key in definition:
        if key not in allowed:
            checker.report((*path, key), _unknown(f"key {key!r} for input {name!r}", allowed))
    description = definition.get("description", "")
    if not isinstance(description, str):
        checker.report(
            (*path, "description"),
            f"description must be a string, got {kind_of_value(description)}",
        )
        description = ""
    required = definition.get("required", False)
    if not isinstance(required, bool):
        checker.report(
            (*path, "required"), f"required must be true or false, got {kind_of_value(required)}"
        )
        required = False
    types = INPUT_TYPES if event == "workflow_dispatch" else CALL_INPUT_TYPES
    kind = definition.get("type")
    if kind is None and event == "workflow_dispatch":
        kind = "string"
    if kind is None:
        checker.report(path, f"input {name!r} needs a type: one of {', '.join(types)}")
        return None
    if kind not in types and event == "workflow_dispatch":
        # GitHub's parser reads ``on.workflow_dispatch`` loosely: a type it does not know
        # (``type: int``) does not stop the workflow; the input is then plain text.
        checker.report(
            (*path, "type"),
            f"{_unknown(f'input type {kind!r}', types)}; GitHub still runs the workflow, and "
            "the input is taken as a string",
            warning=True,
        )
        kind = "string"
    elif kind not in types:
        checker.report((*path, "type"), _unknown(f"input type {kind!r}", types))
        return None
    options = _parse_options(definition, path, checker) if event == "workflow_dispatch" else ()
    if kind == "choice" and not options:
        checker.report(path, f"input {name!r} of type choice needs a non-empty options list")
    default = None
    if "default" in definition:
        default = _typed_default(
            cast(InputType, kind), definition["default"], options, path, checker
        )
    return DispatchInput(name, description, required, cast(InputType, kind), default, options)


def _parse_options(definition: Mapping[str, Any], path: Path, checker: _Checker) -> tuple[str, ...]:
    raw = definition.get("options")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        checker.report(
            (*path, "options"), f"options must be a list of strings, got {kind_of_value(raw)}"
        )
        return ()
    options = []
    for index, option in enumerate(raw):
        if isinstance(option, dict | list) or option is None:
            checker.report(
                (*path, "options", index), f"options must be strings, got {kind_of_value(option)}"
            )
        else:
            options.append(_scalar_text(option))
    return tuple(options)


def _scalar_text(value: Any) -> str:
    """A YAML scalar as the string GitHub sees (``true``, ``1.5``, ``text``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _typed_default(
    kind: InputType, value: Any, options: tuple[str, ...], path: Path, checker: _Checker
) -> Any:
    where = (*path, "default")
    if isinstance(value, str) and "${{" in value:
        return value  # workflow_call defaults may be expressions, evaluated by the caller
    if kind == "boolean":
        if not isinstance(value, bool):
            checker.report(
                where, f"the default of a boolean input must be true or false, got {value!r}"
            )
            return None
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            checker.report(where, f"the default of a number input must be a number, got {value!r}")
            return None
        return value
    if isinstance(value, dict | list) or value is None:
        checker.report(
            where, f"the default of a {kind} input must be a string, got {kind_of_value(value)}"
        )
        return None
    text = _scalar_text(value)
    if kind == "choice" and options and text not in options:
        checker.report(where, f"default {text!r} is not among the options: {', '.join(options)}")
    return text


def _check_call_definitions(config: Mapping[str, Any], path: Path, checker: _Checker) -> None:
    """Shape checks for ``workflow_call`` secrets and outputs (kept raw in the trigger)."""
    for section, keys, required in (
        ("secrets", ("description", "required"), None),
        ("outputs", ("description", "value"), "value"),
    ):
        raw = config.get(section)
        if raw is None:
            continue
        where = (*path, section)
        if not isinstance(raw, dict):
            checker.report(where, f"{section} must be a map, got {kind_of_value(raw)}")
            continue
        for name, definition in raw.items():
            entry = (*where, str(name))
            if definition is None and section == "secrets":
                continue
            if not isinstance(definition, dict):
                checker.report(
                    entry,
                    f"{section} entry {name!r} must be a map, got {kind_of_value(definition)}",
                )
                continue
            for key in definition:
                if key not in keys:
                    checker.report(
                        (*entry, key), _unknown(f"key {key!r} in {section} entry {name!r}", keys)
                    )
            if required and required not in definition:
                checker.report(entry, f"{section} entry {name!r} needs a {required}")


# --- matching --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Whether an event runs the workflow, and why (for ``vmrunner list`` and debugging)."""

    matched: bool
    reason: str

    def __bool__(self) -> bool:
        return self.matched


def match_event(
    triggers: Triggers,
    event_name: str,
    payload: Mapping[str, Any],
    *,
    changed_files: Sequence[str] | None = None,
) -> bool:
    """Whether GitHub would start this workflow for ``event_name`` with ``payload``.

    ``changed_files`` is the diff GitHub would compute (the runner computes it); ``None`` means
    it is unknown, in which case path filters pass, as GitHub runs when it cannot compute a diff.
    """
    return explain_match(triggers, event_name, payload, changed_files=changed_files).matched


def explain_match(
    triggers: Triggers,
    event_name: str,
    payload: Mapping[str, Any],
    *,
    changed_files: Sequence[str] | None = None,
) -> MatchResult:
    """``match_event`` with the reason for the decision."""
    trigger = triggers.get(event_name)
    if trigger is None:
        return MatchResult(False, f"the workflow does not listen to {event_name}")
    checks = (
        _match_types(trigger, payload),
        _match_refs(trigger, payload),
        _match_workflows(trigger, payload),
        _match_schedule(trigger, payload),
        _match_paths(trigger, payload, changed_files),
    )
    for result in checks:
        if result is not None and not result.matched:
            return result
    reasons = [result.reason for result in checks if result is not None]
    return MatchResult(True, "; ".join(reasons) or f"the workflow listens to {event_name}")


def _match_types(trigger: EventTrigger, payload: Mapping[str, Any]) -> MatchResult | None:
    wanted = trigger.types or DEFAULT_TYPES.get(trigger.event) or ACTIVITY_TYPES.get(trigger.event)
    if not wanted:
        return None
    action = payload.get("action")
    if not isinstance(action, str):
        return MatchResult(True, "the payload has no action, so the types filter does not apply")
    if action in wanted:
        return MatchResult(True, f"activity type {action!r} is selected")
    origin = "listed types" if trigger.types else "default types"
    return MatchResult(
        False, f"activity type {action!r} is not among the {origin}: {', '.join(wanted)}"
    )


def _short_ref(ref: str, prefix: str) -> str:
    return ref[len(prefix) :] if ref.startswith(prefix) else ref


def _strip_pattern_prefix(patterns: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """Let ``refs/heads/main`` (full ref) patterns select what ``main`` would."""
    stripped = []
    for pattern in patterns:
        negation = "!" if pattern.startswith("!") else ""
        stripped.append(negation + _short_ref(pattern[len(negation) :], prefix))
    return tuple(stripped)


def _filter_ref(
    include: tuple[str, ...] | None,
    exclude: tuple[str, ...] | None,
    name: str,
    prefix: str,
    what: str,
) -> MatchResult:
    if include is not None:
        if matches_any(_strip_pattern_prefix(include, prefix), name):
            return MatchResult(True, f"{what} {name!r} matches the {what}es filter")
        return MatchResult(False, f"{what} {name!r} does not match the {what}es filter")
    if exclude is not None and matches_any(_strip_pattern_prefix(exclude, prefix), name):
        return MatchResult(False, f"{what} {name!r} is ignored by the {what}es-ignore filter")
    return MatchResult(True, f"{what} {name!r} is not filtered out")


def _match_branches(trigger: EventTrigger, branch: Any) -> MatchResult | None:
    if trigger.branches is None and trigger.branches_ignore is None:
        return None
    if not isinstance(branch, str):
        return MatchResult(False, "branch filters are set but the payload names no branch")
    name = _short_ref(branch, "refs/heads/")
    return _filter_ref(trigger.branches, trigger.branches_ignore, name, "refs/heads/", "branch")


def _match_refs(trigger: EventTrigger, payload: Mapping[str, Any]) -> MatchResult | None:
    event = trigger.event
    if event == "push":
        return _match_push_ref(trigger, payload.get("ref"))
    if event in ("pull_request", "pull_request_target"):
        return _match_branches(trigger, _dig(payload, "pull_request", "base", "ref"))
    if event == "merge_group":
        return _match_branches(trigger, _dig(payload, "merge_group", "base_ref"))
    if event == "workflow_run":
        return _match_branches(trigger, _dig(payload, "workflow_run", "head_branch"))
    return None


def _match_push_ref(trigger: EventTrigger, ref: Any) -> MatchResult | None:
    branch_filter = trigger.branches is not None or trigger.branches_ignore is not None
    tag_filter = trigger.tags is not None or trigger.tags_ignore is not None
    if not branch_filter and not tag_filter:
        return None
    ref = ref if isinstance(ref, str) else ""
    if ref.startswith("refs/heads/"):
        if not branch_filter:
            return MatchResult(False, "only tag filters are set, so branch pushes do not run")
        return _match_branches(trigger, ref)
    if ref.startswith("refs/tags/"):
        if not tag_filter:
            return MatchResult(False, "only branch filters are set, so tag pushes do not run")
        name = _short_ref(ref, "refs/tags/")
        return _filter_ref(trigger.tags, trigger.tags_ignore, name, "refs/tags/", "tag")
    return MatchResult(
        False, f"ref {ref!r} is neither a branch nor a tag, so ref filters reject it"
    )


def _match_workflows(trigger: EventTrigger, payload: Mapping[str, Any]) -> MatchResult | None:
    if trigger.event != "workflow_run":
        return None
    if not trigger.workflows:
        return MatchResult(False, "workflow_run lists no workflows, so no run triggers it")
    names = {
        value
        for value in (
            _dig(payload, "workflow_run", "name"),
            _dig(payload, "workflow", "name"),
            _dig(payload, "workflow_run", "path"),
            _dig(payload, "workflow", "path"),
        )
        if isinstance(value, str) and value
    }
    listed = [name for name in trigger.workflows if name in names]
    if listed:
        return MatchResult(True, f"workflow {listed[0]!r} is listed")
    shown = ", ".join(sorted(names)) or "unknown"
    return MatchResult(
        False, f"the triggering workflow ({shown}) is not among: {', '.join(trigger.workflows)}"
    )


def _match_schedule(trigger: EventTrigger, payload: Mapping[str, Any]) -> MatchResult | None:
    if trigger.event != "schedule":
        return None
    cron = payload.get("schedule")
    if not isinstance(cron, str):
        return None
    if cron in trigger.cron:
        return MatchResult(True, f"schedule {cron!r} is listed")
    return MatchResult(False, f"schedule {cron!r} is not one of this workflow's crons")


def _match_paths(
    trigger: EventTrigger, payload: Mapping[str, Any], changed_files: Sequence[str] | None
) -> MatchResult | None:
    if trigger.paths is None and trigger.paths_ignore is None:
        return None
    ref = payload.get("ref")
    if trigger.event == "push" and isinstance(ref, str) and ref.startswith("refs/tags/"):
        return MatchResult(True, "path filters are not evaluated for tag pushes")
    if changed_files is None:
        return MatchResult(
            True,
            "the changed files are unknown, so path filters pass (as GitHub does without a diff)",
        )
    if not changed_files:
        return MatchResult(False, "no files changed, so path filters reject the event")
    files = changed_files[:DIFF_FILE_LIMIT]
    if trigger.paths is not None:
        hit = next((path for path in files if matches_any(trigger.paths, path)), None)
        if hit is None:
            return MatchResult(False, "no changed file matches the paths filter")
        return MatchResult(True, f"changed file {hit!r} matches the paths filter")
    if trigger.paths_ignore is None:  # not reached: no filter at all returned None above
        return None
    kept = next((path for path in files if not matches_any(trigger.paths_ignore, path)), None)
    if kept is None:
        return MatchResult(False, "every changed file is ignored by paths-ignore")
    return MatchResult(True, f"changed file {kept!r} is not ignored by paths-ignore")


def _dig(payload: Mapping[str, Any], *keys: str) -> Any:
    value: Any = payload
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def payload_changed_files(payload: Mapping[str, Any]) -> list[str] | None:
    """The files a push webhook payload says changed, or ``None`` when it cannot tell.

    Webhook payloads list added/modified/removed files per commit (at most 2048 commits);
    pull request payloads list none, so the runner has to ask git or the API.
    """
    if payload.get("deleted") is True:
        return []
    commits = payload.get("commits")
    if not isinstance(commits, list) or not commits or len(commits) >= 2048:
        return None
    files: dict[str, None] = {}
    for commit in commits:
        if not isinstance(commit, Mapping):
            return None
        for key in ("added", "removed", "modified"):
            listed = commit.get(key)
            if not isinstance(listed, list):
                return None
            files.update((path, None) for path in listed if isinstance(path, str))
    return list(files)


# --- inputs ----------------------------------------------------------------------------------


def resolve_dispatch_inputs(trigger: EventTrigger, provided: Mapping[str, Any]) -> dict[str, Any]:
    """The ``inputs`` context for a dispatch or call: provided values typed, defaults applied.

    Raises ``ConfigError`` for an unknown input, a missing required one, or a value that does
    not fit the input's type (GitHub rejects all three). Numbers come back as ``float`` (the
    expression language has one number type); a ``workflow_call`` default written as an
    expression comes back as written, for the caller to evaluate.
    """
    unknown = [name for name in provided if name not in trigger.inputs]
    if unknown:
        known = ", ".join(trigger.inputs) or "none"
        raise ConfigError(
            f"unknown input {unknown[0]!r} for {trigger.event}; known inputs: {known}"
        )
    resolved: dict[str, Any] = {}
    for name, spec in trigger.inputs.items():
        if name in provided:
            resolved[name] = _convert_input(spec, provided[name])
        elif spec.default is not None:
            number = spec.type == "number" and not isinstance(spec.default, str)
            resolved[name] = float(spec.default) if number else spec.default
        elif spec.required:
            raise ConfigError(f"input {name!r} is required by {trigger.event}")
        else:
            resolved[name] = {"boolean": False, "number": 0.0}.get(spec.type, "")
    return resolved


def _convert_input(spec: DispatchInput, value: Any) -> Any:
    if spec.type == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("true", "false"):
            raise ConfigError(
                f"input {spec.name!r} is a boolean: give true or false, not {value!r}"
            )
        return text == "true"
    if spec.type == "number":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise ConfigError(f"input {spec.name!r} is a number, not {value!r}")
        return number
    text = _scalar_text(value)
    if spec.type == "choice" and text not in spec.options:
        raise ConfigError(
            f"input {spec.name!r} must be one of: {', '.join(spec.options)}; got {text!r}"
        )
    return text
