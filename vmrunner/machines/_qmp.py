"""QMP through the official ``qemu.qmp`` library, its errors mapped to ours at this boundary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from qemu.qmp import QMPClient, QMPError

from vmrunner.errors import MachineError

# qemu.qmp logs every disconnect as a warning; the provider reports what matters itself.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class Monitor:
    """One QMP connection to one QEMU process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._client = QMPClient(name)

    async def connect(self, path: str, within: float) -> None:
        """Connect, retrying while QEMU has not made its socket yet."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                await self._client.connect(path)
                return
            except QMPError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise MachineError(f"{self.name}: no QMP socket at {path}: {exc}") from exc
                await asyncio.sleep(0.01)

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await self._client.execute(command, arguments)
        except QMPError as exc:
            raise MachineError(f"{self.name}: QMP {command} failed: {exc}") from exc

    async def human(self, command_line: str) -> str:
        """An HMP command (``savevm``...); HMP reports errors as text, raised here."""
        output = str(await self.execute("human-monitor-command", {"command-line": command_line}))
        if output.strip():
            raise MachineError(f"{self.name}: {command_line}: {output.strip()}")
        return output

    async def status(self) -> str:
        return str((await self.execute("query-status"))["status"])

    async def close(self) -> None:
        # After ``quit`` the library re-raises the end of the stream (EOFError) and the like.
        with contextlib.suppress(Exception):
            await self._client.disconnect()
