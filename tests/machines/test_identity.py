"""The ids of a machine's files: ``chown_tree`` gives a tree to the machine's user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmrunner.machines.identity import chown_tree


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other owners needs root")
def test_chown_tree_gives_everything_and_keeps_set_id_bits(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "inner").mkdir(parents=True)
    program = root / "inner" / "program"
    program.write_bytes(b"#!/bin/sh\n")
    program.chmod(0o6755)
    (root / "link").symlink_to("/etc/hostname")  # a link to a host file: the link, never it
    host_owner = os.stat("/etc/hostname").st_uid
    chown_tree(str(root), 101001, 101002)
    for path in (root, root / "inner", program, root / "link"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (101001, 101002), path
    assert stat.S_IMODE(program.stat().st_mode) == 0o6755
    assert os.stat("/etc/hostname").st_uid == host_owner
