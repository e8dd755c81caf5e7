"""``vmrunner run --local-repository/--offline/--repository-mirror`` as a real process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli.helpers import vmrunner

WORKFLOW = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/upload-artifact@v4
      - uses: actions/checkout@v4
        with:
          repository: octo/lib
          path: lib
      - run: test -f lib/lib.txt
"""


def project(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(WORKFLOW)
    local = tmp_path / "upload"
    local.mkdir()
    (local / "action.yml").write_text(
        "runs:\n  using: composite\n  steps:\n    - run: echo replaced locally\n      shell: bash\n"
    )
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "lib.txt").write_text("lib\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "lib"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=lib, check=True
        )
    return root


def test_flags_replace_the_action_and_the_repository(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = vmrunner(
        "run", "--offline", "--local-repository",
        f"actions/upload-artifact@v4={tmp_path / 'upload'}", "--repository-mirror",
        f"octo/lib={tmp_path / 'lib'}", cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replaced locally" in result.stdout


def test_bad_flag_values_are_messages(tmp_path: Path) -> None:
    root = project(tmp_path)
    for args, message in (
        (["--local-repository", "actions/upload-artifact=/x"], "expected OWNER/REPO@REF=PATH"),
        (["--repository-mirror", f"octo/lib={tmp_path}"], "is not a git repository"),
    ):
        result = vmrunner("run", *args, cwd=root)
        assert result.returncode != 0
        assert message in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
