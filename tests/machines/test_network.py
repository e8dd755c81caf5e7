"""Private networks, attacked the way a job would: from inside real sandboxes.

Traffic stays on this host: servers listen on 127.0.0.1 or on every address of the host, and
the only connections to elsewhere are short (2 s) attempts that must fail. Outbound NAT is shown
inside namespaces the test makes: a stand-in "host" namespace whose default route leads through
a veth to a stand-in "internet" namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.machines.provider_suite import eventually, is_dir, machine_dirs, process_alive
from vmrunner.errors import AllocationError
from vmrunner.machines import network
from vmrunner.machines.base import Machine, MachineSpec
from vmrunner.machines.sandbox import SandboxMachine, SandboxProvider

CHECKOUT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/slirp4netns"),
    reason="slirp4netns must run as root here (only root may open /dev/net/tun)",
)

#: Run inside a machine: tries each "tcp HOST PORT" / "udp HOST PORT" argument the way a job
#: would, prints {target: "ok" | error name}. UDP is "sent" (the server tells whether it came).
PROBE = textwrap.dedent("""
    import errno, json, socket, sys
    out = {}
    for spec in sys.argv[1:]:
        kind, host, port = spec.split()
        try:
            if kind == "tcp":
                with socket.create_connection((host, int(port)), timeout=2) as s:
                    out[spec] = "ok:" + s.recv(100).decode()
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"probe", (host, int(port)))
                out[spec] = "sent"
        except TimeoutError:
            out[spec] = "timeout"
        except OSError as exc:
            out[spec] = errno.errorcode.get(exc.errno, str(exc))
    print(json.dumps(out))
""")


async def probe(machine: Machine, *targets: str) -> dict[str, str]:
    result = await machine.exec(["python3", "-c", PROBE, *targets])
    assert result.ok, result.stderr.decode()
    answer: dict[str, str] = json.loads(result.stdout)
    return answer


class Servers:
    """A TCP and a UDP server on 127.0.0.1, and the same on every address of the host."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []
        self._transports: list[asyncio.BaseTransport] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(f"hello {writer.get_extra_info('peername')[0]}\n".encode())
            await writer.drain()
            writer.close()

        received = self.received

        class Datagrams(asyncio.DatagramProtocol):
            def __init__(self, name: str) -> None:
                self.name = name

            def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
                received.append((self.name, data))

        for name, host in (("loopback", "127.0.0.1"), ("any", "0.0.0.0")):
            server = await asyncio.start_server(greet, host, 0)
            self._servers.append(server)
            self.ports[f"tcp-{name}"] = server.sockets[0].getsockname()[1]
            transport, _ = await loop.create_datagram_endpoint(
                lambda n=name: Datagrams(n),  # type: ignore[misc]
                local_addr=(host, 0),
            )
            self._transports.append(transport)
            self.ports[f"udp-{name}"] = transport.get_extra_info("sockname")[1]

    async def aclose(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for transport in self._transports:
            transport.close()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    servers = Servers()
    await servers.start()
    yield servers
    await servers.aclose()


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses beyond loopback, as ``ip`` lists them."""
    listing = json.loads(
        subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, check=True).stdout
    )
    return [
        a["local"]
        for link in listing
        for a in link.get("addr_info", [])
        if not a["local"].startswith("127.")
    ]


def host_gateways() -> list[str]:
    routes = json.loads(
        subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, check=True).stdout
    )
    return [route["gateway"] for route in routes if "gateway" in route]


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[SandboxProvider]:
    provider = SandboxProvider(tmp_path / "home", grace=0.5)
    yield provider
    await provider.aclose()


@pytest.fixture
async def private(provider: SandboxProvider) -> AsyncIterator[Machine]:
    machine = await provider.allocate(MachineSpec(network="private"))
    yield machine
    await provider.release(machine)


def refused(outcome: str) -> bool:
    """A connection that went nowhere: no route, refused by the namespace, or by slirp."""
    return not outcome.startswith("ok")


async def test_host_loopback_is_unreachable(private: Machine, servers: Servers) -> None:
    port = servers.ports["tcp-loopback"]
    outcome = await probe(
        private, f"tcp 10.0.2.2 {port}", f"tcp 127.0.0.1 {port}", f"tcp 10.0.2.3 {port}"
    )
    assert all(refused(o) for o in outcome.values()), outcome
    await probe(private, f"udp 10.0.2.2 {servers.ports['udp-loopback']}")
    await asyncio.sleep(0.3)
    assert servers.received == []


async def test_host_addresses_and_gateways_are_unreachable(
    private: Machine, servers: Servers
) -> None:
    tcp, udp = servers.ports["tcp-any"], servers.ports["udp-any"]
    addresses = host_addresses()
    assert addresses, "this host has no address beyond loopback to attack"
    targets = [f"tcp {a} {tcp}" for a in addresses] + [f"tcp {g} {tcp}" for g in host_gateways()]
    targets += [f"tcp 10.0.2.2 {tcp}", f"tcp 10.0.2.3 {tcp}", "tcp 169.254.169.254 80"]
    outcome = await probe(private, *targets)
    assert all(refused(o) for o in outcome.values()), outcome
    # Refused at once by the namespace's routes, not by a timeout somewhere out there.
    assert {outcome[f"tcp {a} {tcp}"] for a in addresses} == {"EHOSTUNREACH"}
    await probe(private, *(f"udp {a} {udp}" for a in addresses), f"udp 10.0.2.2 {udp}")
    await asyncio.sleep(0.3)
    assert servers.received == []


async def test_the_machine_sees_its_private_network(private: Machine) -> None:
    result = await private.exec(
        ["sh", "-c", "cat /etc/resolv.conf; cat /proc/net/dev; ip -4 route"]
    )
    output = result.stdout.decode()
    # No IPv6 way out at all (slirp4netns runs without --enable-ipv6).
    assert "default" not in (await private.exec(["ip", "-6", "route"])).stdout.decode()
    assert "nameserver 10.0.2.3" in output
    assert "tap0:" in output
    assert "eth0" not in output
    assert "default via 10.0.2.2 dev tap0" in output


async def test_a_job_cannot_undo_the_blocks(private: Machine, servers: Servers) -> None:
    address = host_addresses()[0]
    attacks = [
        f"ip route del {address}",
        "ip route flush table main",
        f"ip route add {address}/32 via 10.0.2.2",
        "ip link set tap0 down",
        "python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'",
        "python3 -c 'import socket; "
        "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)'",
    ]
    for attack in attacks:
        result = await private.exec(["sh", "-c", attack])
        assert not result.ok, f"{attack!r} worked inside the machine"
    outcome = await probe(private, f"tcp {address} {servers.ports['tcp-any']}")
    assert outcome == {f"tcp {address} {servers.ports['tcp-any']}": "EHOSTUNREACH"}
    # A namespace of its own (if the job may make one) has no way out at all.
    port = servers.ports["tcp-loopback"]
    escaped = await private.exec(
        ["unshare", "-rn", "python3", "-c", PROBE, f"tcp 10.0.2.2 {port}", f"tcp {address} {port}"]
    )
    assert not escaped.ok or all(refused(o) for o in json.loads(escaped.stdout).values())


async def test_none_has_loopback_only(provider: SandboxProvider, servers: Servers) -> None:
    machine = await provider.allocate(MachineSpec(network="none"))
    try:
        result = await machine.exec(["cat", "/proc/net/dev"])
        interfaces = {
            line.split(":")[0].strip() for line in result.stdout.decode().splitlines()[2:]
        }
        assert interfaces == {"lo"}
        outcome = await probe(
            machine,
            f"tcp 10.0.2.2 {servers.ports['tcp-loopback']}",
            f"tcp 127.0.0.1 {servers.ports['tcp-loopback']}",
        )
        assert all(refused(o) for o in outcome.values()), outcome
    finally:
        await provider.release(machine)


async def test_host_reaches_the_hosts_loopback(
    provider: SandboxProvider, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    import vmrunner.config as config

    config._host_network_warned = False
    machines = [await provider.allocate(MachineSpec(network="host")) for _ in range(2)]
    try:
        port = servers.ports["tcp-loopback"]
        assert await probe(machines[0], f"tcp 127.0.0.1 {port}") == {
            f"tcp 127.0.0.1 {port}": "ok:hello 127.0.0.1\n"
        }
    finally:
        for machine in machines:
            await provider.release(machine)
    warnings = [r for r in caplog.records if "network 'host'" in r.getMessage()]
    assert len(warnings) == 1  # once per process


async def test_release_stops_the_helper_once(provider: SandboxProvider) -> None:
    machine = await provider.allocate(MachineSpec(network="private"))
    assert isinstance(machine, SandboxMachine)
    assert machine.network is not None
    helper = machine.network.helper
    assert machine.record.data[network.RECORD_KEY] == {"pid": helper.pid, "start": helper.start}
    assert process_alive(helper.pid, helper.start)
    await asyncio.gather(*(provider.release(machine) for _ in range(3)))
    assert not process_alive(helper.pid, helper.start)
    assert machine.network.process.returncode == 0  # it left when its exit pipe closed
    assert machine_dirs(provider) == []


async def test_missing_slirp4netns_is_a_clear_error(tmp_path: Path) -> None:
    provider = SandboxProvider(tmp_path / "home", slirp4netns=str(tmp_path / "absent"))
    with pytest.raises(AllocationError, match="apt-get install slirp4netns"):
        await provider.allocate(MachineSpec(network="private"))
    assert machine_dirs(provider) == []


async def test_a_failing_helper_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "slirp4netns"
    fake.write_text("#!/bin/sh\necho 'open(\"/dev/net/tun\"): Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    provider = SandboxProvider(tmp_path / "home", slirp4netns=str(fake))
    with pytest.raises(AllocationError, match="Permission denied"):
        await provider.allocate(MachineSpec(network="private"))
    assert machine_dirs(provider) == []


OWNER = """
import asyncio, json
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.sandbox import SandboxProvider

async def main():
    machine = await SandboxProvider().allocate(MachineSpec(network="private"))
    print(json.dumps(machine.record.data["network_helper"]), flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_the_helper_of_a_killed_runner_goes_and_is_reclaimed() -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, stdout=asyncio.subprocess.PIPE, cwd=CHECKOUT
    )
    assert owner.stdout is not None
    helper = json.loads(await asyncio.wait_for(owner.stdout.readline(), 60))
    assert process_alive(helper["pid"], helper["start"])
    owner.send_signal(signal.SIGKILL)
    await owner.wait()
    # Its exit pipe closed with the runner: the helper leaves by itself.
    await eventually(
        lambda: not process_alive(helper["pid"], helper["start"]), "the network helper"
    )
    provider = SandboxProvider(grace=0.5)
    (record,) = provider.leftovers()
    assert record.data[network.RECORD_KEY] == helper
    await provider.reclaim(record)
    assert not is_dir(record.state_dir)


@pytest.fixture
def namespace_holder() -> Iterator[subprocess.Popen[bytes]]:
    holder = subprocess.Popen(["unshare", "--net", "sleep", "100"])
    yield holder
    holder.kill()
    holder.wait()


async def test_reclaim_kills_a_helper_still_running(
    namespace_holder: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    await eventually(
        lambda: (
            os.readlink(f"/proc/{namespace_holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        ),
        "the namespace",
    )
    net = await network.attach_private_network(namespace_holder.pid, log_path=tmp_path / "net.log")
    assert await network.reclaim_helper(net.record, grace=0.5)
    assert not process_alive(net.helper.pid, net.helper.start)
    await net.aclose()  # its owner's release after that finds nothing to do
    assert await network.reclaim_helper(net.record)


async def test_vmrunners_own_namespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AllocationError, match="shares vmrunner's network namespace"):
        await network.attach_private_network(os.getpid(), log_path=tmp_path / "net.log")


USERNS_JOB = textwrap.dedent("""
    import sys
    sys.stdin.readline()  # the network is attached
    exec(sys.argv.pop(1))
""")


async def test_a_namespace_owned_by_an_unprivileged_user_namespace(
    servers: Servers, tmp_path: Path
) -> None:
    """What bwrap makes with ``--unshare-user --unshare-net`` (or on ``--userns``): the helper
    attaches all the same, and a host-unprivileged process there reaches none of the host."""
    address = host_addresses()[0]
    targets = [
        f"tcp 10.0.2.2 {servers.ports['tcp-loopback']}",
        f"tcp {address} {servers.ports['tcp-any']}",
    ]
    job = await asyncio.create_subprocess_exec(
        "setpriv", "--reuid", "100000", "--regid", "100000", "--clear-groups",
        "unshare", "--user", "--net", "python3", "-c", USERNS_JOB, PROBE, *targets,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert job.stdin is not None
    try:
        await eventually(
            lambda: os.readlink(f"/proc/{job.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
            "the namespace",
        )
        assert os.readlink(f"/proc/{job.pid}/ns/user") != os.readlink("/proc/self/ns/user")
        net = await network.attach_private_network(job.pid, log_path=tmp_path / "net.log")
        try:
            output, _ = await asyncio.wait_for(job.communicate(b"go\n"), 30)
        finally:
            await net.aclose()
    finally:
        if job.returncode is None:
            job.kill()
            await job.wait()
    outcome = json.loads(output)
    assert outcome == {targets[0]: "ENETUNREACH", targets[1]: "EHOSTUNREACH"}


STAND_IN = textwrap.dedent("""
    # Runs in a fresh network namespace standing in for the host; makes another one standing in
    # for the internet (198.18.0.10 behind the gateway 198.51.100.1), then a private machine
    # (argv: home, provider, its options as JSON, the probe, its targets).
    import asyncio, json, subprocess, sys
    from pathlib import Path
    from vmrunner.machines.base import MachineSpec
    from vmrunner.machines.providers import get_provider

    def sh(*argv): subprocess.run(argv, check=True)
    internet = subprocess.Popen(["unshare", "--net", "sleep", "100"])
    try:
        own = Path("/proc/self/ns/net").readlink()
        while Path(f"/proc/{internet.pid}/ns/net").readlink() == own:
            pass
        inside = ["nsenter", "-t", str(internet.pid), "-n"]
        sh("ip", "link", "set", "lo", "up")
        sh(
            "ip", "link", "add", "veth-host", "type", "veth",
            "peer", "name", "veth-net", "netns", str(internet.pid),
        )  # fmt: skip
        sh("ip", "addr", "add", "198.51.100.2/24", "dev", "veth-host")
        sh("ip", "link", "set", "veth-host", "up")
        sh("ip", "route", "add", "default", "via", "198.51.100.1")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "addr", "add", "198.51.100.1/24", "dev", "veth-net")
        sh(*inside, "ip", "addr", "add", "198.18.0.10/32", "dev", "lo")
        sh(*inside, "ip", "link", "set", "veth-net", "up")
        server = (
            "import socket\\ns=socket.create_server(('0.0.0.0',8080))\\nprint(flush=True)\\n"
            "while 1:\\n c,a=s.accept(); c.sendall(f'hello {a[0]}\\\\n'.encode()); c.close()"
        )
        remote = subprocess.Popen([*inside, sys.executable, "-c", server], stdout=subprocess.PIPE)
        local = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE)
        remote.stdout.readline(); local.stdout.readline()

        async def main():
            provider = get_provider(sys.argv[2], home=Path(sys.argv[1]), **json.loads(sys.argv[3]))
            machine = await provider.allocate(MachineSpec(network="private"))
            try:
                result = await machine.exec(["python3", "-c", sys.argv[4], *sys.argv[5:]])
                print(result.stdout.decode(), result.stderr.decode(), flush=True)
            finally:
                await provider.release(machine)
        try:
            asyncio.run(main())
        finally:
            remote.kill()
            local.kill()
    finally:
        internet.kill()
""")


async def behind_a_stand_in_host(
    home: Path, provider: str, options: dict[str, str], *targets: str
) -> dict[str, str]:
    """The probe's outcome in a private machine of ``provider`` made in the stand-in host."""
    run = await asyncio.create_subprocess_exec(
        "unshare", "--net", sys.executable, "-c", STAND_IN, str(home), provider,
        json.dumps(options), PROBE, *targets,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=CHECKOUT,
    )  # fmt: skip
    output, errors = await asyncio.wait_for(run.communicate(), 240)
    assert run.returncode == 0, errors.decode()
    outcome: dict[str, str] = json.loads(output.decode().split("\n", 1)[0])
    return outcome


#: What the stand-in internet and host answer: the internet, seen from there as the host's
#: address (NAT); the host's own address, its gateway, and its loopback through the gateway.
STAND_IN_TARGETS = [
    "tcp 198.18.0.10 8080",
    "tcp 198.51.100.2 8080",
    "tcp 198.51.100.1 8080",
    "tcp 10.0.2.2 8080",
]


async def test_outbound_nat_reaches_the_internet(tmp_path: Path) -> None:
    outcome = await behind_a_stand_in_host(tmp_path / "home", "sandbox", {}, *STAND_IN_TARGETS)
    assert outcome == {
        # The internet, seen from there as the host's address (NAT).
        "tcp 198.18.0.10 8080": "ok:hello 198.51.100.2\n",
        # The host's own address, its gateway, and its loopback through slirp's gateway.
        "tcp 198.51.100.2 8080": "EHOSTUNREACH",
        "tcp 198.51.100.1 8080": "EHOSTUNREACH",
        "tcp 10.0.2.2 8080": "ENETUNREACH",
    }
