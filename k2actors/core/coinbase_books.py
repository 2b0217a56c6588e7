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
from k2actors.core.connection_books import BookSource, ConnectionBooks, Retries, SymbolInSync, SymbolOutOfSync
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


@dataclass(frozen=True, slots=True)
class BooksLost:
    """A connection's books cannot be trusted (`gap`: the frames lost; None: a book of it was
    found crossed): not published until its successor's snapshots, asked for in `retry_in` s."""

    endpoint: str
    conn_id: str
    gap: SequenceGap | None
    products: tuple[str, ...]
    retry_in: float

    def report(self) -> LogLine:
        why = (f"frames {self.gap.first} to {self.gap.last} of connection {self.conn_id} from {self.endpoint} were lost"
               if self.gap is not None else f"a book of connection {self.conn_id} from {self.endpoint} is crossed")
        books = ", ".join(self.products) or "none yet"
        return LogLine(logging.WARNING, f"{why}: its books ({books}) are out of sync and not published; the connection is "
                                        f"replaced for fresh snapshots in {self.retry_in:.0f} s",
                       {"event": "books_lost", "venue": VENUE, "endpoint": self.endpoint, "conn_id": self.conn_id,
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
        self._retries: Retries[str, BookSource[A]] = Retries()
        self._books: ConnectionBooks[SequencedBook] = ConnectionBooks(VENUE, lambda book: book.in_sync, lambda key: None)

    def frame(self, source: BookSource[A], sequence_num: int, now: float) -> list[Output[A]]:
        """Every numbered frame of a connection, in the order received, before its events."""
        connection = (source.endpoint, source.conn_id)
        sequence = self._sequences.get(connection)
        if sequence is None:
            sequence = self._sequences[connection] = ConnectionSequence()
            if len(self._sequences) > SEQUENCES_KEPT:
                self._sequences.popitem(last=False)
        self._sequences.move_to_end(connection)
        gap = sequence.observe(sequence_num)
        return [] if gap is None else self._lost(source, gap, "sequence", now)

    def event(self, event: BookEvent, sequence_num: int, source: BookSource[A], now: float) -> list[Output[A]]:
        """A book event of a subscribed product, from frame `sequence_num` of its connection."""
        product = event.product_id
        book = self._books.heard((source.endpoint, source.conn_id, product), now,
                                 lambda: SequencedBook(product, self._publish_depth, self._cadence_us))
        was_in_sync = book.in_sync
        top = book.event(event, sequence_num)
        if was_in_sync and not book.in_sync:
            return self._lost(source, None, "crossed", now)
        return [*([top] if top is not None else []), *self._books.state(product, now, "sequence")]

    def due(self, now: float) -> list[ReconnectWanted[A]]:
        """The connections whose replacement's time has come."""
        return [ReconnectWanted(source) for _, source in self._retries.due(now)]

    def products(self) -> set[str]:
        return self._books.symbols()

    def lost_since(self) -> dict[str, float]:
        """The products out of sync, and since when."""
        return self._books.lost_since()

    def forget(self, products: Collection[str]) -> None:
        """Every book of these products (cluster mode: another instance owns them now)."""
        self._books.forget(products)

    def _lost(self, source: BookSource[A], gap: SequenceGap | None, reason: str, now: float) -> list[Output[A]]:
        books = self._books.of_connection(source.endpoint, source.conn_id)
        for book in books:
            book.in_sync = False
        products = sorted({book.product for book in books})
        # By endpoint: the connection that lost a frame is replaced, and its successor is one
        # more try of the same endpoint, which backs off should it lose frames too.
        delay = self._retries.failed(source.endpoint, source, now)
        outputs: list[Output[A]] = [BooksLost(source.endpoint, source.conn_id, gap, tuple(products), delay), *self.due(now)]
        for product in products:
            outputs += self._books.state(product, now, reason)
        return outputs
