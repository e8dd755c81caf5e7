"""``vmrunner agent``: serve a fleet's jobs on this host (PostgreSQL with procrastinate).

Run one per host, under a supervisor that restarts it (systemd ``Restart=always``); see
docs/fleet.md. The agent itself starts again after a database outage.
"""

from __future__ import annotations

import os

import click

from vmrunner.config import ENV_PROVIDER, NETWORKS

ENV_STORE = "VMRUNNER_STORE"


@click.command("agent")
@click.option("--name", required=True, help="This host's name in the fleet (unique).")
@click.option(
    "--labels",
    required=True,
    help="The runs-on labels this host offers, comma-separated (linux,kvm).",
)
@click.option(
    "--capacity",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Jobs at once on this host.",
)
@click.option(
    "--store",
    required=True,
    envvar=ENV_STORE,
    help=f"The fleet's PostgreSQL URL (postgresql://...) [env: {ENV_STORE}].",
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
    help="The network of every job's machine on this host, whatever the run asked for: private "
    "(their own, outbound NAT, the host unreachable; the default), host (this host's, its loopback "
    "services included), none (loopback only).",
)
@click.option(
    "--pool-size",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Warm machines kept ready.",
)
@click.option(
    "--heartbeat",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between heartbeats of a running job.",
)
@click.option(
    "--stall",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="A job without heartbeat this long is retried elsewhere.",
)
@click.option(
    "--fence",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="A job that cannot heartbeat this long is killed here (< --stall).",
)
@click.option(
    "--sweep-interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between sweeps for stalled jobs.",
)
@click.option(
    "--max-attempts",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Attempts of a job whose host was lost.",
)
@click.option(
    "--secret-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Secrets (a dotenv file) for every job this host runs; fleets never store secrets.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def command(
    name: str,
    labels: str,
    capacity: int,
    store: str,
    provider: str | None,
    remote_url: str | None,
    network: str | None,
    pool_size: int,
    heartbeat: float,
    stall: float,
    fence: float,
    sweep_interval: float,
    max_attempts: int,
    secret_file: str | None,
    log_level: str,
) -> None:
    """Serve the fleet's jobs whose runs-on labels this host offers."""
    import asyncio
    import contextlib
    import logging
    import signal

    from vmrunner.cli.dotenv import read_dotenv
    from vmrunner.errors import VmrunnerError
    from vmrunner.fleet.agent import Agent, AgentConfig
    from vmrunner.fleet.labels import parse_labels

    if remote_url:  # where the remote provider looks
        os.environ["VMRUNNER_REMOTE_URL"] = remote_url
    config = AgentConfig(
        url=store,
        name=name,
        labels=parse_labels(labels),
        capacity=capacity,
        provider=provider or os.environ.get(ENV_PROVIDER) or "sandbox",
        network=network or "",
        pool_size=pool_size,
        heartbeat=heartbeat,
        stall=stall,
        fence=fence,
        sweep_interval=sweep_interval,
        max_attempts=max_attempts,
        secrets=read_dotenv(secret_file) if secret_file else {},
    )
    logging.basicConfig(
        level=log_level.upper(), format=f"%(asctime)s %(levelname)s {name}: %(message)s"
    )
    logging.getLogger("procrastinate").setLevel(
        max(logging.WARNING, logging.getLevelName(log_level.upper()))
    )

    async def main() -> None:
        # SIGTERM (systemd stop) cancels like Ctrl-C: every machine is released on the way out.
        task = asyncio.current_task()
        if task is None:
            raise VmrunnerError("the agent must be awaited in an asyncio task")
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await Agent(config).run_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
