"""Kraken's books as the Normaliser keeps them: one `ChecksummedBook` per connection and pair,
each verified by Kraken's checksum on every message, and a book that fails it subscribed
again for a fresh snapshot.

A book is per connection because Kraken's messages are: a book's updates apply to the
snapshot its own connection sent, and two connections (hot standby, or a rotation's
overlap) each send their own. Only a book whose checksum matched publishes (`CheckedTop`);
the ledger publishes each cadence window of a pair once, whichever connection's book gave it.

A pair is in sync when one of its live books is: a book heard within `PEER_SECONDS` of the
pair's latest message (hot standby's two connections hear each change within moments;
a book older than that is of a connection that has gone). A venue that keeps sending a book
that fails is not asked again on every message: a failure within `REPEAT_SECONDS` of the
resubscription before it on the same connection waits, 1 s, then doubling to 60 s.

No I/O: fed messages, their sources and the time; returns what to publish, report and ask.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

from k2actors.core.checksummed_book import CheckedState, CheckedTop, ChecksummedBook, ChecksumMismatch
from k2actors.core.kraken import VENUE, BookMessage, Instrument, subscribed_depth
from k2actors.core.telemetry import LogLine

A = TypeVar("A")  # the address of a connection, opaque here

# Books kept per pair, the most recently heard: hot standby's two, and a reconnect's overlap.
CHECKED_BOOKS_PER_PAIR = 4
PEER_SECONDS = 5.0
REPEAT_SECONDS = 60.0
RESUBSCRIBE_BASE_SECONDS = 1.0
RESUBSCRIBE_CAP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class BookSource(Generic[A]):
    """Where a book message came from: the connection actor, its endpoint and connection."""

    connection: A
    endpoint: str
    conn_id: str


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


@dataclass(frozen=True, slots=True)
class PairOutOfSync:
    """No live book of the pair is verified: nothing of it is published until one is."""

    pair: str

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"book of {VENUE} {self.pair} out of sync: no live connection's book of it matches "
                                        "Kraken's checksum; nothing of it is published until one does",
                       {"event": "book_out_of_sync", "venue": VENUE, "symbol": self.pair, "reason": "checksum"})


@dataclass(frozen=True, slots=True)
class PairInSync:
    pair: str
    seconds: float  # since it went out of sync

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"book of {VENUE} {self.pair} in sync, vouched for by Kraken's checksum, "
                                     f"{self.seconds:.1f} s after it went out of sync",
                       {"event": "book_in_sync", "venue": VENUE, "symbol": self.pair, "seconds": round(self.seconds, 3)})


Output = CheckedTop | ChecksumFailed | ResubscribeWanted[A] | PairOutOfSync | PairInSync

_Key = tuple[str, str, str]  # (endpoint, conn_id, pair)


@dataclass(slots=True)
class _Failures(Generic[A]):
    source: BookSource[A]
    count: int  # in a row, each within REPEAT_SECONDS of the resubscription before it
    asked_at: float  # when its resubscription is (or was) to be asked
    pending: bool  # not yet asked


class KrakenBooks(Generic[A]):
    def __init__(self, publish_depth: int, cadence_ms: int) -> None:
        self._publish_depth = publish_depth
        self._subscribed_depth = subscribed_depth(publish_depth)
        self._cadence_us = cadence_ms * 1000
        self._books: dict[_Key, ChecksummedBook] = {}
        self._heard: dict[str, dict[_Key, float]] = {}  # per pair: its books, and when each last had a message
        self._failures: dict[_Key, _Failures[A]] = {}
        self._lost_at: dict[str, float] = {}  # pairs out of sync, since when

    def message(self, message: BookMessage, instrument: Instrument, source: BookSource[A], received_us: int,
                now: float) -> list[Output[A]]:
        """A book message of a subscribed pair, described by `instrument`."""
        pair = message.symbol
        key = (source.endpoint, source.conn_id, pair)
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = ChecksummedBook(pair, self._subscribed_depth, instrument.price_precision,
                                                      instrument.qty_precision, self._publish_depth, self._cadence_us)
        heard = self._heard.setdefault(pair, {})
        heard[key] = now
        if len(heard) > CHECKED_BOOKS_PER_PAIR:
            self._keep_newest(heard)
        outputs: list[Output[A]] = []
        # (A mismatch's Resubscribe is scheduled with it; a ChecksumInSync shows in the pair's state.)
        for output in book.message(message, received_us):
            if isinstance(output, CheckedTop):
                outputs.append(output)
            elif isinstance(output, ChecksumMismatch):
                delay = self._schedule(key, source, now)
                outputs.append(ChecksumFailed(source.endpoint, source.conn_id, output, delay))
        outputs += self.due(now)
        outputs += self._pair_state(pair, now)
        return outputs

    def due(self, now: float) -> list[ResubscribeWanted[A]]:
        """The resubscriptions whose time has come."""
        wanted: list[ResubscribeWanted[A]] = []
        for (_, _, pair), failures in self._failures.items():
            if failures.pending and failures.asked_at <= now:
                failures.pending = False
                wanted.append(ResubscribeWanted(failures.source, pair))
        return wanted

    def pairs(self) -> set[str]:
        return set(self._heard)

    def lost_since(self) -> dict[str, float]:
        """The pairs out of sync, and since when."""
        return dict(self._lost_at)

    def _schedule(self, key: _Key, source: BookSource[A], now: float) -> float:
        """The seconds until this book is asked for afresh: at once, unless it failed shortly before."""
        previous = self._failures.get(key)
        count = previous.count + 1 if previous is not None and now - previous.asked_at <= REPEAT_SECONDS else 1
        delay = 0.0 if count == 1 else min(RESUBSCRIBE_CAP_SECONDS, RESUBSCRIBE_BASE_SECONDS * 2 ** (count - 2))
        self._failures[key] = _Failures(source, count, now + delay, pending=True)
        return delay

    def _pair_state(self, pair: str, now: float) -> list[Output[A]]:
        heard = self._heard[pair]
        latest = max(heard.values())
        verified = any(self._books[key].state is CheckedState.IN_SYNC and at >= latest - PEER_SECONDS
                       for key, at in heard.items())
        if verified and pair in self._lost_at:
            return [PairInSync(pair, now - self._lost_at.pop(pair))]
        if not verified and pair not in self._lost_at:
            self._lost_at[pair] = now
            return [PairOutOfSync(pair)]
        return []

    def forget(self, pairs: Collection[str]) -> None:
        """Every book of these pairs (cluster mode: another instance owns them now). Should a
        pair come back, its new subscription's snapshot starts it afresh."""
        for pair in pairs:
            for key in list(self._heard.get(pair, ())):
                self._drop(key)
            self._lost_at.pop(pair, None)

    def _keep_newest(self, heard: dict[_Key, float]) -> None:
        for key in sorted(heard, key=heard.__getitem__)[:-CHECKED_BOOKS_PER_PAIR]:
            self._drop(key)

    def _drop(self, key: _Key) -> None:
        del self._books[key]
        heard = self._heard[key[2]]
        del heard[key]
        if not heard:
            del self._heard[key[2]]
        self._failures.pop(key, None)
