"""Shape a parsed Binance trade into a K2 v2 trade record (schemas/trade_v2.avsc).

Prices and quantities stay exact: strings become Decimals checked against the
schema's decimal(18, 8), never floats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from k2actors.core.binance import AGG_TRADE, BOOK, BOOK_TICKER, TRADE, AggTrade, BookTicker, Trade
from k2actors.core.book import BookTop, Level
from k2actors.core.frames import (
    CROSSED_QUOTE,
    DECIMAL_OUT_OF_RANGE,
    INVALID_DECIMAL,
    NON_FINITE_NUMBER,
    NON_POSITIVE_PRICE,
    NON_POSITIVE_QUANTITY,
    PLAIN_DECIMAL,
    TIMESTAMP_OUT_OF_RANGE,
    UNKNOWN_STREAM,
    UNSUBSCRIBED_SYMBOL,
    Rejected,
)
from k2actors.core.payloads import DeadLetter, Record
from k2actors.core.streams import is_raw

DECIMAL_PRECISION = 18
DECIMAL_SCALE = 8
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
# A streamed trade further than this from its moment of receipt is not believed: no
# connection lives longer, so it is a broken message or a broken clock, and either is loud.
MAX_CLOCK_DISTANCE_US = 24 * 3600 * 1_000_000
# uuid5 namespace for message ids: the same (venue, symbol, trade id) always gets the same id.
MESSAGE_ID_NAMESPACE = uuid.UUID("6f1c2a55-0b0e-5d8f-9a43-8f3c1b2d4e70")
_NAMESPACE_BYTES = MESSAGE_ID_NAMESPACE.bytes

# Quote assets, longest first so that e.g. FDUSD wins over USD.
_QUOTE_SUFFIXES = tuple(
    sorted(
        ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "USD", "BTC", "ETH", "BNB",
         "EUR", "GBP", "TRY", "BRL", "JPY", "AUD", "ARS", "MXN", "PLN", "RON", "UAH", "ZAR",
         "IDR", "COP", "CZK", "XRP", "DOGE", "TRX", "SOL"),
        key=len,
        reverse=True,
    )
)


def record_dead_letter(record: Record, stream: str, reason: str, detail: str) -> DeadLetter:
    """A record that cannot be published (the schema refused it, the producer failed on it
    twice) goes to the DLQ as JSON, with where and when its trade arrived; a raw record as
    the frame it keeps."""
    if is_raw(stream):
        return DeadLetter(record["payload"], reason, detail, record["endpoint"], record["recv_ts_ns"] // 1000, stream)
    return DeadLetter(json.dumps(record, default=str).encode(), reason, detail, record["vendor_data"]["endpoint"],
                      record["ingestion_timestamp"], stream)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where and when a frame arrived."""

    venue: str
    endpoint: str
    received_us: int


def message_id(venue: str, symbol: str, trade_id: int, stream: str = "") -> str:
    """Trades keep the name `venue:symbol:id`; other streams' ids live in a space of their own."""
    name = f"{venue}:{symbol}:{trade_id}" if not stream else f"{venue}:{symbol}:{stream}:{trade_id}"
    # uuid.uuid5's own steps, without its UUID object: a third of its cost, once per trade.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    hex_digits = digest.hex()
    return f"{hex_digits[:8]}-{hex_digits[8:12]}-{hex_digits[12:16]}-{hex_digits[16:20]}-{hex_digits[20:]}"


def quote_currency(symbol: str, quote_assets: Mapping[str, str]) -> str:
    """The quote asset from exchangeInfo when known, else from the symbol's suffix."""
    if symbol in quote_assets:
        return quote_assets[symbol]
    for suffix in _QUOTE_SUFFIXES:
        if symbol.endswith(suffix) and len(symbol) > len(suffix):
            return suffix
    return "UNKNOWN"


def exact_decimal(text: str, field_name: str, non_positive_reason: str) -> Decimal | Rejected:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return Rejected(INVALID_DECIMAL, f"{field_name} {text[:40]!r} is not a decimal number")
    if not value.is_finite():
        return Rejected(NON_FINITE_NUMBER, f"{field_name} {text[:40]!r} is not finite")
    if not PLAIN_DECIMAL.fullmatch(text):
        return Rejected(INVALID_DECIMAL, f"{field_name} {text[:40]!r} is not a plain decimal number")
    if value <= 0:
        return Rejected(non_positive_reason, f"{field_name} {text[:40]!r} is not above zero")
    scaled = value.quantize(_QUANTUM) if value.adjusted() < DECIMAL_PRECISION else None
    if scaled is None or scaled != value or len(scaled.as_tuple().digits) > DECIMAL_PRECISION:
        return Rejected(
            DECIMAL_OUT_OF_RANGE,
            f"{field_name} {text[:40]!r} does not fit decimal({DECIMAL_PRECISION},{DECIMAL_SCALE})",
        )
    return scaled


def unsubscribed(symbol: str, subscribed: frozenset[str], stream: str = UNKNOWN_STREAM) -> Rejected | None:
    """A streamed event of a symbol we did not ask for is refused, whatever its stream type."""
    return None if symbol in subscribed else Rejected(UNSUBSCRIBED_SYMBOL, f"symbol {symbol[:40]!r} was not subscribed", stream)


def screen_event(event: Trade | AggTrade | BookTicker, subscribed: frozenset[str], received_us: int) -> Rejected | None:
    """What a streamed event must satisfy beyond its shape: we asked for its symbol, and its
    time, if it has one, is plausible."""
    rejected = unsubscribed(event.symbol, subscribed)
    if rejected is not None:
        return rejected
    if isinstance(event, BookTicker):
        return None
    if abs(event.trade_time_ms * 1000 - received_us) > MAX_CLOCK_DISTANCE_US:
        return Rejected(
            TIMESTAMP_OUT_OF_RANGE,
            f"trade time {event.trade_time_ms} ms is more than 24 h from its receipt at {received_us // 1000} ms",
        )
    return None


def normalise_trade(trade: Trade, delivery: Delivery, quote_assets: Mapping[str, str]) -> Record | Rejected:
    return _trade_record(
        trade, delivery, quote_assets, message_id(delivery.venue, trade.symbol, trade.trade_id),
        f"{delivery.venue}-{trade.trade_id}", trade.trade_id, {},
    )


def normalise_agg_trade(agg: AggTrade, delivery: Delivery, quote_assets: Mapping[str, str]) -> Record | Rejected:
    """An aggregate trade as a TradeV2 record: its aggregate id is the source sequence, and
    the trade ids it aggregates are in vendor_data."""
    vendor_data = {"stream": AGG_TRADE, "first_trade_id": str(agg.first_trade_id), "last_trade_id": str(agg.last_trade_id)}
    return _trade_record(
        agg, delivery, quote_assets, message_id(delivery.venue, agg.symbol, agg.agg_id, AGG_TRADE),
        f"{delivery.venue}-AGG-{agg.agg_id}", agg.agg_id, vendor_data,
    )


def _trade_record(
    trade: Trade | AggTrade, delivery: Delivery, quote_assets: Mapping[str, str],
    record_id: str, trade_id: str, sequence: int, extra_vendor_data: dict[str, str],
) -> Record | Rejected:
    price = exact_decimal(trade.price, "price", NON_POSITIVE_PRICE)
    if isinstance(price, Rejected):
        return price
    quantity = exact_decimal(trade.quantity, "quantity", NON_POSITIVE_QUANTITY)
    if isinstance(quantity, Rejected):
        return quantity
    vendor_data = {
        "event_time": str(trade.event_time_ms),
        "is_buyer_maker": "true" if trade.buyer_is_maker else "false",
        "endpoint": delivery.endpoint,
        **extra_vendor_data,
    }
    if trade.best_match is not None:
        vendor_data["is_best_match"] = "true" if trade.best_match else "false"
    return {
        "message_id": record_id,
        "trade_id": trade_id,
        "symbol": trade.symbol,
        "exchange": delivery.venue,
        "asset_class": "crypto",
        "timestamp": trade.trade_time_ms * 1000,
        "price": price,
        "quantity": quantity,
        "currency": quote_currency(trade.symbol, quote_assets),
        "side": "SELL" if trade.buyer_is_maker else "BUY",
        "trade_conditions": [],
        "source_sequence": sequence,
        "platform_sequence": None,
        "ingestion_timestamp": delivery.received_us,
        "vendor_data": vendor_data,
    }


def venue_trade_record(delivery: Delivery, symbol: str, currency: str, trade_id: int, price_text: str, quantity_text: str,
                       taker_side: str, timestamp_us: int, stream: str, vendor_data: dict[str, str]) -> Record | Rejected:
    """A trade of a venue that numbers its trades per pair and names the taker's side
    ("buy", "sell"), as a TradeV2 record: the id is its source sequence."""
    price = exact_decimal(price_text, "price", NON_POSITIVE_PRICE)
    if isinstance(price, Rejected):
        return Rejected(price.reason, price.detail, stream)
    quantity = exact_decimal(quantity_text, "quantity", NON_POSITIVE_QUANTITY)
    if isinstance(quantity, Rejected):
        return Rejected(quantity.reason, quantity.detail, stream)
    return {
        "message_id": message_id(delivery.venue, symbol, trade_id),
        "trade_id": f"{delivery.venue}-{trade_id}",
        "symbol": symbol,
        "exchange": delivery.venue,
        "asset_class": "crypto",
        "timestamp": timestamp_us,
        "price": price,
        "quantity": quantity,
        "currency": currency,
        "side": "BUY" if taker_side == "buy" else "SELL",
        "trade_conditions": [],
        "source_sequence": trade_id,
        "platform_sequence": None,
        "ingestion_timestamp": delivery.received_us,
        "vendor_data": {**vendor_data, "endpoint": delivery.endpoint},
    }


def timed_quote_record(delivery: Delivery, symbol: str, currency: str, moment: int, touch: tuple[str, str, str, str],
                       stream: str, channel: str, vendor_data: dict[str, str]) -> Record | Rejected:
    """A quote of a venue that numbers no quote update, as a QuoteV2 record: named and
    numbered by its time, which also orders a symbol's quotes. `touch`: bid price and
    quantity, ask price and quantity, as the venue wrote them."""
    values = exact_touch(*touch, stream)
    if isinstance(values, Rejected):
        return Rejected(values.reason, values.detail, stream)
    return {
        "message_id": message_id(delivery.venue, symbol, moment, channel),
        "quote_id": f"{delivery.venue}-{symbol}-{moment}",
        "symbol": symbol,
        "exchange": delivery.venue,
        "asset_class": "crypto",
        "timestamp": moment,
        **values,
        "currency": currency,
        "source_sequence": moment,
        "platform_sequence": None,
        "ingestion_timestamp": delivery.received_us,
        "vendor_data": {"stream": channel, "endpoint": delivery.endpoint, **vendor_data},
    }


def exact_touch(bid_price: str, bid_quantity: str, ask_price: str, ask_quantity: str, stream: str) -> dict[str, Decimal] | Rejected:
    """A quote record's bid and ask, exact, and not crossed."""
    values = {}
    for name, text, non_positive in (
        ("bid_price", bid_price, NON_POSITIVE_PRICE),
        ("bid_quantity", bid_quantity, NON_POSITIVE_QUANTITY),
        ("ask_price", ask_price, NON_POSITIVE_PRICE),
        ("ask_quantity", ask_quantity, NON_POSITIVE_QUANTITY),
    ):
        value = exact_decimal(text, name, non_positive)
        if isinstance(value, Rejected):
            return value
        values[name] = value
    if values["bid_price"] > values["ask_price"]:
        return Rejected(CROSSED_QUOTE, f"bid {bid_price[:40]} is above ask {ask_price[:40]}", stream)
    return values


def normalise_quote(book: BookTicker, delivery: Delivery, quote_assets: Mapping[str, str]) -> Record | Rejected:
    """A bookTicker as a QuoteV2 record (schemas/quote_v2.avsc). The spot bookTicker has no
    time of its own, so `timestamp` is the receipt time."""
    values = exact_touch(book.bid_price, book.bid_quantity, book.ask_price, book.ask_quantity, BOOK_TICKER)
    if isinstance(values, Rejected):
        return values
    return {
        "message_id": message_id(delivery.venue, book.symbol, book.update_id, BOOK_TICKER),
        "quote_id": f"{delivery.venue}-{book.update_id}",
        "symbol": book.symbol,
        "exchange": delivery.venue,
        "asset_class": "crypto",
        "timestamp": delivery.received_us,
        **values,
        "currency": quote_currency(book.symbol, quote_assets),
        "source_sequence": book.update_id,
        "platform_sequence": None,
        "ingestion_timestamp": delivery.received_us,
        "vendor_data": {"stream": BOOK_TICKER, "endpoint": delivery.endpoint},
    }


def normalise_book(top: BookTop, venue: str, depth: int, quote_assets: Mapping[str, str]) -> Record | Rejected:
    """A book's best levels (k2actors.core.book) as an OrderBookV2 record (schemas/book_v2.avsc),
    named by the update id it stands at: at most one record per update id and symbol."""
    diff = top.diff
    endpoint, _, _ = diff.source
    sides = exact_levels(top.bids, top.asks)
    if isinstance(sides, Rejected):
        return sides
    return {
        "message_id": message_id(venue, top.symbol, diff.final_update_id, BOOK),
        "symbol": top.symbol,
        "exchange": venue,
        "asset_class": "crypto",
        "timestamp": diff.event_time_ms * 1000,
        "depth": depth,
        "bid_levels": len(sides["bids"]),
        "ask_levels": len(sides["asks"]),
        **sides,
        "currency": quote_currency(top.symbol, quote_assets),
        "source_sequence": diff.final_update_id,
        "platform_sequence": None,
        "ingestion_timestamp": diff.recv_ts_ns // 1000,
        "vendor_data": {"stream": BOOK, "endpoint": endpoint, "snapshot_update_id": str(top.snapshot_id),
                        "first_update_id": str(diff.first_update_id)},
    }


def windowed_book_record(delivery: Delivery, symbol: str, currency: str, window_us: int, timestamp_us: int,
                         levels: tuple[Sequence[Level], Sequence[Level]], depth: int, stream: str,
                         vendor_data: dict[str, str]) -> Record | Rejected:
    """A book of a venue that numbers no book update (Kraken's, Coinbase's), as an OrderBookV2
    record: named and numbered by its cadence window, so that the same frames derive it again
    with the same name. `levels`: bids and asks, best first, as the venue wrote them."""
    sides = exact_levels(*levels)
    if isinstance(sides, Rejected):
        return dataclasses.replace(sides, stream=stream)
    return {
        "message_id": message_id(delivery.venue, symbol, window_us, BOOK),
        "symbol": symbol,
        "exchange": delivery.venue,
        "asset_class": "crypto",
        "timestamp": timestamp_us,
        "depth": depth,
        "bid_levels": len(sides["bids"]),
        "ask_levels": len(sides["asks"]),
        **sides,
        "currency": currency,
        "source_sequence": window_us,
        "platform_sequence": None,
        "ingestion_timestamp": delivery.received_us,
        "vendor_data": {"stream": BOOK, "endpoint": delivery.endpoint, **vendor_data},
    }


def exact_levels(bids: Sequence[Level], asks: Sequence[Level]) -> dict[str, list[dict[str, Decimal]]] | Rejected:
    """A book record's `bids` and `asks`: each level's price and quantity exact."""
    sides: dict[str, list[dict[str, Decimal]]] = {"bids": [], "asks": []}
    for name, levels in (("bids", bids), ("asks", asks)):
        for price_text, quantity_text in levels:
            price = exact_decimal(price_text, f"{name} price", NON_POSITIVE_PRICE)
            if isinstance(price, Rejected):
                return dataclasses.replace(price, stream=BOOK)
            quantity = exact_decimal(quantity_text, f"{name} quantity", NON_POSITIVE_QUANTITY)
            if isinstance(quantity, Rejected):
                return dataclasses.replace(quantity, stream=BOOK)
            sides[name].append({"price": price, "quantity": quantity})
    return sides


def event_id(event: Trade | AggTrade | BookTicker) -> int:
    """The id a stream type is tracked by: trade id, aggregate id or update id."""
    if isinstance(event, Trade):
        return event.trade_id
    return event.agg_id if isinstance(event, AggTrade) else event.update_id


def stream_of(event: Trade | AggTrade | BookTicker) -> str:
    if isinstance(event, Trade):
        return TRADE
    return AGG_TRADE if isinstance(event, AggTrade) else BOOK_TICKER


def shape_event(
    event: Trade | AggTrade | BookTicker, delivery: Delivery, quote_assets: Mapping[str, str],
    subscribed: frozenset[str] | None,
) -> tuple[str, Record] | Rejected:
    """(stream type, record) for an exchange event, or why it is refused, the Rejected naming
    its stream. A streamed event is also screened against `subscribed` and its receipt time;
    REST history (`subscribed` None) is old by nature and asked for by symbol, so it is not."""
    stream = stream_of(event)
    record: Record | Rejected
    if isinstance(event, Trade):
        record = normalise_trade(event, delivery, quote_assets)
    elif isinstance(event, AggTrade):
        record = normalise_agg_trade(event, delivery, quote_assets)
    else:
        record = normalise_quote(event, delivery, quote_assets)
    if subscribed is not None and not isinstance(record, Rejected):
        record = screen_event(event, subscribed, delivery.received_us) or record
    if isinstance(record, Rejected):
        return record if record.stream != UNKNOWN_STREAM else dataclasses.replace(record, stream=stream)
    return stream, record
