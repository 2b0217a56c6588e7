"""k2actors.core.coinbase directly, on real captured Coinbase Advanced Trade frames
(tests/data/coinbase_advanced_trade_frames.txt, each named by its source there: ccxt issue
#27606's raw feed, Coinbase.Net issue #19, and live captures kept in public repositories;
tests/data/README.md) and on frames altered from them: every field read exactly, the maker's
side turned into the taker's, each bad item refused with its reason and its neighbours kept,
and a connection's lost frames found by their sequence numbers. And what the service sends
Coinbase: each connection's subscriptions (their order, their JSON, their ids, their pace),
and the symbol a product's records carry."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from k2actors.core.coinbase import (
    BOOK_STREAM,
    ERROR,
    LEVEL2_PRODUCTS_PER_CONNECTION,
    SUBSCRIBABLE,
    TICKER_STREAM,
    TRADE_STREAM,
    BookEvent,
    CoinbaseQuote,
    CoinbaseTrade,
    ConnectionSequence,
    Envelope,
    Heartbeat,
    HistoryPage,
    Product,
    SequenceGap,
    Subscribed,
    Tickers,
    VenueError,
    connection_plans,
    historical_trades,
    read_frame,
    record_symbol,
)
from k2actors.core.frames import (
    ID_OUT_OF_RANGE,
    INVALID_DECIMAL,
    MISSING_FIELD,
    NON_POSITIVE_PRICE,
    NOT_JSON,
    TIMESTAMP_OUT_OF_RANGE,
    UNEXPECTED_SHAPE,
    UNKNOWN_EVENT,
    UNKNOWN_STREAM,
    WRONG_TYPE,
    Rejected,
)
from k2actors.core.subscriptions import SubscriptionPlan
from tests.test_core_kraken import captured_frames

DATA = Path(__file__).parent / "data"
MAX_BYTES = 1 << 20


FRAMES = captured_frames("coinbase_advanced_trade_frames.txt")


def at(name: str) -> tuple[Envelope, tuple]:
    return read_frame(FRAMES[name], MAX_BYTES)


def us(text: str) -> int:
    moment = datetime.fromisoformat(text)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // datetime.resolution


def altered(name: str, change) -> bytes:
    message = json.loads(FRAMES[name])
    change(message)
    return json.dumps(message).encode()


def test_every_captured_frame_is_read_with_nothing_refused():
    for name, frame in FRAMES.items():
        envelope, items = read_frame(frame, MAX_BYTES)
        assert items and not [item for item in items if isinstance(item, Rejected)], name
        assert envelope.channel != UNKNOWN_STREAM, name


def test_market_trades_updates_are_read_exactly_and_their_side_is_the_takers():
    envelope, (trade,) = at("ccxt#27606 market_trades_update_1851")
    assert envelope == Envelope("market_trades", 1851)
    # A SELL at the ask (88355.59) is a maker selling: the taker bought.
    assert trade == CoinbaseTrade("BTC-USD", 929248657, "88355.59", "0.00136573", "buy", us("2025-12-31T06:00:12.44524Z"), False)
    _, (third,) = at("ccxt#27606 market_trades_update_1853")
    assert (third.trade_id, third.price, third.quantity, third.taker_side) == (929248659, "88355.58", "0.00006677", "sell")
    assert third.timestamp_us == 1767160813456090


def test_a_market_trades_snapshot_is_marked_as_one():
    envelope, (trade,) = at("parser-test-2025-10-27 market_trades_snapshot")
    assert envelope == Envelope("market_trades", 0)
    assert trade == CoinbaseTrade("BTC-USD", 892262231, "115445.28", "0.00015604", "sell", us("2025-10-27T16:44:39.600153Z"), True)
    _, (without_client_id,) = at("reference-2026-06-14 market_trades_snapshot")  # this one has no client_id
    assert (without_client_id.trade_id, without_client_id.from_snapshot) == (1037798145, True)


def test_a_ticker_is_a_quote_named_by_the_frames_time_to_the_microsecond():
    envelope, (quote,) = at("reference-2026-06-14 ticker_update")
    assert envelope == Envelope("ticker", 16)
    # the frame's time has nine digits after the second: the quote keeps the first six
    assert quote == CoinbaseQuote("BTC-USD", "64281.7", "0.21558849", "64281.71", "0.02287045", us("2026-06-14T05:35:45.435813Z"))
    _, (snapshot,) = at("capture-2026-09-05 ticker_snapshot")
    assert (snapshot.product_id, snapshot.bid_price, snapshot.ask_price) == ("BTC-PERP-INTX", "79879", "79879.1")


def test_a_level2_snapshot_is_the_book_by_side_as_written():
    envelope, (book,) = at("capture-2026-09-07 l2_data_snapshot")
    assert envelope == Envelope("l2_data", 0)
    assert book == BookEvent("BTC-PERP-INTX", True, (("79943.9", "3.0105"), ("79943.8", "0.5")), (("79944.1", "1.2"), ("79944", "0.048")),
                             us("2026-09-07T01:57:58.894355Z"))


def test_control_frames():
    assert at("capture-2026-09-07 heartbeats") == (Envelope("heartbeats", 3), (Heartbeat(139651),))
    envelope, (subscribed,) = at("capture-2026-09-07 subscriptions_heartbeats_level2")
    assert envelope == Envelope("subscriptions", 2)
    assert subscribed.products("level2") == ("BTC-PERP-INTX", "ETH-PERP-INTX") and subscribed.products("heartbeats") == ("heartbeats",)
    assert at("reference-2026-06-14 subscriptions_empty")[1] == (Subscribed(()),)
    assert at("capture-2026-09-07 error_authentication_failure") == (Envelope(ERROR, None), (VenueError("authentication failure"),))
    assert at("Coinbase.Net#19 error_too_many_l2_streams")[1] == (VenueError("too many L2 streams requested in a single session"),)
    # the documentation writes the counter as a string
    documented = altered("capture-2026-09-07 heartbeats", lambda m: m["events"][0].update(heartbeat_counter="3049"))
    assert read_frame(documented, MAX_BYTES)[1] == (Heartbeat(3049),)


def test_a_bad_trade_is_refused_and_its_neighbours_kept():
    def two_trades(message):
        good = message["events"][0]["trades"][0]
        message["events"][0]["trades"] = [dict(good, trade_id="12a"), dict(good, trade_id="929248700")]
    _, (bad, good) = read_frame(altered("ccxt#27606 market_trades_update_1851", two_trades), MAX_BYTES)
    assert isinstance(bad, Rejected) and bad.reason == WRONG_TYPE and bad.stream == TRADE_STREAM
    assert isinstance(good, CoinbaseTrade) and good.trade_id == 929248700


@pytest.mark.parametrize("field, value, reason", [
    ("trade_id", None, MISSING_FIELD),
    ("trade_id", "99999999999999999999", WRONG_TYPE),  # longer than any id
    ("trade_id", -1, ID_OUT_OF_RANGE),
    ("price", "0", NON_POSITIVE_PRICE),
    ("price", "1e5", INVALID_DECIMAL),
    ("size", 1.5, WRONG_TYPE),
    ("side", "buy", WRONG_TYPE),  # Coinbase writes the maker's side in capitals
    ("time", "yesterday", TIMESTAMP_OUT_OF_RANGE),
    ("time", "2025-12-31T06:00:12", TIMESTAMP_OUT_OF_RANGE),  # no time zone
])
def test_a_trade_field_out_of_shape_is_refused_with_its_reason(field, value, reason):
    def change(message):
        trade = message["events"][0]["trades"][0]
        if value is None:
            del trade[field]
        else:
            trade[field] = value
    _, (item,) = read_frame(altered("ccxt#27606 market_trades_update_1851", change), MAX_BYTES)
    assert isinstance(item, Rejected) and item.reason == reason and item.stream == TRADE_STREAM, item


def test_a_book_event_with_one_bad_level_is_refused_whole_and_the_other_products_kept():
    def two_products(message):
        event = message["events"][0]
        broken = json.loads(json.dumps(event))
        broken["product_id"] = "ETH-PERP-INTX"
        broken["updates"][2]["side"] = "ask"
        message["events"].append(broken)
    _, (book, refused) = read_frame(altered("capture-2026-09-07 l2_data_snapshot", two_products), MAX_BYTES)
    assert isinstance(book, BookEvent) and book.product_id == "BTC-PERP-INTX"
    assert isinstance(refused, Rejected) and refused.reason == WRONG_TYPE and refused.stream == BOOK_STREAM


def test_a_ticker_without_its_best_bid_is_refused():
    no_bid = altered("reference-2026-06-14 ticker_update", lambda m: m["events"][0]["tickers"][0].pop("best_bid"))
    _, (item,) = read_frame(no_bid, MAX_BYTES)
    assert isinstance(item, Rejected) and item.reason == MISSING_FIELD and item.stream == TICKER_STREAM


@pytest.mark.parametrize("frame, reason", [
    (b"not json", NOT_JSON),
    (b'{"type":"error"}', WRONG_TYPE),
    (b'{"sequence_num":1,"events":[]}', MISSING_FIELD),
    (b'{"channel":"ticker","timestamp":"2026-06-14T05:35:45Z","events":[]}', MISSING_FIELD),  # no sequence number
    (b'{"channel":"ticker","sequence_num":3,"timestamp":"2026-06-14T05:35:45Z","events":{}}', UNEXPECTED_SHAPE),
    (b'{"channel":"candles","sequence_num":3,"timestamp":"2026-06-14T05:35:45Z","events":[]}', UNKNOWN_EVENT),
    (b'{"channel":"ticker","sequence_num":3,"timestamp":"2026-06-14T05:35:45Z","events":[{"type":"later","tickers":[]}]}',
     UNEXPECTED_SHAPE),
])
def test_a_frame_out_of_shape_is_refused_with_its_reason(frame, reason):
    _, (item,) = read_frame(frame, MAX_BYTES)
    assert isinstance(item, Rejected) and item.reason == reason, item


def test_a_frame_keeps_its_number_even_when_what_it_carries_is_refused():
    # the number says whether a frame was lost, whatever the frame held
    envelope, (item,) = read_frame(b'{"channel":"ticker","sequence_num":7,"timestamp":"?","events":[]}', MAX_BYTES)
    assert envelope == Envelope("ticker", 7) and isinstance(item, Rejected) and item.reason == TIMESTAMP_OUT_OF_RANGE


def test_a_connections_lost_frames_are_found_by_their_numbers():
    sequence = ConnectionSequence()
    assert [sequence.observe(n) for n in (0, 1, 2)] == [None, None, None]
    assert sequence.observe(5) == SequenceGap(3, 4)
    assert sequence.observe(4) is None  # late, or a repeat: what the gap said is already said
    assert sequence.observe(6) is None
    assert ConnectionSequence().observe(2) == SequenceGap(0, 1)  # a connection's first frames count too


def test_the_rest_history_is_read_with_its_makers_side_turned():
    page = historical_trades((DATA / "coinbase_exchange_trades_btcusdt_2024-03-13.json").read_bytes(), "BTC-USDT")
    assert page == HistoryPage((CoinbaseTrade("BTC-USDT", 18502034, "73271.63000000", "0.00007448", "buy",
                                              us("2024-03-13T11:00:17.710679Z"), False),), 18502034)
    # the live API writes the id as a number
    numbered = historical_trades(b'[{"trade_id":7,"side":"buy","size":"1","price":"2","time":"2024-03-13T11:00:17Z"},'
                                 b'{"trade_id":6,"side":"up","size":"1","price":"2","time":"2024-03-13T11:00:17Z"}]', "BTC-USD")
    assert isinstance(numbered, HistoryPage) and numbered.oldest_id == 7
    assert isinstance(numbered.trades[0], CoinbaseTrade) and numbered.trades[0].taker_side == "sell"
    assert isinstance(numbered.trades[1], Rejected) and numbered.trades[1].reason == WRONG_TYPE
    assert historical_trades(b"[]", "BTC-USD") == HistoryPage((), None)
    refused = historical_trades(b'{"message":"NotFound"}', "BTC-USD")
    assert isinstance(refused, Rejected) and refused.reason == UNEXPECTED_SHAPE and refused.stream == TRADE_STREAM


URL = "wss://advanced-trade-ws.coinbase.com"


def test_a_connection_asks_for_the_status_channel_first_then_each_channel_then_heartbeats_a_quarter_second_apart():
    # One channel a message, as Coinbase takes them (docs.cdp.coinbase.com, Advanced Trade WebSocket
    # overview); 4 a second, within the 8 unauthenticated messages a second it allows an IP.
    assert connection_plans(URL, ["BTC-USD", "ETH-USD"], ("market_trades", "ticker")) == [SubscriptionPlan(URL, (
        (1, '{"type":"subscribe","channel":"status","product_ids":["BTC-USD","ETH-USD"]}'),
        (2, '{"type":"subscribe","channel":"market_trades","product_ids":["BTC-USD","ETH-USD"]}'),
        (3, '{"type":"subscribe","channel":"ticker","product_ids":["BTC-USD","ETH-USD"]}'),
        (4, '{"type":"subscribe","channel":"heartbeats","product_ids":["BTC-USD","ETH-USD"]}'),
    ), 0.25)]
    # the channels in the order configured, between the status channel and the heartbeats
    [plan] = connection_plans(URL, ("SOL-USD",), ("ticker", "market_trades"))
    assert [(request_id, json.loads(sent)) for request_id, sent in plan.requests] == [
        (number, {"type": "subscribe", "channel": channel, "product_ids": ["SOL-USD"]})
        for number, channel in enumerate(("status", "ticker", "market_trades", "heartbeats"), 1)]
    assert set(SUBSCRIBABLE) >= {"market_trades", "ticker"}


def test_trades_and_tickers_of_many_products_are_asked_on_one_connection():
    products = [f"P{n}-USD" for n in range(40)]
    [plan] = connection_plans(URL, products, ("market_trades", "ticker"))
    assert [json.loads(sent)["product_ids"] for _, sent in plan.requests] == [products] * 4


def test_level2_products_are_shared_among_connections_each_asking_for_its_own_with_ids_of_its_own():
    # Coinbase refuses too many level2 products on one connection (Coinbase.Net#19, in tests/data)
    products = [f"P{n}-USD" for n in range(LEVEL2_PRODUCTS_PER_CONNECTION + 4)]
    plans = connection_plans(URL, products, ("market_trades", "level2"))
    asked = [[json.loads(sent) for _, sent in plan.requests] for plan in plans]
    assert [[request["channel"] for request in requests] for requests in asked] == [
        ["status", "market_trades", "level2", "heartbeats"]] * 2
    assert [requests[0]["product_ids"] for requests in asked] == [products[:LEVEL2_PRODUCTS_PER_CONNECTION],
                                                                  products[LEVEL2_PRODUCTS_PER_CONNECTION:]]
    assert all(len({tuple(request["product_ids"]) for request in requests}) == 1 for requests in asked)
    # Coinbase's answers name no request: the ids are the plans' own, each once
    assert [[request_id for request_id, _ in plan.requests] for plan in plans] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    # Coinbase counts 8 messages a second per IP: the two connections together send four
    assert {(plan.url, plan.interval) for plan in plans} == {(URL, 0.5)}


@pytest.mark.parametrize("product, symbol", [("BTC-USD", "BTCUSD"), ("ETH-EUR", "ETHEUR"), ("1INCH-USDC", "1INCHUSDC")])
def test_a_products_records_carry_its_base_and_quote_as_one_symbol(product, symbol):
    assert record_symbol(product) == symbol
    # known before Coinbase describes the product, and the symbol its description makes
    base, quote = product.split("-")
    assert Product(product, base, quote, "online").record_symbol == symbol


def test_a_products_quotes_come_from_one_connection_at_a_time_and_only_when_its_touch_moved():
    tickers = Tickers()
    quote = CoinbaseQuote("BTC-USD", "64281.7", "0.2", "64281.71", "0.02", 1)
    moved = dataclasses.replace(quote, ask_quantity="0.5", timestamp_us=2)

    def offered(q: CoinbaseQuote, conn_id: str, now: float) -> bool:
        tickers.heard(conn_id, now)
        if not tickers.wanted(q, conn_id, now):
            return False
        tickers.published(q)
        return True

    assert offered(quote, "primary", 0.0)
    assert not offered(dataclasses.replace(quote, timestamp_us=3), "standby", 0.1)  # hot standby's copy
    assert not offered(quote, "primary", 0.2)  # a match that moved no price or quantity of the touch
    assert offered(moved, "primary", 0.3) and not offered(moved, "standby", 0.4)
    tickers.heard("standby", 1.5)  # the standby lives on, the primary fell silent at 0.3 ...
    assert not offered(quote, "standby", 1.7)  # ... not yet for long
    assert offered(quote, "standby", 1.9)  # 1.6 s: the standby's quotes from now on
    assert not offered(dataclasses.replace(quote, bid_quantity="0.3"), "primary", 2.0)  # back, but not the source now
    tickers.forget(["BTC-USD"])  # another instance's product now; should it come back, afresh
    assert offered(quote, "primary", 2.1)
