"""Book records through the ledger and again through replay: the simulator's order book is the
venue; its diffs come as frames and its snapshots as REST answers. Every record published is
the venue's book at the update id it names, level for level; a dropped diff, a restart and a
stale snapshot never publish a wrong one; and the raw record derives every record again."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from k2actors.core.binance import BOOK
from k2actors.core.ledger import BOOKS_CHECK, BookLost, BookRebuilt, Ledger, Publish, ReadyCheck, Rules, SnapshotWanted
from k2actors.core.payloads import FetchedSnapshot, RawBatch
from k2actors.core.raw import RAW
from k2actors.core.replay import Replay, verify
from k2actors.core.replay import Rules as ReplayRules
from k2actors.core.telemetry import MetricBuffer
from k2actors.localstack.orderbook import BookSnapshot, SimBook, snapshot_body
from tests.published import shaped

SYMBOL, URL, REST = "BTCUSDT", "ws://venue/stream", "http://venue"
DEPTH, CADENCE_MS, LIMIT = 5, 300, 1000
T0_MS = 1_700_000_000_000


class Venue:
    """The simulator's book, moved by trades; a diff every 100 ms, and its state at each one."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self.book = SimBook(5_000_000, 7_000_000, random.Random(seed + 1))
        self.price = 5_000_000
        self.at: dict[int, BookSnapshot] = {}  # the book after each diff, by its last update id
        self.now_ms = T0_MS

    def diff_frame(self) -> bytes:
        for _ in range(self._random.randint(1, 4)):
            self.price += self._random.randint(-3, 3)
            self.book.trade(self.price)
        self.now_ms += 100
        payload = self.book.diff_payload(SYMBOL, self.now_ms)
        assert payload is not None
        self.at[self.book.update_id] = self.book.snapshot()
        return json.dumps({"stream": "btcusdt@depth@100ms", "data": json.loads(payload)}).encode()

    def snapshot(self, conn_id: str, stale: BookSnapshot | None = None) -> FetchedSnapshot:
        body = json.dumps(snapshot_body(stale or self.book.snapshot(LIMIT))).encode()
        return FetchedSnapshot("BINANCE", SYMBOL, REST, f"/api/v3/depth?symbol={SYMBOL}&limit={LIMIT}", conn_id,
                               self.now_ms * 1000 + 50, body)


def ledger() -> Ledger[str]:
    rules = Rules(2.0, frozenset({SYMBOL}), {}, 1_000_000, 65536, 30.0, True, DEPTH, CADENCE_MS)
    return Ledger(rules, {}, 0.0, MetricBuffer())


class Run:
    """Frames through ledgers (a restart is a new one), with everything they published."""

    def __init__(self) -> None:
        self.ledger = ledger()
        self.published: list = []
        self.events: list = []
        self._seq = 0

    def frames(self, frames: list[bytes], conn_id: str, first_seq: int, now: float) -> None:
        self._seq += 1
        numbered = tuple((json.loads(frame)["data"]["E"] * 1_000_000 + 7, conn_id, first_seq + i, frame)
                         for i, frame in enumerate(frames))
        self._take(self.ledger.take_raw(RawBatch(URL, "BINANCE", self._seq, numbered), "conn", now))

    def snapshot(self, fetched: FetchedSnapshot, now: float) -> None:
        self._take(self.ledger.take_snapshot(fetched, now))

    def tick(self, now: float) -> None:
        self._take(self.ledger.tick(now))

    def _take(self, events: list) -> None:
        self.events += events
        self.published += [record for event in events if isinstance(event, Publish) for record in shaped(event.batch.records)]

    def books(self) -> list[dict]:
        return [record for stream, record, _ in self.published if stream == BOOK]

    def wanted(self) -> int:
        wanted = sum(isinstance(event, SnapshotWanted) for event in self.events)
        self.events = []
        return wanted


def as_levels(levels: list[dict]) -> list[tuple[Decimal, Decimal]]:
    return [(level["price"], level["quantity"]) for level in levels]


def venue_levels(snapshot: BookSnapshot) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    def level(price: int, units: int) -> tuple[Decimal, Decimal]:
        return Decimal(price).scaleb(-2), Decimal(units).scaleb(-8)
    return [level(*bid) for bid in snapshot.bids[:DEPTH]], [level(*ask) for ask in snapshot.asks[:DEPTH]]


def assert_every_record_is_the_venues(run: Run, venue: Venue) -> None:
    for record in run.books():
        at = venue.at[record["source_sequence"]]
        assert (as_levels(record["bids"]), as_levels(record["asks"])) == venue_levels(at), record["source_sequence"]
        assert (record["bid_levels"], record["ask_levels"], record["depth"]) == (DEPTH, DEPTH, DEPTH)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_book_published_through_a_dropped_diff_a_restart_and_a_stale_snapshot_is_never_wrong(seed):
    venue, run = Venue(seed), Run()
    run.frames([venue.diff_frame() for _ in range(3)], "c1", 1, 0.0)
    assert run.wanted() == 1 and run.books() == []  # buffered, a snapshot asked for
    run.snapshot(venue.snapshot("s1"), 0.1)
    run.frames([venue.diff_frame() for _ in range(20)], "c1", 4, 0.2)
    in_sync = len(run.books())
    assert in_sync >= 6  # one record per 300 ms of the venue's time
    assert [record["timestamp"] // 1000 // CADENCE_MS for record in run.books()] == sorted(
        {record["timestamp"] // 1000 // CADENCE_MS for record in run.books()})

    venue.diff_frame()  # a diff the connection never delivered
    run.frames([venue.diff_frame() for _ in range(5)], "c1", 24, 0.3)
    run.tick(1.0)
    assert run.wanted() == 0 and len(run.books()) == in_sync  # within the grace another connection could fill the gap
    run.tick(2.4)
    [lost] = [event for event in run.events if isinstance(event, BookLost)]
    [status] = [event for event in run.events if isinstance(event, ReadyCheck) and event.name == BOOKS_CHECK]
    assert status.ok and "being rebuilt: BINANCE BTCUSDT" in status.detail  # named, not yet failing /ready
    assert lost.lost.reason.value == "gap" and run.wanted() == 1
    run.frames([venue.diff_frame() for _ in range(3)], "c1", 29, 2.6)
    stale = venue.at[min(venue.at)]
    run.snapshot(venue.snapshot("s2", stale), 2.7)  # older than every buffered diff: asked for again
    assert run.wanted() == 1 and len(run.books()) == in_sync
    run.snapshot(venue.snapshot("s3"), 2.8)
    assert any(isinstance(event, BookRebuilt) for event in run.events)
    run.frames([venue.diff_frame() for _ in range(10)], "c1", 32, 2.9)
    assert len(run.books()) > in_sync

    restarted = Run()  # a restarted service: a new ledger, a new connection
    restarted.frames([venue.diff_frame() for _ in range(2)], "c2", 1, 0.0)
    restarted.snapshot(venue.snapshot("s4"), 0.1)
    restarted.frames([venue.diff_frame() for _ in range(10)], "c2", 3, 0.2)
    assert restarted.books()
    for done in (run, restarted):
        assert_every_record_is_the_venues(done, venue)

    # The raw record of both runs derives every book record again, field for field.
    replay = Replay(ReplayRules(frozenset({SYMBOL}), 65536, 86400.0, DEPTH, CADENCE_MS))
    for done in (run, restarted):
        for stream, record, _ in done.published:
            if stream == RAW:
                replay.add(record)
    live = [(stream, record, dict(headers)) for done in (run, restarted) for stream, record, headers in done.published
            if stream == BOOK]
    assert verify(replay.derive(), live) == []
    # Replay may derive a record more: across the restart its book stayed whole (the new
    # connection's diffs continued its update ids), where the restarted service's waited for
    # a snapshot. Each it derives is the venue's all the same.
    derived = [d.record for d in replay.records() if d.stream == BOOK]
    assert {r["message_id"] for _, r, _ in live} <= {record["message_id"] for record in derived}
    for record in derived:
        assert (as_levels(record["bids"]), as_levels(record["asks"])) == venue_levels(venue.at[record["source_sequence"]])


def test_a_book_record_says_how_many_levels_it_has():
    venue, run = Venue(9), Run()
    run.frames([venue.diff_frame()], "c1", 1, 0.0)
    thin = BookSnapshot(venue.book.update_id, venue.book.snapshot().bids[:2], venue.book.snapshot().asks[:3])
    run.snapshot(venue.snapshot("s1", thin), 0.1)
    venue.book.bids, venue.book.asks = dict(thin.bids), dict(thin.asks)  # the venue's book is that thin
    run.frames([venue.diff_frame() for _ in range(5)], "c1", 2, 0.2)
    record = run.books()[0]
    assert record["depth"] == DEPTH and record["bid_levels"] == len(record["bids"]) <= DEPTH
    assert record["ask_levels"] == len(record["asks"])


def test_a_snapshot_that_cannot_be_read_is_a_dead_letter_and_asked_for_again():
    venue, run = Venue(4), Run()
    run.frames([venue.diff_frame()], "c1", 1, 0.0)
    assert run.wanted() == 1
    broken = FetchedSnapshot("BINANCE", SYMBOL, REST, f"/api/v3/depth?symbol={SYMBOL}&limit={LIMIT}", "s1", 1, b"<html>")
    events = run.ledger.take_snapshot(broken, 0.1)
    [publish] = [event for event in events if isinstance(event, Publish)]
    assert [stream for stream, _, _ in shaped(publish.batch.records)] == [RAW]  # kept as received
    assert [letter.reason for letter in publish.batch.dead_letters] == ["not_json"]
    assert sum(isinstance(event, SnapshotWanted) for event in events) == 1
