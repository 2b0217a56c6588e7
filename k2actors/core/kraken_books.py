"""Kraken's books as the Normaliser keeps them: one `ChecksummedBook` per connection and pair
(k2actors.core.connection_books), each verified by Kraken's checksum on every message, and a
book that fails it subscribed again for a fresh snapshot.

Only a book whose checksum matched publishes (`CheckedTop`); the ledger publishes each
cadence window of a pair once, whichever connection's book gave it. A pair is in sync when
one of its live books is verified.

No I/O: fed messages, their sources and the time; returns what to publish, report and ask.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

from k2actors.core.checksummed_book import CheckedState, CheckedTop, ChecksummedBook, ChecksumMismatch
from k2actors.core.connection_books import BookSource, ConnectionBooks, Key, Retries, SymbolInSync, SymbolOutOfSync
from k2actors.core.kraken import VENUE, BookMessage, Instrument, subscribed_depth
from k2actors.core.telemetry import LogLine

A = TypeVar("A")  # the address of a connection, opaque here


@dataclass(frozen=True, slots=True)
class ResubscribeWanted(Generic[A]):
    """Action: ask this connection for a fresh snapshot of the pair's book."""

    source: BookSource[A]
    pair: str

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"asking {self.source.endpoint} (connection {self.source.conn_id}) for a fresh "
                                     f"snapshot of {VENUE} {self.pair}'s book",
                       {"event": "book_resubscribe", "venue": VENUE, "symbol": self.pair, "endpoint": self.source.endpoint,
                        "conn_id": self.source.conn_id})


@dataclass(frozen=True, slots=True)
class ChecksumFailed:
    """A connection's book of a pair is not the venue's: not published until a fresh snapshot,
    asked for in `retry_in` seconds."""

    endpoint: str
    conn_id: str
    mismatch: ChecksumMismatch
    retry_in: float

    def report(self) -> LogLine:
        mismatch = self.mismatch
        message = "snapshot" if mismatch.in_snapshot else "update"
        return LogLine(logging.WARNING, f"book of {VENUE} {mismatch.symbol} from {self.endpoint} failed its checksum after "
                                        f"an {message} (Kraken's {mismatch.expected}, ours {mismatch.computed}): "
                                        f"not published; a fresh snapshot asked for in {self.retry_in:.0f} s",
                       {"event": "book_checksum_failed", "venue": VENUE, "symbol": mismatch.symbol, "endpoint": self.endpoint,
                        "conn_id": self.conn_id, "expected": mismatch.expected, "computed": mismatch.computed,
                        "in_snapshot": mismatch.in_snapshot, "retry_in_seconds": self.retry_in})


Output = CheckedTop | ChecksumFailed | ResubscribeWanted[A] | SymbolOutOfSync | SymbolInSync


class KrakenBooks(Generic[A]):
    def __init__(self, publish_depth: int, cadence_ms: int) -> None:
        self._publish_depth = publish_depth
        self._subscribed_depth = subscribed_depth(publish_depth)
        self._cadence_us = cadence_ms * 1000
        self._retries: Retries[Key, BookSource[A]] = Retries()
        self._books: ConnectionBooks[ChecksummedBook] = ConnectionBooks(
            VENUE, lambda book: book.state is CheckedState.IN_SYNC, self._retries.drop)

    def message(self, message: BookMessage, instrument: Instrument, source: BookSource[A], received_us: int,
                now: float) -> list[Output[A]]:
        """A book message of a subscribed pair, described by `instrument`."""
        pair = message.symbol
        key = (source.endpoint, source.conn_id, pair)
        book = self._books.heard(key, now, lambda: ChecksummedBook(
            pair, self._subscribed_depth, instrument.price_precision, instrument.qty_precision, self._publish_depth,
            self._cadence_us))
        outputs: list[Output[A]] = []
        # (A mismatch's Resubscribe is scheduled with it; a ChecksumInSync shows in the pair's state.)
        for output in book.message(message, received_us):
            if isinstance(output, CheckedTop):
                outputs.append(output)
            elif isinstance(output, ChecksumMismatch):
                delay = self._retries.failed(key, source, now)
                outputs.append(ChecksumFailed(source.endpoint, source.conn_id, output, delay))
                outputs += self.due(now)
        outputs += self._books.state(pair, now, "checksum")
        return outputs

    def due(self, now: float) -> list[ResubscribeWanted[A]]:
        """The resubscriptions whose time has come."""
        return [ResubscribeWanted(source, key[2]) for key, source in self._retries.due(now)]

    def pairs(self) -> set[str]:
        return self._books.symbols()

    def lost_since(self) -> dict[str, float]:
        """The pairs out of sync, and since when."""
        return self._books.lost_since()

    def forget(self, pairs: Collection[str]) -> None:
        """Every book of these pairs (cluster mode: another instance owns them now)."""
        self._books.forget(pairs)
