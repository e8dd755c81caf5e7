"""What ``vmrunner serve`` is told: address, secret, repositories, limits, GitHub access.

A config file (TOML, or YAML for ``.yml``/``.yaml``) holds the same settings as the flags;
flags win. Example::

    [server]
    host = "0.0.0.0"                         # beyond loopback: needs an API token first
    port = 8080
    public_url = "https://ci.example.com"    # target_url of commit statuses
    concurrent_runs = 2                      # workflow runs at once (more wait in the queue)
    concurrent_jobs = 4                      # machines at once (the session limit)
    provider = "sandbox"
    network = "private"                      # the jobs' network: private, host or none
    pool_size = 0
    max_body_bytes = 26214400                # GitHub's maximum payload (25 MB)
    drain_seconds = 30                       # grace for running jobs on SIGTERM
    read_timeout = 10                        # seconds a webhook's body may take to arrive
    metrics_auth = false                     # true: /metrics needs a read token too
    max_step_log_bytes = 67108864            # output kept per step (64 MiB), then a mark
    github_api_url = "https://api.github.com"
    reports = ["checks", "comment"]          # default: checks with a GitHub App, else statuses
    store = "postgresql://vmrunner@db/vmrunner"  # optional: run jobs on a fleet (docs/fleet.md)

    [repositories]
    "octo/app" = "https://github.com/octo/app.git"   # or a local path
    "octo/lib" = { url = "/srv/git/lib", secrets = { NPM_TOKEN = "..." } }

    [machine-types.default]                  # limits of each machine of a type (0: none);
    cpus = 2                                 # unset ones take the provider's defaults
    memory = "7G"
    pids = 4096
    disk = "14G"

Secrets never come from the file's ``[server]`` table: the webhook secret is read from
``VMRUNNER_WEBHOOK_SECRET`` or ``--webhook-secret-file``; the GitHub token from
``VMRUNNER_GITHUB_TOKEN``/``GITHUB_TOKEN`` or ``--github-token-file``; a GitHub App from
``--github-app-id``, ``--github-app-key-file`` and ``--github-installation-id``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from vmrunner.config import DEFAULT_PROVIDER, NETWORKS
from vmrunner.errors import ConfigError

ENV_WEBHOOK_SECRET = "VMRUNNER_WEBHOOK_SECRET"
ENV_GITHUB_TOKEN = "VMRUNNER_GITHUB_TOKEN"
ENV_GITHUB_TOKEN_FALLBACK = "GITHUB_TOKEN"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: GitHub caps webhook payloads at 25 MB; anything larger is not from GitHub.
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
DEFAULT_CONCURRENT_RUNS = 2
DEFAULT_CONCURRENT_JOBS = 4
DEFAULT_DRAIN_SECONDS = 30.0
DEFAULT_GITHUB_API_URL = "https://api.github.com"
#: Seconds a webhook's whole body may take to arrive (GitHub sends it at once).
DEFAULT_READ_TIMEOUT = 10.0
#: What the server can report to GitHub.
REPORTS = ("checks", "statuses", "comment")


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """A repository the server runs workflows for: ``owner/name`` and where to clone it from."""

    name: str
    url: str
    secrets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GitHubApp:
    """A GitHub App installation: the server signs a JWT and exchanges it for a token."""

    app_id: str
    private_key: str
    installation_id: str


@dataclass(frozen=True, slots=True)
class ServerConfig:
    webhook_secret: bytes
    repositories: Mapping[str, RepositoryConfig] = field(default_factory=dict)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    public_url: str = ""
    concurrent_runs: int = DEFAULT_CONCURRENT_RUNS
    concurrent_jobs: int = DEFAULT_CONCURRENT_JOBS
    provider: str = DEFAULT_PROVIDER
    #: With ``provider = "remote"``: the machine service (``vmrunner machines serve``).
    remote_url: str = ""
    #: The network of the jobs' machines; empty: the provider's default (``default_network``).
    network: str = ""
    pool_size: int = 0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    github_api_url: str = DEFAULT_GITHUB_API_URL
    github_token: str = ""
    github_app: GitHubApp | None = None
    #: Seconds a job waits for a machine before it fails (None: forever, as a queue should).
    wait_timeout: float | None = None
    #: A fleet's PostgreSQL URL: runs go to its ``vmrunner agent`` hosts instead of running here.
    store: str = ""
    #: Limits per machine type: type -> ``RunOptions.machine_limits`` entry (``memory_mib``...).
    machine_limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    read_timeout: float = DEFAULT_READ_TIMEOUT
    #: Whether ``/metrics`` needs a ``read`` token (else it is open, as ``/healthz`` is).
    metrics_auth: bool = False
    #: Bytes of output kept per step (0: ``$VMRUNNER_MAX_STEP_LOG_BYTES`` or 64 MiB).
    max_step_log_bytes: int = 0
    #: What goes to GitHub (``REPORTS``); empty: check runs and the comment with a GitHub App,
    #: commit statuses and the comment with a token (only an App may write check runs).
    reports: tuple[str, ...] = ()

    def reporting(self, kind: str) -> bool:
        """Whether ``kind`` (checks, statuses, comment) is sent to GitHub."""
        chosen = self.reports or (
            ("checks", "comment") if self.github_app is not None else ("statuses", "comment")
        )
        return kind in chosen

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def repository(self, name: str) -> RepositoryConfig | None:
        """The configured repository ``owner/name`` (GitHub names are case-insensitive)."""
        wanted = name.lower()
        return next(
            (repo for key, repo in self.repositories.items() if key.lower() == wanted), None
        )

    def public_json(self) -> dict[str, Any]:
        """The settings without secrets (the webhook secret, tokens, keys, repository secrets)."""
        hidden = {"webhook_secret", "github_token", "github_app", "repositories"}
        settings = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in hidden
        }
        settings["machine_limits"] = {k: dict(v) for k, v in self.machine_limits.items()}
        settings["repositories"] = {
            name: {"url": repo.url, "secrets": sorted(repo.secrets)}
            for name, repo in self.repositories.items()
        }
        settings["github_app"] = self.github_app.app_id if self.github_app else None
        return settings

    def secret_values(self) -> list[str]:
        """Everything that must never appear in what the server sends or serves."""
        values = [self.webhook_secret.decode(errors="replace"), self.github_token]
        if self.github_app is not None:
            values.append(self.github_app.private_key)
        values += [v for repo in self.repositories.values() for v in repo.secrets.values()]
        return [v for v in values if v]


_SERVER_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "public_url": str,
    "concurrent_runs": int,
    "concurrent_jobs": int,
    "provider": str,
    "remote_url": str,
    "network": str,
    "pool_size": int,
    "max_body_bytes": int,
    "drain_seconds": (int, float),
    "github_api_url": str,
    "wait_timeout": (int, float),
    "store": str,
    "read_timeout": (int, float),
    "metrics_auth": bool,
    "max_step_log_bytes": int,
    "reports": list,
}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings of a config file as ``ServerConfig`` keyword arguments (``repositories``
    parsed)."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file: {exc.strerror or exc}") from exc
    try:
        if name.endswith((".yml", ".yaml")):
            raw = yaml.safe_load(text) or {}
        else:
            raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a table of settings at the top level")
    unknown = set(raw) - {"server", "repositories", "machine-types"}
    if unknown:
        raise ConfigError(
            f"{name}: unknown section {sorted(unknown)[0]!r} (expected server, repositories, "
            "machine-types)"
        )
    settings: dict[str, Any] = {}
    server = raw.get("server") or {}
    if not isinstance(server, Mapping):
        raise ConfigError(f"{name}: server must be a table")
    for key, value in server.items():
        kind = _SERVER_KEYS.get(key)
        if kind is None:
            raise ConfigError(
                f"{name}: server.{key} is not a setting (known: {', '.join(sorted(_SERVER_KEYS))})"
            )
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{name}: server.{key} must be a {_kind_name(kind)}, got {value!r}")
        if key == "reports":
            unknown_kind = [v for v in cast(list[Any], value) if v not in REPORTS]
            if unknown_kind:
                raise ConfigError(
                    f"{name}: server.reports: {unknown_kind[0]!r} is not one of "
                    f"{', '.join(REPORTS)}"
                )
            value = tuple(cast(list[Any], value))
        if key == "network" and value not in NETWORKS:
            raise ConfigError(
                f"{name}: server.network must be one of {', '.join(NETWORKS)}, got {value!r}"
            )
        settings[key] = value
    settings["repositories"] = parse_repositories(raw.get("repositories") or {}, name)
    if "machine-types" in raw:
        settings["machine_limits"] = parse_machine_types(raw["machine-types"], name)
    return settings


def parse_machine_types(raw: Any, where: str) -> dict[str, dict[str, int]]:
    """``[machine-types.NAME]`` tables of ``cpus``, ``memory``, ``pids``, ``disk`` as limits in
    MiB."""
    from vmrunner.machines.limits import (
        MIN_DISK_MIB,
        MIN_MEMORY_MIB,
        MIN_PIDS,
        check_count,
        parse_size,
    )

    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: machine-types must be a table of machine types")
    types: dict[str, dict[str, int]] = {}
    for vm_type, entry in raw.items():
        path = f"{where}: machine-types.{vm_type}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{path} must be a table (cpus, memory, pids, disk)")
        limits: dict[str, int] = {}
        for key, value in entry.items():
            try:
                if key == "cpus":
                    limits["cpus"] = check_count(value, "cpus", minimum=1)
                elif key == "pids":
                    limits["pids"] = check_count(value, "pids", minimum=MIN_PIDS)
                elif key == "memory":
                    limits["memory_mib"] = parse_size(value, "memory", minimum=MIN_MEMORY_MIB)
                elif key == "disk":
                    limits["disk_mib"] = parse_size(value, "disk", minimum=MIN_DISK_MIB)
                else:
                    raise ConfigError(f"{key} is not a setting (cpus, memory, pids, disk)")
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
        types[str(vm_type)] = limits
    return types


def _kind_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "number"
    return {str: "string", int: "integer", bool: "boolean", list: "list"}[kind]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_exposure(host: str, has_tokens: bool, *, allow: bool = False) -> None:
    """Refuse to serve beyond loopback while no API token exists (``allow``: do it anyway)."""
    if not (allow or has_tokens or is_loopback(host)):
        raise ConfigError(
            f"--host {host} serves beyond this machine but no API token exists: create one "
            "with `vmrunner tokens create NAME --scope read` (or pass --allow-no-tokens to "
            "serve webhooks with the API closed)"
        )


def parse_repositories(raw: Any, where: str) -> dict[str, RepositoryConfig]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: repositories must be a table of owner/name = url or path")
    repos: dict[str, RepositoryConfig] = {}
    for name, entry in raw.items():
        check_repository_name(str(name), f"{where}: repositories")
        if isinstance(entry, str):
            repos[name] = RepositoryConfig(name, entry)
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("url"), str):
            raise ConfigError(
                f"{where}: repositories.{name!r} must be a URL or path, or a table with url"
            )
        secrets = entry.get("secrets") or {}
        if not isinstance(secrets, Mapping) or not all(
            isinstance(v, str) for v in secrets.values()
        ):
            raise ConfigError(f"{where}: repositories.{name!r}.secrets must map names to strings")
        extra = set(entry) - {"url", "secrets"}
        if extra:
            raise ConfigError(
                f"{where}: repositories.{name!r}.{sorted(extra)[0]} is not a setting (url, secrets)"
            )
        repos[name] = RepositoryConfig(name, entry["url"], {str(k): v for k, v in secrets.items()})
    return repos


def check_repository_name(name: str, where: str) -> None:
    owner, _, repo = name.partition("/")
    if not owner or not repo or "/" in repo or name.strip() != name:
        raise ConfigError(f"{where}: {name!r} is not a repository name (expected owner/name)")


def parse_repo_flag(value: str) -> RepositoryConfig:
    """``--repo owner/name=URL_OR_PATH``."""
    name, sep, url = value.partition("=")
    if not sep or not url:
        raise ConfigError(f"--repo {value!r}: expected owner/name=URL_OR_PATH")
    check_repository_name(name, "--repo")
    return RepositoryConfig(name, url)


def read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc


def with_overrides(config: ServerConfig, **changes: Any) -> ServerConfig:
    """``config`` with the settings that were given (``None`` values are left out)."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
