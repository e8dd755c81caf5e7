"""The ``host`` provider: commands run directly on this host, with no isolation at all.

Like act's ``-self-hosted`` mode, for hosts that are themselves disposable. Opt-in only:
constructing the provider logs a warning. Each machine is the guest agent as a plain
subprocess (its own session, so release can kill its process group) with a private directory
for HOME, the workspace, the temp dir and the tool cache. The environment given to commands is
a small allow-list of the runner's own (PATH, locale, terminal), never all of it, so the runner's
secrets do not reach jobs by inheritance. Nothing stops a command from reading or changing the
rest of the host, and a process that leaves its session escapes release.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import ClassVar

from vmrunner.machines.base import Capabilities, Isolation, MachinePaths, MachineRecord, MachineSpec
from vmrunner.machines.local import AgentMachine, Launch, LocalProvider

log = logging.getLogger(__name__)

#: Variables of the runner's environment that commands inherit.
INHERITED_ENV = ("PATH", "LANG", "LANGUAGE", "TERM", "TZ", "SHELL", "USER", "LOGNAME")


class HostProvider(LocalProvider):
    """Machines that are directories on this host; commands run as the runner's user."""

    name: ClassVar[str] = "host"
    capabilities: ClassVar[Capabilities] = Capabilities(
        isolation=Isolation.NONE, snapshots=False, network_modes=frozenset({"host"}), forward=True
    )
    machine_class: ClassVar[type[AgentMachine]] = AgentMachine

    def __init__(self, home: Path | None = None, *, python: str | None = None, grace: float = 1.0):
        super().__init__(home, grace=grace)
        #: The interpreter for the agent; any python3 works, the agent is stdlib-only.
        self.python = python or sys.executable
        log.warning(
            "the host provider runs every job directly on this host with no isolation:"
            " jobs can read and change anything the runner's user can"
        )

    def _launch(self, state_dir: Path, record: MachineRecord, spec: MachineSpec) -> Launch:
        paths = MachinePaths(
            workspace=str(state_dir / "work" / "workspace"),
            temp=str(state_dir / "work" / "_temp"),
            home=str(state_dir / "home"),
            tool_cache=str(state_dir / "toolcache"),
        )
        tmp = state_dir / "tmp"
        for path in (paths.workspace, paths.temp, paths.home, paths.tool_cache, tmp):
            os.makedirs(path, mode=0o700, exist_ok=True)
        env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(
            HOME=paths.home,
            TMPDIR=str(tmp),
            RUNNER_TEMP=paths.temp,
            RUNNER_TOOL_CACHE=paths.tool_cache,
            VMRUNNER_MACHINE_ID=record.machine_id,
        )
        return Launch(
            argv=self.agent_argv(self.python),
            paths=paths,
            env=env,
            cwd=paths.workspace,
            new_session=True,
        )
