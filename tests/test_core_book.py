"""k2actors.core.book against a plain model of the venue's book: whatever the diffs' windows,
duplicates, interleaving of two connections, dropped diffs, restarts and snapshot races, the
book is never reported in sync while it differs from the venue's at its update id, and every
top it publishes is the venue's at the update id it names."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from k2actors.core.binance import depth_snapshot, depth_update
from k2actors.core.book import (
    BookSync,
    BookTop,
    DepthDiff,
    DepthSnapshot,
    FetchSnapshot,
    InSync,
    OutOfSync,
    OutOfSyncReason,
    SyncState,
)

SYMBOL = "BTCUSDT"
PRICES = [f"{100 + tick / 100:.2f}" for tick in range(40)]


class Venue:
    """The venue's book, update by update: levels[i] is the book after update id i."""

    def __init__(self, rnd: random.Random, updates: int) -> None:
        self.changes: list[dict[tuple[str, str], str]] = [{}]  # per update id, (side, price) -> quantity
        book: dict[tuple[str, str], str] = {}
        self.books = [dict(book)]
        for _ in range(updates):
            change = {}
            for _ in range(rnd.randint(1, 3)):
                side = rnd.choice(("bid", "ask"))
                price = rnd.choice(PRICES[:20] if side == "bid" else PRICES[20:])
                quantity = rnd.choice(["0", "0", "1.5", "2", "0.25"])
                change[(side, price)] = quantity
            for level, quantity in change.items():
                if quantity == "0":
                    book.pop(level, None)
                else:
                    book[level] = quantity
            self.changes.append(change)
            self.books.append(dict(book))

    def diff(self, first: int, last: int) -> DepthDiff:
        """Updates first..last as one diff: each level changed, at its quantity after `last`."""
        levels: dict[tuple[str, str], str] = {}
        for update in range(first, last + 1):
            levels.update(self.changes[update])
        return DepthDiff(SYMBOL, first, last, last, 0,
                         tuple((price, quantity) for (side, price), quantity in levels.items() if side == "bid"),
                         tuple((price, quantity) for (side, price), quantity in levels.items() if side == "ask"))

    def snapshot(self, update: int, limit: int = 1000) -> DepthSnapshot:
        """The book at `update`, each side cut to its best `limit` levels, as the venue serves it."""
        book = self.books[update]
        bids = sorted(((p, q) for (s, p), q in book.items() if s == "bid"), key=lambda level: float(level[0]), reverse=True)
        asks = sorted(((p, q) for (s, p), q in book.items() if s == "ask"), key=lambda level: float(level[0]))
        return DepthSnapshot(SYMBOL, update, tuple(bids[:limit]), tuple(asks[:limit]), limit)

    def windows(self, rnd: random.Random, start: int) -> list[DepthDiff]:
        """One connection's diffs from `start`: consecutive windows of 1 to 4 updates."""
        diffs, first = [], start
        while first < len(self.changes):
            last = min(len(self.changes) - 1, first + rnd.randint(0, 3))
            diffs.append(self.diff(first, last))
            first = last + 1
        return diffs


def venue_top(venue: Venue, update: int, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    book = venue.books[update]
    bids = sorted(((p, q) for (s, p), q in book.items() if s == "bid"), key=lambda level: float(level[0]), reverse=True)
    asks = sorted(((p, q) for (s, p), q in book.items() if s == "ask"), key=lambda level: float(level[0]))
    return bids[:depth], asks[:depth]


def book_sync(grace: float = 1.0, max_waiting: int = 100, depth: int = 5, cadence_ms: int = 3) -> BookSync:
    """Diffs of the model carry their last update id as their event time (ms)."""
    return BookSync(SYMBOL, gap_grace_seconds=grace, max_waiting_diffs=max_waiting, depth=depth, cadence_ms=cadence_ms)


def as_venue_book(sync: BookSync) -> dict[tuple[str, str], str]:
    return {**{("bid", p): q for p, q in sync.book.bids.items()}, **{("ask", p): q for p, q in sync.book.asks.items()}}


def vouched(book: dict[tuple[str, str], str], sync: BookSync) -> dict[tuple[str, str], str]:
    """The levels of `book` on this side of the lines the sync's snapshot drew."""
    floor, ceiling = sync.book.bid_floor, sync.book.ask_ceiling
    return {(side, price): quantity for (side, price), quantity in book.items()
            if (side == "bid" and (floor is None or Decimal(price) >= floor))
            or (side == "ask" and (ceiling is None or Decimal(price) <= ceiling))}


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(5, 80), st.booleans(), st.floats(0.0, 3.0))
def test_never_in_sync_with_a_book_that_differs_from_the_venues(seed, updates, two_connections, grace):
    rnd = random.Random(seed)
    venue = Venue(rnd, updates)
    streams = [venue.windows(rnd, rnd.randint(1, 3))]
    if two_connections:
        streams.append(venue.windows(rnd, rnd.randint(1, 6)))
    for stream in streams:  # dropped diffs: gaps
        for _ in range(rnd.randint(0, 2)):
            if stream:
                del stream[rnd.randrange(len(stream))]
    sync = book_sync(grace, rnd.randint(3, 50), depth=rnd.randint(1, 8), cadence_ms=rnd.randint(1, 6))
    limit = rnd.choice((2, 4, 8, 1000))  # a snapshot's levels per side: most books are deeper than a small one
    asked = sync.start()
    now, published, rebuilds, windows = 0.0, 0, 0, []
    while any(streams) or asked:
        now += rnd.random()
        roll = rnd.random()
        if asked and roll < 0.15:  # the snapshot answers, at whatever point the venue has reached
            asked = []
            outputs = sync.snapshot(venue.snapshot(rnd.randint(0, len(venue.changes) - 1), limit))
        elif roll < 0.18:
            outputs = sync.restart()
        elif roll < 0.25:
            outputs = sync.tick(now)
        elif any(streams):
            stream = rnd.choice([stream for stream in streams if stream])
            outputs = sync.diff(stream.pop(0), now)
        else:
            outputs = sync.tick(now + grace + 1)
            if not any(isinstance(output, FetchSnapshot) for output in outputs):
                asked = []  # nothing more to come: the book stays where it is
        asked = asked or [output for output in outputs if isinstance(output, FetchSnapshot)]
        assert all(isinstance(output, (FetchSnapshot, InSync, OutOfSync, BookTop)) for output in outputs)
        for output in outputs:
            rebuilds += isinstance(output, InSync)
            if isinstance(output, BookTop):
                update = output.diff.final_update_id
                assert (list(output.bids), list(output.asks)) == venue_top(venue, update, sync._depth), update
                windows.append((rebuilds, output.diff.event_time_ms // sync._cadence_ms))
        if sync.state is SyncState.IN_SYNC:
            published += 1
            assert vouched(as_venue_book(sync), sync) == vouched(venue.books[sync.last_update_id], sync), sync.last_update_id
            bids, asks = sync.top(5) or ((), ())
            venue_bids, venue_asks = venue_top(venue, sync.last_update_id, 5)
            assert list(bids) == venue_bids[:len(bids)] and list(asks) == venue_asks[:len(asks)]
            if sync.book.vouches_for(5, (bids, asks)):
                assert (list(bids), list(asks)) == (venue_bids, venue_asks)
        else:
            assert sync.top(5) is None
    assert len(windows) == len(set(windows))  # at most one top per window of event time and rebuild


def test_the_documented_procedure_step_by_step():
    rnd = random.Random(7)
    venue = Venue(rnd, 30)
    sync = book_sync(cadence_ms=100)
    assert sync.start() == [FetchSnapshot(SYMBOL)]
    for first in (1, 6, 11, 16):
        assert sync.diff(venue.diff(first, first + 4), 0.0) == []  # buffered while syncing
    assert sync.top(20) is None
    # the snapshot at 13: 1-5 and 6-10 are dropped (u <= 13), 11-15 spans 14, 16-20 follows;
    # the first diff applied (event time 15 ms) publishes the top of the book after it
    in_sync, top = sync.snapshot(venue.snapshot(13))
    assert in_sync == InSync(SYMBOL, 13, 20)
    assert isinstance(top, BookTop) and top.diff == venue.diff(11, 15) and top.snapshot_id == 13
    assert (list(top.bids), list(top.asks)) == venue_top(venue, 15, 5)
    assert as_venue_book(sync) == venue.books[20]
    assert sync.diff(venue.diff(16, 20), 0.5) == []  # a duplicate, from another connection
    assert sync.diff(venue.diff(23, 25), 1.0) == []  # 21-22 missing: it waits for them ...
    assert sync.state is SyncState.IN_SYNC and sync.last_update_id == 20
    assert sync.diff(venue.diff(21, 22), 1.5) == []  # ... and they came: both applied, in the same 100 ms
    assert sync.last_update_id == 25 and as_venue_book(sync) == venue.books[25]
    assert sync.diff(venue.diff(27, 28), 2.0) == []
    assert sync.tick(2.9) == []
    assert sync.tick(3.0) == [OutOfSync(SYMBOL, OutOfSyncReason.GAP, 26, 27, 2.0), FetchSnapshot(SYMBOL)]
    assert sync.top(20) is None


def test_a_snapshot_older_than_every_buffered_diff_is_asked_for_again():
    venue = Venue(random.Random(3), 30)
    sync = book_sync()
    sync.start()
    sync.diff(venue.diff(20, 24), 0.0)
    assert sync.snapshot(venue.snapshot(10)) == [OutOfSync(SYMBOL, OutOfSyncReason.STALE_SNAPSHOT, 11, 20),
                                                 FetchSnapshot(SYMBOL)]
    assert sync.snapshot(venue.snapshot(22))[0] == InSync(SYMBOL, 22, 24)


def test_a_restart_trusts_nothing_applied_and_keeps_what_waits():
    venue = Venue(random.Random(5), 30)
    sync = book_sync()
    sync.start()
    assert sync.snapshot(venue.snapshot(0)) == [InSync(SYMBOL, 0, 0)]
    assert [type(output) for output in sync.diff(venue.diff(1, 5), 0.0)] == [BookTop]
    sync.diff(venue.diff(9, 12), 0.1)  # past a gap: it waits
    assert sync.restart() == [FetchSnapshot(SYMBOL)]
    assert sync.top(20) is None and sync.snapshot_asked
    in_sync, top = sync.snapshot(venue.snapshot(10))
    assert in_sync == InSync(SYMBOL, 10, 12) and isinstance(top, BookTop) and top.snapshot_id == 10
    assert as_venue_book(sync) == venue.books[12]


def test_an_unasked_snapshot_changes_nothing():
    venue = Venue(random.Random(9), 10)
    sync = book_sync()
    assert sync.snapshot(venue.snapshot(3)) == []
    assert sync.state is SyncState.SYNCING


def test_a_waiting_diff_that_another_connection_overtook_is_not_applied_over_it():
    venue = Venue(random.Random(11), 30)
    sync = book_sync()
    sync.start()
    sync.snapshot(venue.snapshot(9))
    assert sync.diff(venue.diff(12, 18), 0.0) == []  # one connection's, past a gap: it waits
    assert [top.diff.final_update_id for top in sync.diff(venue.diff(10, 20), 0.1)] == [20]  # the other's covers it
    assert sync.last_update_id == 20 and as_venue_book(sync) == venue.books[20]


DATA = Path(__file__).resolve().parent / "data"


def session_frames(name: str) -> list[dict]:
    """A recorded session's frames (tests/data/README.md): `<receive time>: <frame>` after its URL line."""
    lines = (DATA / name).read_text().splitlines()[1:]
    return [json.loads(line.partition(": ")[2]) for line in lines if line]


def test_a_real_binance_session_keeps_a_book_whose_touch_is_binances_at_every_update_id_it_told():
    """NKNUSDT on Binance, 2021-10-12: its REST snapshot, its depth diffs and its bookTicker,
    which numbers its updates with the same ids. After each diff, the book's best bid and ask
    are those the bookTicker of that update id said, price and quantity."""
    url, _, response = (DATA / "binance_spot_2021-10-12_nknusdt_depth.http").read_text().partition(" -> ")
    snapshot = depth_snapshot(response.partition(": ")[2].strip().encode(), "NKNUSDT", 1000)
    assert isinstance(snapshot, DepthSnapshot) and url.endswith("symbol=NKNUSDT&limit=1000")
    frames = [frame for frame in session_frames("binance_spot_2021-10-12.ws") if frame["stream"].startswith("nknusdt@")]
    touch = {frame["data"]["u"]: frame["data"] for frame in frames if frame["stream"] == "nknusdt@bookTicker"}
    diffs = [depth_update(frame["data"], 0) for frame in frames if frame["stream"] == "nknusdt@depth@100ms"]
    assert len(diffs) == 150 and all(isinstance(diff, DepthDiff) for diff in diffs)
    sync = BookSync("NKNUSDT", gap_grace_seconds=0.0, max_waiting_diffs=1000, depth=1, cadence_ms=1000)
    sync.start()
    assert sync.diff(diffs[0], 0.0) == []  # buffered: the snapshot came after it
    assert sync.snapshot(snapshot) == [InSync("NKNUSDT", 499869752, 499869752)]  # its u is the snapshot's: dropped
    compared, seconds = 0, set()
    for diff in diffs[1:]:
        assert isinstance(diff, DepthDiff)
        tops = sync.diff(diff, 0.0)
        assert all(isinstance(top, BookTop) and top.diff == diff for top in tops)
        seconds.update(top.diff.event_time_ms // 1000 for top in tops)
        bids, asks = sync.top(1) or ((), ())
        assert Decimal(bids[0][0]) < Decimal(asks[0][0])
        told = touch.get(sync.last_update_id)
        if told is not None:
            compared += 1
            assert (bids[0], asks[0]) == ((told["b"], told["B"]), (told["a"], told["A"])), sync.last_update_id
    assert sync.state is SyncState.IN_SYNC and sync.last_update_id == diffs[-1].final_update_id
    assert compared >= 15, compared  # (19 of its update ids have both a diff ending there and a bookTicker)
    assert seconds == {diff.event_time_ms // 1000 for diff in diffs[1:]}  # a top for every second of the session


def test_a_book_that_moved_past_its_snapshots_reach_is_rebuilt_rather_than_published_short():
    """A snapshot of 2 levels a side: the venue's book is deeper, so past the snapshot's worst
    level the local book may be missing levels. Once the levels it can vouch for no longer fill
    the depth published, no top is published and the book is rebuilt."""
    bids = (("100.05", "1"), ("100.04", "1"))
    asks = (("100.06", "1"), ("100.07", "1"))
    sync = book_sync(depth=2, cadence_ms=1)
    sync.start()
    assert sync.snapshot(DepthSnapshot(SYMBOL, 10, bids, asks, limit=2)) == [InSync(SYMBOL, 10, 10)]
    add_bid = DepthDiff(SYMBOL, 11, 11, 11, 0, (("100.055", "2"),), ())
    [top] = sync.diff(add_bid, 0.0)
    assert isinstance(top, BookTop) and top.bids == (("100.055", "2"), ("100.05", "1"))  # better than the line: known
    take_bids = DepthDiff(SYMBOL, 12, 12, 12, 0, (("100.055", "0"), ("100.05", "0")), ())
    assert sync.diff(take_bids, 0.0) == [OutOfSync(SYMBOL, OutOfSyncReason.DEPTH_EXHAUSTED, 13, 0), FetchSnapshot(SYMBOL)]
    assert sync.top(2) is None
    whole = DepthSnapshot(SYMBOL, 12, (("100.04", "1"),), asks, limit=2)  # one bid left: the whole side
    assert sync.snapshot(whole) == [InSync(SYMBOL, 12, 12)]
    [top] = sync.diff(DepthDiff(SYMBOL, 13, 13, 13, 0, (), (("100.06", "3"),)), 0.0)
    assert isinstance(top, BookTop) and top.bids == (("100.04", "1"),)  # thin, and said to be: no line on that side
