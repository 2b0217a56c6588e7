"""Data channels: the path of a trade between actors, beside Thespian's.

A Thespian message costs its two actors about a millisecond of CPU between them (measured:
benchmarks/profile.py), and a batch of trades took three: frames to the Normaliser, their
release back, records to the producer. On a data channel a message is one write on a Unix
socket and one read when the receiver's select loop wakes (ThespianWatch). The actors'
metric deltas take channels too (every actor sends them every second). Thespian carries
everything else: setup, control, supervision.

A receiver listens on an abstract Unix socket named after its actor address, so any actor
holding the address can reach it, and a restarted receiver (a new address) is a new
channel. Writes never block the actor: what the socket does not take now waits in the
channel for the next flush. A channel to a receiver that is gone closes, and what it held
is lost the way a Thespian message to a dead actor is: the batches' sequence numbers let
the sender resend to the successor.

An abstract socket can be reached by any process in the network namespace, so both ends
admit only the service's own processes: the peer's uid (SO_PEERCRED) must be this one, and
its first bytes must be the proof only a process of this service can make (core.framing).
The secret behind the proof is made when this module is first imported, in the service's
process before it starts the actor system: every actor process is forked from there
(Thespian's default start method) and inherits it; no other process is ever told it.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct

from thespian.actors import ActorAddress

from k2actors.core.framing import Decoder, Refusal, encode, proof
from k2actors.messages import ChannelReset

_READ_BYTES = 1 << 20
_SERVICE_SECRET = secrets.token_bytes(32)
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def inbox_name(address: ActorAddress) -> str:
    # An actor's address is its TCP port on this machine: unique among live actors. The
    # leading NUL puts the name in the abstract namespace: no file to clean up.
    return f"\0k2actors-data/{address}"


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel recorded it at connect or listen."""
    pid, uid, _ = _CREDENTIALS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
    return pid, uid


class Channel:
    """One end of a connection between two actors: messages in order, both ways."""

    def __init__(self, sock: socket.socket | None, peer: str) -> None:
        self.peer = peer
        self.peer_pid = 0  # known once connected
        self.peer_uid = 0
        # None until connected: an outgoing channel connects on the first flush that can.
        self._socket: socket.socket | None = None
        self._out = bytearray()
        self._decoder = Decoder(proof(_SERVICE_SECRET, os.getpid()))
        self._refusal: Refusal | None = None  # why the peer was refused, until the shell takes it
        self.closed = False
        if sock is not None:
            self._attach(sock)

    @property
    def full(self) -> bool:
        """Connected, with bytes the socket has not taken yet (its receiver is behind)."""
        return bool(self._out) and self._socket is not None and not self.closed

    def fileno(self) -> int | None:
        """What to watch for messages coming back; None while not connected."""
        return None if self._socket is None or self.closed else self._socket.fileno()

    def send(self, message: object) -> None:
        if self.closed:
            return
        self._out += encode(message)
        self.flush()

    def flush(self) -> None:
        if not self._out or self.closed or not self._connected():
            return
        assert self._socket is not None
        try:
            sent = self._socket.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self._out[:sent]

    def receive(self) -> list[object]:
        """Every message that has arrived; none when the peer has gone or was refused (then
        the channel is closed, and take_refusal() says why it was refused)."""
        if self._socket is None or self.closed:
            return []
        messages: list[object] = []
        while True:
            try:
                data = self._socket.recv(_READ_BYTES)
            except BlockingIOError:
                return messages
            except OSError:
                data = b""
            if not data:
                self.close()
                return messages
            messages.extend(self._decoder.feed(data))
            if self._decoder.refusal is not None:
                self._refuse(self._decoder.refusal)
                return messages

    def take_refusal(self) -> Refusal | None:
        """Why this channel's peer was refused, once: each refusal is logged and counted once."""
        refusal, self._refusal = self._refusal, None
        return refusal

    def close(self) -> None:
        self.closed = True
        self._out.clear()
        if self._socket is not None:
            self._socket.close()

    def _attach(self, sock: socket.socket) -> None:
        """A connected socket: the peer is admitted by its uid, and told our proof first."""
        self._socket = sock
        self.peer_pid, self.peer_uid = peer_credentials(sock)
        if self.peer_uid != os.getuid():
            self._refuse(Refusal("other_user", f"uid {self.peer_uid}, not the service's {os.getuid()}"))
            return
        self._out[:0] = proof(_SERVICE_SECRET, self.peer_pid)

    def _refuse(self, refusal: Refusal) -> None:
        self._refusal = refusal
        if refusal.reason == "oversized":
            # Frames come only after the proof: this is one of the service's own processes. It
            # starts a new channel, as after this receiver's restart.
            self._out += encode(ChannelReset(refusal.detail))  # after what is pending: whole messages
            self.flush()
        self.close()

    def _connected(self) -> bool:
        if self._socket is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.peer)
        except (ConnectionRefusedError, BlockingIOError, FileNotFoundError):
            sock.close()  # not listening yet (or its backlog is full): the next flush tries again
            return False
        self._attach(sock)
        return not self.closed


class Inbox:
    """Where an actor's incoming channels are accepted."""

    def __init__(self, address: ActorAddress) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind(inbox_name(address))
        self._socket.listen(64)
        self._socket.setblocking(False)

    def fileno(self) -> int:
        return self._socket.fileno()

    def accept(self) -> list[Channel]:
        """The channels accepted now, refused ones included (closed, with their refusal to take)."""
        channels: list[Channel] = []
        while True:
            try:
                sock, _ = self._socket.accept()
            except BlockingIOError:
                return channels
            sock.setblocking(False)
            channels.append(Channel(sock, "incoming"))

    def close(self) -> None:
        self._socket.close()
