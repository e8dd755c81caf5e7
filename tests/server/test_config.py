"""Server configuration: TOML and YAML files, repository flags, precise errors; the CLI's checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmrunner.errors import ConfigError
from vmrunner.server.config import ServerConfig, parse_repo_flag, read_config_file

TOML = """
[server]
port = 9000
concurrent_runs = 3
drain_seconds = 2.5

[repositories]
"octo/app" = "https://github.com/octo/app.git"
"octo/lib" = { url = "/srv/git/lib", secrets = { NPM_TOKEN = "npm-secret" } }
"""

YAML = """
server:
  port: 9000
  concurrent_runs: 3
  drain_seconds: 2.5
repositories:
  octo/app: https://github.com/octo/app.git
  octo/lib:
    url: /srv/git/lib
    secrets: {NPM_TOKEN: npm-secret}
"""


def test_toml_and_yaml_give_the_same_settings(tmp_path):
    (tmp_path / "s.toml").write_text(TOML)
    (tmp_path / "s.yaml").write_text(YAML)
    from_toml = read_config_file(tmp_path / "s.toml")
    assert from_toml == read_config_file(tmp_path / "s.yaml")
    config = ServerConfig(webhook_secret=b"w", github_token="t", **from_toml)
    assert config.port == 9000
    assert config.concurrent_runs == 3
    assert config.repository("OCTO/Lib").url == "/srv/git/lib"
    assert config.repository("octo/other") is None
    assert set(config.secret_values()) == {"w", "t", "npm-secret"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nport = 'x'\n", "server.port must be a integer"),
        ("[server]\nprot = 1\n", "server.prot is not a setting"),
        ("[servers]\n", "unknown section 'servers'"),
        ("[repositories]\nnoslash = 'x'\n", "'noslash' is not a repository name"),
        ("[repositories]\n\"a/b\" = { path = 'x' }\n", "repositories.'a/b' must be a URL or path"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_bad_files_get_a_precise_message(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config_file(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_repo_flags():
    repo = parse_repo_flag("octo/app=/srv/app")
    assert (repo.name, repo.url) == ("octo/app", "/srv/app")
    for bad in ("octo/app", "octo=/x", "=/x"):
        with pytest.raises(ConfigError):
            parse_repo_flag(bad)


def test_serve_without_a_secret_or_repositories_explains_and_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("VMRUNNER_WEBHOOK_SECRET", raising=False)
    done = subprocess.run(
        [sys.executable, "-m", "vmrunner", "serve", "--repo", "a/b=/x"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "VMRUNNER_WEBHOOK_SECRET" in done.stderr
    assert "Traceback" not in done.stderr
    monkeypatch.setenv("VMRUNNER_WEBHOOK_SECRET", "s")
    done = subprocess.run(
        [sys.executable, "-m", "vmrunner", "serve"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "--repo" in done.stderr


def test_the_example_in_serve_help_is_a_valid_config(tmp_path):
    from vmrunner.cli.serve import _EPILOG

    lines = _EPILOG.split("Config file")[1].split("\n\n")[0].splitlines()[1:]
    path = tmp_path / "example.toml"
    path.write_text("\n".join(line.strip() for line in lines))
    settings = read_config_file(path)
    assert settings["port"] == 8080
    assert set(settings["repositories"]) == {"octo/app", "octo/lib"}
