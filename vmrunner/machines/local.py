"""What the providers that run the agent as a local process share (``sandbox`` and ``host``).

- ``AgentMachine``: a ``Machine`` whose commands and files go through an ``AgentClient``.
- Machine directories under ``VMRUNNER_HOME/machines/<id>/`` with their ``machine.json``
  record, written before any process starts, so that a runner that dies leaves nothing unknown.
- Process identity (pid plus start time from ``/proc``) and the kill policy: SIGTERM, a grace
  period, SIGKILL, then wait; used both for our own children and for reclaimed strangers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vmrunner.config import vmrunner_home
from vmrunner.errors import AgentError, AllocationError, ReleaseError
from vmrunner.machines.agent import DEFAULT_GRACE
from vmrunner.machines.base import (
    ExecResult,
    Machine,
    MachinePaths,
    MachineRecord,
    MachineSpec,
    OutputCallback,
    Provider,
)
from vmrunner.machines.client import AgentClient, wait_through_cancellation

#: The agent program: one stdlib-only file, run by whatever python3 the machine has.
AGENT_PATH = Path(__file__).with_name("agent.py")
#: Runs the agent from a bundle directory (argv[1]) so its bytecode comes precompiled: a
#: script given by path is compiled at every start, which would cost more than the rest.
AGENT_BOOT = (
    "import sys;sys.path.insert(0,sys.argv[1]);import agent;sys.exit(agent.main(sys.argv[2:]))"
)
RECORD_NAME = "machine.json"
#: What each of the agent's two pipes holds (the kernel's default is 64 KiB): the runner's
#: user pays for it from a quota of 64 MiB (``fs.pipe-user-pages-soft``) unless it is root, and
#: pipes made past that quota shrink to 8 KiB, so a runner that is not root takes less.
PIPE_SIZE = 1 << 20 if os.geteuid() == 0 else 256 << 10
#: How long a new agent may take to answer its first ping.
START_TIMEOUT = 10.0
#: How long release may take before it gives up and says what is left.
RELEASE_TIMEOUT = 15.0

T = TypeVar("T")


# Processes.


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Field 22 of stat; fields[0] here is field 3 (the state), as the name may hold spaces.
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie holds no resources but its pid: gone for our purposes
    return int(fields[19])


def is_same_process(pid: int | None, start: int | None) -> bool:
    """Whether ``pid`` still names the process that started at ``start`` (guards pid reuse)."""
    return pid is not None and start is not None and process_start(pid) == start


async def wait_gone(pid: int, start: int | None, within: float) -> bool:
    """Poll until the process is gone (or is another process); True when it is."""
    deadline = time.monotonic() + within
    delay = 0.001
    while process_start(pid) is not None and process_start(pid) == start:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def descendants(pid: int) -> list[tuple[int, int | None]]:
    """Every live process below ``pid`` (children, grandchildren...) with its start time.

    Read from each process's parent in ``/proc/*/stat`` (this kernel may lack the ``children``
    files). Taken before a machine is stopped, it names what must be gone once it is: a daemon
    that left its process group, or a pid namespace's processes the kernel is still killing.
    """
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found: list[tuple[int, int | None]] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), ()):
            found.append((child, process_start(child)))
            stack.append(child)
    return found


async def kill_all(processes: list[tuple[int, int | None]]) -> list[int]:
    """SIGKILL each process that is still the one recorded, wait; the pids that survived."""
    survivors = []
    for pid, start in processes:
        if start is not None and not await kill_process(pid, start, 0):
            survivors.append(pid)
    return survivors


async def kill_process(pid: int, start: int | None, grace: float, *, group: bool = False) -> bool:
    """SIGTERM, up to ``grace`` seconds, SIGKILL, then wait; True once the process is gone.

    Only signals ``pid`` while it still is the process that started at ``start``.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, RELEASE_TIMEOUT)):
        if not is_same_process(pid, start):
            return True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if group else os.kill)(pid, sig)
        if await wait_gone(pid, start, wait):
            return True
    return False



#: Namespace kinds of ``/proc/PID/ns/`` and the words an error uses for each.
_NAMESPACE_WORDS = {"net": "network", "mnt": "mount"}


def namespace_pid(bwrap_pid: int, kind: str) -> int:
    """A process below ``bwrap_pid`` in a ``kind`` namespace (``/proc/PID/ns/KIND``) other than
    ours: where the sandbox's own network (``net``) or file system (``mnt``) is entered."""
    own = os.stat(f"/proc/self/ns/{kind}").st_ino

    def candidates() -> Iterator[int]:
        try:  # its direct children first, where the kernel lists them (cheaper than a walk)
            with open(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children", encoding="ascii") as file:
                yield from (int(pid) for pid in file.read().split())
        except OSError:
            pass
        yield from (pid for pid, _ in descendants(bwrap_pid))

    for pid in candidates():
        try:
            if os.stat(f"/proc/{pid}/ns/{kind}").st_ino != own:
                return pid
        except OSError:
            continue
    raise AllocationError(
        f"sandbox process {bwrap_pid} has no {_NAMESPACE_WORDS.get(kind, kind)} namespace of "
        "its own"
    )

def check_owner(record: MachineRecord, provider: str) -> None:
    """``ReleaseError`` unless ``record`` is a machine of ``provider`` (reclaiming it is ours)."""
    if record.provider != provider:
        raise ReleaseError(f"machine {record.machine_id} belongs to the {record.provider} provider")


async def shielded(awaitable: Awaitable[T]) -> T:
    """Run to completion even if the caller is cancelled meanwhile; then re-raise that."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


# The agent bundle.


def agent_bundle(python: str, cache_dir: Path) -> Path:
    """A directory with ``agent.py`` and its bytecode for ``python``, made once and reused.

    The name holds a digest of the source and of the interpreter, and the bytecode is not
    checked against the source at run time (it cannot go stale under that name).
    """
    source = AGENT_PATH.read_bytes()
    try:
        stat = os.stat(python)
    except OSError as exc:
        raise AllocationError(f"cannot run the agent with {python}: {exc.strerror}") from exc
    key = source + f"{os.path.realpath(python)}:{stat.st_mtime_ns}".encode()
    bundle = cache_dir / f"agent-{hashlib.sha256(key).hexdigest()[:16]}"
    if bundle.is_dir():
        return bundle
    staging = Path(tempfile.mkdtemp(prefix=".agent-", dir=_mkdir(cache_dir)))
    try:
        (staging / "agent.py").write_bytes(source)
        compiled = subprocess.run(
            [python, "-I", "-S", "-c", _COMPILE, str(staging / "agent.py")],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if compiled.returncode != 0:
            why = compiled.stderr.decode("utf-8", "replace").strip()[-500:]
            raise AllocationError(f"{python} cannot compile the agent: {why}")
        staging.chmod(0o755)
        try:
            staging.rename(bundle)
        except OSError:
            if not bundle.is_dir():  # not just another process that was faster
                raise
    except (OSError, subprocess.SubprocessError) as exc:
        raise AllocationError(f"cannot prepare the agent for {python}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle


_COMPILE = (
    "import py_compile,sys;py_compile.compile(sys.argv[1],doraise=True,"
    "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)"
)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


# Machine directories and records.


def new_machine_id(provider: str) -> str:
    return f"{provider}-{uuid.uuid4().hex[:12]}"


def create_machine_dir(machines_dir: Path, record: MachineRecord) -> Path:
    """Create the machine's directory with its record inside, atomically.

    The directory is prepared under a hidden name and renamed into place, so every visible
    machine directory carries its ``machine.json``.
    """
    final = machines_dir / record.machine_id
    staging = machines_dir / f".{record.machine_id}.new"
    try:
        machines_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging.mkdir(mode=0o700)
        _write_json(staging / RECORD_NAME, asdict(record))
        staging.rename(final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise AllocationError(f"cannot create the machine directory {final}: {exc}") from exc
    return final


def write_record(record: MachineRecord) -> None:
    try:
        _write_json(Path(record.state_dir) / RECORD_NAME, asdict(record))
    except OSError as exc:
        raise AllocationError(f"cannot record machine {record.machine_id}: {exc}") from exc


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.write("\n")
    os.replace(staging, path)


def read_records(machines_dir: Path, provider: str) -> list[MachineRecord]:
    """Every record of ``provider`` in ``machines_dir`` (unreadable ones are skipped)."""
    records = []
    try:
        entries = sorted(machines_dir.iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            data = json.loads((entry / RECORD_NAME).read_text(encoding="utf-8"))
            record = MachineRecord(**data)
        except (OSError, ValueError, TypeError):
            continue
        if record.provider == provider:
            records.append(record)
    return records


def remove_machine_dir(machines_dir: Path, state_dir: str) -> None:
    """Remove a machine directory; refuses anything that is not directly in ``machines_dir``."""
    path = Path(state_dir)
    if path.parent.resolve() != machines_dir.resolve() or path.name.startswith("."):
        raise ReleaseError(f"refusing to remove {state_dir}: not a machine directory")
    errors: list[str] = []

    def failed(function: Callable[..., Any], name: str, exc: BaseException) -> None:
        # A read-only directory (chmod inside the machine) only needs its mode back.
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
            function(name)
        except OSError as again:
            errors.append(f"{name}: {again.strerror}")

    if path.exists():
        shutil.rmtree(path, onerror=lambda function, name, info: failed(function, name, info[1]))
    if errors or path.exists():
        raise ReleaseError(f"cannot remove {state_dir}: {'; '.join(errors[:3]) or 'still there'}")


def owner_identity() -> tuple[int, int | None]:
    pid = os.getpid()
    return pid, process_start(pid)


def base_record(provider: str, spec: MachineSpec, machines_dir: Path) -> MachineRecord:
    machine_id = new_machine_id(provider)
    owner_pid, owner_start = owner_identity()
    return MachineRecord(
        machine_id=machine_id,
        provider=provider,
        vm_type=spec.vm_type,
        pid=None,
        pid_start=None,
        state_dir=str(machines_dir / machine_id),
        owner_pid=owner_pid,
        owner_start=owner_start,
        data={"network": spec.network, "labels": dict(spec.labels)},
    )


# The machine.


async def start_agent(
    argv: Sequence[str],
    *,
    name: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    piped_args: Sequence[str] = (),
    new_session: bool = False,
    grace: float = DEFAULT_GRACE,
    extra_fds: Sequence[int] = (),
    run_as: tuple[int, int] | None = None,
    prefix: Sequence[str] = (),
) -> tuple[asyncio.subprocess.Process, AgentClient]:
    """Start the agent's process, connect a client, and wait for its first pong.

    ``extra_fds`` are inherited by the process (the caller closes them); ``run_as`` runs
    ``argv`` as that host uid and gid, without supplementary groups; ``prefix``: a command that
    execs the rest once it has prepared the process (the sandbox joins the machine's cgroup so,
    as the runner's user, before the process becomes ``run_as``), in the same process.

    On any failure the process is killed and ``AllocationError`` says why (with the tail of
    the process's stderr, where bwrap and python explain themselves).
    """
    pass_fds: tuple[int, ...] = ()
    if piped_args:
        reader, writer = os.pipe()
        payload = b"".join(os.fsencode(arg) + b"\0" for arg in piped_args)
        if len(payload) > 60_000:  # pragma: no cover - a pipe holds 64 KiB unread
            raise AllocationError("the sandbox's options do not fit a pipe")
        with os.fdopen(writer, "wb") as pipe:
            pipe.write(payload)
        pass_fds = (reader,)
        argv = [argv[0], "--args", str(reader), *argv[1:]]
    if run_as is not None:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        uid, gid = run_as
        argv = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
    argv = [*prefix, *argv]
    try:
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - a local file, created empty
            # Python 3.11 hangs forever when the creation of a subprocess is cancelled at the
            # wrong moment (its cleanup waits for pipes that never connected): let it finish.
            creation = asyncio.ensure_future(
                asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    pass_fds=(*pass_fds, *extra_fds),
                    start_new_session=new_session,
                    limit=1 << 20,
                )
            )
            cancelled = await wait_through_cancellation(creation)
            process = creation.result()
    except OSError as exc:
        raise AllocationError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    finally:
        for fd in pass_fds:
            os.close(fd)
    if process.stdout is None or process.stdin is None:  # never: both were asked for as pipes
        await shielded(stop_process(process, 0, group=new_session))
        raise AllocationError(f"cannot talk to the agent of {name}: its pipes are missing")
    _widen_pipes(process)
    client = AgentClient(process.stdout, process.stdin, name=name, grace=grace)
    client.start()
    try:
        if cancelled:
            raise asyncio.CancelledError
        async with asyncio.timeout(START_TIMEOUT):
            await client.ping()
    except BaseException as exc:
        await shielded(_abandon(process, client, new_session))
        if not isinstance(exc, AgentError | TimeoutError):
            raise
        why = _tail(log_path) or ("no answer" if isinstance(exc, TimeoutError) else str(exc))
        raise AllocationError(f"the agent of {name} did not answer: {why}") from exc
    return process, client


def _widen_pipes(process: asyncio.subprocess.Process) -> None:
    """Give the agent's pipes room for whole frames (``PIPE_SIZE``) where the kernel allows:
    with its default 64 KiB a large transfer (files, port forwards) costs the two processes a
    switch every 64 KiB, and halves what a forward carries."""
    for stream in (process.stdin, process.stdout):
        # A reader keeps its transport private; a writer shows it.
        transport = getattr(stream, "transport", None) or getattr(stream, "_transport", None)
        pipe = transport.get_extra_info("pipe") if transport is not None else None
        if pipe is not None:
            with contextlib.suppress(OSError):  # over the user's quota: the default stays
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


async def _abandon(process: asyncio.subprocess.Process, client: AgentClient, group: bool) -> None:
    await client.close()
    await stop_process(process, DEFAULT_GRACE, group=group)


async def stop_process(process: asyncio.subprocess.Process, grace: float, *, group: bool) -> None:
    """Wait ``grace`` for our child to exit, then SIGKILL it (its group with ``group``)."""
    try:
        async with asyncio.timeout(grace):
            await process.wait()
            return
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    async with asyncio.timeout(RELEASE_TIMEOUT):
        await process.wait()


def _tail(path: Path, size: int = 2000) -> str:
    try:
        data = path.read_bytes()[-size:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


class AgentMachine(Machine):
    """A machine whose agent is a local process reached through pipes."""

    def __init__(
        self,
        *,
        provider_name: str,
        spec: MachineSpec,
        paths: MachinePaths,
        record: MachineRecord,
        process: asyncio.subprocess.Process,
        client: AgentClient,
        group: bool = False,
        writable: Mapping[str, Path] | None = None,
    ) -> None:
        self.id = record.machine_id
        self.spec = spec
        self.paths = paths
        self._provider_name = provider_name
        self._record = record
        self.process = process
        self.client = client
        #: Whether the agent's pid is also a process group to kill.
        self.group = group
        self.writable: Mapping[str, Path] = dict(writable or {})
        self.released = False
        #: Set once release started, so concurrent releases wait for the same teardown.
        self.teardown: asyncio.Task[None] | None = None

    @property
    def provider_name(self) -> str:
        return self._provider_name

    @property
    def record(self) -> MachineRecord:
        return self._record

    async def release_once(self, teardown: Callable[[], Awaitable[None]]) -> None:
        """Start ``teardown`` on the first release; every release awaits that same one, shielded."""
        if self.teardown is None:
            self.released = True
            self.teardown = asyncio.ensure_future(teardown())
        await shielded(self.teardown)

    def add_record_data(self, data: Mapping[str, Any]) -> None:
        """Keep more in the machine's record (what a reclaim after a crash must know)."""
        self._record = replace(self._record, data={**self._record.data, **data})

    @property
    def state_dir(self) -> Path:
        return Path(self._record.state_dir)

    def _usable(self) -> AgentClient:
        if self.released:
            raise AgentError(f"machine {self.id} was released")
        return self.client

    async def exec(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced inside the machine
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
        write: Mapping[str, str] | None = None,
        collect: Sequence[str] = (),
    ) -> ExecResult:
        return await self._usable().exec(
            command, env=env, cwd=cwd, timeout=timeout, on_output=on_output, stdin=stdin,
            write=write, collect=collect,
        )

    async def put(self, dest_dir: str, tar_data: bytes) -> None:
        await self._usable().put(dest_dir, tar_data)

    async def get(self, path: str) -> bytes:
        return await self._usable().get(path)

    async def ping(self) -> float:
        return await self._usable().ping()

    def forward(self, target: Path, port: int = 0) -> AbstractAsyncContextManager[int]:
        return self._usable().forward(target, port)

    async def _closed(self) -> None:
        """Free what the machine holds besides its process, before its directory goes."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} pid={self._record.pid}>"


# The provider.


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one machine's agent, and where the machine's paths are."""

    argv: Sequence[str]
    paths: MachinePaths
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    #: Start the agent in a new session (its pid is then the group to kill).
    new_session: bool = False
    #: Options given to ``argv[0]`` through a pipe as ``--args FD`` (bwrap's way), so that they
    #: (host paths) do not show in the process's command line, visible inside the machine.
    piped_args: Sequence[str] = ()
    #: The machine's writable state: a name -> host directory (what snapshots capture).
    writable: Mapping[str, Path] = field(default_factory=dict)
    #: Descriptors ``argv`` inherits (namespaces, filters, directories, data); the provider
    #: closes them once the agent started or failed to.
    pass_fds: Sequence[int] = ()
    #: The host uid and gid to start ``argv`` as (never root for a sandbox).
    run_as: tuple[int, int] | None = None
    #: Run before ``argv`` in the same process, which it then execs (see ``start_agent``).
    prefix: Sequence[str] = ()


class LocalProvider(Provider):
    """Allocation, release, leftovers and reclaim for agents that run as local processes.

    Subclasses only say how to launch the agent (``_launch``), and may bring their own
    ``machine_class``.
    """

    machine_class: ClassVar[type[AgentMachine]]

    def __init__(self, home: Path | None = None, *, grace: float = DEFAULT_GRACE) -> None:
        self.home = Path(home) if home is not None else vmrunner_home()
        self.machines_dir = self.home / "machines"
        self.cache_dir = self.home / "cache"
        self.grace = grace
        self._bundles: dict[str, Path] = {}

    def agent_argv(self, python: str, bundle_in_machine: str | None = None) -> list[str]:
        """The command that starts the agent with ``python`` (the bundle is made if needed).

        ``bundle_in_machine`` is where the machine sees the bundle directory, if elsewhere.
        """
        bundle = self._bundles.get(python)
        if bundle is None:
            bundle = self._bundles[python] = agent_bundle(python, self.cache_dir)
        where = bundle_in_machine or str(bundle)
        return [python, "-I", "-S", "-c", AGENT_BOOT, where, "--grace", str(self.grace)]

    def bundle_dir(self, python: str) -> Path:
        """The host directory of the agent bundle for ``python`` (after ``agent_argv``)."""
        return self._bundles[python]

    def _launch(self, state_dir: Path, record: MachineRecord, spec: MachineSpec) -> Launch:
        raise NotImplementedError

    def _plan(self, spec: MachineSpec, record: MachineRecord) -> MachineRecord:
        """The record of a new machine with what it will hold besides processes and its
        directory (cgroups, mounts), known before anything is made: a crash leaves nothing
        its record does not name. Raises ``AllocationError`` for what cannot be given."""
        return record

    def _free(self, record: MachineRecord) -> None:
        """Free what ``_plan`` named, once the machine's processes are gone; idempotent (runs
        in a thread: it may wait for the kernel)."""

    def _check(self, spec: MachineSpec) -> None:
        if spec.network not in self.capabilities.network_modes:
            modes = ", ".join(sorted(self.capabilities.network_modes))
            raise AllocationError(
                f"the {self.name} provider cannot give a machine network {spec.network!r}"
                f" (it supports: {modes})"
            )

    async def allocate(self, spec: MachineSpec) -> Machine:
        self._check(spec)
        record = self._plan(spec, base_record(self.name, spec, self.machines_dir))
        state_dir = create_machine_dir(self.machines_dir, record)
        try:
            # Shielded: a cancelled wait would leave the thread creating directories in the
            # machine directory that the cleanup below removes.
            launch = await shielded(asyncio.to_thread(self._launch, state_dir, record, spec))
            try:
                process, client = await start_agent(
                    launch.argv,
                    name=f"the agent of machine {record.machine_id}",
                    log_path=state_dir / "agent.log",
                    env=launch.env,
                    cwd=launch.cwd,
                    piped_args=launch.piped_args,
                    new_session=launch.new_session,
                    grace=self.grace,
                    extra_fds=launch.pass_fds,
                    run_as=launch.run_as,
                    prefix=launch.prefix,
                )
            finally:
                for fd in launch.pass_fds:
                    os.close(fd)
        except BaseException:
            await shielded(asyncio.to_thread(self._forget, record))
            raise
        record = replace(
            record,
            pid=process.pid,
            pid_start=process_start(process.pid),
            data={**record.data, "group": launch.new_session},
        )
        machine = self.machine_class(
            provider_name=self.name,
            spec=spec,
            paths=launch.paths,
            record=record,
            process=process,
            client=client,
            group=launch.new_session,
            writable=launch.writable,
        )
        try:
            await self._started(machine)
            write_record(machine.record)
        except BaseException:
            await self.release(machine)
            raise
        return machine

    async def _started(self, machine: AgentMachine) -> None:
        """Finish a machine whose agent answered, before it is recorded and handed out (the
        sandbox attaches its private network here); may add to ``machine.record``."""

    def _remove_dir(self, state_dir: str) -> None:
        """Remove a machine directory (a provider whose machines write files the runner may
        not remove itself removes them its own way)."""
        remove_machine_dir(self.machines_dir, state_dir)

    def _forget(self, record: MachineRecord) -> None:
        with contextlib.suppress(ReleaseError):
            self._free(record)
            self._remove_dir(record.state_dir)

    async def release(self, machine: Machine) -> None:
        if not isinstance(machine, AgentMachine) or machine.provider_name != self.name:
            raise ReleaseError(f"machine {machine.id} does not belong to the {self.name} provider")
        await machine.release_once(lambda: self._teardown(machine))

    async def _teardown(self, machine: AgentMachine) -> None:
        # Closing the stream tells the agent to kill every command it started and exit; the
        # process then ends (taking a sandbox's whole pid namespace with it). The kernel kills
        # a namespace's processes after its init is gone: wait for each one we saw.
        family = await asyncio.to_thread(descendants, machine.process.pid)
        await machine.client.close()
        try:
            await stop_process(machine.process, self.grace + 1, group=machine.group)
            survivors = await kill_all(family)
        except TimeoutError as exc:
            raise ReleaseError(
                f"machine {machine.id}: process {machine.process.pid} survived SIGKILL"
            ) from exc
        finally:
            await machine._closed()
        await asyncio.to_thread(self._free, machine.record)
        if survivors := [
            pid for pid, start in family if pid in survivors and is_same_process(pid, start)
        ]:
            raise ReleaseError(f"machine {machine.id}: processes {survivors} survived SIGKILL")
        await asyncio.to_thread(self._remove_dir, machine.record.state_dir)

    def leftovers(self) -> list[MachineRecord]:
        return read_records(self.machines_dir, self.name)

    async def reclaim(self, record: MachineRecord) -> None:
        check_owner(record, self.name)
        await shielded(self._reclaim(record))

    async def _reclaim(self, record: MachineRecord) -> None:
        family: list[tuple[int, int | None]] = []
        if record.pid is not None and is_same_process(record.pid, record.pid_start):
            family = await asyncio.to_thread(descendants, record.pid)
        if record.pid is not None and not await kill_process(
            record.pid, record.pid_start, self.grace, group=bool(record.data.get("group"))
        ):
            raise ReleaseError(
                f"machine {record.machine_id}: process {record.pid} survived SIGKILL"
            )
        survivors = await kill_all(family)
        await asyncio.to_thread(self._free, record)
        if survivors := [
            pid for pid, start in family if pid in survivors and is_same_process(pid, start)
        ]:
            raise ReleaseError(
                f"machine {record.machine_id}: processes {survivors} survived SIGKILL"
            )
        await asyncio.to_thread(self._remove_dir, record.state_dir)
