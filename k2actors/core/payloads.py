"""What travels on the path of a trade, as the core makes and takes it: frames from the
connections, records for the producer, dead letters, pages of REST history. The actor
messages (k2actors.messages) carry these; the core never imports the actors' side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from k2actors.core.binance import AggTrade, Trade
from k2actors.core.coinbase import CoinbaseTrade
from k2actors.core.frames import Rejected
from k2actors.core.kraken import KrakenTrade
from k2actors.core.link import Frame
from k2actors.core.ranges import StreamPosition
from k2actors.core.raw import Headers

# A K2 v2 record as the Avro serializer takes it (TradeV2, QuoteV2 or RawFrameV1).
Record = dict[str, Any]
# (stream type, venue, symbol) -> where that stream stands in Kafka: its highest id, and
# the ids below it that are not there.
Positions = Mapping[tuple[str, str, str], StreamPosition]

# Batch payloads say what they are without their contents: Thespian takes the repr of every
# message it sends (for batches that once cost a fifth of the Normaliser's time; BackfilledTrades
# still goes that way), and a log line about a batch must not print thousands of frames.


@dataclass(frozen=True, repr=False)
class RawBatch:
    """Frames as received, each with its receive time, its connection and its number there."""

    url: str
    venue: str
    seq: int
    frames: tuple[Frame, ...]

    def __repr__(self) -> str:
        return f"RawBatch(url={self.url!r}, seq={self.seq}, {len(self.frames)} frames)"


@dataclass(frozen=True, repr=False)
class PoisonedFrames:
    """Frames of a RawBatch the Normaliser failed on twice: to the DLQ as they are, unparsed
    (and to the raw topic, as every frame)."""

    url: str
    venue: str
    frames: tuple[Frame, ...]
    detail: str

    def __repr__(self) -> str:
        return f"PoisonedFrames(url={self.url!r}, {len(self.frames)} frames, detail={self.detail!r})"


@dataclass(frozen=True)
class DeadLetter:
    raw: bytes
    reason: str
    detail: str
    endpoint: str
    received_us: int
    stream: str  # the stream type it came on, or "unknown"


class Encoded(NamedTuple):
    """A record as it goes to Kafka: its Avro body (k2actors.core.avro), with what the
    producer needs to know of it without reading the body. A tuple: it is pickled on its way
    to the producer, thousands a second."""

    stream: str  # the stream type: it picks topic and schema
    venue: str
    key: str  # the Kafka key: the symbol; a raw record's connection id
    event_id: int  # the record's source sequence; a raw record's conn_msg_seq
    received_us: int  # when the service received it (ingestion_timestamp)
    event_us: int  # the venue's time of it (timestamp); 0 for a raw record: frames are not timed
    body: bytes
    headers: Headers  # its lineage


@dataclass(frozen=True, repr=False)
class RecordBatch:
    seq: int
    records: tuple[Encoded, ...]
    dead_letters: tuple[DeadLetter, ...]

    def __repr__(self) -> str:
        return f"RecordBatch(seq={self.seq}, {len(self.records)} records, {len(self.dead_letters)} dead letters)"


@dataclass(frozen=True, repr=False)
class BackfilledTrades:
    """A page of history inside a gap, in id order; rows that are not trades come as
    (row as JSON, Rejected) for the DLQ."""

    stream: str  # trade, aggTrade, kraken.trade or coinbase.trade
    venue: str
    symbol: str  # the records'
    url: str
    received_us: int
    trades: tuple[Trade | AggTrade | KrakenTrade | CoinbaseTrade, ...]
    rejected: tuple[tuple[bytes, Rejected], ...]  # (the row as JSON, why it is no trade)
    target: str  # the resource asked for: path and query
    conn_id: str  # the response's own, for the raw record
    body: bytes  # the response as received: kept in the raw record

    def __repr__(self) -> str:
        return f"BackfilledTrades({self.stream} {self.venue} {self.symbol}, {len(self.trades)} events, {len(self.rejected)} rejected)"


@dataclass(frozen=True, repr=False)
class FetchedSnapshot:
    """A REST snapshot of a symbol's order book, as received (k2actors.core.book rebuilds the
    book from it; the raw record keeps it)."""

    venue: str
    symbol: str
    url: str  # the REST base URL
    target: str  # the resource asked for: path and query
    conn_id: str  # the response's own, for the raw record
    received_us: int
    body: bytes

    def __repr__(self) -> str:
        return f"FetchedSnapshot({self.venue} {self.symbol}, {len(self.body)} bytes)"
