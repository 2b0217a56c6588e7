"""Parse raw Binance stream frames into typed events, or say exactly why not.

Accepts the combined-stream envelope `{"stream": ..., "data": {...}}` and the raw
`/ws/<stream>` payload alike. Nothing here raises on bad input: every frame becomes a
Trade, a control event, or a Rejected carrying a DLQ reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from k2actors.core.book import DepthDiff, DepthSnapshot, Level
from k2actors.core.frames import (
    ID_OUT_OF_RANGE,
    INVALID_TRADE_RANGE,
    MAX_TRADE_ID,
    MISSING_FIELD,
    UNEXPECTED_SHAPE,
    UNKNOWN_EVENT,
    UNKNOWN_STREAM,
    WRONG_TYPE,
    Rejected,
    load_object,
    load_rows,
)
from k2actors.core.subscriptions import SubscriptionPlan

# The stream types a connection can subscribe to (`binance.streams`; k2actors.core.streams
# says how each is kept); a frame whose type cannot be told is labelled UNKNOWN_STREAM. BOOK
# is the order book, kept from the diff stream and REST snapshots (k2actors.core.book).
TRADE, AGG_TRADE, BOOK_TICKER, BOOK = "trade", "aggTrade", "bookTicker", "book"
SUBSCRIBABLE = (TRADE, AGG_TRADE, BOOK_TICKER, BOOK)
# What a stream type is called in a subscription (`<symbol>@<name>`), where that is not its own name.
SUBSCRIBED_AS = {BOOK: "depth@100ms"}



@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    trade_id: int
    price: str
    quantity: str
    trade_time_ms: int
    event_time_ms: int
    buyer_is_maker: bool
    best_match: bool | None


@dataclass(frozen=True, slots=True)
class AggTrade:
    symbol: str
    agg_id: int
    price: str
    quantity: str
    first_trade_id: int
    last_trade_id: int
    trade_time_ms: int
    event_time_ms: int
    buyer_is_maker: bool
    best_match: bool | None


@dataclass(frozen=True, slots=True)
class BookTicker:
    """Best bid and ask. Binance's spot bookTicker carries no time: the receipt time stands in."""

    symbol: str
    update_id: int
    bid_price: str
    bid_quantity: str
    ask_price: str
    ask_quantity: str


@dataclass(frozen=True, slots=True)
class SubscriptionReply:
    """The answer to a SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS request."""

    request_id: object
    result: object


@dataclass(frozen=True, slots=True)
class SubscriptionError:
    """Binance refused a request (SUBSCRIBE, ...): its own code and message, and the request's
    id when it could read one."""

    request_id: object
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """Binance warns that this connection will be closed for maintenance."""

    event_time_ms: int | None


Event = Trade | AggTrade | BookTicker | DepthDiff | SubscriptionReply | SubscriptionError | ServerShutdown | Rejected

# (field, accepted type, description) per payload; bool is excluded from ints below.
_TRADE_FIELDS = (
    ("s", str, "a string"),
    ("t", int, "an integer"),
    ("p", str, "a decimal string"),
    ("q", str, "a decimal string"),
    ("T", int, "an integer"),
    ("E", int, "an integer"),
    ("m", bool, "a boolean"),
)
_AGG_TRADE_FIELDS = (
    ("s", str, "a string"),
    ("a", int, "an integer"),
    ("p", str, "a decimal string"),
    ("q", str, "a decimal string"),
    ("f", int, "an integer"),
    ("l", int, "an integer"),
    ("T", int, "an integer"),
    ("E", int, "an integer"),
    ("m", bool, "a boolean"),
)
_BOOK_TICKER_FIELDS = (
    ("u", int, "an integer"),
    ("s", str, "a string"),
    ("b", str, "a decimal string"),
    ("B", str, "a decimal string"),
    ("a", str, "a decimal string"),
    ("A", str, "a decimal string"),
)


def parse_frame(raw: bytes | str, max_bytes: int) -> Event:
    return read_frame(raw, max_bytes)[1]


def read_frame(raw: bytes | str, max_bytes: int) -> tuple[str | None, Event]:
    """The frame's stream as the venue names it (the combined stream's envelope, None for a
    frame without one), and what the frame says."""
    message = load_object(raw, max_bytes)
    if isinstance(message, Rejected):
        return None, message
    name = message.get("stream")
    stream_name = name[:200] if isinstance(name, str) else None
    return stream_name, _event(message)


def _event(message: dict) -> Event:
    if "result" in message and "id" in message:
        return SubscriptionReply(message["id"], message["result"])
    refusal = _error_reply(message)
    if refusal is not None:
        return refusal
    payload = message["data"] if "stream" in message and "data" in message else message
    stream = _stream_type(message.get("stream"), payload)
    if not isinstance(payload, dict):
        return Rejected(UNEXPECTED_SHAPE, f"data is {type(payload).__name__}, not an object", stream)
    event_type = payload.get("e")
    if stream == TRADE:
        return _trade(payload)
    if stream == AGG_TRADE:
        return _agg_trade(payload)
    if stream == BOOK_TICKER:
        return _book_ticker(payload)
    if stream == BOOK:
        return depth_update(payload, 0)
    if event_type == "serverShutdown":
        event_time = payload.get("E")
        return ServerShutdown(event_time if isinstance(event_time, int) else None)
    if event_type is None:
        return Rejected(MISSING_FIELD, "no event type 'e'")
    return Rejected(UNKNOWN_EVENT, f"event type {str(event_type)[:50]!r}")


def _error_reply(message: dict) -> SubscriptionError | None:
    """Binance refuses a request with `{"code": 2, "msg": "...", "id": 1}`, or, seen from its
    spot servers when the request had no usable id, `{"error": {"code": 2, "msg": "..."}}`.
    A market data event never has these fields."""
    nested = message.get("error")
    body = nested if isinstance(nested, dict) else message
    code, text = body.get("code"), body.get("msg")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(text, str) or "e" in message or "data" in message:
        return None
    return SubscriptionError(message.get("id"), code, text)


def _stream_type(stream_name: object, payload: object) -> str:
    """Trades say what they are in `e`; a bookTicker payload has no `e`, so its stream name
    (combined streams) or its fields (raw streams) tell."""
    event_type = payload.get("e") if isinstance(payload, dict) else None
    if event_type in (TRADE, AGG_TRADE):
        return event_type
    if event_type == DEPTH_UPDATE:
        return BOOK
    if isinstance(stream_name, str) and stream_name.endswith("@" + BOOK_TICKER):
        return BOOK_TICKER
    if event_type is None and isinstance(payload, dict) and "u" in payload and "b" in payload and "a" in payload:
        return BOOK_TICKER
    return UNKNOWN_STREAM


def _fields(payload: dict, fields: tuple, stream: str, id_field: str) -> Rejected | None:
    """Every field present with its type, the id an Avro long, and `M`, if sent, a boolean."""
    for name, kind, description in fields:
        if name not in payload:
            return Rejected(MISSING_FIELD, f"{stream} field {name!r} is missing", stream)
        value = payload[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return Rejected(WRONG_TYPE, f"{stream} field {name!r} is {type(value).__name__}, expected {description}", stream)
    if not 0 <= payload[id_field] <= MAX_TRADE_ID:
        return Rejected(ID_OUT_OF_RANGE, f"{stream} id {str(payload[id_field])[:40]} is outside 0..{MAX_TRADE_ID}", stream)
    if payload.get("M") is not None and not isinstance(payload["M"], bool):
        return Rejected(WRONG_TYPE, f"{stream} field 'M' is {type(payload['M']).__name__}, expected a boolean", stream)
    return None


def _trade(payload: dict) -> Trade | Rejected:
    return _fields(payload, _TRADE_FIELDS, TRADE, "t") or Trade(
        symbol=payload["s"],
        trade_id=payload["t"],
        price=payload["p"],
        quantity=payload["q"],
        trade_time_ms=payload["T"],
        event_time_ms=payload["E"],
        buyer_is_maker=payload["m"],
        best_match=payload.get("M"),
    )


def _agg_trade(payload: dict) -> AggTrade | Rejected:
    rejected = _fields(payload, _AGG_TRADE_FIELDS, AGG_TRADE, "a")
    if rejected is None and not 0 <= payload["f"] <= payload["l"] <= MAX_TRADE_ID:
        rejected = Rejected(INVALID_TRADE_RANGE, f"trade ids {payload['f']} to {payload['l']} are not a range of ids", AGG_TRADE)
    return rejected or AggTrade(
        symbol=payload["s"],
        agg_id=payload["a"],
        price=payload["p"],
        quantity=payload["q"],
        first_trade_id=payload["f"],
        last_trade_id=payload["l"],
        trade_time_ms=payload["T"],
        event_time_ms=payload["E"],
        buyer_is_maker=payload["m"],
        best_match=payload.get("M"),
    )


def _book_ticker(payload: dict) -> BookTicker | Rejected:
    return _fields(payload, _BOOK_TICKER_FIELDS, BOOK_TICKER, "u") or BookTicker(
        symbol=payload["s"],
        update_id=payload["u"],
        bid_price=payload["b"],
        bid_quantity=payload["B"],
        ask_price=payload["a"],
        ask_quantity=payload["A"],
    )


# (field, accepted type, description) for a row of GET /api/v3/historicalTrades.
_HISTORY_FIELDS = (
    ("id", int, "an integer"),
    ("price", str, "a decimal string"),
    ("qty", str, "a decimal string"),
    ("time", int, "an integer"),
    ("isBuyerMaker", bool, "a boolean"),
)


def historical_trades(body: bytes, symbol: str) -> Sequence[tuple[object, Trade | Rejected]] | Rejected:
    """Each row of a historicalTrades answer with its Trade (event time = trade time) or why
    not, or why the whole answer is unusable."""
    rows = load_rows(body, "historicalTrades")
    return rows if isinstance(rows, Rejected) else [(row, _history_row(row, symbol)) for row in rows]


def historical_agg_trades(body: bytes, symbol: str) -> Sequence[tuple[object, AggTrade | Rejected]] | Rejected:
    """Each row of an aggTrades answer (the stream's fields without `e`, `E` and `s`) with its
    AggTrade (event time = trade time) or why not, or why the whole answer is unusable."""
    rows = load_rows(body, "aggTrades")
    if isinstance(rows, Rejected):
        return rows
    return [(row, _agg_trade({**row, "e": AGG_TRADE, "E": row.get("T"), "s": symbol}) if isinstance(row, dict) else
             Rejected(UNEXPECTED_SHAPE, f"an aggTrades row is {type(row).__name__}, not an object", AGG_TRADE)) for row in rows]


def _history_row(row: object, symbol: str) -> Trade | Rejected:
    if not isinstance(row, dict):
        return Rejected(UNEXPECTED_SHAPE, f"a historicalTrades row is {type(row).__name__}, not an object", TRADE)
    rejected = _fields(row, _HISTORY_FIELDS, TRADE, "id")
    if rejected is not None:
        return rejected
    best_match = row.get("isBestMatch")
    return Trade(
        symbol=symbol,
        trade_id=row["id"],
        price=row["price"],
        quantity=row["qty"],
        trade_time_ms=row["time"],
        event_time_ms=row["time"],
        buyer_is_maker=row["isBuyerMaker"],
        best_match=best_match if isinstance(best_match, bool) else None,
    )


DEPTH_UPDATE = "depthUpdate"  # the event type of the diff stream
DEPTH_PATH = "/api/v3/depth"  # where a snapshot of a book is served
# The request weight of a depth snapshot by its limit (levels per side), as Binance's spot
# REST documentation gives it: (highest limit, weight), ascending; 5000 levels at most.
DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))
MAX_DEPTH_LIMIT = DEPTH_WEIGHTS[-1][0]


def depth_weight(limit: int) -> int:
    return next(weight for highest, weight in DEPTH_WEIGHTS if limit <= highest)


_DEPTH_FIELDS = (
    ("s", str, "a string"),
    ("U", int, "an integer"),
    ("u", int, "an integer"),
    ("E", int, "an integer"),
    ("b", list, "a list of levels"),
    ("a", list, "a list of levels"),
)
_SNAPSHOT_FIELDS = (
    ("lastUpdateId", int, "an integer"),
    ("bids", list, "a list of levels"),
    ("asks", list, "a list of levels"),
)


def depth_update(payload: dict, recv_ts_ns: int) -> DepthDiff | Rejected:
    """A `depthUpdate` event (the payload of `<symbol>@depth@100ms`) as a diff of its book."""
    rejected = _fields(payload, _DEPTH_FIELDS, BOOK, "u")
    if rejected is not None:
        return rejected
    if not 0 <= payload["U"] <= payload["u"]:
        return Rejected(ID_OUT_OF_RANGE, f"update ids {payload['U']} to {payload['u']} are not a range of ids", BOOK)
    sides = _sides(payload["b"], payload["a"], BOOK)
    if isinstance(sides, Rejected):
        return sides
    return DepthDiff(payload["s"], payload["U"], payload["u"], payload["E"], recv_ts_ns, *sides)


def depth_snapshot(body: bytes, symbol: str, limit: int) -> DepthSnapshot | Rejected:
    """A `GET /api/v3/depth` answer as a snapshot of `symbol`'s book, asked with `limit` levels per side."""
    answer = load_object(body, len(body))
    if isinstance(answer, Rejected):
        return answer
    rejected = _fields(answer, _SNAPSHOT_FIELDS, BOOK, "lastUpdateId")
    if rejected is not None:
        return rejected
    sides = _sides(answer["bids"], answer["asks"], BOOK)
    if isinstance(sides, Rejected):
        return sides
    return DepthSnapshot(symbol, answer["lastUpdateId"], *sides, limit)


def _sides(bids: list, asks: list, stream: str) -> tuple[tuple[Level, ...], tuple[Level, ...]] | Rejected:
    """Both sides' [[price, quantity], ...] as the venue's decimal strings (the shape is checked
    here, the decimals where a record is made of them)."""
    for level in (*bids, *asks):
        if not (isinstance(level, list) and len(level) == 2 and all(isinstance(value, str) for value in level)):
            return Rejected(WRONG_TYPE, f"a level is {str(level)[:60]}, expected [price, quantity] as strings", stream)
    return tuple((price, quantity) for price, quantity in bids), tuple((price, quantity) for price, quantity in asks)


def quote_assets(exchange_info: object) -> dict[str, str]:
    """Each symbol's quote asset from a REST exchangeInfo answer; entries that do not fit are skipped."""
    symbols = exchange_info.get("symbols") if isinstance(exchange_info, dict) else None
    if not isinstance(symbols, list):
        return {}
    return {
        entry["symbol"]: entry["quoteAsset"]
        for entry in symbols
        if isinstance(entry, dict) and isinstance(entry.get("symbol"), str) and isinstance(entry.get("quoteAsset"), str)
    }


MAX_STREAMS_PER_CONNECTION = 1024  # Binance's limit; more symbols take more connections
# A long URL is refused by servers (HTTP 414), so past this many characters the streams
# are requested with SUBSCRIBE messages instead, several streams per message.
MAX_URL_LENGTH = 2000
STREAMS_PER_SUBSCRIBE = 200
# Binance allows 5 incoming messages per second per connection (pongs included).
SUBSCRIBE_INTERVAL_SECONDS = 0.25


def subscription_plan(base_url: str, symbols: tuple[str, ...], stream_types: tuple[str, ...] = (TRADE,),
                      first_id: int = 1) -> SubscriptionPlan:
    """How one connection asks for the streams of `symbols` on a combined endpoint; its
    SUBSCRIBE requests, if any, are numbered from `first_id`."""
    streams = [f"{symbol.lower()}@{SUBSCRIBED_AS.get(stream_type, stream_type)}" for symbol in symbols for stream_type in stream_types]
    url = f"{base_url}?streams=" + "/".join(streams)
    if len(url) <= MAX_URL_LENGTH:
        return SubscriptionPlan(url, (), SUBSCRIBE_INTERVAL_SECONDS)
    requests = tuple(
        (request_id, json.dumps({"method": "SUBSCRIBE", "params": streams[start : start + STREAMS_PER_SUBSCRIBE], "id": request_id}))
        for request_id, start in enumerate(range(0, len(streams), STREAMS_PER_SUBSCRIBE), start=first_id)
    )
    return SubscriptionPlan(base_url, requests, SUBSCRIBE_INTERVAL_SECONDS)


def connection_plans(base_url: str, symbols: tuple[str, ...], stream_types: tuple[str, ...] = (TRADE,)) -> list[SubscriptionPlan]:
    """One plan per connection, each within Binance's stream limit; a symbol's streams
    share a connection. Request ids are unique across the plans, so that an answer, which
    names only its endpoint and its id, tells which request it answers."""
    per_connection = MAX_STREAMS_PER_CONNECTION // len(stream_types)
    plans: list[SubscriptionPlan] = []
    for start in range(0, len(symbols), per_connection):
        first_id = 1 + sum(len(plan.requests) for plan in plans)
        plans.append(subscription_plan(base_url, symbols[start : start + per_connection], stream_types, first_id))
    return plans
