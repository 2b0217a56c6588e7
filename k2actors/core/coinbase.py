"""Read Coinbase Advanced Trade market-data WebSocket frames (`wss://advanced-trade-ws.coinbase.com`)
into typed events, or say exactly why not.

Every data frame is an envelope, `{"channel", "client_id", "timestamp", "sequence_num",
"events": [...]}`: `sequence_num` numbers every frame of a connection, across its channels,
from 0, so a gap in it is a lost frame of that connection that cannot be told apart by
product (a book of that connection may have missed an update). Each event is read on its
own, and each trade or level of it, so one bad item is refused without its neighbours.
Prices and quantities are strings and stay the text Coinbase wrote. Errors come outside the
envelope (`{"type": "error", "message"}`). Nothing here raises on bad input.

Two points where the documentation is easy to misread, settled against real frames:
- a trade's `side` is the maker's ("the side refers to the makers side"): a trade at the
  ask is `SELL`. The record's side is the taker's, so it is the other one;
- the order book is subscribed as `level2` and arrives as `l2_data`; `new_quantity` is the
  level's whole quantity, 0 removes it, and a snapshot is the whole book, unsorted.

Sources: Coinbase's documentation (docs.cdp.coinbase.com, Advanced Trade WebSocket overview,
channels, rate limits; Exchange REST "Get product trades" and pagination), checked against
real captured frames (tests/data/README.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from k2actors.core.book import Level
from k2actors.core.fields import Refused, decimal_field, microseconds, object_field, typed_fields
from k2actors.core.frames import (
    ID_OUT_OF_RANGE,
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

VENUE = "COINBASE"  # the exchange its records name
# The channels subscribed to ...
MARKET_TRADES = "market_trades"
TICKER = "ticker"
LEVEL2 = "level2"
HEARTBEATS = "heartbeats"
STATUS = "status"  # the products' descriptions, which the records' symbol and currency come from
# ... and those frames arrive on besides (level2's data, the answer to every subscribe, errors)
L2_DATA = "l2_data"
SUBSCRIPTIONS = "subscriptions"
ERROR = "error"
# This venue's stream types (k2actors.core.streams): they label its records, dead letters and metrics.
TRADE_STREAM, TICKER_STREAM, BOOK_STREAM, RAW_STREAM = "coinbase.trade", "coinbase.ticker", "coinbase.book", "coinbase.raw"
STREAM_OF_CHANNEL = {MARKET_TRADES: TRADE_STREAM, TICKER: TICKER_STREAM, L2_DATA: BOOK_STREAM, LEVEL2: BOOK_STREAM}
# The maker's side, as Coinbase writes it, and the taker's, which the record carries.
TAKER_SIDE = {"BUY": "sell", "SELL": "buy"}
# The channels `coinbase.streams` takes: each subscribed as itself.
SUBSCRIBABLE = (MARKET_TRADES, TICKER, LEVEL2)
# Coinbase takes 8 unauthenticated messages a second per IP (Advanced Trade WebSocket rate
# limits), counted over every connection of the host: a connection's subscriptions are spaced.
SUBSCRIBE_INTERVAL_SECONDS = 0.25
# A connection silent this long (heartbeats come every second) is no longer a product's source of quotes.
CONNECTION_SILENCE_SECONDS = 1.5
CONNECTIONS_FOLLOWED = 64
# Coinbase refuses more level2 products on one connection ("too many L2 streams requested in
# a single session", Coinbase.Net#19: between 16 and 31 were reported to fit): with level2,
# every this many products get a connection of their own.
LEVEL2_PRODUCTS_PER_CONNECTION = 16


@dataclass(frozen=True, slots=True)
class CoinbaseTrade:
    product_id: str  # "BTC-USD"
    trade_id: int  # consecutive per product
    price: str
    quantity: str
    taker_side: str  # "buy" or "sell": the other side of the maker's, which Coinbase sends
    timestamp_us: int
    from_snapshot: bool  # sent on subscribing: recent trades, which may repeat trades already had


@dataclass(frozen=True, slots=True)
class CoinbaseQuote:
    """Best bid and offer, from the ticker channel (sent on every match); named by the time
    of the frame, since a ticker has no time of its own."""

    product_id: str
    bid_price: str
    bid_quantity: str
    ask_price: str
    ask_quantity: str
    timestamp_us: int


class Tickers:
    """Which of Coinbase's tickers become quotes. Coinbase sends a ticker on every match and
    names it by nothing but its frame's time, which each connection stamps on its own: hot
    standby's two connections would make two quotes of each ticker, interleaved, an older
    touch after a newer. So a product's quotes come from one connection at a time (the one
    that gave its last quote, until that connection has been silent for CONNECTION_SILENCE_SECONDS:
    heartbeats come every second), and only when the touch (best bid and offer and their
    quantities) differs from the last one published."""

    def __init__(self) -> None:
        self._touches: dict[str, tuple[str, str, str, str]] = {}  # per product, as last published
        self._sources: dict[str, str] = {}  # per product, the connection its quotes come from
        self._heard: dict[str, float] = {}  # per connection, when it last sent a frame

    def heard(self, conn_id: str, now: float) -> None:
        """Any frame of a connection (heartbeats included): it lives."""
        self._heard[conn_id] = now
        if len(self._heard) > CONNECTIONS_FOLLOWED:  # connections long gone
            self._heard = {conn: at for conn, at in self._heard.items() if now - at <= CONNECTION_SILENCE_SECONDS}

    def wanted(self, quote: CoinbaseQuote, conn_id: str, now: float) -> bool:
        source = self._sources.get(quote.product_id)
        if source is not None and source != conn_id and now - self._heard.get(source, -math.inf) <= CONNECTION_SILENCE_SECONDS:
            return False
        self._sources[quote.product_id] = conn_id
        return self._touches.get(quote.product_id) != _touch(quote)

    def published(self, quote: CoinbaseQuote) -> None:
        self._touches[quote.product_id] = _touch(quote)

    def forget(self, products: Collection[str]) -> None:
        """Products another instance owns now (cluster mode): should they come back, afresh."""
        for product in products:
            self._touches.pop(product, None)
            self._sources.pop(product, None)


def _touch(quote: CoinbaseQuote) -> tuple[str, str, str, str]:
    return quote.bid_price, quote.bid_quantity, quote.ask_price, quote.ask_quantity


@dataclass(frozen=True, slots=True)
class BookEvent:
    """A whole book (`is_snapshot`) or the levels changed since the connection's previous
    event of the product, each with its new whole quantity (0: removed)."""

    product_id: str
    is_snapshot: bool
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    timestamp_us: int  # the frame's


@dataclass(frozen=True, slots=True)
class Product:
    """A product as Coinbase describes it (the status channel): the record's base and quote."""

    product_id: str
    base: str
    quote: str
    status: str  # "online", "offline", "delisted", ...

    @property
    def record_symbol(self) -> str:
        """The symbol its records carry: its base and quote (BTC-USD: BTCUSD)."""
        return self.base + self.quote


@dataclass(frozen=True, slots=True)
class Products:
    products: tuple[Product, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every second on the heartbeats channel, which keeps quiet subscriptions open."""

    counter: int


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The connection's whole set of subscriptions after a subscribe or an unsubscribe, by
    the channel subscribed (`level2`, not `l2_data`). A product Coinbase does not know is
    left out, with no error: a subscription is confirmed only by being listed here."""

    channels: tuple[tuple[str, tuple[str, ...]], ...]

    def products(self, channel: str) -> tuple[str, ...]:
        return next((products for name, products in self.channels if name == channel), ())


@dataclass(frozen=True, slots=True)
class VenueError:
    """`{"type": "error", "message": ...}`: a refused subscription (an unknown channel reads
    "authentication failure"), too many level2 products on one connection, ..."""

    message: str


Event = CoinbaseTrade | CoinbaseQuote | BookEvent | Products | Heartbeat | Subscribed | VenueError


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a frame says of itself: its channel (UNKNOWN_STREAM when it names none), and its
    number in its connection (None for an error, which has none, or an unreadable frame)."""

    channel: str
    sequence_num: int | None


def read_frame(raw: bytes | str, max_bytes: int) -> tuple[Envelope, tuple[Event | Rejected, ...]]:
    """The frame's envelope and what it carries: one item per trade, ticker or book event,
    or one control event."""
    message = load_object(raw, max_bytes)
    if isinstance(message, Rejected):
        return Envelope(UNKNOWN_STREAM, None), (message,)
    if message.get("type") == ERROR:
        text = message.get("message")
        return Envelope(ERROR, None), (VenueError(text[:500]) if isinstance(text, str) else
                                       Rejected(WRONG_TYPE, "an error frame without a message text"),)
    channel, sequence_num = message.get("channel"), message.get("sequence_num")
    if not isinstance(channel, str):
        return Envelope(UNKNOWN_STREAM, None), (Rejected(MISSING_FIELD, "neither 'channel' nor an error 'type'"),)
    channel = channel[:50]
    stream = STREAM_OF_CHANNEL.get(channel, channel)
    if not isinstance(sequence_num, int) or isinstance(sequence_num, bool) or sequence_num < 0:
        return Envelope(channel, None), (Rejected(MISSING_FIELD, f"{channel} frame without a 'sequence_num'", stream),)
    envelope = Envelope(channel, sequence_num)
    events = message.get("events")
    if not isinstance(events, list):
        return envelope, (Rejected(UNEXPECTED_SHAPE, f"{channel} events are {type(events).__name__}, not a list", stream),)
    read = _READERS.get(channel)
    if read is None:
        return envelope, (Rejected(UNKNOWN_EVENT, f"channel {channel!r}"),)
    try:
        sent_us = microseconds(message.get("timestamp"), stream)
    except Refused as refused:
        return envelope, (refused.rejected,)
    return envelope, tuple(item for event in events for item in _event(read, event, sent_us, stream))


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of REST trades (Coinbase Exchange `GET /products/<id>/trades?after=<id>`, which
    shares the trade ids of the WebSocket): the trades, newest first, and the oldest id, the
    `after` that asks for the page before it (None: the page is empty)."""

    trades: tuple[CoinbaseTrade | Rejected, ...]
    oldest_id: int | None


def historical_trades(body: bytes, product_id: str) -> HistoryPage | Rejected:
    """A page of `product_id`'s trades: objects `{trade_id, side (the maker's, lower case),
    size, price, time}`."""
    rows = load_rows(body, "/products/<id>/trades")
    if isinstance(rows, Rejected):
        return dataclasses.replace(rows, stream=TRADE_STREAM)
    trades = tuple(_history_row(row, product_id) for row in rows)
    ids = [trade.trade_id for trade in trades if isinstance(trade, CoinbaseTrade)]
    return HistoryPage(trades, min(ids) if ids else None)


def _history_row(row: object, product_id: str) -> CoinbaseTrade | Rejected:
    try:
        fields = object_field(row, "REST trade", TRADE_STREAM)
        side, timestamp = typed_fields(fields, (("side", str), ("time", str)), TRADE_STREAM)
        return _trade_of(product_id, fields.get("trade_id"), fields, side.upper(), timestamp, from_snapshot=False)
    except Refused as refused:
        return refused.rejected


def _event(read: Callable[[dict, int, str], list], event: object, sent_us: int, stream: str) -> list:
    try:
        return read(object_field(event, f"{stream} event", stream), sent_us, stream)
    except Refused as refused:
        return [refused.rejected]


def _snapshot_or_update(event: dict, stream: str) -> bool:
    kind = event.get("type")
    if kind not in ("snapshot", "update"):
        raise Refused(Rejected(UNEXPECTED_SHAPE, f"{stream} event type {str(kind)[:20]!r}", stream))
    return kind == "snapshot"


def _items(event: dict, name: str, stream: str) -> list:
    items = event.get(name)
    if not isinstance(items, list):
        raise Refused(Rejected(UNEXPECTED_SHAPE, f"{stream} event without a '{name}' list", stream))
    return items


def _trades(event: dict, sent_us: int, stream: str) -> list[CoinbaseTrade | Rejected]:
    from_snapshot = _snapshot_or_update(event, stream)
    return [_streamed_trade(item, from_snapshot) for item in _items(event, "trades", stream)]


def _streamed_trade(item: object, from_snapshot: bool) -> CoinbaseTrade | Rejected:
    try:
        fields = object_field(item, "trade", TRADE_STREAM)
        product_id, side, timestamp = typed_fields(fields, (("product_id", str), ("side", str), ("time", str)), TRADE_STREAM)
        return _trade_of(product_id, fields.get("trade_id"), fields, side, timestamp, from_snapshot)
    except Refused as refused:
        return refused.rejected


def _trade_of(product_id: str, trade_id: object, fields: dict, maker_side: str, timestamp: str,
              from_snapshot: bool) -> CoinbaseTrade:
    """A trade whose id is written as a string of digits (the WebSocket's) or a number (the REST history's)."""
    if isinstance(trade_id, str) and trade_id.isascii() and trade_id.isdigit() and len(trade_id) <= 19:
        number = int(trade_id)
    elif isinstance(trade_id, int) and not isinstance(trade_id, bool):
        number = trade_id
    else:
        raise Refused(Rejected(WRONG_TYPE if trade_id is not None else MISSING_FIELD,
                               f"trade id {str(trade_id)[:40]!r} is no id", TRADE_STREAM))
    if not 0 <= number <= MAX_TRADE_ID:
        raise Refused(Rejected(ID_OUT_OF_RANGE, f"trade id {number} is outside 0..{MAX_TRADE_ID}", TRADE_STREAM))
    taker_side = TAKER_SIDE.get(maker_side)
    if taker_side is None:
        raise Refused(Rejected(WRONG_TYPE, f"trade side {maker_side[:20]!r} is neither 'BUY' nor 'SELL'", TRADE_STREAM))
    price = decimal_field(fields, "price", TRADE_STREAM, price=True)
    quantity = decimal_field(fields, "size", TRADE_STREAM, price=False)
    return CoinbaseTrade(product_id, number, price, quantity, taker_side, microseconds(timestamp, TRADE_STREAM),
                         from_snapshot)


def _tickers(event: dict, sent_us: int, stream: str) -> list[CoinbaseQuote | Rejected]:
    _snapshot_or_update(event, stream)
    return [_quote(item, sent_us) for item in _items(event, "tickers", stream)]


def _quote(item: object, sent_us: int) -> CoinbaseQuote | Rejected:
    try:
        fields = object_field(item, "ticker", TICKER_STREAM)
        (product_id,) = typed_fields(fields, (("product_id", str),), TICKER_STREAM)
        bid, bid_quantity, ask, ask_quantity = (
            decimal_field(fields, name, TICKER_STREAM, price=is_price, zero_allowed=not is_price)
            for name, is_price in (("best_bid", True), ("best_bid_quantity", False), ("best_ask", True),
                                   ("best_ask_quantity", False)))
        return CoinbaseQuote(product_id, bid, bid_quantity, ask, ask_quantity, sent_us)
    except Refused as refused:
        return refused.rejected


def _book(event: dict, sent_us: int, stream: str) -> list[BookEvent | Rejected]:
    """One event, one product: refused whole when a level is bad, since a book cannot take
    part of a change."""
    is_snapshot = _snapshot_or_update(event, stream)
    (product_id,) = typed_fields(event, (("product_id", str),), stream)
    sides: dict[str, list[Level]] = {"bid": [], "offer": []}
    for update in _items(event, "updates", stream):
        fields = object_field(update, "book level", stream)
        (side,) = typed_fields(fields, (("side", str),), stream)
        if side not in sides:
            raise Refused(Rejected(WRONG_TYPE, f"book level side {side[:20]!r} is neither 'bid' nor 'offer'", stream))
        sides[side].append((decimal_field(fields, "price_level", stream, price=True),
                            decimal_field(fields, "new_quantity", stream, price=False, zero_allowed=True)))
    return [BookEvent(product_id, is_snapshot, tuple(sides["bid"]), tuple(sides["offer"]), sent_us)]


def _products(event: dict, sent_us: int, stream: str) -> list[Products | Rejected]:
    """A snapshot or update of the products' descriptions; a product described wrongly is refused alone."""
    _snapshot_or_update(event, stream)
    described = [_product(item, stream) for item in _items(event, "products", stream)]
    products = tuple(item for item in described if isinstance(item, Product))
    return [Products(products), *(item for item in described if isinstance(item, Rejected))]


def _product(item: object, stream: str) -> Product | Rejected:
    try:
        fields = object_field(item, "product", stream)
        return Product(*typed_fields(fields, (("id", str), ("base_currency", str), ("quote_currency", str), ("status", str)),
                                     stream))
    except Refused as refused:
        return refused.rejected


def _heartbeat(event: dict, sent_us: int, stream: str) -> list[Heartbeat]:
    counter = event.get("heartbeat_counter")  # a number live; the documentation's example writes a string
    if isinstance(counter, str) and counter.isascii() and counter.isdigit():
        counter = int(counter)
    if not isinstance(counter, int) or isinstance(counter, bool):
        raise Refused(Rejected(WRONG_TYPE, f"heartbeat counter {str(counter)[:20]!r} is no number", stream))
    return [Heartbeat(counter)]


def _subscriptions(event: dict, sent_us: int, stream: str) -> list[Subscribed]:
    (channels,) = typed_fields(event, (("subscriptions", dict),), stream)
    if not all(isinstance(products, list) and all(isinstance(p, str) for p in products) for products in channels.values()):
        raise Refused(Rejected(WRONG_TYPE, "subscriptions are not lists of product ids", stream))
    return [Subscribed(tuple((str(name), tuple(products)) for name, products in channels.items()))]


_READERS: dict[str, Callable[[dict, int, str], list]] = {
    MARKET_TRADES: _trades, TICKER: _tickers, L2_DATA: _book, STATUS: _products, HEARTBEATS: _heartbeat,
    SUBSCRIPTIONS: _subscriptions}


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """Frames `first` to `last` of the connection were not received: whatever they carried
    (a trade, a level, a ticker of any product) is unknown."""

    first: int
    last: int


class ConnectionSequence:
    """One connection's `sequence_num`, which must run 0, 1, 2, ... over every frame it
    numbers. Fed each number as it comes; says where frames were lost."""

    def __init__(self) -> None:
        self._next = 0

    def observe(self, sequence_num: int) -> SequenceGap | None:
        """A gap before this frame, or None. A number already passed (a frame out of order)
        is no gap: it is what the previous report left out, or a repeat."""
        expected = self._next
        if sequence_num < expected:
            return None
        self._next = sequence_num + 1
        return SequenceGap(expected, sequence_num - 1) if sequence_num > expected else None


def connection_plans(url: str, products: Sequence[str], channels: Sequence[str]) -> list[SubscriptionPlan]:
    """How the connections to `url` ask for `products`' channels: one connection, or with
    level2 one per LEVEL2_PRODUCTS_PER_CONNECTION products. Each asks one channel a message:
    the status channel first (the products' descriptions, which their records are made with:
    on the connection itself, so that the raw record holds them before the frames they read),
    then each channel, and heartbeats last, which keep a quiet product's subscriptions open.
    Coinbase's answer names no request (it lists the connection's whole set of
    subscriptions), so the numbers are the plans' own, each once. The connections open
    together: each spaces its messages by SUBSCRIBE_INTERVAL_SECONDS times their number, so
    that together they send no faster than one does."""
    ordered = (STATUS, *channels, HEARTBEATS)
    share = LEVEL2_PRODUCTS_PER_CONNECTION if LEVEL2 in channels else max(len(products), 1)
    shares = [products[start:start + share] for start in range(0, len(products), share)]
    interval = SUBSCRIBE_INTERVAL_SECONDS * len(shares)
    return [SubscriptionPlan(url, tuple(
        (index * len(ordered) + number,
         json.dumps({"type": "subscribe", "channel": channel, "product_ids": list(some)}, separators=(",", ":")))
        for number, channel in enumerate(ordered, 1)), interval) for index, some in enumerate(shares)]


def record_symbol(product_id: str) -> str:
    """The symbol a product's records carry, known before Coinbase describes the product (the
    shards and each venue's share of the symbols are made at start): a product id is
    BASE-QUOTE, and its description names it by that base and quote (BTC-USD: BTCUSD)."""
    return product_id.replace("-", "")
