"""Kraken's adapter: real frames (tests/data/README.md) into K2 v2 records, every field exact."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from importlib import resources

import fastavro

from k2actors.core.adapter import Answer
from k2actors.core.checksummed_book import CheckedTop, ChecksummedBook
from k2actors.core.frames import (
    ID_OUT_OF_RANGE,
    INVALID_DECIMAL,
    NON_POSITIVE_QUANTITY,
    TIMESTAMP_OUT_OF_RANGE,
    UNEXPECTED_SHAPE,
    UNSUBSCRIBED_SYMBOL,
    WRONG_TYPE,
    Rejected,
)
from k2actors.core.kraken import HistoryPage, HistoryRefused, Instrument, KrakenTrade
from k2actors.core.kraken_adapter import KrakenAdapter
from k2actors.core.normalise import Delivery, message_id
from tests.test_core_checksummed_book import session_messages
from tests.test_core_kraken import FRAMES, us

ENDPOINT = "wss://ws.kraken.com/v2"
INSTRUMENTS = {"BTC/USD": Instrument("BTC/USD", "BTC", "USD", 1, 8, "online")}
ADAPTER = KrakenAdapter(INSTRUMENTS, 1 << 20)
TRADE_UPDATE = FRAMES["src/wss/kraken_wss_client.rs:909 trade_update"]
RECEIVED_NS = us(2024, 5, 27, 12, 43, 11, 900000) * 1000


def test_a_frame_of_trades_is_read_into_its_raw_record_and_its_trades():
    reading = ADAPTER.read("KRAKEN", ENDPOINT, (RECEIVED_NS, "c1", 7, TRADE_UPDATE))
    assert reading.raw == {"exchange": "KRAKEN", "endpoint": ENDPOINT, "conn_id": "c1", "conn_msg_seq": 7,
                           "recv_ts_ns": RECEIVED_NS, "stream": "trade", "symbol": "BTC/USD", "payload": TRADE_UPDATE}
    assert [event.trade_id for event in reading.events] == [70635299, 70635300]
    assert (reading.rejected, reading.actions) == ((), ())


def test_a_trade_becomes_a_record_with_symbol_and_currency_from_the_instrument():
    trade = ADAPTER.read("KRAKEN", ENDPOINT, (RECEIVED_NS, "c1", 7, TRADE_UPDATE)).events[0]
    delivery = Delivery("KRAKEN", ENDPOINT, RECEIVED_NS // 1000)
    assert ADAPTER.shape(trade, delivery, streamed=True) == ("kraken.trade", {
        "message_id": message_id("KRAKEN", "BTCUSD", 70635299),
        "trade_id": "KRAKEN-70635299",
        "symbol": "BTCUSD",
        "exchange": "KRAKEN",
        "asset_class": "crypto",
        "timestamp": us(2024, 5, 27, 12, 43, 11, 798009),
        "price": Decimal("68500.00000000"),
        "quantity": Decimal("0.01044926"),
        "currency": "USD",
        "side": "BUY",
        "trade_conditions": [],
        "source_sequence": 70635299,
        "platform_sequence": None,
        "ingestion_timestamp": RECEIVED_NS // 1000,
        "vendor_data": {"order_type": "limit", "endpoint": ENDPOINT, "venue_symbol": "BTC/USD"},
    })
    later = Delivery("KRAKEN", ENDPOINT, RECEIVED_NS // 1000 + 25 * 3600 * 1_000_000)
    assert ADAPTER.shape(trade, later, streamed=True).reason == TIMESTAMP_OUT_OF_RANGE
    _, backfilled = ADAPTER.shape(trade, later, streamed=False)
    assert backfilled["vendor_data"]["backfilled"] == "true"


def test_a_pair_without_instrument_information_is_refused():
    trade = KrakenTrade("ETH/USD", 1, "3000.1", "1.5", "sell", "market", 0, False)
    assert ADAPTER.shape(trade, Delivery("KRAKEN", ENDPOINT, 0), streamed=False) == Rejected(
        UNSUBSCRIBED_SYMBOL, "pair 'ETH/USD' was not subscribed", "kraken.trade")


def test_a_quote_is_named_by_its_time_and_without_one_by_its_receipt():
    frame = FRAMES["src/wss/kraken_wss_client.rs:495 ticker_update"]
    (quote,) = ADAPTER.read("KRAKEN", ENDPOINT, (RECEIVED_NS, "c1", 8, frame)).events
    stream, record = ADAPTER.shape(quote, Delivery("KRAKEN", ENDPOINT, RECEIVED_NS // 1000), streamed=True)
    assert stream == "kraken.ticker"
    assert {name: record[name] for name in ("symbol", "timestamp", "bid_price", "bid_quantity", "ask_price", "ask_quantity",
                                            "currency", "message_id")} == {
        "symbol": "BTCUSD", "timestamp": RECEIVED_NS // 1000, "bid_price": Decimal("65843.70000000"),
        "bid_quantity": Decimal("12.31628629"), "ask_price": Decimal("65843.80000000"), "ask_quantity": Decimal("0.31232000"),
        "currency": "USD", "message_id": message_id("KRAKEN", "BTCUSD", RECEIVED_NS // 1000, "ticker")}


def test_a_checked_book_becomes_a_record_of_its_best_levels():
    book = ChecksummedBook("BTC/USD", 10, 1, 8, publish_depth=10, cadence_us=1_000_000)
    snapshot, update, *_ = session_messages()
    book.message(snapshot, received_us=5)
    (top,) = [output for output in book.message(update, received_us=6) if isinstance(output, CheckedTop)]
    record = ADAPTER.shape_book(top, Delivery("KRAKEN", ENDPOINT, 6), depth=10)
    window = update.timestamp_us // 1_000_000 * 1_000_000  # its second of Kraken's time names it
    assert (top.window_us, record["source_sequence"]) == (window, window)
    assert record["message_id"] == message_id("KRAKEN", "BTCUSD", window, "book")
    assert (record["timestamp"], record["bid_levels"], record["ask_levels"]) == (update.timestamp_us, 10, 10)
    assert record["bids"][0] == {"price": Decimal(top.bids[0][0]), "quantity": Decimal(top.bids[0][1])}
    assert [level["price"] for level in record["asks"]] == sorted(level["price"] for level in record["asks"])
    assert record["vendor_data"] == {"stream": "book", "endpoint": ENDPOINT, "venue_symbol": "BTC/USD", "checksum": str(update.checksum)}


def test_answers_to_requests_are_actions_and_a_bad_trade_is_refused_alone():
    frame = FRAMES["src/wss/messages/base_messages.rs:240 raw"]
    assert ADAPTER.read("KRAKEN", ENDPOINT, (0, "c1", 1, frame)).actions == (
        Answer(0, (0, "Currency pair not supported WWW/USD")),)
    batch = json.loads(TRADE_UPDATE)
    batch["data"][1]["qty"] = 0
    reading = ADAPTER.read("KRAKEN", ENDPOINT, (0, "c1", 2, json.dumps(batch).encode()))
    assert [event.trade_id for event in reading.events] == [70635299]
    assert [rejected.reason for rejected in reading.rejected] == [NON_POSITIVE_QUANTITY]


def test_a_page_of_rest_trades_as_kraken_documents_it_becomes_backfilled_records():
    # docs.kraken.com/api/docs/rest-api/get-recent-trades, its example response (first row);
    # the page names the pair its own way, the trades are the subscribed symbol's
    body = (b'{"error":[],"result":{"XXBTZUSD":[["30243.40000","0.34507674",1688669597.8277369,"b","m","",61044952]],'
            b'"last":"1688671969993150842"}}')
    page = KrakenAdapter.history(body, "BTC/USD")
    assert page == HistoryPage(
        (KrakenTrade("BTC/USD", 61044952, "30243.40000", "0.34507674", "buy", "market", 1688669597827736, False),),
        1688671969993150842)
    stream, record = ADAPTER.shape(page.trades[0], Delivery("KRAKEN", "https://api.kraken.com", 1688671970000000), streamed=False)
    assert (stream, record["symbol"], record["price"], record["timestamp"], record["vendor_data"]["backfilled"]) == (
        "kraken.trade", "BTCUSD", Decimal("30243.40000000"), 1688669597827736, "true")


def test_refusals_and_unreadable_pages_of_rest_trades():
    refused = KrakenAdapter.history(b'{"error":["EAPI:Rate limit exceeded"]}', "BTC/USD")
    assert refused == HistoryRefused(("EAPI:Rate limit exceeded",)) and refused.rate_limited
    assert not HistoryRefused(("EQuery:Unknown asset pair",)).rate_limited
    row = ["30243.4", "0.5", 1688669597.8, "b", "m", "", 61044952]
    for result, reason in (({}, UNEXPECTED_SHAPE), ({"XXBTZUSD": [row], "last": "\u00b2"}, UNEXPECTED_SHAPE),
                           ({"XXBTZUSD": [row], "XETHZUSD": [], "last": "1"}, UNEXPECTED_SHAPE)):
        page = KrakenAdapter.history(json.dumps({"error": [], "result": result}).encode(), "BTC/USD")
        assert isinstance(page, Rejected) and page.reason == reason, result
    for bad, reason in (({3: ["b"]}, WRONG_TYPE), ({2: "100000000000000000000.5"}, TIMESTAMP_OUT_OF_RANGE), ({6: True}, ID_OUT_OF_RANGE),
                        ({0: "1e3"}, INVALID_DECIMAL)):
        changed = [bad.get(index, value) for index, value in enumerate(row)]
        page = KrakenAdapter.history(json.dumps({"error": [], "result": {"XXBTZUSD": [changed], "last": "1"}}).encode(), "BTC/USD")
        assert [trade.reason for trade in page.trades] == [reason], bad


def test_every_record_is_written_by_its_avro_schema():
    delivery = Delivery("KRAKEN", ENDPOINT, RECEIVED_NS // 1000)
    trade = ADAPTER.read("KRAKEN", ENDPOINT, (RECEIVED_NS, "c1", 7, TRADE_UPDATE)).events[0]
    (quote,) = ADAPTER.read("KRAKEN", ENDPOINT, (RECEIVED_NS, "c1", 8, FRAMES["src/wss/kraken_wss_client.rs:495 ticker_update"])).events
    book = ChecksummedBook("BTC/USD", 10, 1, 8, publish_depth=10, cadence_us=1_000_000)
    snapshot, update, *_ = session_messages()
    book.message(snapshot, received_us=5)
    (top,) = [output for output in book.message(update, received_us=6) if isinstance(output, CheckedTop)]
    for schema, record in (("trade_v2", ADAPTER.shape(trade, delivery, streamed=True)[1]),
                           ("quote_v2", ADAPTER.shape(quote, delivery, streamed=True)[1]),
                           ("book_v2", ADAPTER.shape_book(top, delivery, depth=10))):
        parsed = fastavro.parse_schema(json.loads(resources.files("k2actors").joinpath(f"schemas/{schema}.avsc").read_text()))
        fastavro.schemaless_writer(io.BytesIO(), parsed, record)  # raises if the schema refuses it


def test_a_pong_is_no_subscriptions_answer():
    frame = FRAMES["src/test_data/wss_messages.rs:13 get_pong()"]
    assert ADAPTER.read("KRAKEN", ENDPOINT, (0, "c1", 1, frame)).actions == ()
