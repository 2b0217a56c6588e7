import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2actors.core import binance, frames
from k2actors.core.binance import (
    ServerShutdown,
    SubscriptionError,
    SubscriptionReply,
    Trade,
    depth_snapshot,
    depth_update,
    parse_frame,
    quote_assets,
    read_frame,
    subscription_plan,
)
from k2actors.core.book import DepthDiff, DepthSnapshot
from k2actors.core.frames import ID_OUT_OF_RANGE, MISSING_FIELD, NOT_JSON, UNEXPECTED_SHAPE, WRONG_TYPE, Rejected
from k2actors.core.normalise import (
    MAX_CLOCK_DISTANCE_US,
    MESSAGE_ID_NAMESPACE,
    Delivery,
    exact_decimal,
    message_id,
    normalise_agg_trade,
    normalise_quote,
    normalise_trade,
    quote_currency,
    screen_event,
    shape_event,
)
from k2actors.core.subscriptions import SubscriptionPlan

LIMIT = 65536
TRADE = {"e": "trade", "E": 1700000000123, "s": "BTCUSDT", "t": 42, "p": "43210.12000000", "q": "0.00150000",
         "T": 1700000000120, "m": True, "M": True}


def envelope(data) -> bytes:
    return json.dumps({"stream": "btcusdt@trade", "data": data}).encode()


def test_combined_and_raw_payloads_parse_alike():
    expected = Trade("BTCUSDT", 42, "43210.12000000", "0.00150000", 1700000000120, 1700000000123, True, True)
    assert parse_frame(envelope(TRADE), LIMIT) == expected
    assert parse_frame(json.dumps(TRADE), LIMIT) == expected


def test_best_match_is_optional():
    assert parse_frame(envelope({k: v for k, v in TRADE.items() if k != "M"}), LIMIT).best_match is None


def test_control_messages():
    assert parse_frame(b'{"result": null, "id": 1}', LIMIT) == SubscriptionReply(1, None)
    assert parse_frame(b'{"result": ["btcusdt@trade"], "id": 2}', LIMIT) == SubscriptionReply(2, ["btcusdt@trade"])
    assert parse_frame(b'{"e": "serverShutdown", "E": 5}', LIMIT) == ServerShutdown(5)
    assert parse_frame(envelope({"e": "serverShutdown"}), LIMIT) == ServerShutdown(None)


# Answers captured from Binance's spot servers by others, byte for byte:
# - crypto-crawler/crypto-crawler-rs, crypto-msg-type/src/exchanges/binance.rs (commit 863a31d6): what spot
#   returned to a SUBSCRIBE without an id;
# - tongo-angelov/cointrack, lib/services/websocket_service.dart: the acknowledgement, and the answer to an
#   invalid stream, filtered from a stream.binance.com:9443 session;
# - ctubio/Krypto-trading-bot, issue 1121: the same answer in a user's session log;
# - ozakboy/Ozakboy.TradeKit.Binance, src/Ozakboy.TradeKit.Binance/MarketData/BinanceStreamCommands.cs: a
#   LIST_SUBSCRIPTIONS answer measured on Binance's testnet.
REAL_ANSWERS = [
    (b'{"error":{"code":2,"msg":"Invalid request: request ID must be an unsigned integer"}}',
     SubscriptionError(None, 2, "Invalid request: request ID must be an unsigned integer")),
    (b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}', SubscriptionError(1, 2, "Invalid request: invalid stream")),
    (b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}', SubscriptionError(2, 2, "Invalid request: invalid stream")),
    (b'{"result":null,"id":1}', SubscriptionReply(1, None)),
    (b'{"result":["btcusdt@kline_1m"],"id":2}', SubscriptionReply(2, ["btcusdt@kline_1m"])),
]


@pytest.mark.parametrize("raw, answer", REAL_ANSWERS)
def test_binances_real_answers_to_requests_are_understood(raw, answer):
    assert parse_frame(raw, LIMIT) == answer


@pytest.mark.parametrize(
    "raw, refusal",
    [  # the shapes of Binance's documented error replies
        (b'{"code": 0, "msg": "Unknown property", "id": 7}', SubscriptionError(7, 0, "Unknown property")),
        (b'{"code": 1, "msg": "Invalid value type: expected Boolean"}', SubscriptionError(None, 1, "Invalid value type: expected Boolean")),
        (b'{"error": {"code": 2, "msg": "Invalid request"}, "id": null}', SubscriptionError(None, 2, "Invalid request")),
    ],
)
def test_an_error_reply_is_a_refusal_with_the_venues_code_and_message(raw, refusal):
    assert parse_frame(raw, LIMIT) == refusal


@pytest.mark.parametrize("raw", [b'{"code": "2", "msg": "x"}', b'{"code": true, "msg": "x"}', b'{"code": 2}',
                                 b'{"error": {"code": 2}}', b'{"e": "trade", "code": 2, "msg": "x"}'])
def test_what_only_looks_like_an_error_reply_is_not_one(raw):
    assert isinstance(parse_frame(raw, LIMIT), Rejected)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"not json", frames.NOT_JSON),
        (b"\xff\xfe", frames.NOT_JSON),
        (b"", frames.NOT_JSON),
        (b"[1, 2]", frames.UNEXPECTED_SHAPE),
        (b'"text"', frames.UNEXPECTED_SHAPE),
        (b'{"stream": "x", "data": [1]}', frames.UNEXPECTED_SHAPE),
        (b'{"stream": "x", "data": {"s": "BTCUSDT"}}', frames.MISSING_FIELD),
        (b'{"e": "kline"}', frames.UNKNOWN_EVENT),
    ],
)
def test_frames_that_are_not_trades_are_rejected_with_a_reason(raw, reason):
    result = parse_frame(raw, LIMIT)
    assert isinstance(result, Rejected) and result.reason == reason and result.detail


@pytest.mark.parametrize("field", ["s", "t", "p", "q", "T", "E", "m"])
def test_each_missing_trade_field_is_named(field):
    result = parse_frame(envelope({k: v for k, v in TRADE.items() if k != field}), LIMIT)
    assert result.reason == frames.MISSING_FIELD and repr(field) in result.detail


@pytest.mark.parametrize(
    "field, value",
    [("s", 1), ("t", "42"), ("t", True), ("t", 1.5), ("p", 43210.12), ("q", None), ("T", "x"), ("E", []), ("m", "true"), ("M", 1)],
)
def test_each_mistyped_trade_field_is_named(field, value):
    result = parse_frame(envelope({**TRADE, field: value}), LIMIT)
    assert result.reason == frames.WRONG_TYPE and repr(field) in result.detail


DELIVERY = Delivery("BINANCE", "wss://stream.binance.com:9443/stream", 1700000000200123)


def test_normalised_record_field_for_field():
    record = normalise_trade(parse_frame(envelope(TRADE), LIMIT), DELIVERY, {})
    assert record == {
        "message_id": str(uuid.uuid5(uuid.UUID("6f1c2a55-0b0e-5d8f-9a43-8f3c1b2d4e70"), "BINANCE:BTCUSDT:42")),
        "trade_id": "BINANCE-42",
        "symbol": "BTCUSDT",
        "exchange": "BINANCE",
        "asset_class": "crypto",
        "timestamp": 1700000000120000,
        "price": Decimal("43210.12000000"),
        "quantity": Decimal("0.00150000"),
        "currency": "USDT",
        "side": "SELL",
        "trade_conditions": [],
        "source_sequence": 42,
        "platform_sequence": None,
        "ingestion_timestamp": 1700000000200123,
        "vendor_data": {"event_time": "1700000000123", "is_buyer_maker": "true", "is_best_match": "true",
                        "endpoint": "wss://stream.binance.com:9443/stream"},
    }


def test_buyer_taker_is_a_buy_and_venue_labels_the_trade():
    trade = parse_frame(envelope({**TRADE, "m": False}), LIMIT)
    record = normalise_trade(trade, Delivery("BINANCEUS", "wss://stream.binance.us:9443/stream", 1), {})
    assert (record["side"], record["exchange"], record["trade_id"]) == ("BUY", "BINANCEUS", "BINANCEUS-42")
    assert record["message_id"] != message_id("BINANCE", "BTCUSDT", 42)


def test_message_id_is_deterministic_and_distinct():
    assert message_id("BINANCE", "BTCUSDT", 1) == message_id("BINANCE", "BTCUSDT", 1)
    assert len({message_id("BINANCE", s, t) for s in ("BTCUSDT", "ETHUSDT") for t in range(100)}) == 200


@given(st.sampled_from(["BINANCE", "BINANCEUS"]), st.text(min_size=1, max_size=20), st.integers(min_value=0, max_value=2**63),
       st.sampled_from(["", "aggTrade", "bookTicker"]))
def test_message_id_is_the_uuid5_of_its_name(venue, symbol, event_id, stream):
    name = f"{venue}:{symbol}:{event_id}" if not stream else f"{venue}:{symbol}:{stream}:{event_id}"
    assert message_id(venue, symbol, event_id, stream) == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, name))


@pytest.mark.parametrize(
    "symbol, known, currency",
    [("BTCUSDT", {}, "USDT"), ("ETHBTC", {}, "BTC"), ("BTCFDUSD", {}, "FDUSD"), ("BTCTUSD", {}, "TUSD"),
     ("BNBEUR", {}, "EUR"), ("XYZ", {}, "UNKNOWN"), ("USDT", {}, "UNKNOWN"), ("ABCUSD", {"ABCUSD": "USDX"}, "USDX")],
)
def test_quote_currency(symbol, known, currency):
    assert quote_currency(symbol, known) == currency


@pytest.mark.parametrize(
    "answer, expected",
    [
        ({"symbols": [{"symbol": "BTCEURI", "quoteAsset": "EURI"}, {"symbol": "ETHBTC", "quoteAsset": "BTC"}]},
         {"BTCEURI": "EURI", "ETHBTC": "BTC"}),
        ({"symbols": [{"symbol": "BTCEURI"}, "junk", {"symbol": 5, "quoteAsset": "X"}, {"symbol": "A", "quoteAsset": "B"}]},
         {"A": "B"}),
        ({"code": -1121, "msg": "Invalid symbol."}, {}),
        ([1, 2], {}),
        (None, {}),
    ],
)
def test_quote_assets_from_exchange_info(answer, expected):
    assert quote_assets(answer) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("0.00000001", Decimal("0.00000001")), ("1", Decimal("1.00000000")), ("9999999999.99999999", Decimal("9999999999.99999999")),
     ("43210.12000000", Decimal("43210.12")), ("1.000000000", Decimal("1"))],
)
def test_exact_decimals_fit_the_schema(text, expected):
    value = exact_decimal(text, "price", frames.NON_POSITIVE_PRICE)
    assert value == expected and value.as_tuple().exponent == -8


@pytest.mark.parametrize(
    "text, reason",
    [("abc", frames.INVALID_DECIMAL), ("", frames.INVALID_DECIMAL), ("NaN", frames.NON_FINITE_NUMBER),
     ("Infinity", frames.NON_FINITE_NUMBER), ("-Infinity", frames.NON_FINITE_NUMBER), ("sNaN", frames.NON_FINITE_NUMBER),
     ("0.000000001", frames.DECIMAL_OUT_OF_RANGE), ("10000000000", frames.DECIMAL_OUT_OF_RANGE),
     ("1e30", frames.INVALID_DECIMAL), ("1e-30", frames.INVALID_DECIMAL), ("1_000", frames.INVALID_DECIMAL),
     (" 1", frames.INVALID_DECIMAL), ("\u0661", frames.INVALID_DECIMAL), ("1.", frames.INVALID_DECIMAL),
     ("0", frames.NON_POSITIVE_PRICE), ("0.00000000", frames.NON_POSITIVE_PRICE), ("-0", frames.NON_POSITIVE_PRICE),
     ("-1.5", frames.NON_POSITIVE_PRICE)],
)
def test_decimals_that_cannot_be_stored_exactly_are_rejected(text, reason):
    result = exact_decimal(text, "price", frames.NON_POSITIVE_PRICE)
    assert isinstance(result, Rejected) and result.reason == reason and "price" in result.detail


def test_bad_quantity_rejects_the_trade():
    result = normalise_trade(parse_frame(envelope({**TRADE, "q": "1.123456789"}), LIMIT), DELIVERY, {})
    assert isinstance(result, Rejected) and result.reason == frames.DECIMAL_OUT_OF_RANGE and "quantity" in result.detail


def test_a_few_symbols_are_requested_in_the_url():
    plan = binance.subscription_plan("wss://x/stream", ("BTCUSDT", "ETHUSDT"))
    assert plan == SubscriptionPlan("wss://x/stream?streams=btcusdt@trade/ethusdt@trade", (), binance.SUBSCRIBE_INTERVAL_SECONDS)


def test_many_symbols_are_subscribed_in_spaced_messages_within_the_limits():
    symbols = tuple(f"S{i:04d}USDT" for i in range(2100))
    plans = binance.connection_plans("wss://x/stream", symbols)
    assert len(plans) == 3  # 1024 + 1024 + 52
    subscribed = []
    for plan in plans:
        assert len(plan.url) <= binance.MAX_URL_LENGTH
        params = [json.loads(message)["params"] for _, message in plan.requests] or [
            plan.url.split("streams=")[1].split("/")
        ]
        assert sum(map(len, params)) <= binance.MAX_STREAMS_PER_CONNECTION
        assert all(json.loads(m)["method"] == "SUBSCRIBE" and json.loads(m)["id"] == i for i, m in plan.requests)
        subscribed += [stream for group in params for stream in group]
    assert subscribed == [f"{s.lower()}@trade" for s in symbols]
    ids = [request_id for plan in plans for request_id, _ in plan.requests]
    assert ids == list(range(1, len(ids) + 1))  # unique across the connections: an answer names only its id
    assert 1 / binance.SUBSCRIBE_INTERVAL_SECONDS < 5  # control messages stay under 5 per second


def test_a_frame_over_the_limit_is_rejected_before_parsing():
    raw = envelope({**TRADE, "padding": "x" * 1000})
    assert parse_frame(raw, len(raw)) == parse_frame(envelope({**TRADE, "padding": "x" * 1000}), LIMIT)
    rejected = parse_frame(raw, len(raw) - 1)
    assert rejected.reason == frames.FRAME_TOO_LARGE and f"{len(raw)} bytes" in rejected.detail


@pytest.mark.parametrize(
    "field, value, reason",
    [("p", "-43210.12", frames.NON_POSITIVE_PRICE), ("p", "0", frames.NON_POSITIVE_PRICE),
     ("p", "NaN", frames.NON_FINITE_NUMBER), ("q", "Infinity", frames.NON_FINITE_NUMBER),
     ("q", "0.00000000", frames.NON_POSITIVE_QUANTITY), ("q", "-1", frames.NON_POSITIVE_QUANTITY)],
)
def test_prices_and_quantities_must_be_finite_and_above_zero(field, value, reason):
    result = normalise_trade(parse_frame(envelope({**TRADE, field: value}), LIMIT), DELIVERY, {})
    assert isinstance(result, Rejected) and result.reason == reason


@pytest.mark.parametrize("trade_id", [-1, 2**63, 10**30])
def test_trade_ids_outside_an_avro_long_are_rejected(trade_id):
    result = parse_frame(envelope({**TRADE, "t": trade_id}), LIMIT)
    assert isinstance(result, Rejected) and result.reason == frames.ID_OUT_OF_RANGE


def test_the_largest_avro_long_is_a_valid_trade_id():
    assert parse_frame(envelope({**TRADE, "t": 2**63 - 1}), LIMIT).trade_id == 2**63 - 1


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("raw", [nested(frames.MAX_JSON_DEPTH + 1), nested(1_000), nested(30_000),
                                 envelope({**TRADE, "x": json.loads(nested(frames.MAX_JSON_DEPTH))})])
def test_deeply_nested_json_is_rejected(raw):
    result = parse_frame(raw, LIMIT)
    assert isinstance(result, Rejected) and result.reason == frames.TOO_DEEPLY_NESTED


def test_brackets_inside_strings_do_not_count_as_nesting():
    assert isinstance(parse_frame(envelope({**TRADE, "x": "[[[[[[[[[[{{{{{{{{{{"}), LIMIT), Trade)


SUBSCRIBED = frozenset({"BTCUSDT"})
TRADE_US = TRADE["T"] * 1000


def test_a_trade_of_a_symbol_not_subscribed_is_rejected():
    trade = parse_frame(envelope({**TRADE, "s": "DOGEUSDT"}), LIMIT)
    assert screen_event(trade, SUBSCRIBED, TRADE_US).reason == frames.UNSUBSCRIBED_SYMBOL
    assert screen_event(parse_frame(envelope(TRADE), LIMIT), SUBSCRIBED, TRADE_US) is None


@pytest.mark.parametrize("distance_us, accepted", [
    (0, True), (MAX_CLOCK_DISTANCE_US, True), (-MAX_CLOCK_DISTANCE_US, True),
    (MAX_CLOCK_DISTANCE_US + 1000, False), (-MAX_CLOCK_DISTANCE_US - 1000, False),
])
def test_trade_times_far_from_receipt_are_rejected(distance_us, accepted):
    trade = parse_frame(envelope(TRADE), LIMIT)
    verdict = screen_event(trade, SUBSCRIBED, TRADE_US + distance_us)
    assert (verdict is None) == accepted
    assert accepted or verdict.reason == frames.TIMESTAMP_OUT_OF_RANGE


def test_a_streamed_event_is_screened_and_rest_history_is_not():
    old = parse_frame(envelope(TRADE), LIMIT)
    late = Delivery("BINANCE", "wss://x/stream", TRADE_US + 2 * MAX_CLOCK_DISTANCE_US)
    streamed = shape_event(old, late, {}, SUBSCRIBED)
    assert (streamed.reason, streamed.stream) == (frames.TIMESTAMP_OUT_OF_RANGE, binance.TRADE)
    stream, record = shape_event(old, late, {}, None)
    assert (stream, record["source_sequence"]) == (binance.TRADE, 42)


def test_a_rejection_from_shaping_names_its_stream():
    rejected = shape_event(parse_frame(envelope({**TRADE, "p": "0"}), LIMIT), Delivery("BINANCE", "wss://x", TRADE_US), {}, SUBSCRIBED)
    assert (rejected.reason, rejected.stream) == (frames.NON_POSITIVE_PRICE, binance.TRADE)


def test_every_dlq_reason_is_documented():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    reasons = (*frames.EXCHANGE_REASONS, frames.INTERNAL_ERROR, frames.SERIALIZATION_FAILED, frames.POISON_MESSAGE)
    assert [reason for reason in reasons if f"`{reason}`" not in readme] == []


AGG = {"e": "aggTrade", "E": 1700000000123, "s": "BTCUSDT", "a": 77, "p": "43210.12", "q": "0.50000000",
       "f": 100, "l": 105, "T": 1700000000120, "m": False, "M": True}
BOOK = {"u": 400900217, "s": "BNBUSDT", "b": "25.35190000", "B": "31.21000000", "a": "25.36520000", "A": "40.66000000"}


def test_aggregate_trades_parse_and_become_trade_records_with_their_trade_range():
    frame = json.dumps({"stream": "btcusdt@aggTrade", "data": AGG})
    agg = parse_frame(frame, LIMIT)
    assert agg == binance.AggTrade("BTCUSDT", 77, "43210.12", "0.50000000", 100, 105, 1700000000120, 1700000000123, False, True)
    record = normalise_agg_trade(agg, DELIVERY, {})
    assert (record["trade_id"], record["source_sequence"], record["side"]) == ("BINANCE-AGG-77", 77, "BUY")
    assert record["vendor_data"]["first_trade_id"] == "100" and record["vendor_data"]["last_trade_id"] == "105"
    assert record["vendor_data"]["stream"] == "aggTrade"
    assert record["message_id"] != message_id("BINANCE", "BTCUSDT", 77)  # never a trade's id


def test_book_tickers_parse_from_combined_and_raw_streams_and_become_quotes():
    expected = binance.BookTicker("BNBUSDT", 400900217, "25.35190000", "31.21000000", "25.36520000", "40.66000000")
    assert parse_frame(json.dumps({"stream": "bnbusdt@bookTicker", "data": BOOK}), LIMIT) == expected
    assert parse_frame(json.dumps(BOOK), LIMIT) == expected
    record = normalise_quote(expected, DELIVERY, {})
    assert record["quote_id"] == "BINANCE-400900217" and record["source_sequence"] == 400900217
    assert (record["bid_price"], record["ask_quantity"]) == (Decimal("25.3519"), Decimal("40.66"))
    assert record["timestamp"] == DELIVERY.received_us and record["currency"] == "USDT"
    assert "side" not in record and "trade_conditions" not in record


@pytest.mark.parametrize(
    "frame, reason, stream",
    [
        ({"stream": "btcusdt@aggTrade", "data": {**AGG, "f": 106}}, frames.INVALID_TRADE_RANGE, "aggTrade"),
        ({"stream": "btcusdt@aggTrade", "data": {**AGG, "a": "77"}}, frames.WRONG_TYPE, "aggTrade"),
        ({"stream": "btcusdt@aggTrade", "data": {k: v for k, v in AGG.items() if k != "l"}}, frames.MISSING_FIELD, "aggTrade"),
        ({"stream": "bnbusdt@bookTicker", "data": {k: v for k, v in BOOK.items() if k != "A"}}, frames.MISSING_FIELD, "bookTicker"),
        ({"stream": "bnbusdt@bookTicker", "data": {**BOOK, "u": -5}}, frames.ID_OUT_OF_RANGE, "bookTicker"),
        ({"stream": "bnbusdt@bookTicker", "data": [1]}, frames.UNEXPECTED_SHAPE, "bookTicker"),
        ({"stream": "btcusdt@trade", "data": {**TRADE, "p": 5}}, frames.WRONG_TYPE, "trade"),
        ({"stream": "btcusdt@kline", "data": {"e": "kline"}}, frames.UNKNOWN_EVENT, "unknown"),
    ],
)
def test_rejections_name_the_stream_they_came_on(frame, reason, stream):
    rejected = parse_frame(json.dumps(frame), LIMIT)
    assert (rejected.reason, rejected.stream) == (reason, stream)


@pytest.mark.parametrize(
    "fields, reason",
    [({"b": "25.4", "a": "25.3"}, frames.CROSSED_QUOTE), ({"B": "0"}, frames.NON_POSITIVE_QUANTITY),
     ({"a": "-1"}, frames.NON_POSITIVE_PRICE), ({"b": "NaN"}, frames.NON_FINITE_NUMBER)],
)
def test_quotes_that_cannot_be_true_are_rejected(fields, reason):
    book = parse_frame(json.dumps({**BOOK, **fields}), LIMIT)
    assert normalise_quote(book, DELIVERY, {}).reason == reason


def test_a_locked_quote_is_a_quote():
    assert isinstance(normalise_quote(parse_frame(json.dumps({**BOOK, "a": BOOK["b"]}), LIMIT), DELIVERY, {}), dict)


def test_a_symbols_streams_share_a_connection_within_the_limit():
    symbols = tuple(f"S{i:04d}USDT" for i in range(700))
    plans = binance.connection_plans("wss://x/stream", symbols, ("trade", "aggTrade", "bookTicker"))
    assert len(plans) == 3  # 341 symbols (1023 streams) per connection
    streams = [
        stream
        for plan in plans
        for stream in ([s for _, m in plan.requests for s in json.loads(m)["params"]]
                       or plan.url.split("streams=")[1].split("/"))
    ]
    assert all(len(plan.url) <= binance.MAX_URL_LENGTH for plan in plans)
    assert len(streams) == 2100 and streams[:3] == ["s0000usdt@trade", "s0000usdt@aggTrade", "s0000usdt@bookTicker"]


# Binance's documented depthUpdate payload and depth answer (spot API docs).
DEPTH_UPDATE = {"e": "depthUpdate", "E": 1672515782136, "s": "BNBBTC", "U": 157, "u": 160,
                "b": [["0.0024", "10"]], "a": [["0.0026", "100"]]}


def test_a_depth_update_reads_as_a_diff_of_its_book():
    assert depth_update(DEPTH_UPDATE, 99) == DepthDiff("BNBBTC", 157, 160, 1672515782136, 99, (("0.0024", "10"),),
                                                        (("0.0026", "100"),))


@pytest.mark.parametrize("change, reason", [
    ({"U": 161}, ID_OUT_OF_RANGE),  # U after u
    ({"u": -1, "U": -2}, ID_OUT_OF_RANGE),
    ({"b": [["0.0024"]]}, WRONG_TYPE),  # a level without its quantity
    ({"a": [["0.0026", 100]]}, WRONG_TYPE),  # a quantity as a number, not Binance's string
    ({"b": "0.0024"}, WRONG_TYPE),
    ({"s": None}, WRONG_TYPE),
])
def test_a_depth_update_that_is_not_one_says_why(change, reason):
    rejected = depth_update({**DEPTH_UPDATE, **change}, 0)
    assert isinstance(rejected, Rejected) and rejected.reason == reason


def test_a_depth_update_without_its_update_ids_is_missing_a_field():
    payload = {key: value for key, value in DEPTH_UPDATE.items() if key != "U"}
    rejected = depth_update(payload, 0)
    assert isinstance(rejected, Rejected) and (rejected.reason, rejected.detail) == (MISSING_FIELD, "book field 'U' is missing")
    assert rejected.stream == binance.BOOK


def test_the_diff_stream_is_the_book_stream_type():
    frame = json.dumps({"stream": "bnbbtc@depth@100ms", "data": DEPTH_UPDATE})
    assert read_frame(frame, 65536) == ("bnbbtc@depth@100ms", depth_update(DEPTH_UPDATE, 0))
    broken = read_frame(json.dumps({"stream": "bnbbtc@depth@100ms", "data": {**DEPTH_UPDATE, "b": 1}}), 65536)[1]
    assert isinstance(broken, Rejected) and (broken.reason, broken.stream) == (WRONG_TYPE, binance.BOOK)
    assert subscription_plan("wss://x/stream", ("BNBBTC",), (binance.TRADE, binance.BOOK)).url == "wss://x/stream?streams=bnbbtc@trade/bnbbtc@depth@100ms"


def test_a_depth_answer_reads_as_a_snapshot():
    body = b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}'
    assert depth_snapshot(body, "BNBBTC", 100) == DepthSnapshot("BNBBTC", 1027024, (("4.00000000", "431.00000000"),),
                                                           (("4.00000200", "12.00000000"),), 100)


@pytest.mark.parametrize("body, reason", [
    (b"<html>busy</html>", NOT_JSON),
    (b"[]", UNEXPECTED_SHAPE),
    (b'{"bids":[],"asks":[]}', MISSING_FIELD),
    (b'{"lastUpdateId":"1","bids":[],"asks":[]}', WRONG_TYPE),
    (b'{"lastUpdateId":1,"bids":[["1.0"]],"asks":[]}', WRONG_TYPE),
])
def test_a_depth_answer_that_is_not_one_says_why(body, reason):
    rejected = depth_snapshot(body, "BNBBTC", 100)
    assert isinstance(rejected, Rejected) and rejected.reason == reason
