"""Coinbase's level2 books as the Normaliser keeps them: one full-depth book per connection
and product (k2actors.core.connection_books), kept from its connection's snapshot and
updates, and trusted only while that connection has lost no frame.

Coinbase sends no checksum; it numbers every frame of a connection instead (`sequence_num`,
across channels). A gap in the numbers is a lost frame, which could have held a level of any
of the connection's books, so every book of the connection goes out of sync, and only a
subscription's snapshot brings one back: the connection is replaced (its successor subscribes
afresh), at once, then backing off as any book asked afresh. A book found crossed when its
top is taken (best bid at or above best offer) cannot be the venue's either: the same.

In sync, a book's best `publish_depth` levels are published (`SequencedTop`) after the first
event of every cadence window of Coinbase's time (the frame's), so that replaying the same
frames publishes the same tops; the ledger publishes each window of a product once, whichever
connection's book gave it.

No I/O: fed each frame's number, its book events, their sources and the time.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

from k2actors.core.book import Book, DepthDiff, DepthSnapshot, Level
from k2actors.core.coinbase import VENUE, BookEvent, ConnectionSequence, SequenceGap
from k2actors.core.connection_books import (
    REPEAT_SECONDS,
    RETRY_BASE_SECONDS,
    RETRY_CAP_SECONDS,
    BookSource,
    ConnectionBooks,
    SymbolInSync,
    SymbolOutOfSync,
)
from k2actors.core.telemetry import LogLine

A = TypeVar("A")  # the address of a connection, opaque here

# Connections whose numbering is followed: the most recently heard (a connection that has
# gone is forgotten as new ones come).
SEQUENCES_KEPT = 64


@dataclass(frozen=True, slots=True)
class SequencedTop:
    """The best levels of each side, best first, of a book in sync after the event of frame
    `sequence_num` (`timestamp_us`, the frame's time)."""

    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    timestamp_us: int
    window_us: int  # the start of its cadence window
    sequence_num: int


# Why a connection's books cannot be trusted (BooksLost.reason), as the log says it.
LOST_FRAMES = "sequence"  # frames `gap` of it were lost
CROSSED = "crossed"  # a book of it is crossed
UNREADABLE = "unreadable"  # a level2 event of it could not be read (dead-lettered): its change was never applied
JOINED = "joined"  # first heard after frame 0 (this Normaliser started after the connection): its books were never seen


@dataclass(frozen=True, slots=True)
class BooksLost:
    """A connection's books cannot be trusted: not published until its successor's
    snapshots, asked for in `retry_in` s."""

    endpoint: str
    conn_id: str
    reason: str  # LOST_FRAMES, CROSSED, UNREADABLE or JOINED
    gap: SequenceGap | None  # the frames lost, or not heard (LOST_FRAMES, JOINED)
    products: tuple[str, ...]
    retry_in: float

    def report(self) -> LogLine:
        connection = f"connection {self.conn_id} from {self.endpoint}"
        gap = self.gap or SequenceGap(0, -1)
        why = {LOST_FRAMES: f"frames {gap.first} to {gap.last} of {connection} were lost",
               CROSSED: f"a book of {connection} is crossed",
               UNREADABLE: f"a level2 update of {connection} could not be read (it is in the dead-letter topic)",
               JOINED: f"{connection} was first heard at frame {gap.last + 1}, after this Normaliser started"}[self.reason]
        books = ", ".join(self.products) or "none yet"
        return LogLine(logging.WARNING, f"{why}: its books ({books}) are out of sync and not published; the connection is "
                                        f"replaced for fresh snapshots in {self.retry_in:.0f} s",
                       {"event": "books_lost", "venue": VENUE, "endpoint": self.endpoint, "conn_id": self.conn_id, "reason": self.reason,
                        "first_lost": None if self.gap is None else self.gap.first,
                        "last_lost": None if self.gap is None else self.gap.last, "products": list(self.products),
                        "retry_in_seconds": self.retry_in})


@dataclass(frozen=True, slots=True)
class ReconnectWanted(Generic[A]):
    """Action: replace this connection, so that its successor's subscriptions bring fresh snapshots."""

    source: BookSource[A]

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"replacing connection {self.source.conn_id} to {self.source.endpoint} for fresh "
                                     f"{VENUE} book snapshots",
                       {"event": "books_reconnect", "venue": VENUE, "endpoint": self.source.endpoint,
                        "conn_id": self.source.conn_id})


Output = SequencedTop | BooksLost | ReconnectWanted[A] | SymbolOutOfSync | SymbolInSync


class SequencedBook:
    """One product's book on one connection."""

    def __init__(self, product: str, publish_depth: int, cadence_us: int) -> None:
        self.product = product
        self.in_sync = False  # from its snapshot until its connection loses a frame
        self._book = Book()
        self._publish_depth = publish_depth
        self._cadence_us = cadence_us
        self._window: int | None = None  # the cadence window of the last top taken

    def event(self, event: BookEvent, sequence_num: int) -> SequencedTop | None:
        """The top to publish after this event, if it opens a window; None otherwise, or when
        the book is out of sync (updates before a snapshot have nothing to apply to)."""
        if event.is_snapshot:
            self._book.replace(DepthSnapshot(event.product_id, 0, event.bids, event.asks, limit=0))  # the whole book
            self.in_sync = True
        elif not self.in_sync:
            return None
        else:
            self._book.apply(DepthDiff(event.product_id, 0, 0, 0, 0, event.bids, event.asks))
        window = event.timestamp_us // self._cadence_us
        if self._window is not None and window <= self._window:
            return None
        bids, asks = self._book.top(self._publish_depth)
        if bids and asks and Decimal(bids[0][0]) >= Decimal(asks[0][0]):
            self.in_sync = False  # crossed: levels were lost somewhere
            return None
        self._window = window
        return SequencedTop(self.product, bids, asks, event.timestamp_us, window * self._cadence_us, sequence_num)


    def top(self, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]] | None:
        """The best `depth` levels of each side, best first; None out of sync."""
        return self._book.top(depth) if self.in_sync else None


class CoinbaseBooks(Generic[A]):
    def __init__(self, publish_depth: int, cadence_ms: int) -> None:
        self._publish_depth = publish_depth
        self._cadence_us = cadence_ms * 1000
        self._sequences: OrderedDict[tuple[str, str], ConnectionSequence] = OrderedDict()
        self._replacements: _Replacements[A] = _Replacements()
        self._books: ConnectionBooks[SequencedBook] = ConnectionBooks(VENUE, lambda book: book.in_sync, lambda key: None)

    def frame(self, source: BookSource[A], sequence_num: int, now: float) -> list[Output[A]]:
        """Every numbered frame of a connection, in the order received, before its events."""
        connection = (source.endpoint, source.conn_id)
        sequence = self._sequences.get(connection)
        joined = sequence is None
        if sequence is None:
            sequence = self._sequences[connection] = ConnectionSequence()
            if len(self._sequences) > SEQUENCES_KEPT:
                self._sequences.popitem(last=False)
        self._sequences.move_to_end(connection)
        gap = sequence.observe(sequence_num)
        return [] if gap is None else self._lost(source, JOINED if joined else LOST_FRAMES, gap, now)

    def event(self, event: BookEvent, sequence_num: int, source: BookSource[A], now: float) -> list[Output[A]]:
        """A book event of a subscribed product, from frame `sequence_num` of its connection."""
        product = event.product_id
        book = self._books.heard((source.endpoint, source.conn_id, product), now,
                                 lambda: SequencedBook(product, self._publish_depth, self._cadence_us))
        was_in_sync = book.in_sync
        top = book.event(event, sequence_num)
        if (was_in_sync or event.is_snapshot) and not book.in_sync:
            return self._lost(source, CROSSED, None, now)
        return [*([top] if top is not None else []), *self._books.state(product, now, LOST_FRAMES)]

    def unreadable(self, source: BookSource[A], now: float) -> list[Output[A]]:
        """A level2 event of the connection could not be read: its books miss its change."""
        return self._lost(source, UNREADABLE, None, now)

    def due(self, now: float) -> list[ReconnectWanted[A]]:
        """The connections whose replacement's time has come."""
        return [ReconnectWanted(source) for source in self._replacements.due(now)]

    def products(self) -> set[str]:
        return self._books.symbols()

    def lost_since(self) -> dict[str, float]:
        """The products out of sync, and since when."""
        return self._books.lost_since()

    def forget(self, products: Collection[str]) -> None:
        """Every book of these products (cluster mode: another instance owns them now)."""
        self._books.forget(products)

    def _lost(self, source: BookSource[A], reason: str, gap: SequenceGap | None, now: float) -> list[Output[A]]:
        books = self._books.of_connection(source.endpoint, source.conn_id)
        for book in books:
            book.in_sync = False
        products = sorted({book.product for book in books})
        delay = self._replacements.lost(source, now)
        outputs: list[Output[A]] = [BooksLost(source.endpoint, source.conn_id, reason, gap, tuple(products), delay),
                                    *self.due(now)]
        for product in products:
            outputs += self._books.state(product, now, reason)
        return outputs


class _Replacements(Generic[A]):
    """The connections to replace for fresh snapshots, each once, when its time comes: at
    once, unless a connection of the same endpoint was replaced shortly before (its
    successor is the same endpoint tried again), then after 1 s, doubling to 60 s. Several
    connections of an endpoint that lose frames together are replaced one after another."""

    def __init__(self) -> None:
        self._recent: dict[str, tuple[int, float]] = {}  # endpoint: (replacements in a row, when the last is due)
        self._pending: dict[tuple[str, str], tuple[BookSource[A], float]] = {}  # (endpoint, conn_id): (whom, when)

    def lost(self, source: BookSource[A], now: float) -> float:
        """The seconds until the connection is replaced."""
        key = (source.endpoint, source.conn_id)
        if key in self._pending:  # its replacement is asked for already
            return max(self._pending[key][1] - now, 0.0)
        count, last = self._recent.get(source.endpoint, (0, -REPEAT_SECONDS))
        count = count + 1 if now - last <= REPEAT_SECONDS else 1
        delay = 0.0 if count == 1 else min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (count - 2))
        self._recent[source.endpoint] = (count, max(now + delay, last))
        self._pending[key] = (source, max(now + delay, last))
        return max(now + delay, last) - now

    def due(self, now: float) -> list[BookSource[A]]:
        due = [key for key, (_, when) in self._pending.items() if when <= now]
        return [self._pending.pop(key)[0] for key in due]
