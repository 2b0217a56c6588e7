"""Nobody else talks to the actors. The service as a process, probed as an attacker would:
from another network namespace (a host of the test's own, on a veth pair with addresses on
that pair only), and on the data channels from a process of another user and from one of the
same user outside the service. Traffic stays on addresses this test creates."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from k2actors.channel import _SERVICE_SECRET, peer_credentials
from k2actors.core.framing import encode, proof
from k2actors.processes import process_table, trees
from k2actors.readback import missing_and_duplicates
from tests.conftest import trade_ids, wait_until
from tests.test_resilience import settle, total, wait_for_trades

HOST_ADDRESS, PEER_ADDRESS = "169.254.77.1", "169.254.77.2"  # link-local, on the test's veth pair only
NOBODY = 65534

needs_root_and_ip = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                       reason="network namespaces need root and iproute2's ip")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair: HOST_ADDRESS here, PEER_ADDRESS there."""
    name, host_link, peer_link = f"k2t{os.getpid()}", f"k2h{os.getpid()}", f"k2n{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("link", "add", host_link, "type", "veth", "peer", "name", peer_link)
        ip("link", "set", peer_link, "netns", name)
        ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", host_link)
        ip("link", "set", host_link, "up")
        ip("-n", name, "addr", "add", f"{PEER_ADDRESS}/30", "dev", peer_link)
        ip("-n", name, "link", "set", peer_link, "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", host_link], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def service_pids(service) -> set[int]:
    """The service's process and every actor process, from the roots /health names."""
    actors = wait_until(lambda: service.health().get("actors"), 30, "/health naming the actor processes")
    return trees((actors["service"], actors["actor_system"]), process_table())


def socket_inodes(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if match := re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}")):
                        inodes.add(int(match[1]))
    return inodes


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Port -> (address, socket inode) of every listening TCP socket of this network namespace."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A":  # LISTEN
                address, port = local.split(":")
                packed = bytes.fromhex(address)
                # /proc prints each 32-bit word of an address in host order
                words = b"".join(packed[i:i + 4][::-1] for i in range(0, len(packed), 4))
                family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
                listening[int(port, 16)] = (socket.inet_ntop(family, words), inode)
    return listening


def listening_tcp(service) -> dict[int, str]:
    """Port -> address of every TCP socket the service's processes listen on."""
    inodes = socket_inodes(service_pids(service))
    return {port: address for port, (address, inode) in listening_sockets().items() if inode in inodes}


def connect_from(namespace: str, ports: list[int]) -> dict[int, str]:
    """What a client in the namespace gets connecting to HOST_ADDRESS on each port."""
    probe = (
        "import json, socket, sys\n"
        "seen = {}\n"
        "for port in json.loads(sys.argv[1]):\n"
        "    try:\n"
        f"        socket.create_connection(({HOST_ADDRESS!r}, port), timeout=3).close()\n"
        "        seen[port] = 'open'\n"
        "    except ConnectionRefusedError:\n"
        "        seen[port] = 'refused'\n"
        "    except OSError as exc:\n"
        "        seen[port] = type(exc).__name__\n"
        "print(json.dumps(seen))\n"
    )
    result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", probe, json.dumps(ports)],
                            capture_output=True, text=True, timeout=120, check=True)
    return {int(port): seen for port, seen in json.loads(result.stdout).items()}


@needs_root_and_ip
@pytest.mark.parametrize("metrics_bind", [HOST_ADDRESS, "127.0.0.1"])
def test_from_another_host_no_actor_port_answers_and_metrics_only_where_bound(metrics_bind, namespace, start_service):
    service = start_service(K2_METRICS_BIND_ADDRESS=metrics_bind)
    listening = wait_until(lambda: (found := listening_tcp(service)) and service.metrics_port in found and found,
                           30, "the service listening")
    actor_ports = sorted(port for port in listening if port != service.metrics_port)
    assert len(actor_ports) >= 6  # Thespian's admin and one port per actor
    assert {listening[port] for port in actor_ports} == {"127.0.0.1"}, listening
    assert listening[service.metrics_port] == metrics_bind

    seen = connect_from(namespace, [*actor_ports, service.metrics_port])
    assert {seen[port] for port in actor_ports} == {"refused"}, seen
    assert seen[service.metrics_port] == ("open" if metrics_bind == HOST_ADDRESS else "refused")
    assert service.stop() == 0, service.log()


def inboxes(service) -> list[str]:
    """The abstract names of the data channels the service's actors listen on."""
    inodes = socket_inodes(service_pids(service))
    names = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[6]) in inodes and fields[7].startswith("@k2actors-data/") and fields[5] == "01":
            names.append("\0" + fields[7][1:])  # listening (state 01), as the kernel prints it: @ for the NUL
    return names


class Planted:
    """A pickle that, if a receiver unpickled it, would create a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def attack(names: list[str], payload: bytes, uid: int | None, prove: bool = False) -> int:
    """From a process of its own (as `uid` when given), connects twice to each inbox, sends
    the payload (after a proof made with that process's own secret, when `prove`), and reads
    until the inbox closes; returns the process's pid. Forked, not run: another user cannot
    run this machine's Python from /root."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            for name in names * 2:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(10)
                    sock.connect(name)
                    listener, _ = peer_credentials(sock)
                    with contextlib.suppress(OSError):
                        sock.sendall((proof(_SERVICE_SECRET, listener) if prove else b"") + payload)
                        while sock.recv(65536):
                            pass
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
def test_a_process_of_another_user_or_outside_the_service_is_refused_on_every_data_channel(
    start_service, simulator, broker, registry, topic, tmp_path
):
    service = start_service()
    service.wait_ready()
    wait_for_trades(service, 100)
    names = wait_until(lambda: len(found := inboxes(service)) >= 2 and found, 30, "the Normaliser's and the producer's inboxes")
    os.chmod(tmp_path, 0o777)  # the other user could write its file here, were its pickle ever run
    planted = tmp_path / "planted"

    message = encode(Planted(planted))
    stranger = attack(names, message, uid=NOBODY)
    # The same user, running this package, but not of this service: its secret is its own.
    neighbour = attack(names, message, uid=None, prove=True)

    def refusals(reason: str) -> float:
        return service.metrics().get(f'k2_channel_refusals_total{{reason="{reason}"}}', 0)

    wait_until(lambda: refusals("other_user") == 2 * len(names) and refusals("no_proof") == 2 * len(names), 30,
               "both refused on every inbox, and counted")
    assert not planted.exists()
    log = service.log()
    for pid, uid in ((stranger, NOBODY), (neighbour, os.getuid())):
        lines = [line for line in log.splitlines() if f"refused a data channel from pid {pid} (uid {uid})" in line]
        assert len(lines) == len(names), lines  # once per peer, in each actor it tried

    produced = service.metric("k2_kafka_messages_produced_total")
    wait_for_trades(service, produced + 150)  # streaming on
    samples = settle(service)
    assert service.stop() == 0, service.log()
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_binance_missing_trades_total") == 0  # nothing lost, so nothing to backfill
    assert total(samples, "k2_actor_restarts_total") == 0
