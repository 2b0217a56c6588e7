"""Read Kraken spot WebSocket v2 frames (`wss://ws.kraken.com/v2`) into typed events, or say
exactly why not.

Kraken v2 sends prices and quantities as JSON numbers that keep their digits (`1797.30`,
`0.00000000`), so a frame is read with `parse_float=str`: a number stays the text the venue
wrote, never a float. A data frame (`{"channel", "type", "data": [...]}`) carries several
items (a batch of trades; one book message per symbol); each is read on its own, so one bad
trade is refused without its neighbours. Requests are answered by `{"method", "success",
"req_id", ...}` frames; `heartbeat` and `status` are the venue's control frames. Nothing
here raises on bad input.

Sources: Kraken's API documentation (docs.kraken.com/api/docs/websocket-v2: trade, ticker,
book, instrument, status, heartbeat; the guide "spot-ws-book-v2" for the checksum), checked
against real captured sessions (tests/data/README.md).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from k2actors.core.book import Level
from k2actors.core.fields import Refused, decimal_field, microseconds, object_field, typed_fields
from k2actors.core.frames import (
    ID_OUT_OF_RANGE,
    MAX_AVRO_LONG,
    MAX_TRADE_ID,
    MISSING_FIELD,
    TIMESTAMP_OUT_OF_RANGE,
    UNEXPECTED_SHAPE,
    UNKNOWN_EVENT,
    UNKNOWN_STREAM,
    WRONG_TYPE,
    Rejected,
    load_object,
)
from k2actors.core.subscriptions import SubscriptionPlan

VENUE = "KRAKEN"  # the exchange its records name
# Kraken's channels ...
TRADE = "trade"
TICKER = "ticker"
BOOK = "book"
INSTRUMENT = "instrument"
HEARTBEAT = "heartbeat"
STATUS = "status"
# The depths a book can be subscribed at; the checksum covers the best 10 levels a side, whatever the depth.
BOOK_DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
MAX_CHECKSUM = 2**32 - 1
SIDES = ("buy", "sell")
# ... and this venue's stream types (k2actors.core.streams), which label its records, its
# dead letters and its metrics: the channels' names are Binance's stream types too.
TRADE_STREAM, TICKER_STREAM, BOOK_STREAM, RAW_STREAM = "kraken.trade", "kraken.ticker", "kraken.book", "kraken.raw"
STREAM_OF_CHANNEL = {TRADE: TRADE_STREAM, TICKER: TICKER_STREAM, BOOK: BOOK_STREAM}


@dataclass(frozen=True, slots=True)
class KrakenTrade:
    symbol: str  # Kraken's v2 spelling: "BTC/USD"
    trade_id: int  # a sequence number per book
    price: str
    quantity: str
    taker_side: str  # "buy" or "sell": the side of the order that took liquidity
    order_type: str  # the taker's: "limit" or "market"
    timestamp_us: int
    from_snapshot: bool  # one of the last 50 trades sent on subscribing: may repeat trades already had


@dataclass(frozen=True, slots=True)
class KrakenQuote:
    """Best bid and ask (the ticker channel); `timestamp_us` when the frame has one (newer frames do)."""

    symbol: str
    bid_price: str
    bid_quantity: str
    ask_price: str
    ask_quantity: str
    timestamp_us: int | None


@dataclass(frozen=True, slots=True)
class BookMessage:
    """A book snapshot (the whole book to the subscribed depth) or an update (changed levels
    only, in the order to apply them; a quantity of 0 removes a level), with the checksum of
    the best levels after it. Snapshots may come without a timestamp."""

    symbol: str
    is_snapshot: bool
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int
    timestamp_us: int | None


@dataclass(frozen=True, slots=True)
class Instrument:
    """A pair as Kraken describes it: the record's base and quote, and the precision its
    prices and quantities are written (and checksummed) at."""

    symbol: str
    base: str
    quote: str
    price_precision: int
    qty_precision: int
    status: str

    @property
    def record_symbol(self) -> str:
        """The symbol its records carry: its base and quote (BTC/USD: BTCUSD)."""
        return self.base + self.quote


@dataclass(frozen=True, slots=True)
class Instruments:
    pairs: tuple[Instrument, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent about once a second when a subscribed connection has nothing else to send."""


@dataclass(frozen=True, slots=True)
class SystemStatus:
    """Sent on connecting and whenever the trading engine's state changes."""

    system: str  # "online", "maintenance", "cancel_only", "post_only"
    connection_id: int | None


@dataclass(frozen=True, slots=True)
class RequestAnswered:
    """A request (subscribe, unsubscribe, ping) succeeded; subscriptions are answered once per symbol."""

    request_id: object
    method: str
    channel: str | None
    symbol: str | None


@dataclass(frozen=True, slots=True)
class RequestRefused:
    request_id: object
    method: str
    message: str
    symbol: str | None  # the symbol refused, when Kraken says


Event = KrakenTrade | KrakenQuote | BookMessage | Instruments | Heartbeat | SystemStatus | RequestAnswered | RequestRefused


def read_frame(raw: bytes | str, max_bytes: int) -> tuple[str, tuple[Event | Rejected, ...]]:
    """The frame's channel (its method for a request's answer, UNKNOWN_STREAM when it names
    neither), and what it carries: one item per data entry, or one control event."""
    message = load_object(raw, max_bytes, parse_float=str)
    if isinstance(message, Rejected):
        return UNKNOWN_STREAM, (message,)
    method = message.get("method")
    if isinstance(method, str):
        return method[:50], (_answer(message, method),)
    channel = message.get("channel")
    if not isinstance(channel, str):
        return UNKNOWN_STREAM, (Rejected(MISSING_FIELD, "neither 'channel' nor 'method'"),)
    if channel == HEARTBEAT:
        return channel, (Heartbeat(),)
    data, kind = message.get("data"), message.get("type")
    if channel == INSTRUMENT:
        return channel, _instruments(data)
    if not isinstance(data, list):
        return channel[:50], (Rejected(UNEXPECTED_SHAPE, f"{channel[:50]} data is {type(data).__name__}, not a list",
                                       _stream(channel)),)
    if channel == STATUS:
        return channel, tuple(_status(item) for item in data) or (Rejected(UNEXPECTED_SHAPE, "status without data", STATUS),)
    if kind not in ("snapshot", "update"):
        return channel[:50], (Rejected(UNEXPECTED_SHAPE, f"{channel[:50]} type {str(kind)[:20]!r}", _stream(channel)),)
    read = _READERS.get(channel)
    if read is None:
        return channel[:50], (Rejected(UNKNOWN_EVENT, f"channel {channel[:50]!r}"),)
    return channel, tuple(_item(read, item, kind == "snapshot") for item in data)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of REST trades (`GET /0/public/Trades`): each row read, and `last`, the
    `since` (nanoseconds) that asks for the page after it."""

    trades: tuple[KrakenTrade | Rejected, ...]
    last: int


@dataclass(frozen=True, slots=True)
class HistoryRefused:
    """Kraken answered with errors instead of trades (`{"error": [...]}`)."""

    errors: tuple[str, ...]

    @property
    def rate_limited(self) -> bool:
        return any(error.startswith(_RATE_LIMITED) for error in self.errors)


# How Kraken says a client asks too often: its API rate limit, its throttle of concurrent requests.
_RATE_LIMITED = ("EAPI:Rate limit exceeded", "EService: Throttled", "EGeneral:Too many requests")
_HISTORY_ROW_FIELDS = 7
_SIDE_LETTERS = {"b": "buy", "s": "sell"}
_ORDER_TYPE_LETTERS = {"m": "market", "l": "limit"}


def historical_trades(body: bytes, symbol: str) -> HistoryPage | HistoryRefused | Rejected:
    """A page of `symbol`'s trades (its WebSocket spelling, which the trades are given: the
    page names the pair its own way, `XXBTZUSD` unless asked with `assetVersion=1`): rows
    `[price, volume, time, side, order type, misc, trade id]`, the time in seconds with a
    fraction (read as text, to the microsecond)."""
    message = load_object(body, len(body), parse_float=str)
    if isinstance(message, Rejected):
        return dataclasses.replace(message, stream=TRADE_STREAM)
    errors = message.get("error")
    if not isinstance(errors, list):
        return Rejected(MISSING_FIELD, "REST trades without an 'error' list", TRADE_STREAM)
    if errors:
        return HistoryRefused(tuple(str(error)[:200] for error in errors))
    result = message.get("result")
    if not isinstance(result, dict):
        return Rejected(UNEXPECTED_SHAPE, "REST trades without a 'result' object", TRADE_STREAM)
    rows = [value for key, value in result.items() if key != "last"]
    last = result.get("last")
    if len(rows) != 1 or not isinstance(rows[0], list) or not isinstance(last, str) or not _digits_only(last):
        return Rejected(UNEXPECTED_SHAPE, "REST trades without the rows of one pair and a 'last'", TRADE_STREAM)
    return HistoryPage(tuple(_history_row(row, symbol) for row in rows[0]), int(last))


def _history_row(row: object, symbol: str) -> KrakenTrade | Rejected:
    if not isinstance(row, list) or len(row) != _HISTORY_ROW_FIELDS:
        return Rejected(UNEXPECTED_SHAPE, f"REST trade row is no list of {_HISTORY_ROW_FIELDS}", TRADE_STREAM)
    price, volume, seconds, side, order_type, _, trade_id = row
    if not isinstance(trade_id, int) or isinstance(trade_id, bool) or not 0 <= trade_id <= MAX_TRADE_ID:
        return Rejected(ID_OUT_OF_RANGE, f"REST trade id {str(trade_id)[:40]} is no id", TRADE_STREAM)
    if side not in ("b", "s") or order_type not in ("m", "l"):
        return Rejected(WRONG_TYPE, f"REST trade side {str(side)[:5]!r} or order type {str(order_type)[:5]!r}", TRADE_STREAM)
    values = {"price": price, "qty": volume, "time": seconds}
    try:
        price_text, quantity_text, seconds_text = (_decimal(values, name, TRADE_STREAM) for name in values)
    except Refused as refused:
        return refused.rejected
    moment = int(Decimal(seconds_text).scaleb(6).to_integral_value(ROUND_FLOOR))
    if moment > MAX_AVRO_LONG:
        return Rejected(TIMESTAMP_OUT_OF_RANGE, f"REST trade time {seconds_text[:40]} s", TRADE_STREAM)
    return KrakenTrade(symbol, trade_id, price_text, quantity_text, _SIDE_LETTERS[side], _ORDER_TYPE_LETTERS[order_type],
                       moment, False)


def _digits_only(text: str) -> bool:
    return text.isascii() and text.isdigit()


def record_symbol(pair: str) -> str:
    """The symbol a pair's records carry, known before Kraken describes the pair (cluster mode
    shards by it at start): v2 spells every pair BASE/QUOTE, and its instrument describes it
    with that base and quote, which the records are named by (BTC/USD: BTCUSD)."""
    return pair.replace("/", "")


def subscribe_requests(symbols: Sequence[str], channels: Sequence[str], book_depth: int,
                       first_request_id: int) -> list[tuple[int, str]]:
    """(request id, request) of each channel's subscription of each symbol: one symbol a
    request, so that an answer (Kraken answers symbol by symbol) names what it answers by
    its id alone. Trades come with their last 50 (a reconnect's overlap, and what a short gap
    needs); quotes on every change of the best bid or offer."""
    extra: dict[str, dict[str, object]] = {TRADE: {"snapshot": True}, TICKER: {"event_trigger": "bbo", "snapshot": True},
                                           BOOK: {"depth": book_depth, "snapshot": True}}
    wanted = [(channel, symbol) for channel in channels for symbol in symbols]
    return [(request_id, _request("subscribe", request_id, {"channel": channel, "symbol": [symbol], **extra[channel]}))
            for request_id, (channel, symbol) in enumerate(wanted, start=first_request_id)]


# Requests a connection sends are spaced as Binance's are: Kraken publishes no per-message
# limit for public channels, and a burst of hundreds of subscriptions is what a limit is for.
SUBSCRIBE_INTERVAL_SECONDS = 0.1
INSTRUMENT_REQUEST_ID = 1


def connection_plan(url: str, symbols: Sequence[str], channels: Sequence[str], book_depth: int) -> SubscriptionPlan:
    """How one connection asks for `symbols`' channels: the instrument channel first (every
    pair's base, quote and precisions, which its records and its book's checksum are made
    with: on the connection itself, so that the raw record holds them before the frames they
    read), then each channel of each symbol, books at the shallowest depth that holds
    `book_depth`. Kraken limits no streams per connection: one carries every symbol."""
    instrument = (INSTRUMENT_REQUEST_ID,
                  _request("subscribe", INSTRUMENT_REQUEST_ID, {"channel": INSTRUMENT, "snapshot": True}))
    requests = subscribe_requests(symbols, channels, subscribed_depth(book_depth), INSTRUMENT_REQUEST_ID + 1)
    return SubscriptionPlan(url, (instrument, *requests), SUBSCRIBE_INTERVAL_SECONDS)


def resubscribe_book(symbol: str, book_depth: int, first_request_id: int) -> list[tuple[int, str]]:
    """The requests that give a book a fresh snapshot: unsubscribe, then subscribe again."""
    params: dict[str, object] = {"channel": BOOK, "symbol": [symbol], "depth": book_depth}
    return [(first_request_id, _request("unsubscribe", first_request_id, params)),
            (first_request_id + 1, _request("subscribe", first_request_id + 1, {**params, "snapshot": True}))]


def subscribed_depth(published_depth: int) -> int:
    """The shallowest depth Kraken serves that holds the levels published."""
    return next((depth for depth in BOOK_DEPTHS if depth >= published_depth), BOOK_DEPTHS[-1])


def _request(method: str, request_id: int, params: dict[str, object]) -> str:
    return json.dumps({"method": method, "params": params, "req_id": request_id}, separators=(",", ":"))


def checksum(asks: Sequence[Level], bids: Sequence[Level], price_precision: int, qty_precision: int) -> int:
    """Kraken's CRC32 of a book: its best 10 asks (lowest first), then its best 10 bids
    (highest first); each price, then quantity, written at the instrument's precision
    without its point and leading zeros. The precision, not the text received, because the
    checksum is of the venue's digits, which a level relayed as a float has lost."""
    text = "".join(_digits(price, price_precision) + _digits(quantity, qty_precision)
                   for price, quantity in (*asks[:CHECKSUM_LEVELS], *bids[:CHECKSUM_LEVELS]))
    return zlib.crc32(text.encode())


def _digits(value: str, precision: int) -> str:
    """Written with `precision` decimals, never rounded: a value with more digits keeps them,
    so that the checksum fails rather than vouch for digits the book does not have."""
    number = Decimal(value)
    exponent = number.as_tuple().exponent
    decimals = max(precision, -exponent) if isinstance(exponent, int) else precision
    return format(number, f".{decimals}f").replace(".", "").lstrip("0")


def _stream(channel: str) -> str:
    return STREAM_OF_CHANNEL.get(channel, UNKNOWN_STREAM)


def _answer(message: dict, method: str) -> RequestAnswered | RequestRefused:
    request_id = message.get("req_id")
    result = message.get("result")
    symbol = message.get("symbol", result.get("symbol") if isinstance(result, dict) else None)
    symbol = symbol if isinstance(symbol, str) else None
    if message.get("success") is False or "error" in message:
        error = message.get("error")
        return RequestRefused(request_id, method, str(error)[:300] if error is not None else "refused", symbol)
    channel = result.get("channel") if isinstance(result, dict) else None
    return RequestAnswered(request_id, method, channel if isinstance(channel, str) else None, symbol)


def _status(item: object) -> SystemStatus | Rejected:
    if not isinstance(item, dict) or not isinstance(item.get("system"), str):
        return Rejected(MISSING_FIELD, "status without 'system'", STATUS)
    connection_id = item.get("connection_id")
    return SystemStatus(item["system"], connection_id if isinstance(connection_id, int) else None)


def _instruments(data: object) -> tuple[Instruments | Rejected, ...]:
    """Every pair described, and why any pair could not be read: one malformed pair does not
    cost the others."""
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list):
        return (Rejected(UNEXPECTED_SHAPE, "instrument data without a list of 'pairs'", INSTRUMENT),)
    read, refused = [], []
    for pair in pairs:
        try:
            read.append(Instrument(*typed_fields(object_field(pair, "instrument pair", INSTRUMENT), _INSTRUMENT_FIELDS, INSTRUMENT)))
        except Refused as refusal:
            refused.append(refusal.rejected)
    return (Instruments(tuple(read)), *refused)


_INSTRUMENT_FIELDS = (("symbol", str), ("base", str), ("quote", str), ("price_precision", int), ("qty_precision", int),
                      ("status", str))


def _item(read: Callable[[object, bool], KrakenTrade | KrakenQuote | BookMessage], item: object,
          is_snapshot: bool) -> KrakenTrade | KrakenQuote | BookMessage | Rejected:
    try:
        return read(item, is_snapshot)
    except Refused as refused:
        return refused.rejected


def _trade(item: object, from_snapshot: bool) -> KrakenTrade:
    fields = object_field(item, "trade", TRADE_STREAM)
    symbol, trade_id, side, order_type, timestamp = typed_fields(
        fields, (("symbol", str), ("trade_id", int), ("side", str), ("ord_type", str), ("timestamp", str)), TRADE_STREAM)
    price, quantity = _decimal(fields, "price", TRADE_STREAM), _decimal(fields, "qty", TRADE_STREAM)
    moment = microseconds(timestamp, TRADE_STREAM)
    if not 0 <= trade_id <= MAX_TRADE_ID:
        raise Refused(Rejected(ID_OUT_OF_RANGE, f"trade id {str(trade_id)[:40]} is outside 0..{MAX_TRADE_ID}", TRADE_STREAM))
    if side not in SIDES:
        raise Refused(Rejected(WRONG_TYPE, f"trade side {side[:20]!r} is neither 'buy' nor 'sell'", TRADE_STREAM))
    return KrakenTrade(symbol, trade_id, price, quantity, side, order_type, moment, from_snapshot)


def _quote(item: object, from_snapshot: bool) -> KrakenQuote:
    fields = object_field(item, "ticker", TICKER_STREAM)
    (symbol,) = typed_fields(fields, (("symbol", str),), TICKER_STREAM)
    bid, bid_qty, ask, ask_qty = (_decimal(fields, name, TICKER_STREAM, zero_allowed=name not in _PRICES)
                                  for name in ("bid", "bid_qty", "ask", "ask_qty"))
    moment = microseconds(fields["timestamp"], TICKER_STREAM) if "timestamp" in fields else None  # older frames have none
    return KrakenQuote(symbol, bid, bid_qty, ask, ask_qty, moment)


def _book(item: object, is_snapshot: bool) -> BookMessage:
    fields = object_field(item, "book", BOOK_STREAM)
    symbol, crc, bids, asks = typed_fields(fields, (("symbol", str), ("checksum", int), ("bids", list), ("asks", list)), BOOK_STREAM)
    if not 0 <= crc <= MAX_CHECKSUM:
        raise Refused(Rejected(WRONG_TYPE, f"book checksum {str(crc)[:20]} is no CRC32", BOOK_STREAM))
    moment = microseconds(fields["timestamp"], BOOK_STREAM) if "timestamp" in fields else None
    return BookMessage(symbol, is_snapshot, _levels(bids), _levels(asks), crc, moment)


def _levels(levels: list) -> tuple[Level, ...]:
    return tuple((_decimal(level, "price", BOOK_STREAM), _decimal(level, "qty", BOOK_STREAM, zero_allowed=True))
                 for level in (object_field(level, "book level", BOOK_STREAM) for level in levels))


_READERS: dict[str, Callable[[object, bool], KrakenTrade | KrakenQuote | BookMessage]] = {
    TRADE: _trade, TICKER: _quote, BOOK: _book}


def _decimal(item: dict, name: str, stream: str, zero_allowed: bool = False) -> str:
    """A price (never 0) or quantity as Kraken wrote it (read as text; an integer is written
    without a point)."""
    return decimal_field(item, name, stream, price=name in _PRICES, zero_allowed=zero_allowed)


_PRICES = ("price", "bid", "ask")
