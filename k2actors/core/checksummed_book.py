"""A book a venue sends whole and then as changes, every message with a checksum of the
book after it (Kraken's WebSocket v2 `book` channel), kept for one symbol and never
reported in sync unless its checksum is the venue's.

Kraken's procedure ("spot-ws-book-v2"): a subscription starts with a snapshot of the book
to the subscribed depth; each update holds changed levels, to apply in order (a quantity of
0 removes a level); after a whole message, each side is cut to the subscribed depth (levels
that fall out of it are not removed by the venue); then the CRC32 of the best 10 levels a
side must equal the message's `checksum`.

`ChecksummedBook` is that procedure as a state machine, fed book messages:

- Syncing (subscribed, or subscribed again), the book waits for a snapshot; updates before
  it belong to the book given up, and are not applied.
- A snapshot or update whose checksum the book does not reproduce puts the book out of
  sync: nothing of it is published, and a fresh subscription is asked for, whose snapshot
  rebuilds it. There is no way back from a wrong checksum but a new snapshot.
- In sync, the best `publish_depth` levels are published (`CheckedTop`) after the first
  message of every `cadence_us` window of the venue's time (a snapshot without a timestamp
  counts at its receive time), so that replaying the same messages publishes the same tops;
  a window is published once, even across a resync, and is what names the record (two
  connections' books of one symbol, as in hot standby, publish each window under one name).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from k2actors.core.book import Level
from k2actors.core.kraken import BookMessage, checksum


class CheckedState(Enum):
    SYNCING = "syncing"  # waiting for a snapshot
    IN_SYNC = "in_sync"


@dataclass(frozen=True, slots=True)
class Resubscribe:
    """Action: subscribe to this symbol's book again, for a fresh snapshot."""

    symbol: str


@dataclass(frozen=True, slots=True)
class ChecksumInSync:
    """Event: a snapshot's checksum matched; the book is in sync."""

    symbol: str
    checksum: int


@dataclass(frozen=True, slots=True)
class ChecksumMismatch:
    """Event: the book after a message is not the venue's (`expected`, the message's checksum;
    `computed`, the book's); it is out of sync until a fresh snapshot."""

    symbol: str
    expected: int
    computed: int
    in_snapshot: bool


@dataclass(frozen=True, slots=True)
class CheckedTop:
    """Event: the best levels of each side, best first, as they stood after a message whose
    checksum matched (`timestamp_us`, the venue's time of it or its receive time)."""

    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    timestamp_us: int
    window_us: int  # the start of its cadence window
    checksum: int


Output = Resubscribe | ChecksumInSync | ChecksumMismatch | CheckedTop


class ChecksummedBook:
    def __init__(self, symbol: str, depth: int, price_precision: int, qty_precision: int, publish_depth: int,
                 cadence_us: int) -> None:
        """`depth`: subscribed at (each side is cut to it); the precisions: the instrument's,
        which the checksum is written at; `publish_depth` <= `depth`."""
        self.symbol = symbol
        self._depth = depth
        self._price_precision = price_precision
        self._qty_precision = qty_precision
        self._publish_depth = publish_depth
        self._cadence_us = cadence_us
        self.state = CheckedState.SYNCING
        # price -> (price, quantity) as the venue wrote them; keyed by value, so that "1.50"
        # and "1.5" are one level
        self._bids: dict[Decimal, Level] = {}
        self._asks: dict[Decimal, Level] = {}
        self._window: int | None = None  # the cadence window of the last top published (kept across resyncs)

    def message(self, message: BookMessage, received_us: int) -> list[Output]:
        if message.is_snapshot:
            self._bids, self._asks = {}, {}
        elif self.state is CheckedState.SYNCING:
            return []  # the book given up, or a message before the snapshot: nothing to apply it to
        for side, levels in ((self._bids, message.bids), (self._asks, message.asks)):
            for price, quantity in levels:
                if Decimal(quantity):
                    side[Decimal(price)] = (price, quantity)
                else:
                    side.pop(Decimal(price), None)
        bids, asks = self._cut(self._bids, descending=True), self._cut(self._asks, descending=False)
        computed = checksum(asks, bids, self._price_precision, self._qty_precision)
        if computed != message.checksum:
            self.state = CheckedState.SYNCING
            return [ChecksumMismatch(self.symbol, message.checksum, computed, message.is_snapshot), Resubscribe(self.symbol)]
        outputs: list[Output] = []
        if message.is_snapshot:
            self.state = CheckedState.IN_SYNC
            outputs.append(ChecksumInSync(self.symbol, message.checksum))
        moment = message.timestamp_us if message.timestamp_us is not None else received_us
        window = moment // self._cadence_us
        if self._window is None or window > self._window:
            self._window = window
            depth = self._publish_depth
            outputs.append(CheckedTop(self.symbol, tuple(bids[:depth]), tuple(asks[:depth]), moment, window * self._cadence_us,
                                      message.checksum))
        return outputs

    def top(self) -> tuple[tuple[Level, ...], tuple[Level, ...]] | None:
        """The best `publish_depth` levels of each side, only from a book in sync."""
        if self.state is not CheckedState.IN_SYNC:
            return None
        depth = self._publish_depth
        return (tuple(self._bids[price] for price in sorted(self._bids, reverse=True)[:depth]),
                tuple(self._asks[price] for price in sorted(self._asks)[:depth]))

    def _cut(self, side: dict[Decimal, Level], descending: bool) -> list[Level]:
        """The side's levels best first (bids descending), after cutting it to the subscribed depth."""
        ordered = sorted(side, reverse=descending)
        for price in ordered[self._depth:]:
            del side[price]
        return [side[price] for price in ordered[:self._depth]]
