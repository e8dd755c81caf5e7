"""The first minute with vmrunner, through its entry point: act's dotfiles and config files,
``vmrunner config``, running from a sub-folder, ``-j`` typos, a provider that cannot start,
``runs show latest``/``-1``, ``-q``'s table and shell completion."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.helpers import vmrunner

ECHO = """\
on: [push, workflow_dispatch]
jobs:
  show:
    runs-on: ubuntu-latest
    steps:
      - run: >-
          echo "secret=${{ secrets.TOKEN }} var=${{ vars.COLOUR }}
          env=$GREETING in=${{ inputs.who }}"
  deploy:
    runs-on: ubuntu-latest
    steps:
      - run: echo deployed
"""


def repository(tmp_path: Path, workflow: str = ECHO) -> Path:
    root = tmp_path / "repo"
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(workflow)
    (root / "src" / "deep").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_dotfiles_at_the_root_are_read_and_flags_override_them(tmp_path: Path) -> None:
    root = repository(tmp_path)
    (root / ".secrets").write_text("TOKEN=from-dotfile-s3cret\n")
    (root / ".vars").write_text("COLOUR=blue\n")
    (root / ".env").write_text("GREETING=hello\n")
    (root / ".input").write_text("who=world\n")
    ran = vmrunner("run", "workflow_dispatch", "-j", "show", cwd=root / "src" / "deep")
    assert ran.returncode == 0, ran.stderr
    assert "secret=*** var=blue env=hello in=world" in ran.stdout
    assert "from-dotfile-s3cret" not in ran.stdout
    (tmp_path / "other.env").write_text("GREETING=howdy\n")
    ran = vmrunner(
        "run", "workflow_dispatch", "-j", "show", "--env-file",
        str(tmp_path / "other.env"), "--var", "COLOUR=red", "--input", "who=you", cwd=root,
    )
    assert ran.returncode == 0, ran.stderr
    assert "secret=*** var=red env=howdy in=you" in ran.stdout


def test_config_files_give_defaults_and_vmrunner_config_says_where_from(tmp_path: Path) -> None:
    root = repository(tmp_path)
    user = tmp_path / "xdg" / "vmrunner"
    user.mkdir(parents=True)
    (user / "config.toml").write_text('[run]\nconcurrent-jobs = 3\npool = 1\n')
    (root / ".vmrunner.toml").write_text(
        '[run]\npool = 0\nsetup-command = "echo from-config"\nactor = "octocat"\n'
    )
    (root / ".secrets").write_text("TOKEN=x\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "VMRUNNER_PROVIDER": "host"}
    shown = vmrunner("config", "--json", cwd=root / "src", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = {row["flag"]: row for row in json.loads(shown.stdout)["settings"]}
    assert rows["--concurrent-jobs"] == {
        "flag": "--concurrent-jobs", "value": 3, "source": str(user / "config.toml")
    }
    assert rows["--pool"]["value"] == 0
    assert rows["--pool"]["source"] == str(root / ".vmrunner.toml")
    assert rows["--secret-file"] == {
        "flag": "--secret-file", "value": str(root / ".secrets"), "source": ".secrets"
    }
    assert rows["--provider"]["source"] == "environment VMRUNNER_PROVIDER"
    assert rows["--snapshot"]["source"] == "default"
    text = vmrunner("config", cwd=root, env=env).stdout
    assert "x\n" not in text.replace(".secrets", "")  # a secret's value is never shown
    ran = vmrunner("run", "-j", "show", cwd=root, env={**os.environ, **{
        "XDG_CONFIG_HOME": str(tmp_path / "xdg")}})
    assert ran.returncode == 0, ran.stderr
    assert "from-config" in ran.stdout
    ran = vmrunner("run", "-j", "show", "--actor", "me", "-n", "--json", cwd=root)
    assert ran.returncode == 0, ran.stderr
    for args, expected in (
        (("config", "list"), "--workflows"),
        (("config", "runs"), "no flags of its own"),
        (("config", "nope"), "no command 'nope'"),
    ):
        shown = vmrunner(*args, cwd=root)
        assert expected in shown.stdout + shown.stderr
        assert "Traceback" not in shown.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[run]\nconcurent-jobs = 2\n', "[run] concurent-jobs: no such flag of `vmrunner run`"),
        ('[run]\npool = "many"\n', "[run] pool: Invalid value for '--pool': 'many' is not"),
        ("pool = 2\n", "settings go in a table per command"),
        ("[run\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    root = repository(tmp_path)
    (root / "vmrunner.toml").write_text(text)
    ran = vmrunner("run", "-n", cwd=root)
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    assert str(root / "vmrunner.toml") in ran.stderr
    assert expected in ran.stderr


def test_runs_from_any_folder_of_the_repository(tmp_path: Path) -> None:
    root = repository(tmp_path)
    for args in (("list",), ("run", "-j", "deploy")):
        ran = vmrunner(*args, cwd=root / "src" / "deep")
        assert ran.returncode == 0, ran.stderr
        assert "deploy" in ran.stdout
        assert "rev-parse" not in ran.stderr


def test_a_mistyped_job_gets_the_closest_names(tmp_path: Path) -> None:
    root = repository(tmp_path)
    ran = vmrunner("run", "-j", "deplyo", cwd=root)
    assert ran.returncode == 1
    assert "no workflow has a job named 'deplyo' (did you mean 'deploy'?)" in ran.stderr
    assert "`vmrunner list`" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_provider_that_cannot_start_is_told_once_before_any_job(tmp_path: Path) -> None:
    root = tmp_path / "plain"  # no git: nothing on PATH is needed before the provider
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(ECHO)
    bin_dir = Path(os.__file__).parent  # a PATH without bwrap
    env = {**os.environ, "PATH": str(bin_dir)}
    ran = vmrunner("run", cwd=root, env=env)
    assert ran.returncode == 1
    assert ran.stderr.count("bubblewrap (bwrap) is not installed: apt-get install bubblewrap") == 1
    assert "the sandbox provider cannot start machines" in ran.stderr
    assert "show" not in ran.stdout  # no job started, no table
    env = {**os.environ, "VMRUNNER_ID_RANGE": "nonsense"}
    ran = vmrunner("run", cwd=root, env=env)
    assert ran.returncode == 1
    assert ran.stderr.count("VMRUNNER_ID_RANGE='nonsense'") == 1
    assert "Traceback" not in ran.stderr


def test_runs_show_latest_and_minus_n_and_quiet_prints_the_table(tmp_path: Path) -> None:
    root = repository(tmp_path)
    first = vmrunner("run", "-q", "-j", "deploy", cwd=root)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert any(line.split()[:3] == ["✓", "deploy", "success"] for line in lines), first.stdout
    assert "deployed" not in first.stdout  # quiet: no output of steps that passed
    second = vmrunner("run", "-j", "show", cwd=root)
    assert second.returncode == 0, second.stderr
    latest = vmrunner("runs", "show", "latest", "--json", cwd=root)
    minus_one = vmrunner("runs", "show", "-1", "--json", cwd=root)
    minus_two = vmrunner("runs", "show", "-2", "--json", cwd=root)
    assert latest.returncode == minus_one.returncode == minus_two.returncode == 0
    assert [j["job_key"] for j in json.loads(latest.stdout)["jobs"]] == ["show"]
    assert json.loads(minus_one.stdout)["run_id"] == json.loads(latest.stdout)["run_id"]
    assert [j["job_key"] for j in json.loads(minus_two.stdout)["jobs"]] == ["deploy"]
    missing = vmrunner("runs", "show", "-9", cwd=root)
    assert missing.returncode == 1
    assert "no run '-9': 2 runs are kept" in missing.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_and_job_names(tmp_path: Path, shell: str) -> None:
    root = repository(tmp_path)
    script = vmrunner("completion", shell, cwd=root)
    assert script.returncode == 0, script.stderr
    assert "_VMRUNNER_COMPLETE" in script.stdout
    env = {
        **os.environ, "_VMRUNNER_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": "vmrunner run -j d", "COMP_CWORD": "d" if shell == "fish" else "3",
    }
    completed = vmrunner(cwd=root / "src", env=env)
    assert completed.returncode == 0, completed.stderr
    assert "deploy" in completed.stdout
    assert "show" not in completed.stdout
    env["COMP_WORDS"], env["COMP_CWORD"] = "vmrunner ru", "ru" if shell == "fish" else "1"
    assert "run" in vmrunner(cwd=root, env=env).stdout


def test_an_image_builds_stages_are_shown(capsys: pytest.CaptureFixture[str]) -> None:
    from vmrunner.cli.image import build_progress

    with build_progress(quiet=False) as stage:
        stage("download the kernel package")
        stage("make the ext4 file system")
    err = capsys.readouterr().err
    assert "  download the kernel package ...\n  make the ext4 file system ..." in err
    with build_progress(quiet=True) as stage:
        stage("convert it to qcow2")
    assert capsys.readouterr().err == ""


def test_standard_labels_are_quiet_and_an_unmapped_one_is_told_once(tmp_path: Path) -> None:
    root = repository(tmp_path, ECHO.replace("ubuntu-latest", "[self-hosted, gpu-box]"))
    ran = vmrunner("run", cwd=root)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("runs-on labels gpu-box are not mapped to a machine type") == 1
    assert "self-hosted" not in ran.stdout.split("not mapped")[0].rsplit("\n", 1)[-1]
    quiet = vmrunner("run", cwd=repository(tmp_path / "std"))
    assert quiet.returncode == 0, quiet.stderr
    assert "not mapped" not in quiet.stdout
