"""The public API: what ``vmrunner/__init__.py`` exports is exactly what was meant to be."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import vmrunner
from vmrunner import errors

INIT = Path(vmrunner.__file__)


def _type_checking_imports() -> dict[str, str]:
    """Name -> module of the imports under ``if TYPE_CHECKING:`` in ``vmrunner/__init__.py``."""
    found: dict[str, str] = {}
    for node in ast.parse(INIT.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom)
                assert statement.module
                found.update({alias.name: statement.module for alias in statement.names})
    return found


@pytest.mark.parametrize("name", vmrunner.__all__)
def test_every_exported_name_imports(name: str) -> None:
    value = getattr(vmrunner, name)
    assert value is not None
    if inspect.isclass(value) or inspect.isfunction(value):
        assert value.__name__ == name


def test_all_is_sorted_without_duplicates() -> None:
    assert list(vmrunner.__all__) == sorted(set(vmrunner.__all__))


def test_star_import_gives_every_exported_name() -> None:
    namespace: dict[str, object] = {}
    exec("from vmrunner import *", namespace)
    assert set(vmrunner.__all__) <= set(namespace)


def test_every_exception_is_exported() -> None:
    exceptions = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    }
    assert exceptions
    assert exceptions <= set(vmrunner.__all__), sorted(exceptions - set(vmrunner.__all__))
    for name in exceptions:
        assert getattr(vmrunner, name) is getattr(errors, name)


def test_lazy_names_match_their_type_checking_imports_and_all() -> None:
    lazy = vmrunner._LAZY
    assert _type_checking_imports() == lazy
    eager = {"__version__", "vmrunner_home", "Diagnostic"} | {
        name for name in vmrunner.__all__ if inspect.isclass(getattr(errors, name, None))
    }
    assert set(vmrunner.__all__) == set(lazy) | eager


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        vmrunner.Nothing  # noqa: B018
