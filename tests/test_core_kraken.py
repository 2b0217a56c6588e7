"""Kraken WS v2 frames read exactly, on real captured frames (tests/data/README.md names
their sources), and hostile ones refused with their reason."""

from __future__ import annotations

import calendar
import json
from pathlib import Path

import pytest

from k2actors.core.frames import (
    ID_OUT_OF_RANGE,
    INVALID_DECIMAL,
    MISSING_FIELD,
    NON_POSITIVE_PRICE,
    NON_POSITIVE_QUANTITY,
    NOT_JSON,
    TIMESTAMP_OUT_OF_RANGE,
    UNEXPECTED_SHAPE,
    UNKNOWN_EVENT,
    WRONG_TYPE,
    Rejected,
)
from k2actors.core.kraken import (
    SUBSCRIBE_INTERVAL_SECONDS,
    BookMessage,
    Heartbeat,
    Instrument,
    Instruments,
    KrakenQuote,
    KrakenTrade,
    RequestAnswered,
    RequestRefused,
    SystemStatus,
    checksum,
    connection_plan,
    read_frame,
    resubscribe_book,
    subscribe_requests,
    subscribed_depth,
)

DATA = Path(__file__).parent / "data"
MAX_BYTES = 1 << 20


def captured_frames(file: str) -> dict[str, bytes]:
    """A file of captured frames by the `### <source> <name>` line before each, each as its
    source wrote it (kraken-async-rs's by `<file>:<line> <name>`)."""
    frames: dict[str, bytes] = {}
    name = ""
    for line in (DATA / file).read_text().splitlines():
        if line.startswith("### "):
            name = line.removeprefix("### ")
            frames[name] = b""
        else:
            frames[name] += line.encode() + b"\n"
    return frames


FRAMES = captured_frames("kraken_v2_frames_2024-05.txt")


def at(frame_name: str) -> tuple[str, tuple]:
    return read_frame(FRAMES[frame_name], MAX_BYTES)


def us(year: int, month: int, day: int, hour: int, minute: int, second: int, micro: int) -> int:
    return calendar.timegm((year, month, day, hour, minute, second)) * 1_000_000 + micro


def test_trades_are_read_with_every_field_exact_and_the_snapshot_marked():
    assert at("src/wss/kraken_wss_client.rs:868 trade_snapshot") == ("trade", (
        KrakenTrade("BTC/USD", 70635251, "68466.9", "0.01919415", "sell", "market", us(2024, 5, 27, 12, 33, 10, 826003), True),
        KrakenTrade("BTC/USD", 70635252, "68471.2", "0.00007723", "buy", "limit", us(2024, 5, 27, 12, 33, 10, 980704), True),
    ))
    assert at("src/wss/kraken_wss_client.rs:909 trade_update") == ("trade", (
        KrakenTrade("BTC/USD", 70635299, "68500.0", "0.01044926", "buy", "limit", us(2024, 5, 27, 12, 43, 11, 798009), False),
        KrakenTrade("BTC/USD", 70635300, "68500.0", "0.00483192", "buy", "limit", us(2024, 5, 27, 12, 43, 11, 798009), False),
    ))


def test_quotes_keep_the_digits_kraken_wrote():
    assert at("src/wss/kraken_wss_client.rs:449 ticker_snapshot") == ("ticker", (
        KrakenQuote("BTC/USD", "65972.8", "0.10000000", "65972.9", "39.67506683", None),))
    assert at("src/wss/kraken_wss_client.rs:495 ticker_update") == ("ticker", (
        KrakenQuote("BTC/USD", "65843.7", "12.31628629", "65843.8", "0.31232000", None),))


def test_book_updates_keep_their_levels_in_order_with_zero_quantities():
    assert at("src/wss/kraken_wss_client.rs:625 book_update") == ("book", (BookMessage(
        "BTC/USD", False, (("66786.5", "0.00000000"), ("66784.5", "0.01470022"), ("66787.7", "0.12440000")), (),
        902440905, us(2024, 5, 19, 16, 45, 24, 204654)),))
    assert at("src/wss/messages/base_messages.rs:215 raw") == ("book", (BookMessage(
        "BTC/USD", False, (), (("66732.5", "5.48256063"),), 2855135483, us(2024, 5, 19, 16, 32, 26, 777454)),))


def test_instruments_give_each_pair_its_base_quote_and_precisions():
    assert at("src/wss/kraken_wss_client.rs:950 instrument_snapshot") == ("instrument", (Instruments((
        Instrument("EUR/USD", "EUR", "USD", 5, 8, "online"),
        Instrument("ETH/BTC", "ETH", "BTC", 5, 8, "online"),
    )),))


def test_control_frames_and_answers_to_requests():
    assert at("src/wss/kraken_wss_client.rs:307 heartbeat") == ("heartbeat", (Heartbeat(),))
    # a connection id past 2**63: a Python int, not an Avro long
    assert at("src/wss/kraken_wss_client.rs:308 status_update") == ("status", (SystemStatus("online", 12393906104898154338),))
    assert at("src/wss/messages/base_messages.rs:198 message") == ("status", (SystemStatus("maintenance", None),))
    assert at("src/test_data/wss_messages.rs:13 get_pong()") == ("pong", (RequestAnswered(1, "pong", None, None),))
    assert at("src/test_data/wss_messages.rs:82 get_ticker_subscription_response()") == (
        "subscribe", (RequestAnswered(42, "subscribe", "ticker", "BTC/USD"),))
    assert at("src/test_data/wss_messages.rs:105 get_book_subscription_response()") == (
        "subscribe", (RequestAnswered(11, "subscribe", "book", "BTC/USD"),))
    assert at("src/test_data/wss_messages.rs:200 get_instruments_subscription_response()") == (
        "subscribe", (RequestAnswered(0, "subscribe", "instrument", None),))


def test_refusals_say_why_and_which_symbol():
    assert at("src/wss/kraken_wss_client.rs:371 unsupported_event") == (
        "subscribe", (RequestRefused(0, "subscribe", "Unsupported event", None),))
    assert at("src/wss/messages/base_messages.rs:221 raw") == (
        "subscribe", (RequestRefused(42, "subscribe", "ESession:Invalid session", None),))
    assert at("src/wss/messages/base_messages.rs:240 raw") == (
        "subscribe", (RequestRefused(0, "subscribe", "Currency pair not supported WWW/USD", "WWW/USD"),))


def test_every_captured_frame_is_understood():
    for name, frame in FRAMES.items():
        _, items = read_frame(frame, MAX_BYTES)
        assert items and not any(isinstance(item, Rejected) for item in items), name


def test_kraken_documented_checksum_example():
    # Kraken's guide "spot-ws-book-v2", BTC/USD at price precision 1, quantity 8: the
    # strings it hashes and the checksum it gives.
    asks = [("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"), ("45289.6", "1.54560911"),
            ("45290.2", "0.15890660"), ("45291.8", "1.54553491"), ("45294.7", "0.04454749"), ("45296.1", "0.35380000"),
            ("45297.5", "0.09945542"), ("45299.5", "0.18772827")]
    bids = [("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"), ("45281.0", "0.10000000"),
            ("45280.3", "1.54592586"), ("45279.0", "0.07990000"), ("45277.6", "0.03310103"), ("45277.5", "0.30000000"),
            ("45277.3", "1.54602737"), ("45276.6", "0.15445238")]
    assert checksum(asks, bids, 1, 8) == 3310070434
    assert checksum(asks, [*bids[:9], ("45276.6", "0.15445239")], 1, 8) != 3310070434


def test_the_checksum_is_written_at_the_instruments_precision_not_as_relayed():
    # "4.0" relayed through a float is "4.00000000" on Kraken's wire
    assert checksum([("29430.2", "4.0")], [], 1, 8) == checksum([("29430.2", "4.00000000")], [], 1, 8)
    assert checksum([("29430.2", "4.0")], [], 1, 8) != checksum([("29430.2", "4.0")], [], 1, 6)


def data_frame(channel: str, item: object, kind: str = "update") -> bytes:
    return json.dumps({"channel": channel, "type": kind, "data": [item]}).encode()


TRADE = {"symbol": "BTC/USD", "side": "buy", "price": 68500.0, "qty": 0.01044926, "ord_type": "limit",
         "trade_id": 70635299, "timestamp": "2024-05-27T12:43:11.798009Z"}


@pytest.mark.parametrize(("change", "reason"), [
    ({"price": True}, WRONG_TYPE),
    ({"price": [1]}, WRONG_TYPE),
    ({"price": "abc"}, INVALID_DECIMAL),
    ({"price": "NaN"}, INVALID_DECIMAL),
    ({"price": 1e-05}, INVALID_DECIMAL),  # an exponent: Kraken writes its numbers out
    ({"price": " 1.5"}, INVALID_DECIMAL),
    ({"price": 0}, NON_POSITIVE_PRICE),
    ({"qty": -1}, NON_POSITIVE_QUANTITY),
    ({"qty": 0}, NON_POSITIVE_QUANTITY),
    ({"trade_id": -1}, ID_OUT_OF_RANGE),
    ({"trade_id": 2**63}, ID_OUT_OF_RANGE),
    ({"trade_id": "1"}, WRONG_TYPE),
    ({"side": "short"}, WRONG_TYPE),
    ({"timestamp": "yesterday"}, TIMESTAMP_OUT_OF_RANGE),
    ({"timestamp": "2024-05-27T12:43:11"}, TIMESTAMP_OUT_OF_RANGE),
    ({"timestamp": 1716813791}, WRONG_TYPE),
])
def test_a_bad_trade_is_refused_with_its_reason(change, reason):
    _, (item,) = read_frame(data_frame("trade", {**TRADE, **change}), MAX_BYTES)
    assert isinstance(item, Rejected) and item.reason == reason and item.stream == "kraken.trade", item


@pytest.mark.parametrize("field", ["symbol", "price", "qty", "trade_id", "side", "ord_type", "timestamp"])
def test_a_trade_without_a_field_is_refused_naming_it(field):
    trade = {name: value for name, value in TRADE.items() if name != field}
    _, (item,) = read_frame(data_frame("trade", trade), MAX_BYTES)
    assert item.reason == MISSING_FIELD and repr(field) in item.detail


def test_one_bad_trade_does_not_take_its_neighbours_with_it():
    frame = json.dumps({"channel": "trade", "type": "update", "data": [TRADE, {**TRADE, "qty": 0}, {**TRADE, "trade_id": 70635300}]})
    _, (first, bad, third) = read_frame(frame.encode(), MAX_BYTES)
    assert isinstance(first, KrakenTrade) and first.trade_id == 70635299
    assert isinstance(bad, Rejected) and bad.reason == NON_POSITIVE_QUANTITY
    assert isinstance(third, KrakenTrade) and third.trade_id == 70635300


BOOK = {"symbol": "BTC/USD", "bids": [{"price": 66786.5, "qty": 0.0}], "asks": [], "checksum": 902440905,
        "timestamp": "2024-05-19T16:45:24.204654Z"}


@pytest.mark.parametrize(("change", "reason"), [
    ({"checksum": 2**32}, WRONG_TYPE),
    ({"checksum": -1}, WRONG_TYPE),
    ({"checksum": "902440905"}, WRONG_TYPE),
    ({"bids": {"price": 1}}, WRONG_TYPE),
    ({"bids": [[66786.5, 0.0]]}, UNEXPECTED_SHAPE),
    ({"bids": [{"price": 66786.5}]}, MISSING_FIELD),
    ({"bids": [{"price": 0, "qty": 1}]}, NON_POSITIVE_PRICE),
    ({"asks": [{"price": 1, "qty": -0.5}]}, NON_POSITIVE_QUANTITY),
    ({"timestamp": None}, WRONG_TYPE),
])
def test_a_bad_book_message_is_refused_with_its_reason(change, reason):
    _, (item,) = read_frame(data_frame("book", {**BOOK, **change}), MAX_BYTES)
    assert isinstance(item, Rejected) and item.reason == reason and item.stream == "kraken.book", item


def test_a_snapshot_may_come_without_a_timestamp():
    book = {name: value for name, value in BOOK.items() if name != "timestamp"}
    _, (item,) = read_frame(data_frame("book", book, "snapshot"), MAX_BYTES)
    assert item == BookMessage("BTC/USD", True, (("66786.5", "0.0"),), (), 902440905, None)


@pytest.mark.parametrize(("frame", "reason"), [
    (b"not json", NOT_JSON),
    (b"[1, 2]", UNEXPECTED_SHAPE),
    (b'{"data": []}', MISSING_FIELD),
    (b'{"channel": "ohlc", "type": "update", "data": []}', UNKNOWN_EVENT),
    (b'{"channel": "trade", "type": "delta", "data": []}', UNEXPECTED_SHAPE),
    (b'{"channel": "trade", "type": "update", "data": {}}', UNEXPECTED_SHAPE),
    (b'{"channel": "trade", "type": "update", "data": [7]}', UNEXPECTED_SHAPE),
    (b'{"channel": "instrument", "type": "snapshot", "data": {"pairs": 7}}', UNEXPECTED_SHAPE),
    (b'{"channel": "status", "type": "update", "data": [{}]}', MISSING_FIELD),
    (b'{"channel": "status", "type": "update", "data": []}', UNEXPECTED_SHAPE),
])
def test_frames_that_are_no_event_are_refused(frame, reason):
    _, items = read_frame(frame, MAX_BYTES)
    assert [item.reason for item in items] == [reason]


def test_subscriptions_are_one_request_per_channel_and_symbol():
    requests = subscribe_requests(["BTC/USD", "ETH/USD"], ("trade", "ticker", "book"), 25, 7)
    assert [request_id for request_id, _ in requests] == list(range(7, 13))
    assert [json.loads(request) for _, request in requests] == [
        {"method": "subscribe", "params": {"channel": "trade", "symbol": [symbol], "snapshot": True}, "req_id": 7 + i}
        for i, symbol in enumerate(("BTC/USD", "ETH/USD"))] + [
        {"method": "subscribe", "params": {"channel": "ticker", "symbol": [symbol], "event_trigger": "bbo", "snapshot": True},
         "req_id": 9 + i} for i, symbol in enumerate(("BTC/USD", "ETH/USD"))] + [
        {"method": "subscribe", "params": {"channel": "book", "symbol": [symbol], "depth": 25, "snapshot": True}, "req_id": 11 + i}
        for i, symbol in enumerate(("BTC/USD", "ETH/USD"))]
    assert [json.loads(request) for _, request in resubscribe_book("ETH/USD", 10, 3)] == [
        {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10}, "req_id": 3},
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10, "snapshot": True}, "req_id": 4},
    ]
    assert [subscribed_depth(n) for n in (1, 10, 11, 20, 25, 26, 1000, 5000)] == [10, 10, 25, 25, 25, 100, 1000, 1000]


def test_a_connection_asks_for_the_instruments_first_then_each_channel_of_each_symbol():
    plan = connection_plan("wss://ws.kraken.com/v2", ["BTC/USD", "ETH/USD"], ("trade", "book"), 20)
    assert plan.url == "wss://ws.kraken.com/v2" and plan.interval == SUBSCRIBE_INTERVAL_SECONDS
    assert [request_id for request_id, _ in plan.requests] == [1, 2, 3, 4, 5]
    params = [json.loads(request)["params"] for _, request in plan.requests]
    assert params[0] == {"channel": "instrument", "snapshot": True}
    assert [(p["channel"], p["symbol"], p.get("depth")) for p in params[1:]] == [
        ("trade", ["BTC/USD"], None), ("trade", ["ETH/USD"], None), ("book", ["BTC/USD"], 25), ("book", ["ETH/USD"], 25)]


def test_a_malformed_instrument_pair_costs_only_itself():
    frame = json.dumps({"channel": "instrument", "type": "snapshot", "data": {"pairs": [
        {"symbol": "BTC/USD", "base": "BTC", "quote": "USD", "price_precision": 1, "qty_precision": 8, "status": "online"},
        {"symbol": "ETH/USD", "base": "ETH"}]}}).encode()
    _, (instruments, refused) = read_frame(frame, MAX_BYTES)
    assert instruments == Instruments((Instrument("BTC/USD", "BTC", "USD", 1, 8, "online"),))
    assert refused == Rejected(MISSING_FIELD, "instrument field 'quote' is missing", "instrument")
