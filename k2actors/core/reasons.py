"""Why a connection ended: a bounded set (the `reason` label of reconnect metrics), decided
where the end is seen, never recovered later from the wording of a message."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EndReason(Enum):
    CONNECT_FAILED = "connect_failed"  # refused, timed out, handshake failed
    STALE = "stale"  # open, but no frame (pings included) for the stale timeout
    SERVER_CLOSED = "server_closed"  # a close frame from the exchange
    CONNECTION_LOST = "connection_lost"  # gone without a close frame
    CLOSED_HERE = "closed_here"  # this service closed it: stopping, rotated, a sibling ended
    OTHER = "other"  # anything else the socket raised


@dataclass(frozen=True, slots=True)
class ConnectionEnd:
    reason: EndReason
    detail: str  # for people: the close code, the exception, how long it was silent

    def __str__(self) -> str:
        return self.detail
