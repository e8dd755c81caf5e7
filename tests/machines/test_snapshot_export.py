"""Exporting a snapshot to a host folder and importing it into other directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmrunner.errors import SnapshotError
from vmrunner.machines.snapshots import DirectorySnapshots, import_trees


def listing(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under ``root``: kind, permission bits, content or link target."""
    found: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        mode = path.lstat().st_mode & 0o777
        if path.is_symlink():
            found[name] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            found[name] = ("dir", mode, "")
        else:
            found[name] = ("file", mode, path.read_text())
    return found


async def test_an_export_is_the_trees_as_they_were_and_imports_elsewhere(tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    for root in (home, tmp):
        root.mkdir()
    (home / "kept.txt").write_text("base")
    (home / "gone.txt").write_text("deleted later")
    at_base = listing(home)
    async with DirectorySnapshots({"home": home, "tmp": tmp}, tmp_path / "storage") as engine:
        base = engine.list()[0].id
        (home / "kept.txt").write_text("step 1")
        (home / "dir").mkdir()
        (home / "dir" / "tool").write_text("#!/bin/sh\n")
        (home / "dir" / "tool").chmod(0o755)
        (home / "link").symlink_to("dir/tool")
        (home / "gone.txt").unlink()
        (tmp / "t").write_text("temp")
        first = await engine.snapshot("step 1")
        expected = {"home": listing(home), "tmp": listing(tmp)}
        (home / "kept.txt").write_text("step 2, not in the export")
        await engine.snapshot("step 2")

        engine.export_sync(first, tmp_path / "export")
        engine.export_sync(base, tmp_path / "base")
        with pytest.raises(SnapshotError, match="unknown snapshot"):
            engine.export_sync("nope", tmp_path / "other")
    assert {name: listing(tmp_path / "export" / name) for name in ("home", "tmp")} == expected
    assert listing(tmp_path / "base" / "home") == at_base

    fresh = {"home": tmp_path / "new-home", "tmp": tmp_path / "new-tmp"}
    for root in fresh.values():
        root.mkdir()
        (root / "stale").write_text("removed by the import")
    import_trees(tmp_path / "export", fresh)
    assert {name: listing(root) for name, root in fresh.items()} == expected
    with pytest.raises(SnapshotError, match="not an exported snapshot"):
        import_trees(tmp_path / "export", {"elsewhere": tmp_path / "new-home"})
