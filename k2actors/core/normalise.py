"""Shape a parsed Binance trade into a K2 v2 trade record (schemas/trade_v2.avsc).

Prices and quantities stay exact: strings become Decimals checked against the
schema's decimal(18, 8), never floats.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Mapping

from k2actors.core.binance import (
    AGG_TRADE,
    BOOK_TICKER,
    CROSSED_QUOTE,
    DECIMAL_OUT_OF_RANGE,
    INVALID_DECIMAL,
    NON_FINITE_NUMBER,
    NON_POSITIVE_PRICE,
    NON_POSITIVE_QUANTITY,
    TIMESTAMP_OUT_OF_RANGE,
    UNSUBSCRIBED_SYMBOL,
    AggTrade,
    BookTicker,
    Rejected,
    Trade,
)

DECIMAL_PRECISION = 18
DECIMAL_SCALE = 8
# Binance writes plain decimals; Decimal() would also take "1e3", " 1", "1_000" or other scripts' digits.
_PLAIN_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_INTEGER_DIGITS = DECIMAL_PRECISION - DECIMAL_SCALE
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where and when a frame arrived."""

    venue: str
    endpoint: str
    received_us: int


def message_id(venue: str, symbol: str, trade_id: int, stream: str = "") -> str:
    """uuid5 of `venue:symbol:id` (other streams: `venue:symbol:stream:id`), as uuid.uuid5
    computes it, without building UUID objects: this runs for every record."""
    name = f"{venue}:{symbol}:{trade_id}" if not stream else f"{venue}:{symbol}:{stream}:{trade_id}"
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def quote_currency(symbol: str, quote_assets: Mapping[str, str]) -> str:
    """The quote asset from exchangeInfo when known, else from the symbol's suffix."""
    if symbol in quote_assets:
        return quote_assets[symbol]
    for suffix in _QUOTE_SUFFIXES:
        if symbol.endswith(suffix) and len(symbol) > len(suffix):
            return suffix
    return "UNKNOWN"


def exact_decimal(text: str, field_name: str, non_positive_reason: str) -> Decimal | Rejected:
    """The value at scale 8, judged from the text itself: a plain decimal needs no arithmetic
    to tell whether it is above zero and fits decimal(18, 8), and this runs for every record."""
    plain = _PLAIN_DECIMAL.fullmatch(text)
    if plain is None:
        return _not_plain(text, field_name)
    sign, whole, fraction = plain[1], plain[2].lstrip("0"), (plain[3] or "").rstrip("0")
    if sign or not (whole or fraction):
        return Rejected(non_positive_reason, f"{field_name} {text[:40]!r} is not above zero")
    if len(fraction) > DECIMAL_SCALE or len(whole) > _INTEGER_DIGITS:
        return Rejected(
            DECIMAL_OUT_OF_RANGE,
            f"{field_name} {text[:40]!r} does not fit decimal({DECIMAL_PRECISION},{DECIMAL_SCALE})",
        )
    return Decimal(f"{whole or '0'}.{fraction:0<{DECIMAL_SCALE}}")


def _not_plain(text: str, field_name: str) -> Rejected:
    try:
        finite = Decimal(text).is_finite()
    except InvalidOperation:
        return Rejected(INVALID_DECIMAL, f"{field_name} {text[:40]!r} is not a decimal number")
    if not finite:
        return Rejected(NON_FINITE_NUMBER, f"{field_name} {text[:40]!r} is not finite")
    return Rejected(INVALID_DECIMAL, f"{field_name} {text[:40]!r} is not a plain decimal number")


def screen_trade(trade: Trade | AggTrade | BookTicker, subscribed: frozenset[str], received_us: int) -> Rejected | None:
    """What a streamed event must satisfy beyond its shape: we asked for its symbol, and its
    time, if it has one, is plausible."""
    if trade.symbol not in subscribed:
        return Rejected(UNSUBSCRIBED_SYMBOL, f"symbol {trade.symbol[:40]!r} was not subscribed")
    if isinstance(trade, BookTicker):
        return None
    if abs(trade.trade_time_ms * 1000 - received_us) > MAX_CLOCK_DISTANCE_US:
        return Rejected(
            TIMESTAMP_OUT_OF_RANGE,
            f"trade time {trade.trade_time_ms} ms is more than 24 h from its receipt at {received_us // 1000} ms",
        )
    return None


def normalise_trade(trade: Trade, delivery: Delivery, quote_assets: Mapping[str, str]) -> dict | Rejected:
    return _trade_record(
        trade, delivery, quote_assets, message_id(delivery.venue, trade.symbol, trade.trade_id),
        f"{delivery.venue}-{trade.trade_id}", trade.trade_id, {},
    )


def normalise_agg_trade(agg: AggTrade, delivery: Delivery, quote_assets: Mapping[str, str]) -> dict | Rejected:
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
) -> dict | Rejected:
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


def normalise_quote(book: BookTicker, delivery: Delivery, quote_assets: Mapping[str, str]) -> dict | Rejected:
    """A bookTicker as a QuoteV2 record (schemas/quote_v2.avsc). The spot bookTicker has no
    time of its own, so `timestamp` is the receipt time."""
    values = {}
    for name, text, non_positive in (
        ("bid_price", book.bid_price, NON_POSITIVE_PRICE),
        ("bid_quantity", book.bid_quantity, NON_POSITIVE_QUANTITY),
        ("ask_price", book.ask_price, NON_POSITIVE_PRICE),
        ("ask_quantity", book.ask_quantity, NON_POSITIVE_QUANTITY),
    ):
        value = exact_decimal(text, name, non_positive)
        if isinstance(value, Rejected):
            return value
        values[name] = value
    if values["bid_price"] > values["ask_price"]:
        return Rejected(CROSSED_QUOTE, f"bid {book.bid_price[:40]} is above ask {book.ask_price[:40]}", BOOK_TICKER)
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
