"""Books a venue sends per connection (Kraken's, Coinbase's): what the per-venue books share.

A book is per connection because those venues' messages are: a book's updates apply to the
snapshot its own connection sent, and two connections (hot standby, or a rotation's
overlap) each send their own. A symbol is in sync when one of its live books is: a book
heard within `PEER_SECONDS` of the symbol's latest message (hot standby's two connections
hear each change within moments; a book older than that is of a connection that has gone).
The newest `BOOKS_PER_SYMBOL` books of a symbol are kept.

A book that cannot be trusted is asked for afresh (`Retries`): at once, and when it fails
again within `REPEAT_SECONDS` of the previous ask, after 1 s, doubling to 60 s, so that a
venue that keeps sending a bad book is not asked on every message.

No I/O: fed keys, books and the time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from k2actors.core.telemetry import LogLine

A = TypeVar("A")  # the address of a connection, opaque here
B = TypeVar("B")  # a venue's book of one symbol on one connection
K = TypeVar("K", bound=Hashable)

BOOKS_PER_SYMBOL = 4  # the most recently heard: hot standby's two, and a reconnect's overlap
PEER_SECONDS = 5.0
REPEAT_SECONDS = 60.0
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0

# Why a symbol's books went out of sync (the `reason` label of k2_book_resyncs_total), as its log says it.
_WHY = {"checksum": "no live connection's book of it matches the venue's checksum",
        "sequence": "every live connection's book of it missed a frame",
        "crossed": "its book came out crossed (best bid at or above the best offer)"}

Key = tuple[str, str, str]  # (endpoint, conn_id, symbol)


@dataclass(frozen=True, slots=True)
class BookSource(Generic[A]):
    """Where a book message came from: the connection actor, its endpoint and connection."""

    connection: A
    endpoint: str
    conn_id: str


@dataclass(frozen=True, slots=True)
class SymbolOutOfSync:
    """No live book of the symbol can be trusted: nothing of it is published until one can."""

    venue: str
    symbol: str
    reason: str  # "checksum", "sequence", "crossed"

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"book of {self.venue} {self.symbol} out of sync: {_WHY[self.reason]}; nothing of it "
                                        "is published until a fresh snapshot",
                       {"event": "book_out_of_sync", "venue": self.venue, "symbol": self.symbol, "reason": self.reason})


@dataclass(frozen=True, slots=True)
class SymbolInSync:
    venue: str
    symbol: str
    seconds: float  # since it went out of sync

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"book of {self.venue} {self.symbol} in sync, from a fresh snapshot, "
                                     f"{self.seconds:.1f} s after it went out of sync",
                       {"event": "book_in_sync", "venue": self.venue, "symbol": self.symbol, "seconds": round(self.seconds, 3)})


class ConnectionBooks(Generic[B]):
    def __init__(self, venue: str, trusted: Callable[[B], bool], dropped: Callable[[Key], None]) -> None:
        """`trusted`: whether a book vouches for its symbol now; `dropped`: told of each book
        let go (pruned or forgotten), so that what its owner keeps of it goes too."""
        self._venue = venue
        self._trusted = trusted
        self._dropped = dropped
        self._books: dict[Key, B] = {}
        self._heard: dict[str, dict[Key, float]] = {}  # per symbol: its books, and when each last had a message
        self._lost_at: dict[str, float] = {}  # symbols out of sync, since when

    def heard(self, key: Key, now: float, make: Callable[[], B]) -> B:
        """The book of `key`, made if new, heard now."""
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = make()
        heard = self._heard.setdefault(key[2], {})
        heard[key] = now
        if len(heard) > BOOKS_PER_SYMBOL:
            for oldest in sorted(heard, key=heard.__getitem__)[:-BOOKS_PER_SYMBOL]:
                self._drop(oldest)
        return book

    def of_connection(self, endpoint: str, conn_id: str) -> list[B]:
        return [book for (book_endpoint, book_conn, _), book in self._books.items()
                if (book_endpoint, book_conn) == (endpoint, conn_id)]

    def state(self, symbol: str, now: float, reason: str) -> list[SymbolOutOfSync | SymbolInSync]:
        """Whether the symbol went out of sync (for `reason`) or came back, by its live books."""
        heard = self._heard.get(symbol)
        if not heard:
            return []
        latest = max(heard.values())
        trusted = any(self._trusted(self._books[key]) and at >= latest - PEER_SECONDS for key, at in heard.items())
        if trusted and symbol in self._lost_at:
            return [SymbolInSync(self._venue, symbol, now - self._lost_at.pop(symbol))]
        if not trusted and symbol not in self._lost_at:
            self._lost_at[symbol] = now
            return [SymbolOutOfSync(self._venue, symbol, reason)]
        return []

    def symbols(self) -> set[str]:
        return set(self._heard)

    def lost_since(self) -> dict[str, float]:
        """The symbols out of sync, and since when."""
        return dict(self._lost_at)

    def forget(self, symbols: Collection[str]) -> None:
        """Every book of these symbols (cluster mode: another instance owns them now). Should a
        symbol come back, its new subscription's snapshot starts it afresh."""
        for symbol in symbols:
            for key in list(self._heard.get(symbol, ())):
                self._drop(key)
            self._lost_at.pop(symbol, None)

    def _drop(self, key: Key) -> None:
        del self._books[key]
        heard = self._heard[key[2]]
        del heard[key]
        if not heard:
            del self._heard[key[2]]
        self._dropped(key)


@dataclass(slots=True)
class _Failures(Generic[A]):
    source: A
    count: int  # in a row, each within REPEAT_SECONDS of the ask before it
    asked_at: float  # when it is (or was) to be asked afresh
    pending: bool  # not yet asked


class Retries(Generic[K, A]):
    """When to ask afresh for what failed (a book, a connection's books), and whom."""

    def __init__(self) -> None:
        self._failures: dict[K, _Failures[A]] = {}

    def failed(self, key: K, source: A, now: float) -> float:
        """The seconds until it is asked for afresh: at once, unless it failed shortly before."""
        previous = self._failures.get(key)
        count = previous.count + 1 if previous is not None and now - previous.asked_at <= REPEAT_SECONDS else 1
        delay = 0.0 if count == 1 else min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (count - 2))
        self._failures[key] = _Failures(source, count, now + delay, pending=True)
        return delay

    def due(self, now: float) -> list[tuple[K, A]]:
        """What to ask for afresh now, and whom."""
        wanted = []
        for key, failures in self._failures.items():
            if failures.pending and failures.asked_at <= now:
                failures.pending = False
                wanted.append((key, failures.source))
        return wanted

    def drop(self, key: K) -> None:
        self._failures.pop(key, None)
