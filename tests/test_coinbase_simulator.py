"""The Coinbase simulator over real sockets, read by Coinbase's core: what it sends must be
what the adapter expects of Coinbase (tests/test_core_coinbase.py holds the real frames)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import websocket

from k2actors.core.backfill import RestReply
from k2actors.core.coinbase import (
    BookEvent,
    CoinbaseQuote,
    CoinbaseTrade,
    ConnectionSequence,
    Envelope,
    Heartbeat,
    Products,
    SequenceGap,
    Subscribed,
    VenueError,
    read_frame,
)
from k2actors.core.coinbase_backfill import CoinbaseGapFill
from k2actors.core.coinbase_books import SequencedBook
from k2actors.core.frames import Rejected
from k2actors.core.paged_backfill import PageOf
from k2actors.localstack.coinbase import CoinbaseSimulator
from tests.conftest import wait_until

PRODUCTS = ("BTC-USD", "ETH-USD")


@pytest.fixture
def sim():
    with CoinbaseSimulator(PRODUCTS, rate=200) as simulator:
        yield simulator


class Session:
    """One client connection, its frames read as the adapter reads them, their numbers followed."""

    def __init__(self, url: str):
        self.socket = websocket.create_connection(url, timeout=5)
        self.sequence = ConnectionSequence()
        self.gaps: list[SequenceGap] = []

    def subscribe(self, channel: str, *products: str, kind: str = "subscribe") -> None:
        self.socket.send(json.dumps({"type": kind, "channel": channel, **({"product_ids": list(products)} if products else {})}))

    def items(self, until, timeout: float = 5.0) -> list:
        """Items read until `until(items)` holds."""
        seen: list = []
        deadline = time.monotonic() + timeout
        while not until(seen):
            assert time.monotonic() < deadline, f"not within {timeout} s; last items {seen[-5:]}"
            envelope, items = read_frame(self.socket.recv(), 1 << 24)
            assert not any(isinstance(item, Rejected) for item in items), items
            if envelope.sequence_num is not None:
                gap = self.sequence.observe(envelope.sequence_num)
                self.gaps += [gap] if gap is not None else []
            seen.extend((envelope, item) for item in items)
        return seen

    def close(self) -> None:
        self.socket.close()


def of(kind: type, seen: list) -> list:
    return [item for _, item in seen if isinstance(item, kind)]


def test_subscriptions_are_answered_with_the_whole_set_and_an_unknown_product_left_out(sim):
    session = Session(sim.urls[0])
    session.subscribe("market_trades", "BTC-USD", "DOGE-XYZ")
    first = session.items(lambda seen: of(Subscribed, seen))
    assert of(Subscribed, first)[0].channels == (("market_trades", ("BTC-USD",)),)
    session.subscribe("heartbeats")
    acked = session.items(lambda seen: of(Subscribed, seen))
    assert of(Subscribed, acked)[-1].channels == (("heartbeats", ("heartbeats",)), ("market_trades", ("BTC-USD",)))
    session.subscribe("level3", "BTC-USD")  # a channel Coinbase does not have
    assert of(VenueError, session.items(lambda seen: of(VenueError, seen)))[0] == VenueError("authentication failure")
    assert first[0][0] == Envelope("subscriptions", 0) and session.gaps == []
    session.close()


def test_trades_come_newest_first_in_batches_with_consecutive_ids_and_the_makers_side(sim):
    started = sim.last_ids()
    wait_until(lambda: all(sim.last_ids()[p] > started[p] + 60 for p in PRODUCTS), 10, "trades for the snapshot")
    session = Session(sim.urls[0])
    session.subscribe("market_trades", *PRODUCTS)
    seen = session.items(lambda s: len([t for t in of(CoinbaseTrade, s) if not t.from_snapshot]) >= 200)
    trades = of(CoinbaseTrade, seen)
    snapshot = [t for t in trades if t.from_snapshot]
    assert snapshot and len({t.product_id for t in snapshot}) == 2
    for product in PRODUCTS:
        streamed = [t.trade_id for t in trades if t.product_id == product and not t.from_snapshot]
        recent = [t.trade_id for t in snapshot if t.product_id == product]
        assert recent == sorted(recent, reverse=True)  # newest first
        ids = sorted(streamed)
        assert ids == list(range(ids[0], ids[0] + len(ids))) and ids[0] == recent[0] + 1  # none lost, none twice
    assert session.gaps == []
    session.close()


def test_a_level2_book_kept_from_its_snapshot_and_updates_is_the_markets(sim):
    session = Session(sim.urls[0])
    session.subscribe("level2", "BTC-USD")
    book = SequencedBook("BTC-USD", publish_depth=1000, cadence_us=1)
    seen = session.items(lambda s: len(of(BookEvent, s)) >= 30)
    events = of(BookEvent, seen)
    assert events[0].is_snapshot and not any(e.is_snapshot for e in events[1:])
    for envelope, event in seen:
        if isinstance(event, BookEvent):
            book.event(event, envelope.sequence_num)
    assert book.in_sync and session.gaps == []
    # Stalled, the endpoint sends nothing more: what the client was sent last stays as it is.
    sim.endpoint(0).stall()
    session.socket.settimeout(0.5)
    while True:
        try:
            envelope, items = read_frame(session.socket.recv(), 1 << 24)
        except websocket.WebSocketTimeoutException:
            break
        for item in items:
            if isinstance(item, BookEvent):
                book.event(item, envelope.sequence_num)
    bids, asks = sim.sent_book("BTC-USD")
    top = book.top(10_000)
    assert top is not None
    kept_bids, kept_asks = top
    assert dict(kept_bids) == bids and dict(kept_asks) == asks and len(bids) > 5
    session.close()


def test_tickers_status_and_heartbeats(sim):
    session = Session(sim.urls[0])
    session.subscribe("status", *PRODUCTS)
    session.subscribe("ticker", "ETH-USD")
    session.subscribe("heartbeats")
    seen = session.items(lambda s: len(of(Heartbeat, s)) >= 2 and len(of(CoinbaseQuote, s)) >= 3)
    (products,) = of(Products, seen)
    assert [(p.product_id, p.record_symbol) for p in products.products] == [("BTC-USD", "BTCUSD"), ("ETH-USD", "ETHUSD")]
    quotes = of(CoinbaseQuote, seen)
    assert all(q.product_id == "ETH-USD" and float(q.bid_price) < float(q.ask_price) for q in quotes)
    counters = [h.counter for h in of(Heartbeat, seen)]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    assert session.gaps == []
    session.close()


def test_a_skipped_sequence_number_shows_as_a_gap_of_one_frame(sim):
    session = Session(sim.urls[0])
    session.subscribe("heartbeats")
    session.items(lambda s: of(Heartbeat, s))
    sim.endpoint(0).skip_sequence()
    session.items(lambda s: len(of(Heartbeat, s)) >= 2)
    assert len(session.gaps) == 1 and session.gaps[0].first == session.gaps[0].last
    session.close()


def test_a_connection_that_subscribes_to_nothing_is_closed(sim):
    socket = websocket.create_connection(sim.urls[0], timeout=8)
    started = time.monotonic()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        socket.recv()
    assert time.monotonic() - started >= 4.5


def test_rest_trades_page_back_by_id_and_fill_a_gap(sim):
    started = sim.last_ids()["BTC-USD"]
    wait_until(lambda: sim.last_ids()["BTC-USD"] >= started + 1600, 30, "1,600 trades made")
    last = sim.last_ids()["BTC-USD"]
    fill = CoinbaseGapFill("BTCUSD", "BTC-USD", last - 1500, last - 10)
    trades = []
    while not fill.done:
        with urllib.request.urlopen(sim.rest_url() + fill.target(), timeout=5) as answer:
            reply = RestReply(answer.status, answer.read(), dict(answer.headers), 0, fill.target(), "rest-1")
            assert int(answer.headers["CB-AFTER"]) <= int(answer.headers["CB-BEFORE"])
        read = fill.read(reply)
        assert isinstance(read, PageOf) and read.rejected == () and read.page.unserved == []
        trades += read.page.trades
    assert [t.trade_id for t in trades] != [] and sorted(t.trade_id for t in trades) == list(range(last - 1500, last - 9))
    sim.endpoint(0).refuse_history(1)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(sim.rest_url() + fill.target(), timeout=5)
    assert refused.value.code == 429
    refused.value.close()
