"""``vmrunner machines serve``: this host's machines for runners elsewhere.

Runners point at it with ``--provider remote --remote-url URL`` (and ``$VMRUNNER_REMOTE_TOKEN``);
the prototype's runner with ``FIRECRACKER_API_URL`` and ``FIRECRACKER_AUTH_TOKEN``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from vmrunner.config import ENV_PROVIDER

if TYPE_CHECKING:
    from vmrunner.server.machines_service import Quota

ENV_JWT_SECRET = "VMRUNNER_JWT_SECRET"


@click.group("machines")
def command() -> None:
    """Serve this host's machines over HTTP (the machine service)."""


@command.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--provider", default=None, help=f"Machine provider (default: ${ENV_PROVIDER} or sandbox)."
)
@click.option(
    "--network", default="private", show_default=True,
    type=click.Choice(["private", "host", "none"]), help="Network of a VM that names none.",
)
@click.option(
    "--pool", "pools", multiple=True, metavar="VM_TYPE=N",
    help="Keep N machines of VM_TYPE started (the warm pool; repeatable).",
)
@click.option("--limit", default=8, show_default=True, type=click.IntRange(1),
              help="VMs on this host at once, all callers together.")
@click.option("--max-vms", default=4, show_default=True, type=click.IntRange(1),
              help="VMs one caller (token) may hold at once.")
@click.option("--max-sessions", default=16, show_default=True, type=click.IntRange(1),
              help="Commands one caller may run at once.")
@click.option(
    "--quota", "quotas", multiple=True, metavar="NAME=VMS,SESSIONS",
    help="Another quota for the token (or JWT user) NAME (repeatable).",
)
@click.option("--idle-timeout", default=600.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds after which an untouched VM is released (its client is gone).")
@click.option("--vm-type", "vm_types", multiple=True,
              help="A machine type this host serves (repeatable; default: any the provider takes).")
@click.option(
    "--jwt-secret-file", default=None, type=click.Path(dir_okay=False),
    help=f"Also accept HS256 JWTs signed with this secret (else ${ENV_JWT_SECRET}, if set).",
)
@click.option("--max-import-mib", default=16384, show_default=True, type=click.IntRange(1),
              help="Largest snapshot a runner may import (vmrunner rerun), in MiB.")
@click.option("--transfer-dir", default=None, type=click.Path(file_okay=False),
              help="Where snapshots are exported and imported for a moment (default: $TMPDIR).")
@click.option("--allow-no-tokens", is_flag=True,
              help="Let requests without a token in (loopback only; for development).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(
    host: str, port: int, provider: str | None, network: str, pools: tuple[str, ...], limit: int,
    max_vms: int, max_sessions: int, quotas: tuple[str, ...], idle_timeout: float,
    vm_types: tuple[str, ...], jwt_secret_file: str | None, max_import_mib: int,
    transfer_dir: str | None, allow_no_tokens: bool, log_level: str,
) -> None:
    """Serve this host's machines: the fcctl-web API plus streamed exec and files."""
    import logging
    from typing import cast

    import uvicorn

    from vmrunner.errors import ConfigError
    from vmrunner.machines.base import NetworkMode
    from vmrunner.server.config import is_loopback, read_secret_file
    from vmrunner.server.machines_api import MachineServiceConfig, create_machines_app
    if allow_no_tokens and not is_loopback(host):
        raise ConfigError(f"--allow-no-tokens serves only loopback, not --host {host}")
    secret = (
        read_secret_file(jwt_secret_file, "JWT secret") if jwt_secret_file
        else os.environ.get(ENV_JWT_SECRET, "")
    )
    config = MachineServiceConfig(
        provider=provider or os.environ.get(ENV_PROVIDER) or "sandbox",
        network=cast("NetworkMode", network), pool=dict(_pool(p) for p in pools), limit=limit,
        max_vms=max_vms, max_sessions=max_sessions, quotas=dict(_quota(q) for q in quotas),
        idle_timeout=idle_timeout, reap_interval=min(15.0, max(0.05, idle_timeout / 4)),
        vm_types=vm_types, jwt_secret=secret.encode(), open_access=allow_no_tokens,
        max_import_bytes=max_import_mib << 20, transfer_dir=transfer_dir or "",
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_machines_app(config), host=host, port=port, log_level=log_level,
        access_log=False, lifespan="on", timeout_graceful_shutdown=30,
    )


def _pool(flag: str) -> tuple[str, int]:
    from vmrunner.errors import ConfigError

    vm_type, _, size = flag.partition("=")
    if not vm_type or not size.isdigit():
        raise ConfigError(f"--pool {flag}: expected VM_TYPE=N, e.g. default=2")
    return vm_type, int(size)


def _quota(flag: str) -> tuple[str, Quota]:
    from vmrunner.errors import ConfigError
    from vmrunner.server.machines_service import Quota

    name, _, numbers = flag.partition("=")
    vms, _, sessions = numbers.partition(",")
    if not name or not vms.isdigit() or not sessions.isdigit() or int(vms) < 1:
        raise ConfigError(f"--quota {flag}: expected NAME=VMS,SESSIONS, e.g. ci=2,8")
    return name, Quota(int(vms), int(sessions))
