"""The layering rules of DESIGN.md, checked on the source: each layer imports only those below
it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vmrunner"

#: For each layer (a module prefix), the vmrunner modules it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "vmrunner.workflow": (
        "vmrunner.machines",
        "vmrunner.sessions",
        "vmrunner.runner",
        "vmrunner.server",
        "vmrunner.cli",
        "vmrunner.store",
    ),
    "vmrunner.machines": (
        "vmrunner.workflow",
        "vmrunner.sessions",
        "vmrunner.runner",
        "vmrunner.server",
        "vmrunner.cli",
        "vmrunner.store",
    ),
    "vmrunner.store": (
        "vmrunner.workflow",
        "vmrunner.machines",
        "vmrunner.sessions",
        "vmrunner.runner",
        "vmrunner.server",
        "vmrunner.cli",
    ),
    "vmrunner.sessions": (
        "vmrunner.workflow",
        "vmrunner.runner",
        "vmrunner.server",
        "vmrunner.cli",
    ),
    "vmrunner.runner": ("vmrunner.server", "vmrunner.cli", "vmrunner.learning"),
    # Reports and learning are built from the events the engine emits; they never import it.
    "vmrunner.reports": ("vmrunner.runner", "vmrunner.learning", "vmrunner.server", "vmrunner.cli"),
    "vmrunner.learning": ("vmrunner.runner", "vmrunner.server", "vmrunner.cli"),
    # Where actions come from and what they declare: below the engine, above machines and git.
    "vmrunner.actions": (
        "vmrunner.sessions", "vmrunner.runner", "vmrunner.reports", "vmrunner.learning",
        "vmrunner.server", "vmrunner.cli", "vmrunner.fleet", "vmrunner.store",
    ),
    # The artifact and cache services: below the engine, above the store and config.
    "vmrunner.services": (
        "vmrunner.runner", "vmrunner.server", "vmrunner.cli", "vmrunner.fleet",
        "vmrunner.sessions", "vmrunner.learning", "vmrunner.reports",
    ),
    "vmrunner.errors": ("vmrunner.",),
    # git on the host, for the engine, the server's mirrors and the CLI alike.
    "vmrunner.repository": (
        "vmrunner.workflow", "vmrunner.machines", "vmrunner.sessions", "vmrunner.runner",
        "vmrunner.reports", "vmrunner.learning", "vmrunner.server", "vmrunner.cli",
        "vmrunner.fleet", "vmrunner.store",
    ),
}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))
MODULE_NAMES = {_module_name(path) for path in MODULES}


def _module_imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports anywhere: at the top, in functions and under
    ``TYPE_CHECKING`` alike; ``from package import module`` counts as importing the module."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULE_NAMES else base)
    return {name for name in found if name in MODULE_NAMES and name != module}


def test_the_package_has_no_import_cycle() -> None:
    graph = {_module_name(path): _module_imports(path) for path in MODULES}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
    assert set(order) == MODULE_NAMES


def test_the_cycle_check_counts_imports_under_type_checking_and_in_functions() -> None:
    # vmrunner/__init__.py imports the public API only under TYPE_CHECKING (and lazily).
    assert "vmrunner.runner.run" in _module_imports(PACKAGE / "__init__.py")
    # sessions.py imports the providers inside a function.
    assert "vmrunner.machines.providers" in _module_imports(PACKAGE / "sessions.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_layer_imports_only_layers_below(path: Path) -> None:
    module = _module_name(path)
    imported = _imports(path)
    for layer, forbidden in FORBIDDEN.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        bad = sorted(name for name in imported for prefix in forbidden if name.startswith(prefix))
        assert not bad, f"{module} (layer {layer}) imports {bad}"


def test_agent_is_stdlib_only() -> None:
    """The guest agent is copied into VMs: it may import nothing but the standard library."""
    import sys

    agent = PACKAGE / "machines" / "agent.py"
    if not agent.exists():
        pytest.skip("agent not written yet")
    top_level = {name.split(".")[0] for name in _imports(agent)}
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level - set(
        sys.stdlib_module_names
    )


def _records(path: Path) -> list[str]:
    """The public record classes (dataclasses and NamedTuples) defined in a module."""

    def is_record(node: ast.ClassDef) -> bool:
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name == "dataclass":
                return True
        return any(getattr(base, "id", "") == "NamedTuple" for base in node.bases)

    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and is_record(node) and not node.name.startswith("_")
    ]


#: The suffix of each layer's records (issue 14): the engine returns outcomes, reports hold
#: results, the stores hold rows.
RECORD_SUFFIXES = {
    "vmrunner.runner": "Outcome",
    "vmrunner.reports": "Result",
    "vmrunner.store": "Row",
    "vmrunner.fleet.store": "Row",
}


def test_each_record_is_defined_once_under_its_layers_name() -> None:
    """No two public record classes of the package share a name (one record, one definition:
    two ``StepResult``s, ``RunRow``s or ``SnapshotInfo``s once existed), and the engine, the
    reports and the stores use no other layer's word (Outcome, Result, Row) for their records."""
    defined: dict[str, list[str]] = {}
    for path in MODULES:
        if path.name.startswith("_") and path.name != "__init__.py":
            continue  # a private module's classes are its own
        for name in _records(path):
            defined.setdefault(name, []).append(_module_name(path))
    twice = {name: modules for name, modules in defined.items() if len(modules) > 1}
    assert not twice, f"records defined more than once: {twice}"
    words = set(RECORD_SUFFIXES.values())
    for name, [module] in defined.items():
        for layer, own in RECORD_SUFFIXES.items():
            if module == layer or module.startswith(layer + "."):
                wrong = [word for word in words - {own} if name.endswith(word)]
                assert not wrong, f"{module}.{name}: the records of {layer} are *{own}"
    assert {"StepOutcome", "StepResult", "SnapshotRow", "RunRow"} <= set(defined)


def test_the_engine_stays_small() -> None:
    """``runner/`` is the engine only (issue 14: at most 3,500 lines); what grows beside it
    belongs in ``reports/``, ``learning/``, ``machines/`` or ``workflow/``."""
    engine = Path(__file__).resolve().parents[1] / "vmrunner" / "runner"
    lines = sum(len(path.read_text(encoding="utf-8").splitlines()) for path in engine.glob("*.py"))
    assert lines <= 3500, f"vmrunner/runner/ has {lines} lines"
