"""Two changes to Thespian's TCP transport, made in every actor process (and in any process
that imports the actors, before it starts an actor system).

1. Every socket of the actor system listens on the loopback only. Thespian unpickles what
   arrives on its ports, so a port another host can reach runs that host's code. Thespian's
   own means covers half of it: THESPIAN_BASE_IPADDR is the address every actor advertises
   and is reached at, set here to 127.0.0.1. But Thespian binds every external address to
   all interfaces (IPActorAddress.bindname is ('', port)); here it binds the address it
   advertises instead.

2. A sender waits for the receiver's ACK after each message. Thespian also tries that ACK
   read outside its select loop, whenever the receiver has an idle connection back to the
   sender (actors that answer each other always do), and when the read finds nothing yet it
   pauses the transmit for its minimum backoff, 20 ms x 1.7 = 34 ms, with the socket out of
   the select set. Measured in the service at 1,000 trades/s, that pause was most of the
   receive-to-ack p99. Here a read that would find nothing keeps waiting in the select loop
   instead, so the ACK is read the moment it arrives; a closed or failed socket still takes
   Thespian's path. Lowering the minimum backoff globally fixed the latency too, but also
   shortened every other backoff, and under bursts of large batches it left transmits
   stalled for a minute.

Both replace private parts of Thespian 4.0.1, the version setup.py pins;
tests/test_thespian_transport.py fails if what they replace behaves otherwise.
"""

import os
import socket

from thespian.system.transport.IPBase import IPActorAddress
from thespian.system.transport.TCPTransport import TCPTransport

LOOPBACK = "127.0.0.1"
os.environ["THESPIAN_BASE_IPADDR"] = LOOPBACK

_bind_args = IPActorAddress.bindArgs


def _bind_where_advertised(address: IPActorAddress) -> tuple[tuple[str, int]]:
    return (address.sockname,)


IPActorAddress.bindArgs = property(_bind_where_advertised)

_read_ack = TCPTransport._next_XMIT_4


def _read_ack_when_readable(transport, intent):
    try:
        intent.socket.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return _read_ack(transport, intent)


TCPTransport._next_XMIT_4 = _read_ack_when_readable
