"""The data channels' byte stream (k2actors.channel), with no I/O of its own: a proof that
the peer belongs to this service, then messages as length-prefixed pickles.

Pickle runs what it is given, so nothing is unpickled before the peer has proved itself.
Each end's first bytes are `proof(secret, pid of the other end)`: the secret is made once
per service (k2actors.channel) and known only to its processes, and binding the proof to
the receiving process means a proof seen by one process is worth nothing at another. A
message longer than MAX_MESSAGE_BYTES is refused before its body is buffered.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
from dataclasses import dataclass

_LENGTH = struct.Struct("!I")
# Far above any batch the service sends (a batch holds at most link.MAX_BATCH_BYTES of
# frames), far below what would hurt a 512 MiB container.
MAX_MESSAGE_BYTES = 64 * 2**20
PROOF_BYTES = hashlib.sha256().digest_size


def proof(secret: bytes, pid: int) -> bytes:
    """What a process of the service sends first to the process `pid`."""
    return hmac.new(secret, b"k2actors data channel to pid %d" % pid, hashlib.sha256).digest()


def encode(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


@dataclass(frozen=True)
class Refusal:
    """Why a channel's bytes were refused: `reason` is a metric label, `detail` a log line's."""

    reason: str  # "no_proof" or "oversized" here; k2actors.channel adds "other_user"
    detail: str


class Decoder:
    """Bytes in as they arrive, in pieces of any size; whole messages out, in order, once the
    peer has sent `expected_proof`. Anything else sets `refusal`, and nothing more comes out."""

    def __init__(self, expected_proof: bytes, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._proof_pending = expected_proof  # the part of the proof not yet received
        self._max = max_message_bytes
        self.refusal: Refusal | None = None

    def feed(self, data: bytes) -> list[object]:
        if self.refusal is not None:
            return []
        if self._proof_pending:
            data = self._check_proof(data)
            if not data:
                return []
        buffer = self._buffer
        buffer += data
        messages: list[object] = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self._max:
                self.refusal = Refusal("oversized", f"a message of {length} bytes, more than the {self._max} a channel carries")
                buffer.clear()
                return messages
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            body = memoryview(buffer)[start + _LENGTH.size:end]
            try:
                messages.append(pickle.loads(body))
            finally:
                body.release()  # before the buffer is trimmed: an exported buffer cannot shrink
            start = end
        del buffer[:start]
        return messages

    def _check_proof(self, data: bytes) -> bytes:
        """The bytes after the proof; a mismatch refuses at its first byte."""
        pending = self._proof_pending
        taken = data[: len(pending)]
        if not hmac.compare_digest(taken, pending[: len(taken)]):
            self.refusal = Refusal("no_proof", "its first bytes were not this service's proof")
            return b""
        self._proof_pending = pending[len(taken):]
        return data[len(taken):]
