"""``vmrunner serve``: the webhook server (``POST /webhook``), REST API and Prometheus metrics.

Settings come from ``--config`` (TOML or YAML; see ``vmrunner.server.config``) and flags, flags
winning; secrets only from the environment or files, never from the command line.
"""

from __future__ import annotations

import os

import click

from vmrunner.cli.agent import ENV_STORE
from vmrunner.config import ENV_PROVIDER, NETWORKS

_EPILOG = """\b
Config file (TOML; YAML with the same keys for .yml/.yaml):
  [server]
  host = "0.0.0.0"   # beyond loopback: create an API token first
  port = 8080
  public_url = "https://ci.example.com"
  concurrent_runs = 2
  concurrent_jobs = 4
  provider = "sandbox"   # "remote": machines of a `vmrunner machines serve`
  remote_url = ""        # its URL; its token in $VMRUNNER_REMOTE_TOKEN
  network = "private"
  pool_size = 0
  max_body_bytes = 26214400
  drain_seconds = 30
  read_timeout = 10
  metrics_auth = false
  max_step_log_bytes = 67108864
  github_api_url = "https://api.github.com"
  reports = ["checks", "comment"]   # or statuses (default without an App)
  store = "postgresql://vmrunner@db/vmrunner"   # optional: a fleet
  [repositories]
  "octo/app" = "https://github.com/octo/app.git"
  "octo/lib" = { url = "/srv/git/lib", secrets = { NPM_TOKEN = "..." } }

\b
Dashboard: / (log in at /login?token=TOKEN). Endpoints: POST /webhook
(point the repository's webhook here, content type application/json, with
the secret), GET /api/runs, /api/runs/{id},
/api/runs/{id}/logs, /api/deliveries/{id}, /api/sessions, /api/pool,
/healthz, /metrics, /docs; POST /api/runs/{id}/cancel, /api/runs/{id}/rerun.
Every /api/ route needs a token: `vmrunner tokens create NAME --scope read`.
"""


@click.command("serve", epilog=_EPILOG)
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option(
    "--port", default=None, type=click.IntRange(0, 65535), help="Port to listen on (default 8080)."
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="A TOML or YAML config file.",
)
@click.option(
    "--repo",
    "repos",
    multiple=True,
    metavar="OWNER/NAME=URL_OR_PATH",
    help="A repository to run workflows for (repeatable).",
)
@click.option(
    "--webhook-secret-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="File holding the webhook secret (else $VMRUNNER_WEBHOOK_SECRET).",
)
@click.option(
    "--github-api-url",
    default=None,
    help="GitHub REST API base URL (GitHub Enterprise: https://HOST/api/v3).",
)
@click.option(
    "--github-token-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="File holding a GitHub token (else $VMRUNNER_GITHUB_TOKEN or $GITHUB_TOKEN).",
)
@click.option(
    "--github-app-id",
    default=None,
    help="Report as this GitHub App (with --github-app-key-file and --github-installation-id).",
)
@click.option(
    "--github-app-key-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The GitHub App's private key (PEM).",
)
@click.option("--github-installation-id", default=None, help="The GitHub App's installation id.")
@click.option(
    "--public-url", default=None, help="URL GitHub users reach this server at (links in statuses)."
)
@click.option(
    "--provider", default=None, help=f"Machine provider (default: ${ENV_PROVIDER} or sandbox)."
)
@click.option(
    "--remote-url", default=None, envvar="VMRUNNER_REMOTE_URL",
    help="With --provider remote: the machine service's URL [env: VMRUNNER_REMOTE_URL].",
)
@click.option(
    "--network",
    type=click.Choice(NETWORKS),
    default=None,
    help="The jobs' machines' network: private (their own, outbound NAT, the host unreachable; "
    "the default), host (the host's, its loopback services included), none (loopback only).",
)
@click.option(
    "--pool-size", default=None, type=click.IntRange(min=0), help="Warm machines kept ready."
)
@click.option(
    "--concurrent-runs",
    default=None,
    type=click.IntRange(min=1),
    help="Workflow runs at once; more wait in the queue.",
)
@click.option(
    "--concurrent-jobs",
    default=None,
    type=click.IntRange(min=1),
    help="Machines at once (the session limit).",
)
@click.option(
    "--max-body-bytes",
    default=None,
    type=click.IntRange(min=1),
    help="Largest webhook body accepted (default 25 MB).",
)
@click.option(
    "--store",
    default=None,
    envvar=ENV_STORE,
    help=f"A fleet's PostgreSQL URL: runs go to its agents instead of running here [env: "
    f"{ENV_STORE}]; see docs/fleet.md.",
)
@click.option(
    "--drain-seconds",
    default=None,
    type=click.FloatRange(min=0),
    help="Grace for running jobs on SIGTERM.",
)
@click.option(
    "--allow-no-tokens",
    is_flag=True,
    help="Serve on a non-loopback --host although no API token exists (the API stays closed).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def command(
    host: str | None,
    port: int | None,
    config_file: str | None,
    repos: tuple[str, ...],
    webhook_secret_file: str | None,
    github_api_url: str | None,
    github_token_file: str | None,
    github_app_id: str | None,
    github_app_key_file: str | None,
    github_installation_id: str | None,
    public_url: str | None,
    provider: str | None,
    remote_url: str | None,
    network: str | None,
    pool_size: int | None,
    concurrent_runs: int | None,
    concurrent_jobs: int | None,
    max_body_bytes: int | None,
    store: str | None,
    drain_seconds: float | None,
    allow_no_tokens: bool,
    log_level: str,
) -> None:
    """Serve GitHub webhooks: run matching workflows, report statuses and a PR comment."""
    import logging

    from vmrunner.errors import ConfigError
    from vmrunner.server.config import (
        ENV_GITHUB_TOKEN,
        ENV_GITHUB_TOKEN_FALLBACK,
        ENV_WEBHOOK_SECRET,
        GitHubApp,
        ServerConfig,
        parse_repo_flag,
        read_config_file,
        read_secret_file,
        with_overrides,
    )

    settings = read_config_file(config_file) if config_file else {}
    secret = (
        read_secret_file(webhook_secret_file, "webhook secret")
        if webhook_secret_file
        else os.environ.get(ENV_WEBHOOK_SECRET, "")
    )
    if not secret:
        raise ConfigError(
            f"a webhook secret is required: set ${ENV_WEBHOOK_SECRET} or pass --webhook-secret-file"
        )
    token = read_secret_file(github_token_file, "GitHub token") if github_token_file else (
        os.environ.get(ENV_GITHUB_TOKEN) or os.environ.get(ENV_GITHUB_TOKEN_FALLBACK, "")
    )
    app = None
    if github_app_id or github_app_key_file or github_installation_id:
        if not (github_app_id and github_app_key_file and github_installation_id):
            raise ConfigError(
                "a GitHub App needs --github-app-id, --github-app-key-file and "
                "--github-installation-id"
            )
        app = GitHubApp(
            github_app_id,
            read_secret_file(github_app_key_file, "GitHub App key"),
            github_installation_id,
        )
    repositories = dict(settings.pop("repositories", {}))
    for flag in repos:
        repo = parse_repo_flag(flag)
        repositories[repo.name] = repo
    if not repositories:
        raise ConfigError(
            "no repositories: pass --repo OWNER/NAME=URL_OR_PATH or list them in --config"
        )
    config = with_overrides(
        ServerConfig(
            webhook_secret=secret.encode(),
            repositories=repositories,
            github_token=token,
            github_app=app,
            **settings,
        ),
        host=host,
        port=port,
        github_api_url=github_api_url,
        public_url=public_url,
        provider=provider or (None if "provider" in settings else os.environ.get(ENV_PROVIDER)),
        remote_url=remote_url,
        network=network,
        pool_size=pool_size,
        concurrent_runs=concurrent_runs,
        concurrent_jobs=concurrent_jobs,
        max_body_bytes=max_body_bytes,
        drain_seconds=drain_seconds,
        store=store or None,
    )
    if config.remote_url:  # where the remote provider looks
        os.environ["VMRUNNER_REMOTE_URL"] = config.remote_url
    _check_exposure(config.host, allow_no_tokens)
    if config.store:
        from vmrunner.cli.fleet import reach_store

        reach_store(config.store)
    from vmrunner.server.serving import make_server  # heavy (FastAPI, the runner): after the checks

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    make_server(config, log_level=log_level).run()  # uvloop and httptools when installed


def _check_exposure(host: str, allow: bool) -> None:
    """Refuse a non-loopback address while no API token exists (unless ``allow``)."""
    from vmrunner.server.config import check_exposure, is_loopback

    if allow or is_loopback(host):
        return
    from vmrunner.server.tokens import TokenStore
    from vmrunner.store import Store

    with Store.open() as store:
        check_exposure(host, TokenStore(store).any())
