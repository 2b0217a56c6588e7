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
- Out of sync (a gap, a snapshot that does not meet the diffs), the book is rebuilt: diffs
  are buffered from then on and a snapshot is asked for. Until a snapshot and the buffered
  diffs meet as the procedure says, nothing of it is published. A reconnect or a failover
  that lost diffs is such a gap: update ids, not connections, say whether a book is whole.
- In sync, the book's best `depth` levels are published (`BookTop`) after the first diff of
  every `cadence_ms` of the venue's event time: when is told by what the venue sent, not by
  our clock, so that replaying the same diffs publishes the same tops.

Prices and quantities stay the venue's decimal strings; levels are ordered by their value.
"""

from __future__ import annotations

import heapq
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
    # (endpoint URL, conn_id, conn_msg_seq) of the frame it came in, once known: the lineage of a top published after it
    source: tuple[str, str, int] = ("", "", 0)


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    symbol: str
    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    limit: int  # levels asked for per side: a side that came with as many may go deeper


class SyncState(Enum):
    SYNCING = "syncing"  # buffering diffs, waiting for a snapshot they meet
    IN_SYNC = "in_sync"


class OutOfSyncReason(Enum):
    GAP = "gap"  # a diff did not follow the last applied one, and none came to fill the gap
    STALE_SNAPSHOT = "stale_snapshot"  # the snapshot is older than every buffered diff can continue
    BUFFER_FULL = "buffer_full"  # too many diffs waiting for a snapshot or a gap's filling
    DEPTH_EXHAUSTED = "depth_exhausted"  # the levels the snapshot covered no longer fill the depth published


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
    since: float | None = None  # when the book stopped advancing (a gap noticed), if before now


@dataclass(frozen=True, slots=True)
class BookTop:
    """Event: the best levels of each side, best first, as they stood after `diff` (the book
    rebuilt from the snapshot at `snapshot_id`)."""

    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    diff: DepthDiff
    snapshot_id: int


Output = FetchSnapshot | InSync | OutOfSync | BookTop


class Book:
    """Both sides of a book: price -> quantity, and their order by value.

    A snapshot that came with as many levels as were asked for is cut off there: past its
    worst level on that side (its `bid_floor`, its `ask_ceiling`) the venue may have levels
    no diff has told of, so only the levels on this side of that line are vouched for."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.bid_floor: Decimal | None = None  # None: the snapshot had the whole side
        self.ask_ceiling: Decimal | None = None

    def replace(self, snapshot: DepthSnapshot) -> None:
        self.bids = {price: quantity for price, quantity in snapshot.bids if Decimal(quantity)}
        self.asks = {price: quantity for price, quantity in snapshot.asks if Decimal(quantity)}
        full = snapshot.limit
        self.bid_floor = min(Decimal(price) for price, _ in snapshot.bids) if len(snapshot.bids) >= full > 0 else None
        self.ask_ceiling = max(Decimal(price) for price, _ in snapshot.asks) if len(snapshot.asks) >= full > 0 else None

    def apply(self, diff: DepthDiff) -> None:
        for side, levels in ((self.bids, diff.bids), (self.asks, diff.asks)):
            for price, quantity in levels:
                if Decimal(quantity):
                    side[price] = quantity
                else:
                    side.pop(price, None)  # removing a level the book does not have is normal

    def top(self, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The best `depth` levels of each side, best first, of those vouched for."""
        bids = heapq.nlargest(depth, self.bids.items(), key=lambda level: Decimal(level[0]))
        asks = heapq.nsmallest(depth, self.asks.items(), key=lambda level: Decimal(level[0]))
        if self.bid_floor is not None:
            bids = [level for level in bids if Decimal(level[0]) >= self.bid_floor]
        if self.ask_ceiling is not None:
            asks = [level for level in asks if Decimal(level[0]) <= self.ask_ceiling]
        return tuple(bids), tuple(asks)

    def vouches_for(self, depth: int, top: tuple[tuple[Level, ...], tuple[Level, ...]]) -> bool:
        """Whether `top` is the venue's whole best `depth`: a side cut short by its snapshot's
        line may be missing levels beyond it."""
        bids, asks = top
        return (len(bids) >= depth or self.bid_floor is None) and (len(asks) >= depth or self.ask_ceiling is None)


class BookSync:
    def __init__(self, symbol: str, gap_grace_seconds: float, max_waiting_diffs: int, depth: int, cadence_ms: int) -> None:
        self.symbol = symbol
        self._grace = gap_grace_seconds
        self._max_waiting = max_waiting_diffs
        self._depth = depth
        self._cadence_ms = cadence_ms
        self.book = Book()
        self.state = SyncState.SYNCING
        self.snapshot_id = 0  # the snapshot the book was last rebuilt from
        self.last_update_id = 0  # the last applied, in sync
        self.last_diff: DepthDiff | None = None  # the last applied since the snapshot
        self._waiting: dict[int, DepthDiff] = {}  # by first update id: syncing, or ahead of a gap
        self._gap_since: float | None = None
        self._snapshot_asked = False
        self._tops: list[Output] = []  # published while applying diffs, handed out with the other outputs
        self._exhausted = False  # a top could not be vouched for while applying diffs

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
        tops = self._take_tops()
        if self.state is SyncState.SYNCING:  # the top could not be vouched for
            return tops
        if not self._waiting:
            self._gap_since = None
            return tops
        if self._gap_since is None:
            self._gap_since = now
        if len(self._waiting) > self._max_waiting:
            return tops + self._lost(OutOfSyncReason.BUFFER_FULL, self.last_update_id + 1, min(self._waiting), self._gap_since)
        return tops + self.tick(now)

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
        self.book.replace(snapshot)
        self.snapshot_id = self.last_update_id = base
        self.last_diff = None
        self.state = SyncState.IN_SYNC
        self._waiting = {}
        gap = None
        for diff in waiting:
            if diff.first_update_id > self.last_update_id + 1:  # a gap among the buffered diffs
                gap = diff
                break
            if diff.final_update_id > self.last_update_id:
                self._apply(diff)
        outputs = [InSync(self.symbol, base, self.last_update_id), *self._take_tops()]
        if gap is not None and self.state is SyncState.IN_SYNC:  # in sync as far as the diffs before the gap took it
            outputs += self._lost(OutOfSyncReason.GAP, self.last_update_id + 1, gap.first_update_id)
        return outputs

    def restart(self) -> list[Output]:
        """Start afresh, as the book of a restarted service does: nothing applied is trusted,
        the diffs waiting are kept (they are what a fresh start would have buffered), and a
        snapshot is asked for. Replay follows a live restart this way: the raw record shows
        the snapshot the restarted service asked for, not the restart."""
        self.state = SyncState.SYNCING
        self._gap_since = None
        return self._ask()

    @property
    def snapshot_asked(self) -> bool:
        return self._snapshot_asked

    def tick(self, now: float) -> list[Output]:
        if self.state is SyncState.IN_SYNC and self._gap_since is not None and now - self._gap_since >= self._grace:
            return self._lost(OutOfSyncReason.GAP, self.last_update_id + 1, min(self._waiting), self._gap_since)
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
        previous, self.last_update_id, self.last_diff = self.last_diff, diff.final_update_id, diff
        if self._exhausted:
            return
        if previous is None or previous.event_time_ms // self._cadence_ms != diff.event_time_ms // self._cadence_ms:
            top = self.book.top(self._depth)
            if self.book.vouches_for(self._depth, top):
                self._tops.append(BookTop(self.symbol, *top, diff, self.snapshot_id))
            else:
                self._exhausted = True

    def _take_tops(self) -> list[Output]:
        """What applying diffs published; and if a top could not be vouched for, the book is
        out of sync: it moved past its snapshot's reach, and a fresh one is asked for."""
        tops, self._tops = self._tops, []
        if self._exhausted and self.state is SyncState.IN_SYNC:
            tops += self._lost(OutOfSyncReason.DEPTH_EXHAUSTED, self.last_update_id + 1, 0)
        self._exhausted = False
        return tops

    def _lost(self, reason: OutOfSyncReason, expected: int, got: int, since: float | None = None) -> list[Output]:
        self.state = SyncState.SYNCING
        self._gap_since = None
        return [OutOfSync(self.symbol, reason, expected, got, since), *self._ask()]

    def _ask(self) -> list[Output]:
        self._snapshot_asked = True
        return [FetchSnapshot(self.symbol)]
