"""Running one of GitHub's built actions with node on the host, as a runner would: inputs as
``INPUT_*``, file commands in files, the services' environment."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ActionRun:
    exit_code: int
    output: str
    outputs: dict[str, str]
    state: dict[str, str]


def _read_commands(path: Path) -> dict[str, str]:
    """``name=value`` and ``name<<EOF`` blocks of a GITHUB_OUTPUT/GITHUB_STATE file."""
    found: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    index = 0
    while index < len(lines):
        line = lines[index]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, marker = line.split("<<", 1)
            end = lines.index(marker, index + 1)
            found[name] = "\n".join(lines[index + 1 : end])
            index = end + 1
            continue
        name, _, value = line.partition("=")
        found[name] = value
        index += 1
    return found


async def run_action(
    script: Path, workspace: Path, env: dict[str, str], inputs: dict[str, str],
    state: dict[str, str] | None = None,
) -> ActionRun:
    temp = workspace.parent / f"{workspace.name}-temp"
    temp.mkdir(parents=True, exist_ok=True)
    files = {name: temp / f"{name.lower()}-{script.parent.name}" for name in ("GITHUB_OUTPUT",
                                                                              "GITHUB_STATE")}
    for path in files.values():
        path.write_text("")
    full = {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(temp), "RUNNER_OS": "Linux",
        "RUNNER_TEMP": str(temp), "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "octo/repo",
        "GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/main",
        **{name: str(path) for name, path in files.items()}, **env,
        **{f"INPUT_{k.replace(' ', '_').upper()}": v for k, v in inputs.items()},
        **{f"STATE_{k}": v for k, v in (state or {}).items()},
    }
    process = await asyncio.create_subprocess_exec(
        "node", str(script), cwd=workspace, env=full, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return ActionRun(
        process.returncode or 0, output.decode(errors="replace"),
        _read_commands(files["GITHUB_OUTPUT"]), _read_commands(files["GITHUB_STATE"]),
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def tcp_to_unix(socket: Path) -> AsyncIterator[int]:
    """A 127.0.0.1 listener whose connections are piped to ``socket``; its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(str(socket))
        both = [
            asyncio.create_task(_pipe(reader, upstream_writer)),
            asyncio.create_task(_pipe(upstream_reader, writer)),
        ]
        tasks.update(both)
        await asyncio.gather(*both)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
