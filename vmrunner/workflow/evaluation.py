"""Evaluating workflow values that may hold ``${{ }}`` expressions, with the run's contexts.

Strings are templates (a whole-string expression keeps its value's kind); mappings and lists
are evaluated recursively, and a mapping key ``${{ insert }}`` merges the mapping it maps to,
as GitHub's template reader does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vmrunner.errors import ConfigError
from vmrunner.workflow.expressions import EvaluationHooks, parse_template, to_string, truthy

_INSERT = "insert"


def render(
    value: Any, contexts: Mapping[str, Any], hooks: EvaluationHooks | None = None,
    *, splice: bool = False,
) -> Any:
    """``value`` with every expression in it evaluated; with ``splice`` (a matrix, as GitHub
    reads one), a list item that is an expression giving a list is replaced by its items."""
    if isinstance(value, str):
        if "${{" not in value:
            return value
        return parse_template(value, contexts=contexts.keys()).render(contexts, hooks)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and _is_insert(key):
                inserted = render(item, contexts, hooks, splice=splice)
                if not isinstance(inserted, Mapping):
                    raise ConfigError(
                        f"'${{{{ insert }}}}' needs a mapping, got {to_string(inserted)!r}"
                    )
                result.update(inserted)
            else:
                result[to_string(render(key, contexts, hooks))] = render(
                    item, contexts, hooks, splice=splice
                )
        return result
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for item in value:
            done = render(item, contexts, hooks, splice=splice)
            if splice and isinstance(item, str) and isinstance(done, list):
                items.extend(done)
            else:
                items.append(done)
        return items
    return value


def _is_insert(key: str) -> bool:
    text = key.strip()
    return text.startswith("${{") and text.endswith("}}") and text[3:-2].strip() == _INSERT


def render_text(
    value: Any, contexts: Mapping[str, Any], hooks: EvaluationHooks | None = None
) -> str:
    """The value as a string, the way GitHub turns it into an environment variable or input."""
    return as_text(render(value, contexts, hooks))


def as_text(value: Any) -> str:
    if isinstance(value, Mapping | list):
        return json.dumps(value)
    return to_string(value)


def render_env(
    env: Mapping[str, Any] | str, contexts: Mapping[str, Any], hooks: EvaluationHooks | None = None
) -> dict[str, str]:
    """An ``env:`` (a mapping, or one expression producing one) as strings."""
    value = render(env, contexts, hooks)
    if not isinstance(value, Mapping):
        raise ConfigError(f"env must be a mapping, the expression gave {as_text(value)!r}")
    return {str(key): as_text(item) for key, item in value.items()}


def render_flag(
    value: bool | str | None, contexts: Mapping[str, Any], hooks: EvaluationHooks | None = None
) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    return truthy(render(value, contexts, hooks))


def render_minutes(
    value: float | int | str | None, contexts: Mapping[str, Any], what: str
) -> float | None:
    if value is None:
        return None
    rendered = render(value, contexts) if isinstance(value, str) else value
    try:
        minutes = float(rendered)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be a number of minutes, got {as_text(rendered)!r}") from exc
    if minutes <= 0:
        raise ConfigError(f"{what} must be positive, got {as_text(rendered)}")
    return minutes
