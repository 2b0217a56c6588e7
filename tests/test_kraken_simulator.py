"""The Kraken simulator over real sockets, read by the Kraken adapter's core: what it sends
must be what the adapter expects of Kraken (tests/test_core_kraken.py holds the real frames)."""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import pytest
import websocket

from k2actors.core.checksummed_book import ChecksumInSync, ChecksummedBook, ChecksumMismatch, Resubscribe
from k2actors.core.frames import Rejected
from k2actors.core.kraken import (
    BookMessage,
    Heartbeat,
    HistoryPage,
    HistoryRefused,
    Instruments,
    KrakenQuote,
    KrakenTrade,
    RequestAnswered,
    RequestRefused,
    SystemStatus,
    historical_trades,
    read_frame,
    resubscribe_book,
    subscribe_requests,
    subscribed_depth,
)
from k2actors.core.kraken_backfill import KrakenGapFill
from k2actors.localstack.kraken import KrakenSimulator
from tests.conftest import wait_until


@pytest.fixture
def sim():
    with KrakenSimulator(("BTC/USD", "ETH/USD"), rate=200) as simulator:
        yield simulator


class Session:
    """One client connection, its frames read as the adapter reads them."""

    def __init__(self, url: str):
        self.socket = websocket.create_connection(url, timeout=5)
        self.request_id = 0

    def send(self, method: str, **params) -> int:
        self.request_id += 1
        body = {"method": method, "req_id": self.request_id, **({"params": params} if params else {})}
        self.socket.send(json.dumps(body))
        return self.request_id

    def items(self, until, timeout: float = 5.0) -> list:
        """Items read until `until(items)` holds."""
        seen: list = []
        deadline = time.monotonic() + timeout
        while not until(seen):
            assert time.monotonic() < deadline, f"not within {timeout} s; last items {seen[-5:]}"
            _, items = read_frame(self.socket.recv(), 1 << 22)
            assert not any(isinstance(item, Rejected) for item in items), items
            seen.extend(items)
        return seen

    def close(self) -> None:
        self.socket.close()


def of(kind: type, items: list) -> list:
    return [item for item in items if isinstance(item, kind)]


def test_a_connection_opens_with_its_status_and_each_symbol_is_answered_on_its_own(sim):
    session = Session(sim.urls[0])
    (status,) = session.items(lambda seen: seen)
    assert isinstance(status, SystemStatus) and status.system == "online" and status.connection_id > 2**63
    request = session.send("subscribe", channel="trade", symbol=["BTC/USD", "XBT/USD", "ETH/USD"], snapshot=True)
    seen = session.items(lambda seen: len(of(RequestAnswered, seen)) == 2 and of(RequestRefused, seen))
    assert {(a.request_id, a.channel, a.symbol) for a in of(RequestAnswered, seen)} == {
        (request, "trade", "BTC/USD"), (request, "trade", "ETH/USD")}
    assert of(RequestRefused, seen) == [RequestRefused(request, "subscribe", "Currency pair not supported XBT/USD", "XBT/USD")]
    session.close()


def test_the_subscriptions_the_adapter_asks_for_are_answered_symbol_by_symbol(sim):
    session = Session(sim.urls[0])
    for _, request in subscribe_requests(["BTC/USD", "ETH/USD"], ("trade", "ticker", "book"), subscribed_depth(20), 1):
        session.socket.send(request)
    seen = session.items(lambda seen: len(of(RequestAnswered, seen)) == 6 and len(of(BookMessage, seen)) >= 2)
    assert sorted((a.request_id, a.channel, a.symbol) for a in of(RequestAnswered, seen)) == [
        (1, "trade", "BTC/USD"), (2, "trade", "ETH/USD"), (3, "ticker", "BTC/USD"), (4, "ticker", "ETH/USD"),
        (5, "book", "BTC/USD"), (6, "book", "ETH/USD")]
    snapshots = [message for message in of(BookMessage, seen) if message.is_snapshot]
    assert {message.symbol for message in snapshots} == {"BTC/USD", "ETH/USD"}
    assert all(len(message.bids) == len(message.asks) == 25 for message in snapshots)
    session.close()


def test_trades_follow_their_snapshot_with_consecutive_ids(sim):
    started = sim.last_ids()["BTC/USD"]
    wait_until(lambda: sim.last_ids()["BTC/USD"] >= started + 60, 10, "a history for the snapshot")
    session = Session(sim.urls[0])
    session.send("subscribe", channel="trade", symbol=["BTC/USD"], snapshot=True)
    trades = of(KrakenTrade, session.items(lambda seen: len(of(KrakenTrade, seen)) > 120))
    snapshot = [trade for trade in trades if trade.from_snapshot]
    assert len(snapshot) == 50
    ids = sorted({trade.trade_id for trade in trades})
    assert ids == list(range(ids[0], ids[-1] + 1))
    assert all(trade.symbol == "BTC/USD" and trade.taker_side in ("buy", "sell") for trade in trades)
    assert [t.timestamp_us for t in trades] == sorted(t.timestamp_us for t in trades)
    session.close()


def test_quotes_are_the_best_bid_and_offer(sim):
    session = Session(sim.urls[0])
    session.send("subscribe", channel="ticker", symbol=["ETH/USD"], event_trigger="bbo")
    quotes = of(KrakenQuote, session.items(lambda seen: len(of(KrakenQuote, seen)) > 5))
    assert all(Decimal(q.bid_price) < Decimal(q.ask_price) and q.timestamp_us for q in quotes)
    session.close()


def test_books_stay_in_sync_by_their_checksums_and_a_corrupted_update_is_caught_and_rebuilt(sim):
    session = Session(sim.urls[0])
    session.send("subscribe", channel="instrument")
    (instruments,) = of(Instruments, session.items(lambda seen: of(Instruments, seen)))
    btc = next(pair for pair in instruments.pairs if pair.symbol == "BTC/USD")
    assert (btc.base, btc.quote) == ("BTC", "USD")
    book = ChecksummedBook("BTC/USD", 25, btc.price_precision, btc.qty_precision, publish_depth=20, cadence_us=1)
    session.send("subscribe", channel="book", symbol=["BTC/USD"], depth=25)
    outputs: list = []

    def feed(until) -> None:
        deadline = time.monotonic() + 10
        while not until():
            assert time.monotonic() < deadline, f"not within 10 s; last outputs {outputs[-3:]}"
            for message in of(BookMessage, session.items(lambda seen: of(BookMessage, seen))):
                outputs.extend(book.message(message, received_us=0))

    feed(lambda: len(outputs) > 100)
    assert of(ChecksumInSync, outputs) and not of(ChecksumMismatch, outputs)
    sim.endpoint(0).corrupt_book("BTC/USD")
    feed(lambda: of(Resubscribe, outputs))
    (mismatch,) = of(ChecksumMismatch, outputs)
    assert not mismatch.in_snapshot and book.top() is None
    for _, request in resubscribe_book("BTC/USD", 25, first_request_id=100):
        session.socket.send(request)
    outputs.clear()
    feed(lambda: len(outputs) > 50)
    assert of(ChecksumInSync, outputs) and not of(ChecksumMismatch, outputs) and book.top() is not None
    session.close()


def test_a_quiet_subscribed_connection_gets_heartbeats_and_pings_are_answered():
    with KrakenSimulator(("BTC/USD",), rate=0) as quiet:
        session = Session(quiet.urls[0])
        session.send("subscribe", channel="trade", symbol=["BTC/USD"], snapshot=False)
        started = time.monotonic()
        session.items(lambda seen: len(of(Heartbeat, seen)) >= 2)
        assert time.monotonic() - started >= 1.0
        request = session.send("ping")
        pong = RequestAnswered(request, "pong", None, None)
        session.items(lambda seen: pong in seen)
        session.close()


def rest_trades(sim: KrakenSimulator, pair: str, since: int, count: int = 1000) -> bytes:
    url = f"{sim.rest_url()}/0/public/Trades?pair={pair}&since={since}&count={count}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def test_rest_trades_page_by_time_and_are_the_streams_trades(sim):
    session = Session(sim.urls[0])
    session.send("subscribe", channel="trade", symbol=["BTC/USD"], snapshot=False)
    streamed = {trade.trade_id: trade for trade in of(KrakenTrade, session.items(lambda seen: len(of(KrakenTrade, seen)) > 60))}
    first = historical_trades(rest_trades(sim, "BTC/USD", since=0, count=30), "BTC/USD")
    assert isinstance(first, HistoryPage) and len(first.trades) == 30
    second = historical_trades(rest_trades(sim, "BTC/USD", since=first.last, count=1000), "BTC/USD")
    assert isinstance(second, HistoryPage)
    trades = [*first.trades, *second.trades]
    ids = [trade.trade_id for trade in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))) and streamed.keys() <= set(ids)
    assert all(trade == streamed[trade.trade_id] for trade in trades if trade.trade_id in streamed)  # the same, streamed or served
    sim.endpoint(0).refuse_history("EAPI:Rate limit exceeded", 1)
    refused = historical_trades(rest_trades(sim, "BTC/USD", since=0), "BTC/USD")
    assert isinstance(refused, HistoryRefused) and refused.rate_limited
    assert historical_trades(rest_trades(sim, "XBT/USD", since=0), "XBT/USD") == HistoryRefused(("EQuery:Unknown asset pair",))
    session.close()


def test_a_gap_is_filled_from_the_rest_history_paged_by_time(sim):
    session = Session(sim.urls[0])
    session.send("subscribe", channel="trade", symbol=["BTC/USD"], snapshot=False)
    streamed = sorted(of(KrakenTrade, session.items(lambda seen: len(of(KrakenTrade, seen)) > 40)), key=lambda t: t.trade_id)
    before, gap = streamed[0], streamed[1:31]  # as if these 30 had been lost
    fill = KrakenGapFill("BTCUSD", "BTC/USD", gap[0].trade_id, gap[-1].trade_id, after_us=before.timestamp_us)
    filled: list[KrakenTrade] = []
    while not fill.done:
        with urllib.request.urlopen(sim.rest_url() + fill.target(), timeout=5) as response:
            got = fill.take(historical_trades(response.read(), "BTC/USD"))
        assert got.unserved == []
        filled += got.trades
    assert filled == gap
    session.close()


def test_faults_drop_stall_refuse_and_flap(sim):
    control = sim.endpoint(0)
    session = Session(sim.urls[0])
    session.items(lambda seen: seen)  # status
    session.send("subscribe", channel="trade", symbol=["BTC/USD"], snapshot=False)
    session.items(lambda seen: of(KrakenTrade, seen))
    control.stall()
    session.socket.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            session.socket.recv()  # what was queued before the stall, then nothing
    control.stall(False)
    control.drop()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        session.socket.settimeout(5)
        while True:
            session.socket.recv()
    control.refuse()
    with pytest.raises(websocket.WebSocketBadStatusException, match="503"):
        websocket.create_connection(sim.urls[0], timeout=5)
    control.refuse(False)
    control.flap()
    flapping = websocket.create_connection(sim.urls[0], timeout=5)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        flapping.recv()
