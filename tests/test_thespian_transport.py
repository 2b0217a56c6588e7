"""The two changes to Thespian's TCP transport (k2actors/thespian_transport.py), on real
sockets: every socket of an actor system listens on the loopback only; a transmit whose ACK
has not arrived yet keeps waiting unpaused, and the ACK, once there, completes it as before.
Each also pins down what the change replaces in Thespian, so that another Thespian that
behaves otherwise fails here."""

import pickle
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from thespian.actors import ActorAddress, ActorSystem
from thespian.system.transport import SendStatus, TransmitIntent
from thespian.system.transport.IPBase import IPActorAddress
from thespian.system.transport.streamBuffer import ReceiveBuffer, ackMsg
from thespian.system.transport.TCPTransport import TCPTransport

import k2actors.thespian_transport as transport_change
from k2actors.net import free_port
from tests.actors import Sink
from tests.test_exposure import listening_sockets


@pytest.fixture
def waiting_for_ack():
    """A transmit whose message is sent and whose ACK is awaited on a real connected socket;
    the other end is the receiver's side."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    intent = TransmitIntent(ActorAddress("receiver"), "message")
    intent.socket = ours
    intent.ackbuf = ReceiveBuffer(pickle.loads)
    intent.stage = TCPTransport._XMITStepWaitForAck
    yield intent, theirs
    ours.close()
    theirs.close()


def transport() -> TCPTransport:
    """Just the state a finishing transmit touches, without opening a listening socket."""
    bare = object.__new__(TCPTransport)
    bare._finished_intents = []
    return bare


@pytest.mark.parametrize("module", ["coordinator", "connection", "normaliser", "producer", "backfill", "metrics"])
def test_every_actor_process_runs_the_change(module):
    """Thespian starts each actor in a fresh process that imports the actor's module: that
    import alone must install the change."""
    probe = (
        f"import k2actors.actors.{module}\n"
        "from thespian.system.transport.TCPTransport import TCPTransport\n"
        "from thespian.system.transport.IPBase import IPActorAddress\n"
        "import os, k2actors.thespian_transport as change\n"
        "print(TCPTransport._next_XMIT_4 is change._read_ack_when_readable,\n"
        "      IPActorAddress.bindArgs.fget is change._bind_where_advertised, os.environ['THESPIAN_BASE_IPADDR'])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "True True 127.0.0.1", result.stderr


def external_address() -> IPActorAddress:
    """An address as Thespian makes one for an actor's listening socket."""
    return TCPTransport.getAdminAddr({"Admin Port": 0}).addressDetails


def test_thespian_alone_binds_an_actors_socket_to_every_interface():
    assert transport_change._bind_args.fget(external_address()) == (("", 0),)


def test_an_actors_socket_binds_the_loopback_address_it_advertises():
    address = external_address()
    assert address.sockname == ("127.0.0.1", 0)  # THESPIAN_BASE_IPADDR: where actors are reached
    assert address.bindArgs == (("127.0.0.1", 0),)


def test_an_actor_system_and_its_actors_listen_on_the_loopback_only():
    before = set(listening_sockets())
    admin_port = free_port()
    system = ActorSystem("multiprocTCPBase", {"Admin Port": admin_port})
    try:
        sinks = [system.createActor(Sink) for _ in range(3)]  # created: the admin reached them on the loopback
        opened = {port: address for port, (address, _) in listening_sockets().items() if port not in before}
        assert admin_port in opened and len(opened) >= 1 + len(sinks)
        assert set(opened.values()) == {"127.0.0.1"}, opened
    finally:
        system.shutdown()


def test_thespian_alone_pauses_a_transmit_whose_ack_is_not_there_yet(waiting_for_ack):
    intent, _ = waiting_for_ack
    assert transport_change._read_ack(transport(), intent) is True
    assert intent.backoffPause() >= timedelta(milliseconds=30)  # 20 ms x 1.7, out of the select set


def test_a_transmit_whose_ack_is_not_there_yet_keeps_waiting_unpaused(waiting_for_ack):
    intent, _ = waiting_for_ack
    for _ in range(3):
        assert TCPTransport._next_XMIT_4(transport(), intent) is True
    assert intent.backoffPause() == timedelta(0)
    assert intent.stage == TCPTransport._XMITStepWaitForAck


def test_the_ack_once_there_completes_the_transmit(waiting_for_ack):
    intent, theirs = waiting_for_ack
    sender = transport()
    TCPTransport._next_XMIT_4(sender, intent)
    theirs.sendall(ackMsg)
    # Thespian reads at most 20 bytes before it knows a packet's length; the ACK is 21.
    steps = [TCPTransport._next_XMIT_4(sender, intent) for _ in range(2)]
    assert steps == [True, False]
    assert sender._finished_intents == [(intent, SendStatus.Sent)]


def test_a_receiver_that_closed_still_takes_thespians_retry_path(waiting_for_ack):
    intent, theirs = waiting_for_ack
    theirs.close()
    TCPTransport._next_XMIT_4(transport(), intent)
    # closed, shut down and scheduled to connect again after Thespian's retry period
    assert intent.stage == TCPTransport._XMITStepSendConnect
    assert not hasattr(intent, "socket")
    assert "retry#1" in intent.identify()
