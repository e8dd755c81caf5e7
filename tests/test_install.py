"""A plain ``pip install .`` in a fresh virtualenv can import every module but the fleet's.

The fleet (``vmrunner.fleet``) needs its extra (``pip install 'vmrunner[fleet]'``); nothing else
may need a development dependency (``jsonschema``, ``pytest`` ...) to be imported.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

IMPORT_ALL = """
import importlib, pkgutil, sys
import vmrunner
assert "site-packages" in vmrunner.__file__, vmrunner.__file__
failed, imported = [], ["vmrunner"]
for module in pkgutil.walk_packages(vmrunner.__path__, "vmrunner."):
    if module.name == "vmrunner.fleet" or module.name.startswith("vmrunner.fleet."):
        continue
    if module.name == "vmrunner.__main__":  # runs the CLI
        continue
    try:
        importlib.import_module(module.name)
        imported.append(module.name)
    except Exception as exc:
        failed.append(f"{module.name}: {type(exc).__name__}: {exc}")
for name in ("jsonschema", "pytest", "hypothesis", "procrastinate", "psycopg"):
    if name in sys.modules:
        failed.append(f"{name} was imported")
print(" ".join(imported))
sys.exit("\\n".join(failed) or None)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_plain_install_imports_every_module_but_the_fleets(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(
        ROOT / "vmrunner", source / "vmrunner", ignore=shutil.ignore_patterns("__pycache__")
    )
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    ran = subprocess.run([python, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    expected = set()
    for path in (ROOT / "vmrunner").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[1:2] != ["fleet"] and parts[-1] != "__main__":
            expected.add(".".join(parts))
    assert set(ran.stdout.split()) == expected
