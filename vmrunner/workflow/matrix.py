"""``strategy:`` of a job and the expansion of its ``matrix`` into combinations, as GitHub does.

Expansion (GitHub's "Using a matrix for your jobs"):

1. the cartesian product of the variables, in the order written, the first varying slowest;
2. ``exclude``: an entry removes every combination holding all of its key/values;
3. ``include``: each entry is merged into every remaining original combination whose ORIGINAL
   values it does not contradict (values added by earlier entries may be overwritten); an entry
   merged into none becomes a combination of its own, after the original ones.

Variable names are case-insensitive (``OS`` and ``os`` are the same variable); values are any
JSON value, compared by deep equality (``true`` is not ``1``). At most 256 combinations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from vmrunner.errors import Diagnostic, MatrixError
from vmrunner.workflow.problems import Path, Problem, dotted, kind_of_value

MAX_COMBINATIONS = 256
"""GitHub's limit of jobs one matrix may produce."""

_MAX_PRODUCT = 1_000_000
"""Beyond this many product combinations we refuse to enumerate, even if excludes would trim."""

_FILTERS = ("include", "exclude")
_STRATEGY_KEYS = ("matrix", "fail-fast", "max-parallel")


@dataclass(frozen=True, slots=True)
class Strategy:
    """A job's strategy as written; parts may still be ``${{ }}`` expression strings.

    ``matrix`` is the raw mapping (or one expression string, or ``None`` without a matrix); the
    runner evaluates expressions, then calls ``expand_matrix`` on concrete values.
    """

    matrix: Mapping[str, Any] | str | None = None
    fail_fast: bool | str = True
    max_parallel: int | str | None = None


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and "${{" in value


def parse_strategy(raw: Any, path: Path) -> tuple[Strategy, list[Problem]]:
    """Read a ``strategy:`` value (``path`` is where it sits); report every problem found."""
    problems: list[Problem] = []
    if not isinstance(raw, dict):
        hint = "; use expressions inside it instead" if _is_expression(raw) else ""
        problems.append(
            Problem(
                path,
                f"strategy must be a map (matrix, fail-fast, max-parallel), got "
                f"{kind_of_value(raw)}{hint}",
            )
        )
        return Strategy(), problems
    for key in raw:
        if key not in _STRATEGY_KEYS:
            problems.append(
                Problem(
                    (*path, str(key)),
                    f"unknown key {key!r} in strategy; "
                    f"expected one of: {', '.join(_STRATEGY_KEYS)}",
                )
            )
    fail_fast = raw.get("fail-fast", True)
    if not isinstance(fail_fast, bool) and not _is_expression(fail_fast):
        problems.append(
            Problem(
                (*path, "fail-fast"),
                f"fail-fast must be true, false or an expression, got {kind_of_value(fail_fast)}",
            )
        )
        fail_fast = True
    max_parallel = raw.get("max-parallel")
    if max_parallel is not None and not _is_expression(max_parallel):
        max_parallel = _whole_number(max_parallel)
        if max_parallel is None or max_parallel < 1:
            problems.append(
                Problem(
                    (*path, "max-parallel"),
                    f"max-parallel must be a whole number of at least 1, got "
                    f"{raw['max-parallel']!r}",
                )
            )
            max_parallel = None
    matrix = raw.get("matrix")
    if "matrix" in raw:
        if _is_expression(matrix):
            pass
        elif isinstance(matrix, dict):
            problems += [
                Problem((*path, "matrix", *where), message)
                for where, message in _matrix_problems(matrix, concrete=False)
            ]
        else:
            problems.append(
                Problem(
                    (*path, "matrix"),
                    f"matrix must be a map of variables to lists of values, or an expression, got "
                    f"{kind_of_value(matrix)}",
                )
            )
            matrix = None
    return Strategy(matrix, fail_fast, max_parallel), problems


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None




def _matrix_problems(matrix: Mapping[Any, Any], *, concrete: bool) -> list[tuple[Path, str]]:
    """What is wrong with a matrix mapping; ``concrete``: expressions are no longer allowed."""
    problems: list[tuple[Path, str]] = []

    def allowed_expression(value: Any, where: Path) -> bool:
        if not _is_expression(value):
            return False
        if concrete:
            problems.append((where, "still holds an expression; evaluate it before expanding"))
        return True

    seen: dict[str, str] = {}
    vectors = 0
    for key, value in matrix.items():
        if not isinstance(key, str) or not key:
            problems.append(
                ((str(key),), f"matrix variable names must be non-empty strings, got {key!r}")
            )
            continue
        if key in _FILTERS:
            if allowed_expression(value, (key,)):
                continue
            if not isinstance(value, list):
                problems.append(
                    ((key,), f"{key} must be a list of maps, got {kind_of_value(value)}")
                )
                continue
            for index, entry in enumerate(value):
                if isinstance(entry, dict):
                    problems += [
                        (
                            (key, index, str(name)),
                            f"{key} keys must be non-empty strings, got {name!r}",
                        )
                        for name in entry
                        if not isinstance(name, str) or not name
                    ]
                elif not allowed_expression(entry, (key, index)):
                    problems.append(
                        (
                            (key, index),
                            f"{key} entries must be maps of variable to value, got "
                            f"{kind_of_value(entry)}",
                        )
                    )
            continue
        folded = key.lower()
        if folded in seen:
            problems.append(
                (
                    (key,),
                    f"matrix variable {key!r} repeats {seen[folded]!r} "
                    "(names are case-insensitive)",
                )
            )
            continue
        seen[folded] = key
        vectors += 1
        if allowed_expression(value, (key,)):
            continue
        if not isinstance(value, list):
            problems.append(
                (
                    (key,),
                    f"matrix variable {key!r} must be a list of values, got {kind_of_value(value)}",
                )
            )
        elif not value:
            problems.append(((key,), f"matrix variable {key!r} has no values"))
    if not vectors and not matrix.get("include"):
        problems.append(((), "matrix must define at least one variable or an include list"))
    exclude = matrix.get("exclude")
    if isinstance(exclude, list):
        for index, entry in enumerate(exclude):
            if isinstance(entry, dict):
                for key in entry:
                    if (
                        isinstance(key, str)
                        and key.lower() not in seen
                        and key.lower() not in _FILTERS
                    ):
                        problems.append(
                            (
                                ("exclude", index, key),
                                f"exclude key {key!r} is not a matrix variable",
                            )
                        )
    return problems


def expand_matrix(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a concrete matrix, in GitHub's order.

    Raises ``MatrixError`` when the matrix is malformed, still holds expressions, expands to
    nothing, or to more than ``MAX_COMBINATIONS`` combinations.
    """
    if not isinstance(matrix, Mapping):
        _fail(f"matrix must be a map, got {kind_of_value(matrix)}")
    problems = _matrix_problems(matrix, concrete=True)
    if problems:
        raise MatrixError(
            [
                Diagnostic("", 0, 0, f"{dotted(('matrix', *where))}: {message}")
                for where, message in problems
            ]
        )
    vectors = {key: value for key, value in matrix.items() if key not in _FILTERS}
    originals = _product_without_excludes(vectors, matrix.get("exclude") or [])
    original_keys = {key.lower() for key in vectors}
    extra: list[dict[str, Any]] = []
    for entry in matrix.get("include") or []:
        merged = False
        for combination in originals:
            if _fits(entry, combination, original_keys):
                _merge(combination, entry)
                merged = True
        if not merged:
            extra.append(dict(entry))
    combinations = originals + extra
    if not combinations:
        _fail("matrix expands to no combination: every combination is excluded")
    if len(combinations) > MAX_COMBINATIONS:
        _fail(
            f"matrix expands to {len(combinations)} combinations; GitHub allows at most "
            f"{MAX_COMBINATIONS}"
        )
    return combinations


def _fail(message: str) -> NoReturn:
    raise MatrixError(Diagnostic("", 0, 0, message))


def _product_without_excludes(
    vectors: Mapping[str, list[Any]], exclude: list[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    if not vectors:
        return []
    size = math.prod(len(values) for values in vectors.values())
    if size > _MAX_PRODUCT:
        _fail(
            f"matrix has {size} combinations before exclude; GitHub allows at most "
            f"{MAX_COMBINATIONS}"
        )
    keys = list(vectors)
    kept: list[dict[str, Any]] = []
    for values in itertools.product(*vectors.values()):
        combination = dict(zip(keys, values, strict=True))
        if any(_contains(combination, entry) for entry in exclude):
            continue
        kept.append(combination)
        if len(kept) > MAX_COMBINATIONS:
            _fail(
                f"matrix expands to more than {MAX_COMBINATIONS} combinations ({size} before "
                f"exclude); GitHub allows at most {MAX_COMBINATIONS}"
            )
    return kept


def _lookup(combination: Mapping[str, Any], key: str) -> tuple[str, Any] | None:
    """The (spelling, value) of ``key`` in ``combination``, ignoring case."""
    if key in combination:
        return key, combination[key]
    folded = key.lower()
    for name, value in combination.items():
        if name.lower() == folded:
            return name, value
    return None


def _contains(combination: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """Whether ``combination`` holds every key/value of ``entry`` (an exclude's partial match)."""
    for key, value in entry.items():
        found = _lookup(combination, key)
        if found is None or not json_equal(found[1], value):
            return False
    return True


def _fits(
    entry: Mapping[str, Any], combination: Mapping[str, Any], original_keys: set[str]
) -> bool:
    """Whether ``entry`` can merge into ``combination`` without changing an original value."""
    for key, value in entry.items():
        if key.lower() in original_keys:
            found = _lookup(combination, key)
            if found is None or not json_equal(found[1], value):
                return False
    return True


def _merge(combination: dict[str, Any], entry: Mapping[str, Any]) -> None:
    for key, value in entry.items():
        found = _lookup(combination, key)
        combination[found[0] if found else key] = value


def json_equal(left: Any, right: Any) -> bool:
    """Deep equality of JSON values, where booleans are not numbers (``true`` is not ``1``)."""
    if type(left) is type(right) and isinstance(left, str | int | float | bool | None):
        return bool(left == right)
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            json_equal(a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(
            json_equal(left[key], right[key]) for key in left
        )
    if isinstance(left, list | Mapping | int | float) or isinstance(
        right, list | Mapping | int | float
    ):
        return False
    return bool(left == right)
