"""Data channels: the path of a trade between actors, beside Thespian's.

A Thespian message costs its two actors about a millisecond of CPU between them (measured:
benchmarks/profile.py), and a batch of trades took three: frames to the Normaliser, their
release back, records to the producer. On a data channel a message is one write on a Unix
socket and one read when the receiver's select loop wakes (ThespianWatch). Thespian still
carries everything else: setup, control, supervision, metrics.

A receiver listens on an abstract Unix socket named after its actor address, so any actor
holding the address can reach it, and a restarted receiver (a new address) is a new
channel. Writes never block the actor: what the socket does not take now waits in the
channel for the next flush. A channel to a receiver that is gone closes, and what it held
is lost the way a Thespian message to a dead actor is: the batches' sequence numbers let
the sender resend to the successor.
"""

from __future__ import annotations

import socket

from thespian.actors import ActorAddress

from k2actors.core.framing import Decoder, encode

_READ_BYTES = 1 << 20


def inbox_name(address: ActorAddress) -> str:
    # An actor's address is its TCP port on this machine: unique among live actors. The
    # leading NUL puts the name in the abstract namespace: no file to clean up.
    return f"\0k2actors-data/{address}"


class Channel:
    """One end of a connection between two actors: messages in order, both ways."""

    def __init__(self, sock: socket.socket | None, peer: str) -> None:
        self.peer = peer
        # None until connected: an outgoing channel connects on the first flush that can.
        self._socket = sock
        self._out = bytearray()
        self._decoder = Decoder()
        self.closed = False

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
        """Every message that has arrived; none when the peer has gone (then the channel is closed)."""
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

    def close(self) -> None:
        self.closed = True
        self._out.clear()
        if self._socket is not None:
            self._socket.close()

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
        self._socket = sock
        return True


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
