"""Where vmrunner keeps its state, and the environment variables that steer it.

All state (database, machines, snapshots, caches, images) lives under one directory,
``VMRUNNER_HOME``, so that two users or two test runs never share it by accident.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the state directory (default: ``$XDG_DATA_HOME/vmrunner``).
ENV_HOME = "VMRUNNER_HOME"
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


def default_network(provider: str) -> str:
    """The network of a job's machine when none is asked for: ``private``, except on the
    ``host`` provider, whose machines are the host (choosing it is choosing its network)."""
    return "host" if provider == "host" else DEFAULT_NETWORK


def vmrunner_home() -> Path:
    """The state directory: ``$VMRUNNER_HOME``, else the XDG data directory."""
    explicit = os.environ.get(ENV_HOME)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().absolute() / "vmrunner"


def ensure_home() -> Path:
    """The state directory, created (mode 0700) if missing."""
    home = vmrunner_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home
