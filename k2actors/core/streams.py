"""The stream types: every stream of records the service publishes, and how each is kept.

A stream type is named here once, with what everything downstream of the venue adapters
needs to know of it: its topic (the `kafka` configuration key that names it), its schema,
how its records are numbered, and what they are called in the log. The ledger, the
producer's account of what Kafka holds, checkpoints and replay ask this table, never a list
of names of their own, so that a venue's streams are added here and nowhere else.

Stream type names are stored (in checkpoints, metric labels, dead letters): they never change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from k2actors.core import coinbase
from k2actors.core.binance import AGG_TRADE, BOOK, BOOK_TICKER, TRADE
from k2actors.core.kraken import BOOK_STREAM, RAW_STREAM, TICKER_STREAM, TRADE_STREAM
from k2actors.core.raw import RAW


class Numbering(enum.Enum):
    """How a stream type's records are numbered, which says how they are tracked."""

    # Per symbol, consecutively (trade ids): a missing id is a gap, found, reported and filled.
    CONSECUTIVE = "consecutive"
    # Per symbol, increasing with jumps (quotes, books): each record supersedes the last, there
    # is no gap to find, and what Kafka holds is its highest number.
    SUPERSEDING = "superseding"
    # Per connection, each frame received (the raw record).
    FRAMES = "frames"


@dataclass(frozen=True, slots=True)
class StreamType:
    name: str
    topic_key: str  # the `kafka` configuration key naming its topic
    schema: str  # its file in k2actors/schemas
    numbering: Numbering
    noun: str  # its records, as the log names them


STREAM_TYPES: dict[str, StreamType] = {
    stream.name: stream for stream in (
        StreamType(TRADE, "topic", "trade_v2.avsc", Numbering.CONSECUTIVE, "trades"),
        # Aggregate trades are trades too: TradeV2, on a topic of their own.
        StreamType(AGG_TRADE, "aggtrade_topic", "trade_v2.avsc", Numbering.CONSECUTIVE, "aggregate trades"),
        StreamType(BOOK_TICKER, "quote_topic", "quote_v2.avsc", Numbering.SUPERSEDING, "quotes"),
        StreamType(BOOK, "book_topic", "book_v2.avsc", Numbering.SUPERSEDING, "books"),
        StreamType(RAW, "raw_topic", "raw_frame_v1.avsc", Numbering.FRAMES, "frames"),
        StreamType(TRADE_STREAM, "kraken_trade_topic", "trade_v2.avsc", Numbering.CONSECUTIVE, "trades"),
        # Kraken's quotes and books are numbered by their time, which only increases.
        StreamType(TICKER_STREAM, "kraken_quote_topic", "quote_v2.avsc", Numbering.SUPERSEDING, "quotes"),
        StreamType(BOOK_STREAM, "kraken_book_topic", "book_v2.avsc", Numbering.SUPERSEDING, "books"),
        StreamType(RAW_STREAM, "kraken_raw_topic", "raw_frame_v1.avsc", Numbering.FRAMES, "frames"),
        StreamType(coinbase.TRADE_STREAM, "coinbase_trade_topic", "trade_v2.avsc", Numbering.CONSECUTIVE, "trades"),
        # Coinbase's quotes and books are numbered by the time of their frame, which only increases.
        StreamType(coinbase.TICKER_STREAM, "coinbase_quote_topic", "quote_v2.avsc", Numbering.SUPERSEDING, "quotes"),
        StreamType(coinbase.BOOK_STREAM, "coinbase_book_topic", "book_v2.avsc", Numbering.SUPERSEDING, "books"),
        StreamType(coinbase.RAW_STREAM, "coinbase_raw_topic", "raw_frame_v1.avsc", Numbering.FRAMES, "frames"),
    )
}
# The stream types whose ids are consecutive: gaps are found in them, reported and filled.
CONSECUTIVE = tuple(name for name, stream in STREAM_TYPES.items() if stream.numbering is Numbering.CONSECUTIVE)
SUPERSEDING = tuple(name for name, stream in STREAM_TYPES.items() if stream.numbering is Numbering.SUPERSEDING)


# The fields of a record that say what it is: (venue, whose, which one). Events are a
# symbol's, numbered by the venue; raw frames a connection's, numbered by it.
EVENT_IDENTITY = ("exchange", "symbol", "source_sequence")
FRAME_IDENTITY = ("exchange", "conn_id", "conn_msg_seq")


def identity(stream: str) -> tuple[str, str, str]:
    """The fields that say which record of the stream type a record is."""
    return FRAME_IDENTITY if is_raw(stream) else EVENT_IDENTITY


def is_raw(stream: str) -> bool:
    """A stream of frames as received (a venue's raw record), not of records derived from them."""
    return STREAM_TYPES[stream].numbering is Numbering.FRAMES


def noun(stream: str) -> str:
    return STREAM_TYPES[stream].noun
