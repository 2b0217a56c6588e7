"""Reading the fields of a venue's JSON item, each refused with the reason a dead letter
names: the readers every venue's frames share (k2actors.core.kraken, k2actors.core.coinbase).

A reader raises `Refused` from deep inside an item; the item's reader turns it into the
item's `Rejected`, so one bad item is refused without its neighbours. Nothing else raises.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from k2actors.core.frames import (
    INVALID_DECIMAL,
    MISSING_FIELD,
    NON_POSITIVE_PRICE,
    NON_POSITIVE_QUANTITY,
    PLAIN_DECIMAL,
    TIMESTAMP_OUT_OF_RANGE,
    UNEXPECTED_SHAPE,
    WRONG_TYPE,
    Rejected,
)


class Refused(Exception):
    """Inside the reading of one item: why it is refused (each item's reader returns it)."""

    def __init__(self, rejected: Rejected):
        super().__init__(rejected.detail)
        self.rejected = rejected


def object_field(item: object, what: str, stream: str) -> dict:
    if not isinstance(item, dict):
        raise Refused(Rejected(UNEXPECTED_SHAPE, f"{what} is {type(item).__name__}, not an object", stream))
    return item


def typed_fields(item: dict, fields: tuple[tuple[str, type], ...], stream: str) -> list:
    values = []
    for name, kind in fields:
        if name not in item:
            raise Refused(Rejected(MISSING_FIELD, f"{stream} field {name!r} is missing", stream))
        value = item[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Refused(Rejected(WRONG_TYPE, f"{stream} field {name!r} is {type(value).__name__}, expected {kind.__name__}",
                                   stream))
        values.append(value)
    return values


def decimal_field(item: dict, name: str, stream: str, *, price: bool, zero_allowed: bool = False) -> str:
    """A price (never 0) or a quantity, as the venue wrote it: a JSON number read as text, or
    a string, either a plain decimal."""
    value = item.get(name)
    if value is None:
        raise Refused(Rejected(MISSING_FIELD, f"{stream} field {name!r} is missing", stream))
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Refused(Rejected(WRONG_TYPE, f"{stream} field {name!r} is {type(value).__name__}, expected a number", stream))
    text = str(value)
    if not PLAIN_DECIMAL.fullmatch(text):
        raise Refused(Rejected(INVALID_DECIMAL, f"{stream} field {name!r} is {text[:40]!r}, not a plain decimal", stream))
    number = Decimal(text)
    if number < 0 or (number == 0 and not zero_allowed):
        reason = NON_POSITIVE_PRICE if price else NON_POSITIVE_QUANTITY
        raise Refused(Rejected(reason, f"{stream} field {name!r} is {text[:40]}", stream))
    return text


def microseconds(timestamp: object, stream: str) -> int:
    """An RFC 3339 UTC time (`2024-05-27T12:33:10.826003Z`; digits past the microsecond are
    cut, as Coinbase's nanoseconds) in microseconds since the epoch."""
    if not isinstance(timestamp, str):
        raise Refused(Rejected(WRONG_TYPE, f"{stream} timestamp is {type(timestamp).__name__}, expected a string", stream))
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        raise Refused(Rejected(TIMESTAMP_OUT_OF_RANGE, f"{stream} timestamp {timestamp[:40]!r} is no RFC 3339 time",
                               stream)) from None
    if moment.tzinfo is None:
        raise Refused(Rejected(TIMESTAMP_OUT_OF_RANGE, f"{stream} timestamp {timestamp[:40]!r} has no time zone", stream))
    return (moment - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = datetime.resolution
