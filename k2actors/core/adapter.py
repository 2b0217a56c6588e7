"""A venue adapter: what the service makes of the bytes a venue sends, and nothing else.

Fed a frame as received (its receive time, its connection and its number there, its bytes),
an adapter answers, in this order: the frame's raw record, the events it carries, why it
carries none when it is not understood, and what the shell is to do about it (a request
answered or refused, a connection to replace). `shape` turns an event into the record
published for it, `history` reads a page of the venue's REST history, `snapshot` a REST
snapshot of a book, and `shape_book` turns a book's best levels (k2actors.core.book keeps
the book) into its record. No I/O and no state: the live path (k2actors.core.ledger) and
replay (k2actors.core.replay) run the same adapter, so a record replayed from the raw record
is the record published live.

Binance's, Kraken's and Coinbase's follow this contract.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from k2actors.core.backfill import HISTORY
from k2actors.core.binance import (
    BOOK,
    DEPTH_PATH,
    AggTrade,
    BookTicker,
    ServerShutdown,
    SubscriptionError,
    SubscriptionReply,
    Trade,
    depth_snapshot,
    read_frame,
)
from k2actors.core.book import BookTop, DepthDiff, DepthSnapshot
from k2actors.core.frames import WRONG_TYPE, Rejected
from k2actors.core.link import Frame
from k2actors.core.normalise import Delivery, normalise_book, shape_event
from k2actors.core.payloads import Record
from k2actors.core.raw import raw_record

MarketEvent = Trade | AggTrade | BookTicker
# Paths of the REST history, and the stream type each serves.
HISTORY_PATHS = {history.path: stream for stream, history in HISTORY.items()}


@dataclass(frozen=True, slots=True)
class Answer:
    """The venue answered one of the connection's requests: `refusal` is its (code, message),
    None for success."""

    request_id: object
    refusal: tuple[int, str] | None


@dataclass(frozen=True, slots=True)
class Replace:
    """The venue announced it will close the connection (Binance's serverShutdown): replace it now."""


Action = Answer | Replace


E = TypeVar("E")  # a venue's events


@dataclass(frozen=True, slots=True)
class Reading(Generic[E]):
    """One frame, read."""

    raw: dict[str, Any]  # its raw record (k2actors.core.raw), stream and symbol filled in where the frame says
    events: tuple[E, ...]  # (Binance) a diff knows where it came from (its `source`)
    rejected: tuple[Rejected, ...]  # why the frame (or an item of it) is no event, for the DLQ; none for events and control frames
    actions: tuple[Action, ...]
    # The frame's number in its connection, where the venue numbers every frame (Coinbase's
    # sequence_num): a break in it is a lost frame.
    sequence: int | None = None


def items_reading(venue: str, endpoint: str, frame: Frame, stream: str, items: Sequence[object], kinds: tuple[type, ...],
                  symbol_of: Callable[[Any], str | None], actions: tuple[Action, ...] = (), sequence: int | None = None
                  ) -> Reading[Any]:
    """The reading of a frame that carries several items (Kraken's, Coinbase's): its raw
    record named by the one symbol its events are of (when they are of one), its events (the
    items of `kinds`) and the items refused."""
    received_ns, conn_id, conn_msg_seq, payload = frame
    raw = raw_record(venue, endpoint, received_ns, conn_id, conn_msg_seq, payload)
    raw["stream"] = stream
    events = tuple(item for item in items if isinstance(item, kinds))
    symbols = {symbol for symbol in map(symbol_of, events) if symbol is not None}
    if len(symbols) == 1:
        raw["symbol"] = symbols.pop()
    return Reading(raw, events, tuple(item for item in items if isinstance(item, Rejected)), actions, sequence)


class BinanceAdapter:
    def __init__(self, symbols: frozenset[str], quote_assets: Mapping[str, str], max_frame_bytes: int):
        """`symbols`: subscribed (a streamed event of another is refused); `quote_assets`: from
        the venue's exchangeInfo (a record's currency)."""
        self._symbols = symbols
        self._quote_assets = quote_assets
        self._max_frame_bytes = max_frame_bytes

    def read(self, venue: str, endpoint: str, frame: Frame) -> Reading[MarketEvent | DepthDiff]:
        received_ns, conn_id, conn_msg_seq, payload = frame
        raw = raw_record(venue, endpoint, received_ns, conn_id, conn_msg_seq, payload)
        stream_name, event = read_frame(payload, self._max_frame_bytes)
        raw["stream"] = stream_name
        if isinstance(event, (Trade, AggTrade, BookTicker)):
            raw["symbol"] = event.symbol
            return Reading(raw, (event,), (), ())
        if isinstance(event, DepthDiff):
            raw["symbol"] = event.symbol
            return Reading(raw, (dataclasses.replace(event, recv_ts_ns=received_ns, source=(endpoint, conn_id, conn_msg_seq)),),
                           (), ())
        if isinstance(event, Rejected):
            return Reading(raw, (), (event,), ())
        if isinstance(event, ServerShutdown):
            return Reading(raw, (), (), (Replace(),))
        if isinstance(event, SubscriptionReply):
            return Reading(raw, (), (), (Answer(event.request_id, None),))
        assert isinstance(event, SubscriptionError)
        return Reading(raw, (), (), (Answer(event.request_id, (event.code, event.message)),))

    def shape(self, event: MarketEvent, delivery: Delivery, streamed: bool) -> tuple[str, dict[str, Any]] | Rejected:
        """(stream type, record), or why the event cannot be one. A streamed event is screened
        against the subscription and its receive time; one from REST history is marked backfilled."""
        shaped = shape_event(event, delivery, self._quote_assets, self._symbols if streamed else None)
        if not streamed and not isinstance(shaped, Rejected):
            shaped[1]["vendor_data"]["backfilled"] = "true"
        return shaped

    def shape_book(self, top: BookTop, venue: str, depth: int) -> Record | Rejected:
        """The record of a book's best levels, or why they cannot be one."""
        return normalise_book(top, venue, depth, self._quote_assets)

    @staticmethod
    def snapshot(target: str, symbol: str, body: bytes) -> DepthSnapshot | Rejected:
        """A REST snapshot of `symbol`'s book (`target`: the path and query asked for, which
        says how many levels were asked for)."""
        path, _, query = target.partition("?")
        limits = urllib.parse.parse_qs(query).get("limit", [])
        if path != DEPTH_PATH or len(limits) != 1 or not limits[0].isdigit():
            return Rejected(WRONG_TYPE, f"{target[:100]!r} is no depth snapshot request with a limit", BOOK)
        return depth_snapshot(body, symbol, int(limits[0]))

    def history(self, target: str, symbol: str, body: bytes) -> Sequence[Trade | AggTrade]:
        """The trades of a page of REST history (`target`: the path and query asked for); none
        when it is no history or cannot be read."""
        stream = HISTORY_PATHS.get(target.partition("?")[0])
        rows = HISTORY[stream].parse(body, symbol) if stream is not None else []
        return [] if isinstance(rows, Rejected) else [event for _, event in rows if isinstance(event, (Trade, AggTrade))]
