"""The raw record: every frame a venue sent, byte for byte, as the system of record.

Each websocket connection has an id of its own (`conn_id`, fresh for every connection) and
numbers the frames it receives 1, 2, 3, ... (`conn_msg_seq`); the receive time is taken in
nanoseconds before anything parses the frame. A raw record keeps those with the frame as
received, whatever it turns out to be: a trade, a reply to a request, garbage. Records
derived from a frame carry its identity as Kafka headers (`lineage`), so that each can be
traced to the bytes it came from, and the raw topic replayed to derive it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from k2actors.core.ranges import IdRanges

V = TypeVar("V")

# The stream type of raw records: its own topic and schema, like trade or bookTicker.
RAW = "raw"

Headers = tuple[tuple[str, bytes], ...]

# The lineage headers of a record derived from a streamed frame ...
CONN_ID = "k2.conn_id"
CONN_MSG_SEQ = "k2.conn_msg_seq"
RECV_TS_NS = "k2.recv_ts_ns"
# ... and, besides those, of a record derived from a REST response (backfill): the URL asked.
SOURCE_URL = "k2.source_url"


# The raw record's sources (connections, REST responses) remembered for deduplication and
# checkpointed: a frame is handed to Kafka again only while its batch waits for an
# acknowledgement, moments after it came, so the oldest are forgotten past this many; months
# of reconnects and backfill pages then cost neither memory nor checkpoint size.
RAW_SOURCES_KEPT = 10_000


def forget_oldest_sources(ids: dict[tuple[str, str], V], kept: int = RAW_SOURCES_KEPT) -> None:
    """Down to the `kept` newest sources, once there are a tenth more, of a raw stream's ids
    keyed by (venue, conn_id): conn_ids begin with the time they were made (k2actors.net)."""
    if len(ids) > kept + kept // 10:
        for key in sorted(ids, key=lambda key: key[1])[: len(ids) - kept]:
            del ids[key]


def frames_lost(received: int, confirmed: int, held: IdRanges | None) -> IdRanges:
    """The numbers of the frames a connection received (1 to `received`) that are not in Kafka
    and never will be, its process having ended: after the last it knew Kafka had
    (`confirmed`), those of which Kafka holds nothing (`held`, what the producer knows it
    holds of the connection, if anything)."""
    lost = IdRanges()
    start = confirmed + 1
    for first, last in held.ranges() if held else ():
        if first > received:
            break
        if last >= start:
            if first > start:
                lost.add_range(start, first - 1)
            start = last + 1
    if start <= received:
        lost.add_range(start, received)
    return lost


def raw_record(venue: str, endpoint: str, recv_ts_ns: int, conn_id: str, conn_msg_seq: int, payload: bytes) -> dict[str, Any]:
    """A frame as received (schemas/raw_frame_v1.avsc); `stream` and `symbol` are filled in
    once the frame is understood, and stay None when it is not."""
    return {
        "exchange": venue,
        "endpoint": endpoint,
        "conn_id": conn_id,
        "conn_msg_seq": conn_msg_seq,
        "recv_ts_ns": recv_ts_ns,
        "stream": None,
        "symbol": None,
        "payload": payload,
    }


def frame_lineage(conn_id: str, conn_msg_seq: int, recv_ts_ns: int) -> Headers:
    return ((CONN_ID, conn_id.encode()), (CONN_MSG_SEQ, str(conn_msg_seq).encode()), (RECV_TS_NS, str(recv_ts_ns).encode()))


@dataclass(frozen=True, slots=True)
class RestResponse:
    """A REST response records came from (exchangeInfo, a page of trade history): kept in the
    raw record as its connection's one message."""

    venue: str
    endpoint: str  # the base URL
    target: str  # the path and query asked for: the raw record's `stream`
    conn_id: str
    recv_ts_ns: int
    body: bytes
    symbol: str | None = None  # when the response concerns exactly one

    def raw_record(self) -> dict[str, Any]:
        record = raw_record(self.venue, self.endpoint, self.recv_ts_ns, self.conn_id, 1, self.body)
        record["stream"], record["symbol"] = self.target, self.symbol
        return record

    def lineage(self) -> Headers:
        """A REST response is its connection's one message: its lineage is a frame's, and the URL asked."""
        return (*frame_lineage(self.conn_id, 1, self.recv_ts_ns), (SOURCE_URL, (self.endpoint + self.target).encode()))
