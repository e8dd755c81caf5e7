"""Where vmrunner keeps its state, and the environment variables that steer it.

All state (database, machines, snapshots, caches, images) lives under one directory,
``VMRUNNER_HOME``, so that two users or two test runs never share it by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: Overrides the state directory (default: ``$XDG_DATA_HOME/vmrunner``; for root
#: ``/var/lib/vmrunner``, as for a system service).
ENV_HOME = "VMRUNNER_HOME"
#: Root's state directory: a sandbox's unprivileged bubblewrap must pass through its parents to
#: reach the machines, and root's own home is closed to others.
ROOT_HOME = Path("/var/lib/vmrunner")
#: The default provider for ``vmrunner run`` (default: ``sandbox``).
ENV_PROVIDER = "VMRUNNER_PROVIDER"

DEFAULT_PROVIDER = "sandbox"
#: The networks a job's machine may get (``machines.base.NetworkMode``).
NETWORKS = ("private", "host", "none")
#: Unless told otherwise a job's machine gets a network of its own: outbound NAT, the host's
#: loopback, gateway and own addresses unreachable (``machines/network.py``).
DEFAULT_NETWORK = "private"
HOST_NETWORK_WARNING = (
    "network 'host': jobs share this host's network and can reach the services listening on"
    " its loopback and its addresses"
)
DEFAULT_WORKFLOWS_DIR = Path(".github") / "workflows"
_host_network_warned = False


def warn_host_network(emit: Callable[[str], object]) -> None:
    """Say ``HOST_NETWORK_WARNING`` through ``emit``, once per process: the command that chose
    the network and the sandbox that gives it would otherwise both say it."""
    global _host_network_warned
    if not _host_network_warned:
        _host_network_warned = True
        emit(HOST_NETWORK_WARNING)


def default_network(provider: str) -> str:
    """The network of a job's machine when none is asked for: ``private``, except on the
    ``host`` provider, whose machines are the host (choosing it is choosing its network)."""
    return "host" if provider == "host" else DEFAULT_NETWORK


def vmrunner_home() -> Path:
    """The state directory: ``$VMRUNNER_HOME``, else ``/var/lib/vmrunner`` for root and the
    XDG data directory for anyone else."""
    explicit = os.environ.get(ENV_HOME)
    if explicit:
        return Path(explicit).expanduser().absolute()
    if os.geteuid() == 0 and not os.environ.get("XDG_DATA_HOME"):
        return ROOT_HOME
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().absolute() / "vmrunner"


def ensure_home() -> Path:
    """The state directory, created (mode 0700) if missing."""
    home = vmrunner_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


def find_root(start: str) -> str | None:
    """The top of the repository holding ``start`` (a folder or a file), found as git finds
    it: the nearest folder upwards with a ``.git`` (a folder, or a worktree's file). No process
    is started: the CLI asks this before anything else."""
    folder = os.path.abspath(start)
    if not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    while True:
        if os.path.exists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
