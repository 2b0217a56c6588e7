"""Messages as length-prefixed pickles on a byte stream: the framing of the data channels
between actors (k2actors.channel), with no I/O of its own.

Both ends are this package's own actors on one machine, so pickle is trusted here exactly
as Thespian trusts it for every other message.
"""

from __future__ import annotations

import pickle
import struct

_LENGTH = struct.Struct("!I")


def encode(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class Decoder:
    """Bytes in as they arrive, in pieces of any size; whole messages out, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        buffer = self._buffer
        buffer += data
        messages: list[object] = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
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

