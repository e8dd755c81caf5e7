"""``vmrunner dashboard``: the server's web pages over this machine's kept runs, on loopback.

It prints a login link holding a one-time token made at start (kept in memory only): whoever can
read the link sees the runs, nobody else, even other users of this machine.
"""

from __future__ import annotations

import click


@click.command("dashboard")
@click.option("--port", default=8081, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0: any free port).")
def command(port: int) -> None:
    """Show the runs of `vmrunner run` (VMRUNNER_HOME) as web pages on 127.0.0.1."""
    import secrets
    import socket

    import uvicorn

    from vmrunner.cli import terminal
    from vmrunner.server.dashboard import local_dashboard
    from vmrunner.store import Store

    token = secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    bound = sock.getsockname()[1]
    with Store.open() as store:
        app = local_dashboard(store, token)
        terminal.info(f"dashboard: http://127.0.0.1:{bound}/login?token={token}&next=/")
        config = uvicorn.Config(app, log_level="warning", access_log=False, loop="asyncio")
        uvicorn.Server(config).run(sockets=[sock])
