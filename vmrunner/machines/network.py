"""A machine's private network: its own network namespace, outbound NAT through slirp4netns.

``attach_private_network(pid)`` gives the network namespace of process ``pid`` (bwrap's
``--unshare-net``) a way out; ``new_namespace()`` makes an empty one for a process still to be
started (QEMU, run in it with ``nsenter``) and ``attach_private_network_fd`` equips that:

- A ``slirp4netns`` process, run as vmrunner's own user (it must open ``/dev/net/tun``, which
  only root may open on some hosts; the job stays unprivileged), creates ``tap0`` in the
  namespace (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3) and carries its traffic as
  ordinary sockets of the host. ``--disable-host-loopback`` makes the gateway refuse to stand
  for the host's 127.0.0.0/8, and ``--enable-sandbox --enable-seccomp`` shut the helper in an
  empty root with few system calls, as it parses what the job sends. Debian's ``pasta`` (2023)
  refuses to start as root ("Couldn't configure user mappings"), so slirp4netns it is.
- The helper's sockets live in the host's network namespace, so ``--disable-host-loopback``
  alone still lets a job reach every other address of the host (its eth0 address, a docker
  bridge's...) and the services listening there. Before the helper starts, the namespace gets
  an ``unreachable`` route for each address the host calls its own (the ``LOCAL`` and
  ``BROADCAST`` entries of its routing tables, read from ``/proc/net/fib_trie``), for each
  gateway of its routes and for link-local 169.254.0.0/16 (cloud metadata services): the job
  gets "No route to host" at once and nothing leaves the namespace. No host setting changes.
  The job cannot remove these routes: it holds no ``CAP_NET_ADMIN`` over its namespace (bwrap
  drops every capability; the namespace is owned by the initial user namespace or by one whose
  capabilities the job never gets).

What stays reachable: the internet and the rest of the host's networks (other machines of its
LAN), and DNS on port 53 of 10.0.2.3, which slirp forwards to the host's resolver (the first
``nameserver`` of the host's ``/etc/resolv.conf``); its other ports answer nothing. The set of
blocked addresses is taken at allocation: an address the host gains later (an interface that
comes up while the job runs) is not blocked for that job. IPv6 is not offered at all.

The helper ends with ``PrivateNetwork.aclose()`` (exactly once), with vmrunner (its exit pipe
closes when vmrunner dies, however it dies), or by ``reclaim_helper`` given the pid and start
time kept in the machine's record (``PrivateNetwork.record``, under ``RECORD_KEY``).

A provider's part: make the namespace (or have bwrap make it), attach before the job can run,
keep ``network.record`` in the machine's record, ``aclose()`` on release, ``reclaim_helper``
on reclaim, and (for a sandbox) an ``/etc/resolv.conf`` saying ``RESOLV_CONF``. vmrunner runs
as root here; run unprivileged, slirp4netns would also need ``--userns-path`` of the user
namespace owning the machine's (not done: this host lets only root open ``/dev/net/tun``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import shutil
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vmrunner.errors import AllocationError
from vmrunner.machines.local import kill_process, process_start, shielded, stop_process

SLIRP4NETNS_MISSING = "slirp4netns is not installed: apt-get install slirp4netns"
#: The machine's side of the network, as slirp4netns configures it.
CIDR = ipaddress.IPv4Network("10.0.2.0/24")
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
ADDRESS = "10.0.2.100"
#: What ``/etc/resolv.conf`` must say inside a machine on a private network.
RESOLV_CONF = f"nameserver {DNS}\n"
#: The machine's network interface.
DEVICE = "tap0"
#: The largest MTU slirp4netns takes: fewer, larger packets through the user-mode stack.
MTU = 65520
#: Blocked whatever the host's tables say: link-local (metadata services live there).
ALWAYS_BLOCKED = (ipaddress.IPv4Network("169.254.0.0/16"),)
#: How long slirp4netns may take to configure the namespace.
READY_TIMEOUT = 5.0
#: How long the helper may take to exit once its exit pipe closed, before SIGKILL.
EXIT_GRACE = 1.0
#: The record key (in ``MachineRecord.data``) of the helper's pid and start time.
RECORD_KEY = "network_helper"

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def host_blocklist() -> list[ipaddress.IPv4Network]:
    """The destinations a private machine must not reach through the helper, beyond loopback:
    every address the host's network namespace treats as its own, and every gateway."""
    found: set[ipaddress.IPv4Network] = set(ALWAYS_BLOCKED)
    found.update(_local_routes(_read("/proc/net/fib_trie")))
    found.update(_gateways(_read("/proc/net/route")))
    # Loopback is the namespace's own (and slirp refuses the host's); the machine's own subnet
    # never leaves through slirp, and blocking inside it could cut the gateway off.
    return sorted(
        net for net in found if not net.overlaps(_LOOPBACK) and not net.overlaps(CIDR)
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise AllocationError(
            f"cannot read the host's addresses from {path}: {exc.strerror}"
        ) from exc


def _local_routes(fib_trie: str) -> set[ipaddress.IPv4Network]:
    """The ``LOCAL`` and ``BROADCAST`` prefixes of ``/proc/net/fib_trie``.

    Each leaf is a line ``|-- ADDRESS`` followed by lines ``/LEN SCOPE TYPE``, one per route.
    """
    found: set[ipaddress.IPv4Network] = set()
    leaf = ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            leaf = text[4:]
        elif text.startswith("/") and leaf:
            fields = text.split()
            if fields[-1] in ("LOCAL", "BROADCAST"):
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.IPv4Network(f"{leaf}{fields[0]}", strict=False))
    return found


def _gateways(route: str) -> set[ipaddress.IPv4Network]:
    """The gateways of ``/proc/net/route`` (addresses in hex, host byte order)."""
    found: set[ipaddress.IPv4Network] = set()
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and int(fields[3], 16) & 0x2:  # RTF_GATEWAY
            with contextlib.suppress(ValueError):
                address = ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16)))
                found.add(ipaddress.IPv4Network(address))
    return found


# Routes, added through rtnetlink from inside the machine's namespace.

_RTM_NEWROUTE = 24
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_RT_TABLE_MAIN, _RTPROT_STATIC, _RT_SCOPE_UNIVERSE, _RTN_UNREACHABLE = 254, 4, 0, 7
_RTA_DST = 1


def _in_own_thread(work: Callable[[], T]) -> T:
    """``work()`` in a thread of its own that ends with it: namespaces are per thread, and a
    thread that entered another network namespace must never serve anything else."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=run, name="vmrunner-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _libc_call(name: str, *args: int) -> None:
    function = getattr(ctypes.CDLL(None, use_errno=True), name)
    if function(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _netlink_in(netns_fd: int) -> socket.socket:
    """A route netlink socket of the namespace ``netns_fd`` (a socket belongs to the namespace
    its creator was in)."""

    def enter() -> socket.socket:
        _libc_call("setns", netns_fd, _CLONE_NEWNET)
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)

    return _in_own_thread(enter)


def new_namespace() -> int:
    """A new, empty network namespace (its loopback down), as a file descriptor that keeps it.

    For a process that is to start in it (``nsenter --net=/proc/self/fd/FD``) after the
    namespace was equipped, so that it never runs a moment without its rules.
    """

    def make() -> int:
        _libc_call("unshare", _CLONE_NEWNET)
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    try:
        return _in_own_thread(make)
    except OSError as exc:
        raise AllocationError(f"cannot make a network namespace: {exc.strerror or exc}") from exc


def add_unreachable_routes(netns_fd: int, networks: Iterable[ipaddress.IPv4Network]) -> None:
    """Give the namespace an ``unreachable`` route to each network (an error if one exists)."""
    with _netlink_in(netns_fd) as sock:
        sock.bind((0, 0))
        for seq, network in enumerate(networks, 1):
            rtmsg = struct.pack(
                "=BBBBBBBBI", socket.AF_INET, network.prefixlen, 0, 0, _RT_TABLE_MAIN,
                _RTPROT_STATIC, _RT_SCOPE_UNIVERSE, _RTN_UNREACHABLE, 0,
            )  # fmt: skip
            attr = struct.pack("=HH", 8, _RTA_DST) + network.network_address.packed
            flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
            body = rtmsg + attr
            sock.send(struct.pack("=LHHLL", 16 + len(body), _RTM_NEWROUTE, flags, seq, 0) + body)
            reply = sock.recv(65536)
            _, kind, _, _, _ = struct.unpack_from("=LHHLL", reply)
            if kind == _NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", reply, 16)
                if error:
                    raise OSError(-error, f"route to {network}: {os.strerror(-error)}")


# The helper.


@dataclass(frozen=True, slots=True)
class HelperRecord:
    """The helper process as a machine record keeps it: enough to kill it after a crash."""

    pid: int
    start: int | None

    def as_data(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> HelperRecord | None:
        """The record under ``RECORD_KEY`` of a machine record's ``data``, if any."""
        entry = data.get(RECORD_KEY)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("pid"), int):
            return None
        start = entry.get("start")
        return cls(pid=entry["pid"], start=start if isinstance(start, int) else None)


class PrivateNetwork:
    """One machine's running network helper. ``aclose()`` ends it; it runs once, however
    many times (and from however many tasks) it is called."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        exit_fd: int,
        blocked: list[ipaddress.IPv4Network],
    ) -> None:
        self.process = process
        self._exit_fd: int | None = exit_fd
        #: The destinations given an unreachable route in the machine's namespace.
        self.blocked = blocked
        self.helper = HelperRecord(pid=process.pid, start=process_start(process.pid))
        self._closing: asyncio.Task[None] | None = None

    @property
    def record(self) -> dict[str, Any]:
        """What to store in ``MachineRecord.data`` (under ``RECORD_KEY``)."""
        return {RECORD_KEY: self.helper.as_data()}

    async def aclose(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await shielded(self._closing)

    async def _close(self) -> None:
        if self._exit_fd is not None:  # slirp4netns exits when its exit pipe closes
            os.close(self._exit_fd)
            self._exit_fd = None
        await stop_process(self.process, EXIT_GRACE, group=False)


async def attach_private_network(
    pid: int, *, log_path: Path, slirp4netns: str | None = None
) -> PrivateNetwork:
    """Give the network namespace of process ``pid`` its unreachable routes and its helper.

    Returns once the helper configured ``tap0``; raises ``AllocationError`` (having stopped
    whatever it started) if slirp4netns is missing or fails, quoting its stderr (``log_path``).
    """
    try:
        netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AllocationError(
            f"cannot open the network namespace of process {pid}: {exc.strerror}"
        ) from exc
    try:
        return await attach_private_network_fd(netns_fd, log_path=log_path, slirp4netns=slirp4netns)
    finally:
        os.close(netns_fd)


async def attach_private_network_fd(
    netns_fd: int, *, log_path: Path, slirp4netns: str | None = None
) -> PrivateNetwork:
    """``attach_private_network`` for the namespace open as ``netns_fd`` (left open)."""
    program = slirp4netns or shutil.which("slirp4netns")
    if program is None or not os.access(program, os.X_OK):
        raise AllocationError(SLIRP4NETNS_MISSING)
    if os.fstat(netns_fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
        # The routes would cut vmrunner's own host off: never configure our own namespace.
        raise AllocationError(
            "that process shares vmrunner's network namespace: it has no private network"
        )
    blocked = host_blocklist()
    try:
        await asyncio.to_thread(add_unreachable_routes, netns_fd, blocked)
    except OSError as exc:
        raise AllocationError(
            f"cannot block the host's addresses in the machine's network: {exc}"
        ) from exc
    return await _start_helper(program, netns_fd, log_path, blocked)


async def _start_helper(
    program: str, netns_fd: int, log_path: Path, blocked: list[ipaddress.IPv4Network]
) -> PrivateNetwork:
    ready_read, ready_write = os.pipe()
    exit_read, exit_write = os.pipe()
    os.set_inheritable(exit_write, False)
    argv = [
        program, "--configure", f"--mtu={MTU}", "--disable-host-loopback",
        "--enable-sandbox", "--enable-seccomp",
        f"--ready-fd={ready_write}", f"--exit-fd={exit_read}",
        "--netns-type=path", f"/proc/self/fd/{netns_fd}", DEVICE,
    ]  # fmt: skip
    process: asyncio.subprocess.Process | None = None
    try:
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - a local file, created empty
            process = await shielded(
                asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(ready_write, exit_read, netns_fd),
                )
            )
    except OSError as exc:
        for fd in (ready_read, ready_write, exit_read, exit_write):
            os.close(fd)
        raise AllocationError(f"cannot start {program}: {exc.strerror or exc}") from exc
    os.close(ready_write)
    os.close(exit_read)
    network = PrivateNetwork(process, exit_write, blocked)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            ready = await _read_once(ready_read)
        if ready != b"1":
            await stop_process(process, EXIT_GRACE, group=False)
            why = _tail(log_path) or f"exit status {process.returncode}"
            raise AllocationError(f"slirp4netns failed to set up the machine's network: {why}")
    except BaseException as exc:
        await network.aclose()
        if isinstance(exc, TimeoutError):
            why = _tail(log_path) or "no answer"
            raise AllocationError(
                "slirp4netns did not set up the machine's network within "
                f"{READY_TIMEOUT:g} s: {why}"
            ) from exc
        raise
    finally:
        os.close(ready_read)
    return network


async def _read_once(fd: int) -> bytes:
    """The first bytes written to the pipe ``fd`` (b"" once every writer closed it)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not done.done():
            try:
                done.set_result(os.read(fd, 16))
            except OSError as exc:
                done.set_exception(exc)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        return await done
    finally:
        loop.remove_reader(fd)


def _tail(path: Path, size: int = 1500) -> str:
    try:
        data = path.read_bytes()[-size:]
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return " | ".join(line for line in lines if "seccomp is experimental" not in line).strip()


async def reclaim_helper(data: Mapping[str, Any], grace: float = EXIT_GRACE) -> bool:
    """Kill the helper named in a machine record's ``data`` (left by a runner that died);
    True once it is gone (or there was none, or it already was)."""
    helper = HelperRecord.from_data(data)
    if helper is None:
        return True
    return await kill_process(helper.pid, helper.start, grace)
