"""What every venue's frames are read with: the reasons a frame is refused (each also a
metric label and the dead letter's reason), `Rejected`, and the JSON guard every frame
passes first (size, JSON, nesting, an object)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

# DLQ reasons; each is also the `reason` / `error_type` label of the metrics.
NOT_JSON = "not_json"
UNEXPECTED_SHAPE = "unexpected_shape"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_EVENT = "unknown_event"
INVALID_DECIMAL = "invalid_decimal"
DECIMAL_OUT_OF_RANGE = "decimal_out_of_range"
FRAME_TOO_LARGE = "frame_too_large"
TOO_DEEPLY_NESTED = "too_deeply_nested"
ID_OUT_OF_RANGE = "id_out_of_range"
NON_FINITE_NUMBER = "non_finite_number"
NON_POSITIVE_PRICE = "non_positive_price"
NON_POSITIVE_QUANTITY = "non_positive_quantity"
UNSUBSCRIBED_SYMBOL = "unsubscribed_symbol"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
ID_REGRESSED = "id_regressed"
INVALID_TRADE_RANGE = "invalid_trade_range"  # an aggTrade whose first trade id is after its last
CROSSED_QUOTE = "crossed_quote"  # a bookTicker whose best bid is above its best ask
# Not the exchange's fault: the service failed on a frame (a bug) or on a record.
INTERNAL_ERROR = "internal_error"
SERIALIZATION_FAILED = "serialization_failed"
POISON_MESSAGE = "poison_message"  # an actor failed twice on the message that carried it
# Every reason a frame from the exchange can be rejected for (the service's own failures aside).
EXCHANGE_REASONS = (
    NOT_JSON, UNEXPECTED_SHAPE, MISSING_FIELD, WRONG_TYPE, UNKNOWN_EVENT, INVALID_DECIMAL, DECIMAL_OUT_OF_RANGE,
    FRAME_TOO_LARGE, TOO_DEEPLY_NESTED, ID_OUT_OF_RANGE, NON_FINITE_NUMBER, NON_POSITIVE_PRICE,
    NON_POSITIVE_QUANTITY, UNSUBSCRIBED_SYMBOL, TIMESTAMP_OUT_OF_RANGE, ID_REGRESSED, INVALID_TRADE_RANGE, CROSSED_QUOTE,
)

UNKNOWN_STREAM = "unknown"  # a frame whose stream type cannot be told

# A Binance trade frame nests two levels deep, a Kraken book frame five; anything much deeper is from no venue.
MAX_JSON_DEPTH = 8
MAX_AVRO_LONG = 2**63 - 1
MAX_TRADE_ID = MAX_AVRO_LONG
# A venue's decimal as plain digits: Decimal() would also take "1e3", " 1", "+1", "1_000",
# "NaN" or other scripts' digits.
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?", re.ASCII)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str
    stream: str = UNKNOWN_STREAM  # the stream type the frame came on, when it can be told


def load_object(raw: bytes | str, max_bytes: int, parse_float: Callable[[str], object] | None = None) -> dict | Rejected:
    """A frame's JSON object, or why it is none: too large, not JSON, nested too deeply, or
    not an object. `parse_float`: as json.loads's (str keeps a venue's numbers as written)."""
    if len(raw) > max_bytes:
        return Rejected(FRAME_TOO_LARGE, f"{len(raw)} bytes, more than {max_bytes}; the dead letter keeps the first {max_bytes}")
    try:
        message = json.loads(raw, parse_float=parse_float)
    except RecursionError:
        return Rejected(TOO_DEEPLY_NESTED, "nesting exhausted the JSON parser")
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejected(NOT_JSON, str(exc)[:200])
    # Counting brackets is cheap and bounds the depth from above, so a plain trade frame
    # never pays for the walk.
    if _bracket_count(raw) > MAX_JSON_DEPTH and _depth(message) > MAX_JSON_DEPTH:
        return Rejected(TOO_DEEPLY_NESTED, f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(message, dict):
        return Rejected(UNEXPECTED_SHAPE, f"top level is {type(message).__name__}, not an object")
    return message


def load_rows(body: bytes, endpoint: str) -> list[object] | Rejected:
    """A REST answer's JSON list (of trades), or why it is none."""
    try:
        rows = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return Rejected(NOT_JSON, str(exc)[:200])
    if not isinstance(rows, list):
        return Rejected(UNEXPECTED_SHAPE, f"{endpoint} answered {type(rows).__name__}, not a list")
    return rows


def _bracket_count(raw: bytes | str) -> int:
    if isinstance(raw, str):
        return raw.count("{") + raw.count("[")
    return raw.count(b"{") + raw.count(b"[")


def _depth(value: object) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
