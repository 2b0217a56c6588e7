"""Records derived again from the raw record, and compared with what the live topics hold.

The raw topic keeps every frame and every REST response the records came from (k2actors.core.raw).
`Replay` takes its records in any order and derives, through the same parsing and shaping as
the live path, every record each of them yields; `verify` holds the live records against
that: each must be what its own source (named by its lineage headers) derives, field for
field, and once; and every record the sources derive must be live.

No I/O: the shell reads the topics and decodes the records (both sides alike), and writes or
prints what comes out.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k2actors.core.adapter import HISTORY_PATHS, BinanceAdapter, Reading
from k2actors.core.binance import BOOK, DEPTH_PATH, quote_assets
from k2actors.core.book import BookSync, BookTop, DepthDiff, DepthSnapshot
from k2actors.core.book import Output as BookOutput
from k2actors.core.checksummed_book import CheckedTop
from k2actors.core.coinbase import BOOK_STREAM as COINBASE_BOOK_STREAM
from k2actors.core.coinbase import STATUS, BookEvent, CoinbaseTrade, Products
from k2actors.core.coinbase import VENUE as COINBASE
from k2actors.core.coinbase import HistoryPage as CoinbaseHistoryPage
from k2actors.core.coinbase_adapter import CoinbaseAdapter
from k2actors.core.coinbase_backfill import PRODUCTS_PATH
from k2actors.core.coinbase_books import CoinbaseBooks, SequencedTop
from k2actors.core.connection_books import BookSource
from k2actors.core.kraken import BOOK_STREAM, INSTRUMENT, BookMessage, HistoryPage, Instrument, Instruments, KrakenTrade
from k2actors.core.kraken import VENUE as KRAKEN
from k2actors.core.kraken_adapter import KrakenAdapter
from k2actors.core.kraken_backfill import TRADES_PATH
from k2actors.core.kraken_books import KrakenBooks
from k2actors.core.ledger import BOOK_MAX_WAITING_DIFFS, CoinbaseRules, KrakenRules
from k2actors.core.normalise import Delivery
from k2actors.core.raw import CONN_ID, CONN_MSG_SEQ, Headers, RestResponse, frame_lineage
from k2actors.core.sequence import GAP_GRACE_SECONDS
from k2actors.core.streams import CONSECUTIVE

Record = dict[str, Any]
Source = tuple[str, int]  # (conn_id, conn_msg_seq)
# Where the venue's instrument information is served: the quote assets the records' `currency` comes from.
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"


@dataclass(frozen=True, slots=True)
class Rules:
    """What the live service was configured with, as far as it shapes records."""

    symbols: frozenset[str]  # subscribed: a streamed event of another symbol is a dead letter, never a record
    max_frame_bytes: int
    backfill_max_age_seconds: float  # REST rows older than this (at the response's receipt) were never published
    book_depth: int
    book_cadence_ms: int
    kraken: KrakenRules | None = None  # when Kraken's raw record is replayed too
    coinbase: CoinbaseRules | None = None  # ... and Coinbase's


def wanted(raw: Mapping[str, Any], since: int | None, until: int | None) -> bool:
    """Whether a raw record is replayed for records received in [since, until) (ns): those
    received then, and whatever describes the symbols the records are shaped with (Binance's
    exchangeInfo, Kraken's instrument frames, Coinbase's status frames), whenever received."""
    return in_range(raw["recv_ts_ns"], since, until) or (raw["stream"] or "").startswith((EXCHANGE_INFO_PATH, INSTRUMENT, STATUS))


def in_range(received_ns: int, since: int | None, until: int | None) -> bool:
    return (since is None or received_ns >= since) and (until is None or received_ns < until)


@dataclass(frozen=True, slots=True)
class Derived:
    stream: str
    record: Record
    lineage: Headers


class Replay:
    """Raw records in (decoded: exchange, endpoint, conn_id, conn_msg_seq, recv_ts_ns, stream,
    symbol, payload); every record they derive out, in the order the frames were received.

    Books are kept as the live service keeps them (k2actors.core.book), from the diffs and the
    REST snapshots in receive order, with the receive time for the clock. A snapshot the book
    did not ask for is one a restarted service asked for: the book starts afresh there too.
    A book's record is its diff's: derived for the frame the diff came in (its lineage)."""

    def __init__(self, rules: Rules) -> None:
        self._rules = rules
        self._raw: dict[Source, Mapping[str, Any]] = {}

    def add(self, raw: Mapping[str, Any]) -> None:
        self._raw[(raw["conn_id"], raw["conn_msg_seq"])] = raw

    def __len__(self) -> int:
        return len(self._raw)

    def derive(self) -> dict[Source, list[Derived]]:
        """Per source, what it derives; sources in receive order (a dict keeps it)."""
        ordered = sorted(self._raw.values(), key=lambda raw: (raw["recv_ts_ns"], raw["conn_id"], raw["conn_msg_seq"]))
        assets: dict[str, str] = {}
        adapter = BinanceAdapter(self._rules.symbols, assets, self._rules.max_frame_bytes)
        derived: dict[Source, list[Derived]] = {}
        books: dict[tuple[str, str], BookSync] = {}
        venues: dict[str, _KrakenDerivation | _CoinbaseDerivation] = {}
        if self._rules.kraken is not None:
            venues[KRAKEN] = _KrakenDerivation(self._rules.kraken)
        if self._rules.coinbase is not None:
            venues[COINBASE] = _CoinbaseDerivation(self._rules.coinbase)
        for raw in ordered:
            if raw["exchange"] in (KRAKEN, COINBASE):
                venue = venues.get(raw["exchange"])
                if venue is not None:
                    derived[(raw["conn_id"], raw["conn_msg_seq"])] = venue.derive(raw)
                continue
            stream = raw["stream"] or ""
            if stream.startswith(EXCHANGE_INFO_PATH):  # it shaped what came after it
                assets = {**assets, **_quote_assets(raw["payload"])}
                adapter = BinanceAdapter(self._rules.symbols, assets, self._rules.max_frame_bytes)
                continue
            source = (raw["conn_id"], raw["conn_msg_seq"])
            path = stream.partition("?")[0]
            if path == DEPTH_PATH:
                snapshot = adapter.snapshot(stream, raw["symbol"] or "", raw["payload"])
                if isinstance(snapshot, DepthSnapshot):
                    self._rebuild(adapter, raw["exchange"], self._book(books, raw["exchange"], snapshot.symbol), snapshot, derived)
                continue
            if path in HISTORY_PATHS:
                derived[source] = self._from_history(adapter, raw)
                continue
            frame = (raw["recv_ts_ns"], raw["conn_id"], raw["conn_msg_seq"], raw["payload"])
            reading = adapter.read(raw["exchange"], raw["endpoint"], frame)
            derived[source] = self._from_frame(adapter, raw, reading)
            for event in reading.events:
                if isinstance(event, DepthDiff) and event.symbol in self._rules.symbols:
                    sync = self._book(books, raw["exchange"], event.symbol)
                    self._tops(adapter, raw["exchange"], sync.diff(event, raw["recv_ts_ns"] / 1e9), derived)
        return derived

    def _book(self, books: dict[tuple[str, str], BookSync], venue: str, symbol: str) -> BookSync:
        sync = books.get((venue, symbol))
        if sync is None:
            rules = self._rules
            sync = books[(venue, symbol)] = BookSync(symbol, GAP_GRACE_SECONDS, BOOK_MAX_WAITING_DIFFS, rules.book_depth,
                                                     rules.book_cadence_ms)
            sync.start()
        return sync

    def _rebuild(self, adapter: BinanceAdapter, venue: str, sync: BookSync, snapshot: DepthSnapshot,
                 derived: dict[Source, list[Derived]]) -> None:
        if not sync.snapshot_asked:
            sync.restart()
        self._tops(adapter, venue, sync.snapshot(snapshot), derived)

    def _tops(self, adapter: BinanceAdapter, venue: str, outputs: list[BookOutput], derived: dict[Source, list[Derived]]) -> None:
        for top in outputs:
            if isinstance(top, BookTop):
                shaped = adapter.shape_book(top, venue, self._rules.book_depth)
                if isinstance(shaped, dict):
                    _, conn_id, conn_msg_seq = top.diff.source
                    lineage = frame_lineage(conn_id, conn_msg_seq, top.diff.recv_ts_ns)
                    derived.setdefault((conn_id, conn_msg_seq), []).append(Derived(BOOK, shaped, lineage))


    def records(self) -> list[Derived]:
        """Every record derived, each once (the first source to derive it: hot standby and
        REST history derive some more than once), in receive order."""
        seen: set[str] = set()
        unique = []
        for records in self.derive().values():
            for derived in records:
                if derived.record["message_id"] not in seen:
                    seen.add(derived.record["message_id"])
                    unique.append(derived)
        return unique

    @staticmethod
    def _from_frame(adapter: BinanceAdapter, raw: Mapping[str, Any], reading: Reading) -> list[Derived]:
        delivery = Delivery(raw["exchange"], raw["endpoint"], raw["recv_ts_ns"] // 1000)
        lineage = frame_lineage(raw["conn_id"], raw["conn_msg_seq"], raw["recv_ts_ns"])
        return [Derived(*shaped, lineage) for event in reading.events
                if not isinstance(event, DepthDiff) and isinstance(shaped := adapter.shape(event, delivery, streamed=True), tuple)]

    def _from_history(self, adapter: BinanceAdapter, raw: Mapping[str, Any]) -> list[Derived]:
        response = RestResponse(raw["exchange"], raw["endpoint"], raw["stream"], raw["conn_id"], raw["recv_ts_ns"], raw["payload"],
                                raw["symbol"])
        received_us = response.recv_ts_ns // 1000
        cutoff_ms = received_us // 1000 - int(self._rules.backfill_max_age_seconds * 1000)  # older rows were never published
        delivery = Delivery(response.venue, response.endpoint, received_us)
        lineage = response.lineage()
        return [Derived(*shaped, lineage) for event in adapter.history(response.target, response.symbol or "", response.body)
                if event.trade_time_ms >= cutoff_ms and isinstance(shaped := adapter.shape(event, delivery, streamed=False), tuple)]


class _KrakenDerivation:
    """Kraken's raw records derived as the live ledger derives them: its pairs as its own
    instrument frames describe them (each connection's first), its trades and quotes by its
    adapter, its books per connection and verified by their checksums (k2actors.core.kraken_books),
    and its REST pages of history as backfill shaped them."""

    def __init__(self, rules: KrakenRules) -> None:
        self._rules = rules
        self._instruments: dict[str, Instrument] = {}
        self._adapter = KrakenAdapter({}, rules.max_frame_bytes)
        self._books: KrakenBooks[None] = KrakenBooks(rules.book_depth, rules.book_cadence_ms)

    def derive(self, raw: Mapping[str, Any]) -> list[Derived]:
        delivery = Delivery(raw["exchange"], raw["endpoint"], raw["recv_ts_ns"] // 1000)
        if (raw["stream"] or "").startswith(TRADES_PATH):
            return self._from_history(raw, delivery)
        lineage = frame_lineage(raw["conn_id"], raw["conn_msg_seq"], raw["recv_ts_ns"])
        reading = self._adapter.read(raw["exchange"], raw["endpoint"],
                                     (raw["recv_ts_ns"], raw["conn_id"], raw["conn_msg_seq"], raw["payload"]))
        derived: list[Derived] = []
        for event in reading.events:
            if isinstance(event, Instruments):
                self._learn(event)
            elif isinstance(event, BookMessage):
                derived += self._tops(event, raw, delivery, lineage)
            elif isinstance(shaped := self._adapter.shape(event, delivery, streamed=True), tuple):
                derived.append(Derived(*shaped, lineage))
        return derived

    def _learn(self, instruments: Instruments) -> None:
        self._instruments.update({pair.symbol: pair for pair in instruments.pairs if pair.symbol in self._rules.symbols})
        self._adapter = KrakenAdapter(dict(self._instruments), self._rules.max_frame_bytes)

    def _tops(self, message: BookMessage, raw: Mapping[str, Any], delivery: Delivery, lineage: Headers) -> list[Derived]:
        instrument = self._instruments.get(message.symbol)
        if instrument is None:
            return []
        source = BookSource(None, raw["endpoint"], raw["conn_id"])
        outputs = self._books.message(message, instrument, source, delivery.received_us, raw["recv_ts_ns"] / 1e9)
        return [Derived(BOOK_STREAM, shaped, lineage) for top in outputs if isinstance(top, CheckedTop)
                and isinstance(shaped := self._adapter.shape_book(top, delivery, self._rules.book_depth), dict)]

    def _from_history(self, raw: Mapping[str, Any], delivery: Delivery) -> list[Derived]:
        response = RestResponse(raw["exchange"], raw["endpoint"], raw["stream"], raw["conn_id"], raw["recv_ts_ns"], raw["payload"],
                                raw["symbol"])
        pair = urllib.parse.parse_qs(urllib.parse.urlsplit(response.target).query).get("pair", [""])[0]
        page = self._adapter.history(response.body, pair)
        if not isinstance(page, HistoryPage):
            return []
        return [Derived(*shaped, response.lineage()) for trade in page.trades if isinstance(trade, KrakenTrade)
                and isinstance(shaped := self._adapter.shape(trade, delivery, streamed=False), tuple)]


class _CoinbaseDerivation:
    """Coinbase's raw records derived as the live ledger derives them: its products as its
    own status frames describe them (each connection's first), its trades and quotes by its
    adapter, its books per connection, trusted while the connection's frames run on without a
    break (k2actors.core.coinbase_books), and its REST pages of history as backfill shaped them."""

    def __init__(self, rules: CoinbaseRules) -> None:
        self._rules = rules
        self._adapter = CoinbaseAdapter({}, rules.max_frame_bytes)
        self._described: dict[str, Any] = {}
        self._books: CoinbaseBooks[None] = CoinbaseBooks(rules.book_depth, rules.book_cadence_ms)

    def derive(self, raw: Mapping[str, Any]) -> list[Derived]:
        delivery = Delivery(raw["exchange"], raw["endpoint"], raw["recv_ts_ns"] // 1000)
        if (raw["stream"] or "").startswith(PRODUCTS_PATH):
            return self._from_history(raw, delivery)
        lineage = frame_lineage(raw["conn_id"], raw["conn_msg_seq"], raw["recv_ts_ns"])
        reading = self._adapter.read(raw["exchange"], raw["endpoint"],
                                     (raw["recv_ts_ns"], raw["conn_id"], raw["conn_msg_seq"], raw["payload"]))
        derived: list[Derived] = []
        source, now = BookSource(None, raw["endpoint"], raw["conn_id"]), raw["recv_ts_ns"] / 1e9
        if reading.sequence is not None and self._rules.books:
            self._books.frame(source, reading.sequence, now)
        for event in reading.events:
            if isinstance(event, Products):
                self._described.update({p.product_id: p for p in event.products if p.product_id in self._rules.products})
                self._adapter = CoinbaseAdapter(dict(self._described), self._rules.max_frame_bytes)
            elif isinstance(event, BookEvent):
                if self._rules.books and reading.sequence is not None and event.product_id in self._described:
                    derived += [Derived(COINBASE_BOOK_STREAM, book, lineage)
                                for top in self._books.event(event, reading.sequence, source, now) if isinstance(top, SequencedTop)
                                and isinstance(book := self._adapter.shape_book(top, delivery, self._rules.book_depth), dict)]
            elif isinstance(shaped := self._adapter.shape(event, delivery, streamed=True), tuple):
                derived.append(Derived(*shaped, lineage))
        if reading.sequence is not None and self._rules.books and any(r.stream == COINBASE_BOOK_STREAM for r in reading.rejected):
            self._books.unreadable(source, now)
        return derived

    def _from_history(self, raw: Mapping[str, Any], delivery: Delivery) -> list[Derived]:
        response = RestResponse(raw["exchange"], raw["endpoint"], raw["stream"], raw["conn_id"], raw["recv_ts_ns"], raw["payload"],
                                raw["symbol"])
        product_id = urllib.parse.unquote(urllib.parse.urlsplit(response.target).path.split("/")[2])
        page = self._adapter.history(response.body, product_id)
        if not isinstance(page, CoinbaseHistoryPage):
            return []
        return [Derived(*shaped, response.lineage()) for trade in page.trades if isinstance(trade, CoinbaseTrade)
                and isinstance(shaped := self._adapter.shape(trade, delivery, streamed=False), tuple)]


def _quote_assets(payload: bytes) -> dict[str, str]:
    try:
        return quote_assets(json.loads(payload))
    except ValueError:
        return {}


# --- holding the live topics against the raw record ---


MISSING = "missing"  # derived from the raw record, not in the live topic (trades and aggregate trades)
EXTRA = "extra"  # in the live topic, derived from no source in the raw record
DUPLICATE = "duplicate"  # in the live topic more than once
DIFFERS = "differs"  # in the live topic, but not as its source derives it


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str
    stream: str
    message_id: str
    source: Source | None  # the frame (or REST response) it came from, or would have
    detail: str

    def __str__(self) -> str:
        where = f" (conn_id {self.source[0]}, conn_msg_seq {self.source[1]})" if self.source else ""
        return f"{self.kind}: {self.stream} {self.message_id}{where}: {self.detail}"


def verify(derived: Mapping[Source, list[Derived]], live: Sequence[tuple[str, Record, Mapping[str, bytes]]]) -> list[Difference]:
    """Differences between the live records (stream type, record, headers) and what the
    sources derive. Records are compared as decoded alike on both sides."""
    by_source = {source: {d.record["message_id"]: d for d in records} for source, records in derived.items()}
    differences: list[Difference] = []
    seen: set[str] = set()
    for stream, record, headers in live:
        message_id = record["message_id"]
        source = _source(headers)
        if message_id in seen:
            differences.append(Difference(DUPLICATE, stream, message_id, source, "in the live topic more than once"))
        seen.add(message_id)
        if source is None:
            differences.append(Difference(EXTRA, stream, message_id, None, "no lineage headers"))
            continue
        expected = by_source.get(source, {}).get(message_id)
        if expected is None:
            what = "its source derives no such record" if source in by_source else "its source is not in the raw record"
            differences.append(Difference(EXTRA, stream, message_id, source, what))
            continue
        changed = sorted(name for name in expected.record.keys() | record.keys() if expected.record.get(name) != record.get(name))
        if changed:
            detail = "; ".join(f"{name}: live {record.get(name)!r}, derived {expected.record.get(name)!r}" for name in changed)
            differences.append(Difference(DIFFERS, stream, message_id, source, detail))
    # Missing: ids of a gapless stream type from where its live stream starts (tracking starts
    # at the first id it sees: ids before that were never its to publish). Quotes are not
    # gapless: an older one is dropped when a newer one was published first, by design.
    starts: dict[tuple[str, str, str], int] = {}
    for stream, record, _ in live:
        if stream in CONSECUTIVE:
            key = (stream, record["exchange"], record["symbol"])
            starts[key] = min(starts.get(key, record["source_sequence"]), record["source_sequence"])
    for source, records in by_source.items():
        for message_id, expected in records.items():
            record = expected.record
            start = starts.get((expected.stream, record["exchange"], record["symbol"]))
            if message_id not in seen and expected.stream in CONSECUTIVE and (start is None or record["source_sequence"] >= start):
                seen.add(message_id)  # derived by several sources: missing once
                differences.append(Difference(MISSING, expected.stream, message_id, source, "not in the live topic"))
    return differences


def _source(headers: Mapping[str, bytes]) -> Source | None:
    if CONN_ID not in headers or CONN_MSG_SEQ not in headers:
        return None
    try:
        return headers[CONN_ID].decode(), int(headers[CONN_MSG_SEQ])
    except (UnicodeDecodeError, ValueError):
        return None
