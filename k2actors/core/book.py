"""A venue's full-depth order book for one symbol, kept in sync from diffs and REST snapshots,
and never reported in sync when it could differ from the venue's.

Binance's procedure (spot, "How to manage a local order book correctly"): buffer the diffs
of `<symbol>@depth@100ms`, take a snapshot (`GET /api/v3/depth`), drop every diff whose last
update id `u` is at most the snapshot's `lastUpdateId`; the first diff applied must span
`lastUpdateId + 1` (`U` <= lastUpdateId + 1 <= `u`), and each next one must begin where the
last ended (`U` == previous `u` + 1). A level's quantity is absolute; 0 removes it.

`BookSync` is that procedure as a state machine, fed diffs, snapshots and the time, from one
connection or from several carrying the same stream (hot standby, a rotation's overlap):

- A diff already covered (`u` at most the last applied) is a duplicate: dropped.
- A diff that begins past the next id waits, for `gap_grace_seconds`, for the diff that
  fills the gap (from another connection, or late); past the grace, or past
  `max_waiting_diffs`, the book is out of sync.
- Out of sync (a gap, a reset of the connections, a snapshot that does not meet the diffs),
  the book is rebuilt: diffs are buffered from then on and a snapshot is asked for. Until a
  snapshot and the buffered diffs meet as the procedure says, nothing of it is published.

Prices and quantities stay the venue's decimal strings; levels are ordered by their value.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

Level = tuple[str, str]  # (price, quantity), as the venue wrote them


@dataclass(frozen=True, slots=True)
class DepthDiff:
    symbol: str
    first_update_id: int  # U
    final_update_id: int  # u
    event_time_ms: int
    recv_ts_ns: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    symbol: str
    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


class SyncState(Enum):
    SYNCING = "syncing"  # buffering diffs, waiting for a snapshot they meet
    IN_SYNC = "in_sync"


class OutOfSyncReason(Enum):
    GAP = "gap"  # a diff did not follow the last applied one, and none came to fill the gap
    RESET = "reset"  # the connections carrying the stream were replaced (reconnect, failover)
    STALE_SNAPSHOT = "stale_snapshot"  # the snapshot is older than every buffered diff can continue
    BUFFER_FULL = "buffer_full"  # too many diffs waiting for a snapshot or a gap's filling


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """Action: ask the venue for a snapshot of this symbol's book."""

    symbol: str


@dataclass(frozen=True, slots=True)
class InSync:
    """Event: the book is in sync again, from a snapshot at `snapshot_id`, up to `last_update_id`."""

    symbol: str
    snapshot_id: int
    last_update_id: int


@dataclass(frozen=True, slots=True)
class OutOfSync:
    """Event: the book can no longer be trusted: `expected` is the id the next diff had to
    begin at, `got` the first id of the diff that came instead (0 when no diff is at fault)."""

    symbol: str
    reason: OutOfSyncReason
    expected: int
    got: int


Output = FetchSnapshot | InSync | OutOfSync


class Book:
    """Both sides of a book: price -> quantity, and their order by value."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        self.bids = {price: quantity for price, quantity in bids if Decimal(quantity)}
        self.asks = {price: quantity for price, quantity in asks if Decimal(quantity)}

    def apply(self, diff: DepthDiff) -> None:
        for side, levels in ((self.bids, diff.bids), (self.asks, diff.asks)):
            for price, quantity in levels:
                if Decimal(quantity):
                    side[price] = quantity
                else:
                    side.pop(price, None)  # removing a level the book does not have is normal

    def top(self, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The best `depth` levels of each side, best first."""
        bids = heapq.nlargest(depth, self.bids.items(), key=lambda level: Decimal(level[0]))
        asks = heapq.nsmallest(depth, self.asks.items(), key=lambda level: Decimal(level[0]))
        return tuple(bids), tuple(asks)


class BookSync:
    def __init__(self, symbol: str, gap_grace_seconds: float, max_waiting_diffs: int) -> None:
        self.symbol = symbol
        self._grace = gap_grace_seconds
        self._max_waiting = max_waiting_diffs
        self.book = Book()
        self.state = SyncState.SYNCING
        self.last_update_id = 0  # the last applied, in sync
        self.last_diff: DepthDiff | None = None  # the last applied: its event time is the book's
        self._waiting: dict[int, DepthDiff] = {}  # by first update id: syncing, or ahead of a gap
        self._gap_since: float | None = None
        self._snapshot_asked = False

    # --- inputs ---

    def start(self) -> list[Output]:
        """The stream is subscribed: its first diffs are buffered, and a snapshot asked for."""
        return self._ask()

    def diff(self, diff: DepthDiff, now: float) -> list[Output]:
        if self.state is SyncState.SYNCING:
            return self._buffer(diff)
        if diff.final_update_id <= self.last_update_id:
            return []  # a duplicate: another connection's, or a rotation's overlap
        self._waiting.setdefault(diff.first_update_id, diff)
        self._apply_waiting()
        if not self._waiting:
            self._gap_since = None
            return []
        if self._gap_since is None:
            self._gap_since = now
        if len(self._waiting) > self._max_waiting:
            return self._lost(OutOfSyncReason.BUFFER_FULL, self.last_update_id + 1, min(self._waiting))
        return self.tick(now)

    def snapshot(self, snapshot: DepthSnapshot) -> list[Output]:
        """A snapshot asked for. One that no buffered diff continues is stale: it is asked for
        again (the diffs already buffered may yet meet the next one)."""
        if self.state is SyncState.IN_SYNC or not self._snapshot_asked:
            return []  # not asked for (a late answer to an earlier request): the book stands
        self._snapshot_asked = False
        base = snapshot.last_update_id
        waiting = sorted((diff for diff in self._waiting.values() if diff.final_update_id > base),
                         key=lambda diff: diff.first_update_id)
        if waiting and waiting[0].first_update_id > base + 1:
            self._waiting = {diff.first_update_id: diff for diff in waiting}
            return [OutOfSync(self.symbol, OutOfSyncReason.STALE_SNAPSHOT, base + 1, waiting[0].first_update_id),
                    *self._ask()]
        self.book.replace(snapshot.bids, snapshot.asks)
        self.last_update_id, self.last_diff = base, None
        self.state = SyncState.IN_SYNC
        self._waiting = {}
        for diff in waiting:
            if diff.first_update_id > self.last_update_id + 1:  # a gap among the buffered diffs
                return self._lost(OutOfSyncReason.GAP, self.last_update_id + 1, diff.first_update_id)
            if diff.final_update_id > self.last_update_id:
                self._apply(diff)
        return [InSync(self.symbol, base, self.last_update_id)]

    def reset(self) -> list[Output]:
        """The connections that carried the stream were replaced: what they sent since the
        book was last checked cannot be vouched for."""
        if self.state is SyncState.SYNCING:
            self._waiting = {}
            return [] if self._snapshot_asked else self._ask()
        return self._lost(OutOfSyncReason.RESET, self.last_update_id + 1, 0, keep_waiting=False)

    def tick(self, now: float) -> list[Output]:
        if self.state is SyncState.IN_SYNC and self._gap_since is not None and now - self._gap_since >= self._grace:
            return self._lost(OutOfSyncReason.GAP, self.last_update_id + 1, min(self._waiting))
        return []

    # --- outputs ---

    def top(self, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]] | None:
        """The best `depth` levels of each side, only from a book in sync."""
        return self.book.top(depth) if self.state is SyncState.IN_SYNC else None

    # --- the procedure ---

    def _buffer(self, diff: DepthDiff) -> list[Output]:
        self._waiting.setdefault(diff.first_update_id, diff)
        if len(self._waiting) > self._max_waiting:  # the oldest go: a snapshot must meet the newest anyway
            del self._waiting[min(self._waiting)]
        return []

    def _apply_waiting(self) -> None:
        waiting = self._waiting
        while waiting:
            first = min(waiting)
            if first > self.last_update_id + 1:
                return
            diff = waiting.pop(first)
            if diff.final_update_id > self.last_update_id:
                self._apply(diff)

    def _apply(self, diff: DepthDiff) -> None:
        self.book.apply(diff)
        self.last_update_id, self.last_diff = diff.final_update_id, diff

    def _lost(self, reason: OutOfSyncReason, expected: int, got: int, keep_waiting: bool = True) -> list[Output]:
        self.state = SyncState.SYNCING
        self._gap_since = None
        if not keep_waiting:
            self._waiting = {}
        return [OutOfSync(self.symbol, reason, expected, got), *self._ask()]

    def _ask(self) -> list[Output]:
        self._snapshot_asked = True
        return [FetchSnapshot(self.symbol)]
