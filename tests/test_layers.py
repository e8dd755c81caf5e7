"""The layering rules of DESIGN.md, checked on the source: each layer imports only those below it."""

from __future__ import annotations

import ast
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
    "vmrunner.store": ("vmrunner.workflow", "vmrunner.machines", "vmrunner.sessions", "vmrunner.runner", "vmrunner.server", "vmrunner.cli"),
    "vmrunner.sessions": ("vmrunner.workflow", "vmrunner.runner", "vmrunner.server", "vmrunner.cli"),
    "vmrunner.runner": ("vmrunner.server", "vmrunner.cli"),
    "vmrunner.errors": ("vmrunner.",),
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
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level - set(sys.stdlib_module_names)
