"""A machine's service containers (``services:``): processes of the job's own machine.

Each service runs from its image's root, attached to the machine at
``/run/containers/service-<label>`` (``container.attach``: an overlay of the shared image cache
under an upper layer on the machine's disk, mounted in the machine's mount namespace only),
started by the machine's agent chrooted there as the image's user. So a service shares the
machine's network namespace (it answers on ``localhost`` and, through the machine's
``/etc/hosts``, on its label), its pid namespace, cgroup limits and disk budget, and nothing
else of the host. It needs no release of its own: closing the agent's connection kills it with
the job's commands, and when the machine's last process is gone the kernel drops its mounts;
after a crash, reclaiming the machine frees what remains (its directory on the disk).

The machine is handed out only once every service started and, where it has a health check
(``--health-cmd``), the check passed; a service that exits first, or fails its check
``retries`` times past its start period, fails the allocation with the end of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from vmrunner.errors import AllocationError, ExecError, MachineError
from vmrunner.machines import container
from vmrunner.machines.base import ExecResult, ImageRun, OutputCallback, ServiceSpec
from vmrunner.machines.client import AgentClient
from vmrunner.machines.oci import ContainerImage

#: The files of the machine's ``/etc`` a container sees as its own (names, resolver).
ETC_BINDS = (("/etc/hosts", "/etc/hosts", "copy"), ("/etc/resolv.conf", "/etc/resolv.conf", "copy"))
LOG_TAIL = 2000
#: A folder or file of the machine shown in a container: (machine path, container path, kind).
Bind = tuple[str, str, str]
#: Shows an image's root in the machine under a name; its path there (the agent's ``root``).
Attach = Callable[[ContainerImage, str], Awaitable[str]]
#: Gets a one-shot run's image and shows its root in the machine with these binds: the image
#: and the root's path there.
Prepare = Callable[[tuple[Bind, ...]], Awaitable[tuple[ContainerImage, str]]]


class Services:
    """The running service containers of one machine."""

    def __init__(self, client: AgentClient, log_dir: Path) -> None:
        self._client = client
        self._log_dir = log_dir
        self._tasks: dict[str, asyncio.Task[ExecResult | None]] = {}

    async def start(
        self, specs: Sequence[ServiceSpec], images: Mapping[str, ContainerImage], attach: Attach
    ) -> None:
        """Start every service, each in the root ``attach`` gives its image (with ``ETC_BINDS``
        in it), then wait until each is healthy (``AllocationError`` if not)."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        checks = []
        for spec in specs:
            image = images[spec.label]
            root = await attach(image, f"service-{spec.label}")
            user = container.user_ids(spec.user or image.user, image.rootfs)
            env = environment(image, spec.env, user[0])
            argv = command(image, spec.entrypoint, spec.command)
            if not argv:
                raise AllocationError(
                    f"service {spec.label}: its image {spec.image} names no command to run"
                )
            cwd = spec.workdir or image.workdir or "/"
            self._tasks[spec.label] = asyncio.create_task(
                self._run(spec.label, argv, env, cwd, root, user)
            )
            if spec.health is not None:
                checks.append(self._healthy(spec, env, root, user))
        await asyncio.gather(*checks)

    async def _run(
        self, label: str, argv: list[str], env: dict[str, str], cwd: str, root: str,
        user: tuple[int, int],
    ) -> ExecResult | None:
        with open(self._log(label), "ab") as log:  # noqa: ASYNC230 - the machine's own log

            def write(_stream: str, chunk: bytes) -> None:
                log.write(chunk)
                log.flush()

            try:
                return await self._client.exec(
                    argv, env=env, cwd=cwd, root=root, user=user, on_output=write
                )
            except MachineError as exc:  # it could not start, or the machine is going
                log.write(f"\n{exc}\n".encode())
                return None

    async def _healthy(
        self, spec: ServiceSpec, env: dict[str, str], root: str, user: tuple[int, int]
    ) -> None:
        health = spec.health
        assert health is not None
        task = self._tasks[spec.label]
        began, failures = time.monotonic(), 0
        while True:
            if task.done():
                raise AllocationError(
                    f"service {spec.label} exited before it was healthy{self._ended(task)}:"
                    f" {self.tail(spec.label)}"
                )
            result = await self._client.exec(
                ["/bin/sh", "-c", health.command], env=env, root=root, user=user,
                timeout=health.timeout,
            )  # fmt: skip
            if result.ok:
                return
            if time.monotonic() - began >= health.start_period:
                failures += 1
            if failures >= max(health.retries, 1):
                output = (result.stdout + result.stderr).decode(errors="replace").strip()
                last = f"exit {result.exit_code}" + (f": {output[-500:]}" if output else "")
                raise AllocationError(
                    f"service {spec.label} is unhealthy: {shlex.quote(health.command)} failed "
                    f"{failures} times (last: {last}); its log: {self.tail(spec.label)}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), health.interval)

    @staticmethod
    def _ended(task: asyncio.Task[ExecResult | None]) -> str:
        result = task.result()
        if result is None:
            return ""
        return f" (exit {result.exit_code})" if result.signal is None else (
            f" (signal {result.signal})"
        )

    def _log(self, label: str) -> Path:
        return self._log_dir / f"{label}.log"

    def tail(self, label: str) -> str:
        try:
            data = self._log(label).read_bytes()[-LOG_TAIL:]
        except OSError:
            return "(no output)"
        return data.decode(errors="replace").strip() or "(no output)"

    async def aclose(self) -> None:
        """Wait for the services' commands to end (the agent's connection closed: it killed
        them), bounded; cancel what still waits."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=2.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def environment(
    image: ContainerImage, extra: Sequence[tuple[str, str]], uid: int
) -> dict[str, str]:
    """A container's environment: its image's with ``extra`` over it; HOME and PATH as Docker
    sets them when the image does not."""
    env = {"HOME": "/root" if uid == 0 else "/", "PATH": container.DEFAULT_PATH}
    env.update(dict(image.env))
    env.update(dict(extra))
    return env


def command(image: ContainerImage, entrypoint: str, args: Sequence[str]) -> list[str]:
    """What a container of ``image`` runs, as Docker decides: ``entrypoint`` replaces the
    image's and drops its command; ``args`` replace the command."""
    head = [entrypoint] if entrypoint else list(image.entrypoint)
    return [*head, *(args or ([] if entrypoint else image.cmd))]


async def run_once(
    client: AgentClient, run: ImageRun, args: Sequence[str], prepare: Prepare, *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - enforced inside the machine
    on_output: OutputCallback | None = None, write: Mapping[str, str] | None = None,
    collect: Sequence[str] = (),
) -> ExecResult:
    """``Machine.exec_image`` for every provider: the image ``prepare`` shows in the machine
    (with the machine's names and ``run.binds``), run there once as ``run`` says."""
    binds = (*ETC_BINDS, *[(inside, at, "dir") for inside, at in run.binds])
    try:
        image, root = await prepare(binds)
        user = container.user_ids(run.user or image.user, image.rootfs)
    except MachineError as exc:
        what = f"the image of {run.context}/{run.image}" if run.context else run.image
        raise ExecError(f"cannot run {what}: {exc}") from exc
    argv = command(image, run.entrypoint, args)
    if not argv:
        raise ExecError(f"{run.image}: the image names no command, and the step gives none")
    return await client.exec(
        argv, env=environment(image, tuple((env or {}).items()), user[0]),
        cwd=run.workdir or image.workdir or "/", timeout=timeout, on_output=on_output,
        write=write, collect=collect, root=root, user=user,
    )  # fmt: skip
