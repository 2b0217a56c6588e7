"""The Normaliser's ledger: what was received, published, acknowledged and missing.

Frames come in as RawBatches from the connections and pages of REST history from backfill;
they leave as RecordBatches for the producer: each frame's raw record, then the records
derived from it. The venue's adapter (k2actors.core.adapter) reads and shapes them; the
ledger tracks every stream's ids (duplicates dropped, gaps declared after a grace), holds
each RecordBatch until the producer says Kafka acknowledged it, releases a RawBatch to its
connection only then, and decides backpressure: past `max_buffered_records`
unacknowledged, no RawBatch is released at all.

No I/O, no actors: each method is fed data and the time and returns events for the shell
to act on (send, log). Counters accumulate in `metrics`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from k2actors.core import coinbase, kraken
from k2actors.core.adapter import BinanceAdapter, MarketEvent, Reading, Replace
from k2actors.core.avro import read_body, write_body
from k2actors.core.binance import BOOK, TRADE
from k2actors.core.book import BookSync, BookTop, DepthDiff, FetchSnapshot, InSync, OutOfSync, OutOfSyncReason
from k2actors.core.book import Output as BookOutput
from k2actors.core.checksummed_book import CheckedTop
from k2actors.core.coinbase import BookEvent, CoinbaseQuote, CoinbaseTrade, Product, Products, Tickers
from k2actors.core.coinbase_adapter import CoinbaseAdapter
from k2actors.core.coinbase_books import BooksLost, CoinbaseBooks, ReconnectWanted, SequencedTop
from k2actors.core.connection_books import BookSource, SymbolInSync, SymbolOutOfSync
from k2actors.core.frames import ID_REGRESSED, INTERNAL_ERROR, POISON_MESSAGE, SERIALIZATION_FAILED, UNSUBSCRIBED_SYMBOL, Rejected
from k2actors.core.kraken import BookMessage, Instrument, Instruments, KrakenQuote, KrakenTrade
from k2actors.core.kraken_adapter import KrakenAdapter
from k2actors.core.kraken_books import ChecksumFailed, KrakenBooks, ResubscribeWanted
from k2actors.core.link import Frame
from k2actors.core.normalise import Delivery, event_id, record_dead_letter, unsubscribed
from k2actors.core.payloads import (
    BackfilledTrades,
    DeadLetter,
    Encoded,
    FetchedSnapshot,
    PoisonedFrames,
    Positions,
    RawBatch,
    Record,
    RecordBatch,
)
from k2actors.core.raw import RAW, Headers, RestResponse, frame_lineage, raw_record
from k2actors.core.sequence import DEDUP_WINDOW_IDS, BatchSequence, Gap, StreamSequences, Verdict
from k2actors.core.streams import CONSECUTIVE, identity, is_raw, noun
from k2actors.core.telemetry import LogLine, MetricBuffer

A = TypeVar("A")  # the address of a connection, opaque here

# A new producer gets what the old one held merged into batches of this many records:
# thousands of small messages would choke its mailbox.
RESEND_BATCH_RECORDS = 5000
# Batches can overtake one another between actors; one is lost only when this late.
BATCH_GRACE_SECONDS = 2.0
# Steady-state trades are summarised at this interval, never logged one by one.
SUMMARY_EVERY_SECONDS = 60.0
# Dead letters are logged one by one up to this many per reason and interval; a flood of
# garbage is then summarised, not copied into the log (every one is still counted and kept).
DEAD_LETTERS_LOGGED_PER_REASON = 10
# Gaps of a Kraken pair whose beginnings (and the time before them) are remembered.
GAP_FLOORS_KEPT = 100
# Diffs a book keeps while it waits for a snapshot (or for a gap's filling): five minutes of
# a symbol's diffs at 100 ms, as long as a snapshot may wait for the REST weight budget.
BOOK_MAX_WAITING_DIFFS = 3000
# A book out of sync for longer makes the service not ready (and is alerted on); shorter
# resyncs are named in /ready's detail without failing it.
BOOK_OUT_OF_SYNC_READY_SECONDS = 60.0


# --- what the shell is asked to do ---


@dataclass(frozen=True, slots=True)
class Publish:
    batch: RecordBatch


@dataclass(frozen=True, slots=True)
class Release(Generic[A]):
    """The Normaliser has taken this RawBatch: its connection may send another."""

    to: A
    seq: int


@dataclass(frozen=True, slots=True)
class Confirmed(Generic[A]):
    """Kafka has what came of the connection's RawBatches up to `seq`: it need keep them no
    longer (until then it sends them again to a Normaliser that replaces this one)."""

    to: A
    seq: int


@dataclass(frozen=True, slots=True)
class GapDeclared:
    """Ids missing past the grace period: counted, logged, and (trades) to be backfilled."""

    stream: str
    gap: Gap

    def report(self) -> LogLine:
        gap = self.gap
        return LogLine(
            logging.ERROR,
            f"gap in {gap.venue} {gap.symbol}: {gap.size} {noun(self.stream)} missing, ids {gap.first_id} to {gap.last_id}",
            {"event": "gap_declared", "venue": gap.venue, "symbol": gap.symbol, "stream": self.stream,
             "first_id": gap.first_id, "last_id": gap.last_id, "missing": gap.size},
        )


@dataclass(frozen=True, slots=True)
class ShutdownAnnounced:
    """The exchange announced serverShutdown on this endpoint: rotate now."""

    url: str

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"{self.url} announced serverShutdown", {"event": "server_shutdown", "endpoint": self.url})


@dataclass(frozen=True, slots=True)
class ReadyCheck:
    """For /ready: one of its checks (DATA_CHECK: every venue's data arrived within the stale
    timeout; BOOKS_CHECK: every book is in sync, or has been out of it only briefly)."""

    name: str
    ok: bool
    detail: str


DATA_CHECK, BOOKS_CHECK = "data", "books"


@dataclass(frozen=True, slots=True)
class InstrumentsLearned:
    """Kraken described its subscribed pairs anew: the coordinator keeps them for the next
    Normaliser, which sees no frame from before its start."""

    instruments: tuple[Instrument, ...]


@dataclass(frozen=True, slots=True)
class ProductsLearned:
    """Coinbase described its subscribed products anew: the coordinator keeps them for the
    next Normaliser, as Kraken's instruments."""

    products: tuple[Product, ...]


@dataclass(frozen=True, slots=True)
class SnapshotWanted:
    """A book is to be rebuilt: fetch a REST snapshot of it."""

    venue: str
    symbol: str


@dataclass(frozen=True, slots=True)
class Drained:
    """Every batch asked for by the drain has been handled: flush through `last_seq`.
    `missing`: ids declared missing and not filled (every gap is declared by then)."""

    last_seq: int
    missing: int


# --- what is only worth saying ---


@dataclass(frozen=True, slots=True)
class Backpressure:
    on: bool  # on: the connections are held back; off: released again
    waiting_records: int

    def report(self) -> LogLine:
        if self.on:
            message = f"{self.waiting_records} records waiting for Kafka: holding the connections back"
        else:
            message = f"Kafka caught up ({self.waiting_records} records waiting): connections released"
        return LogLine(logging.WARNING, message, {"event": "backpressure_on" if self.on else "backpressure_off",
                                                  "waiting_records": self.waiting_records})


@dataclass(frozen=True, slots=True)
class Recovered:
    """An id arrived after it had been declared missing; it is published."""

    stream: str
    venue: str
    symbol: str
    event_id: int

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"{self.stream} {self.symbol} {self.venue}-{self.event_id} arrived after it was declared missing",
                       {"event": "trade_recovered", "venue": self.venue, "symbol": self.symbol, "stream": self.stream,
                        "trade_id": self.event_id})


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """Worth a log line: the first few per reason and interval."""

    letter: DeadLetter

    def report(self) -> LogLine:
        letter = self.letter
        return LogLine(logging.WARNING, f"dead letter from {letter.endpoint}: {letter.reason} ({letter.detail})",
                       {"event": "dead_letter", "endpoint": letter.endpoint, "reason": letter.reason, "detail": letter.detail})


@dataclass(frozen=True, slots=True)
class DeadLettersThrottled:
    """From here on this reason's dead letters are counted and summarised, not logged."""

    reason: str

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"more dead letters for {self.reason}: counted, and summarised within "
                                        f"{SUMMARY_EVERY_SECONDS:.0f} s")


@dataclass(frozen=True, slots=True)
class FrameFailed:
    """Handling a frame raised: a bug, which costs that frame (to the DLQ) and nothing else."""

    url: str
    trace: str

    def report(self) -> LogLine:
        return LogLine(logging.ERROR, f"frame from {self.url} could not be handled:\n{self.trace}")


@dataclass(frozen=True, slots=True)
class Answered(Generic[A]):
    """The exchange answered a request (SUBSCRIBE, ...) on a connection: the connection's
    actor is told, so that a refused subscription is reported and asked again. A refusal is
    the venue's own code and message, never a dead letter."""

    to: A
    url: str
    request_id: object
    refusal: tuple[int, str] | None  # (code, message); None: success

    def report(self) -> LogLine:
        if self.refusal is None:
            return LogLine(logging.DEBUG, f"{self.url} answered request {self.request_id!r} with success")
        code, message = self.refusal
        which = "a request it did not name" if self.request_id is None else f"request {self.request_id!r}"
        return LogLine(logging.ERROR, f"{self.url} refused {which}: code {code}, {message!r}",
                       {"event": "subscription_refused", "endpoint": self.url, "request_id": self.request_id,
                        "code": code, "venue_message": message})


@dataclass(frozen=True, slots=True)
class BatchesLost:
    url: str
    seqs: tuple[int, ...]

    def report(self) -> LogLine:
        return LogLine(logging.ERROR, f"{len(self.seqs)} batches from {self.url} never arrived "
                                      f"(seq {', '.join(map(str, self.seqs[:20]))})",
                       {"event": "batches_lost", "endpoint": self.url, "count": len(self.seqs)})


@dataclass(frozen=True, slots=True)
class Backfilled:
    stream: str
    venue: str
    symbol: str
    count: int
    first_id: int
    last_id: int

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"backfilled {self.count} {noun(self.stream)} of {self.venue} {self.symbol}, "
                                     f"ids {self.first_id} to {self.last_id}",
                       {"event": "trades_backfilled", "venue": self.venue, "symbol": self.symbol, "stream": self.stream,
                        "count": self.count, "first_id": self.first_id, "last_id": self.last_id})


@dataclass(frozen=True, slots=True)
class Resent:
    records: int  # records and dead letters handed to a new producer

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"producer replaced: re-sending {self.records} unconfirmed records",
                       {"event": "records_resent", "count": self.records})


@dataclass(frozen=True, slots=True)
class DeadLettersLost:
    """A batch of dead letters alone that the producer failed on twice: never sent again."""

    count: int

    def report(self) -> LogLine:
        return LogLine(logging.ERROR, f"{self.count} dead letters could not be produced; they are lost",
                       {"event": "dead_letters_lost", "count": self.count})


@dataclass(frozen=True, slots=True)
class TradeSummary:
    seconds: float
    trades: Mapping[str, int]  # per symbol (or symbol@stream)
    waiting_records: int

    def report(self) -> LogLine:
        counts = ", ".join(f"{symbol} {count}" for symbol, count in sorted(self.trades.items())) or "none"
        return LogLine(logging.INFO, f"{sum(self.trades.values())} trades in the last {self.seconds:.0f} s ({counts}); "
                                     f"{self.waiting_records} records waiting for Kafka",
                       {"event": "trade_summary", "trades": dict(self.trades), "waiting_records": self.waiting_records})


@dataclass(frozen=True, slots=True)
class NotOwnedDropped:
    """Cluster mode: events of symbols whose shard this instance no longer owns (frames
    still on their way, or a backfill page) were dropped: their shard's owner publishes them."""

    count: int

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"{self.count} events of symbols this instance no longer owns dropped "
                                     f"(their shard's owner publishes them)", {"event": "not_owned_dropped", "count": self.count})


@dataclass(frozen=True, slots=True)
class BookLost:
    """A book went out of sync: nothing of it is published until it is rebuilt."""

    venue: str
    lost: OutOfSync

    def report(self) -> LogLine:
        lost = self.lost
        why = {
            OutOfSyncReason.GAP: f"update {lost.expected} never came (the next diff began at {lost.got})",
            OutOfSyncReason.STALE_SNAPSHOT: f"the snapshot ends before {lost.got}, where the buffered diffs begin, "
                                            f"not at {lost.expected - 1}",
            OutOfSyncReason.BUFFER_FULL: f"too many diffs waited past the gap at {lost.expected}",
            OutOfSyncReason.DEPTH_EXHAUSTED: f"after update {lost.expected - 1} its levels within the snapshot's reach no "
                                             "longer fill the depth published",
        }[lost.reason]
        return LogLine(logging.WARNING, f"book of {self.venue} {lost.symbol} out of sync ({lost.reason.value}): {why}; "
                                        "rebuilding it from a fresh snapshot",
                       {"event": "book_out_of_sync", "venue": self.venue, "symbol": lost.symbol, "reason": lost.reason.value,
                        "expected_update_id": lost.expected, "got_update_id": lost.got})


@dataclass(frozen=True, slots=True)
class BookRebuilt:
    venue: str
    rebuilt: InSync
    seconds: float  # since it was out of sync (or first seen)

    def report(self) -> LogLine:
        rebuilt = self.rebuilt
        return LogLine(logging.INFO, f"book of {self.venue} {rebuilt.symbol} in sync from snapshot {rebuilt.snapshot_id}, "
                                     f"at update {rebuilt.last_update_id}, {self.seconds:.1f} s after it stopped advancing",
                       {"event": "book_in_sync", "venue": self.venue, "symbol": rebuilt.symbol,
                        "snapshot_update_id": rebuilt.snapshot_id, "last_update_id": rebuilt.last_update_id,
                        "seconds": round(self.seconds, 3)})


@dataclass(frozen=True, slots=True)
class DeadLetterSummary:
    seconds: float
    reasons: Mapping[str, int]

    def report(self) -> LogLine:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.reasons.items()))
        return LogLine(logging.WARNING, f"{sum(self.reasons.values())} dead letters in the last {self.seconds:.0f} s ({reasons})",
                       {"event": "dead_letter_summary", "reasons": dict(self.reasons)})


Said = (
    GapDeclared | ShutdownAnnounced | Backpressure | Recovered | DeadLettered | DeadLettersThrottled | FrameFailed
    | BatchesLost | Backfilled | Resent | DeadLettersLost | TradeSummary | DeadLetterSummary
    | NotOwnedDropped | BookLost | BookRebuilt | ChecksumFailed | BooksLost | SymbolOutOfSync | SymbolInSync
)
Event = (Publish | Release[A] | Confirmed[A] | Answered[A] | Drained | ReadyCheck | SnapshotWanted | InstrumentsLearned
         | ProductsLearned | ResubscribeWanted[A] | ReconnectWanted[A] | Said)


@dataclass(frozen=True, slots=True)
class KrakenRules:
    """What the ledger is configured with for Kraken, when it is enabled."""

    symbols: frozenset[str]  # subscribed, in Kraken's spelling
    max_frame_bytes: int
    instruments: tuple[Instrument, ...]  # as an earlier Normaliser learned them; the connections' frames say them anew
    book_depth: int  # levels a side in a book record
    book_cadence_ms: int  # a book record per pair per this much of Kraken's time


@dataclass(frozen=True, slots=True)
class CoinbaseRules:
    """What the ledger is configured with for Coinbase, when it is enabled."""

    products: frozenset[str]  # subscribed product ids
    max_frame_bytes: int
    described: tuple[Product, ...]  # as an earlier Normaliser learned them; the connections' frames say them anew
    books: bool  # level2 subscribed: books kept and published
    book_depth: int  # levels a side in a book record
    book_cadence_ms: int  # a book record per product per this much of Coinbase's time


@dataclass(frozen=True, slots=True)
class Rules:
    """What the ledger is configured with (Binance's, and Kraken's when it is enabled)."""

    gap_grace_seconds: float
    symbols: frozenset[str]  # subscribed; a streamed event of any other symbol is a dead letter
    quote_assets: Mapping[str, str]
    max_buffered_records: int
    max_frame_bytes: int
    stale_timeout_seconds: float
    raw: bool  # every frame to the raw topic as well
    book_depth: int  # levels a side in a book record
    book_cadence_ms: int  # a book record per symbol per this much of the venue's event time
    kraken: KrakenRules | None = None
    coinbase: CoinbaseRules | None = None


Shaped = tuple[str, Record, Headers]  # (stream type, record, lineage headers), until its body is written


class Ledger(Generic[A]):
    def __init__(self, rules: Rules, positions: Positions, now: float, metrics: MetricBuffer,
                 owned: frozenset[str] | None = None):
        """`positions`: where each stream stands in Kafka, where id tracking continues from.
        `owned`: in cluster mode, the symbols of the shards this instance owns (events of the
        other configured symbols are another instance's); None: every symbol."""
        self._rules = rules
        self._adapter = BinanceAdapter(rules.symbols, rules.quote_assets, rules.max_frame_bytes)
        self._instruments: dict[str, Instrument] = {}  # Kraken's subscribed pairs, as last described
        self._kraken: KrakenAdapter | None = None
        # Kraken serves its history by time: per pair, its highest trade (id, time), and for
        # each gap it opened, where the gap begins and the time of the trade before it.
        self._trade_times: dict[tuple[str, str], tuple[int, int]] = {}
        self._gap_floors: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._kraken_books: KrakenBooks[A] | None = None
        if rules.kraken is not None:
            self._learn(Instruments(rules.kraken.instruments), [])
            self._kraken_books = KrakenBooks(rules.kraken.book_depth, rules.kraken.book_cadence_ms)
        self._products: dict[str, Product] = {}  # Coinbase's subscribed products, as last described
        self._coinbase: CoinbaseAdapter | None = None
        self._coinbase_books: CoinbaseBooks[A] | None = None
        self._tickers = Tickers()  # which of Coinbase's tickers become quotes
        if rules.coinbase is not None:
            self._learn_products(Products(rules.coinbase.described), [])
            if rules.coinbase.books:
                self._coinbase_books = CoinbaseBooks(rules.coinbase.book_depth, rules.coinbase.book_cadence_ms)
        self._owned = owned
        # Every configured symbol as its records carry it: cluster mode shards by these.
        self._venue_symbols = {
            kraken.VENUE: frozenset(kraken.record_symbol(pair) for pair in (rules.kraken.symbols if rules.kraken else ())),
            coinbase.VENUE: frozenset(map(coinbase.record_symbol, rules.coinbase.products if rules.coinbase else ()))}
        self._configured = rules.symbols.union(*self._venue_symbols.values())
        self._not_owned = 0  # events dropped as another instance's, since the last report
        self._sequences = StreamSequences(rules.gap_grace_seconds)
        self._sequences.resume(positions, now)
        self.metrics = metrics
        self._received: dict[str, BatchSequence] = {}  # per endpoint URL, the RawBatches seen
        self._seq = 0  # the last RecordBatch numbered
        self._unacked: dict[int, RecordBatch] = {}
        self.held = 0  # records and dead letters in _unacked
        self._untaken: list[tuple[A, int]] = []  # RawBatches not yet released to their connection
        # RawBatches not yet confirmed, in the order taken: (the last RecordBatch published when
        # it was taken, its sender, its seq). One is confirmed once Kafka has acknowledged every
        # RecordBatch up to that one.
        self._awaiting: collections.deque[tuple[int, A, int]] = collections.deque()
        self._holding_back = False
        self._drain: Mapping[str, int] | None = None
        self._summary_at = now
        self._data_at: dict[str, float] = {}  # per venue, when its last frame arrived
        self._checks: dict[str, ReadyCheck] = {}  # each /ready check as last said
        self._trades: dict[str, int] = {}  # published per symbol since the last summary
        self._dead_letters: dict[str, int] = {}  # per reason since the last summary
        self._books: dict[tuple[str, str], BookSync] = {}  # per (venue, symbol), from its first diff
        self._books_lost_at: dict[tuple[str, str], float] = {}  # books not in sync, and since when

    # --- what comes in ---

    def take_raw(self, batch: RawBatch, sender: A, now: float) -> list[Event[A]]:
        self._received.setdefault(batch.url, BatchSequence(BATCH_GRACE_SECONDS)).observe(batch.seq, now)
        events: list[Event[A]] = []
        records: list[Shaped] = []
        letters: list[DeadLetter] = []
        keep_raw, raw_stream = self._rules.raw, _raw_stream(batch.venue)
        adapter: BinanceAdapter | KrakenAdapter | CoinbaseAdapter = self._adapter
        if batch.venue in (kraken.VENUE, coinbase.VENUE):
            venue_adapter = self._kraken if batch.venue == kraken.VENUE else self._coinbase
            if venue_adapter is None:
                raise ValueError(f"frames of {batch.venue} from {batch.url}, which is not configured")
            adapter = venue_adapter
        for frame in batch.frames:
            received_ns, conn_id, conn_msg_seq, raw = frame
            delivery = Delivery(batch.venue, batch.url, received_ns // 1000)
            reading: Reading | None = None
            try:
                reading = adapter.read(batch.venue, batch.url, frame)
                if keep_raw:  # the raw record first, whatever the frame turns out to be: it is the system of record
                    records.append((raw_stream, reading.raw, ()))
                self._take_reading(reading, frame, delivery, sender, now, records, letters, events)
            except Exception as exc:  # a bug costs one frame, to the DLQ (and kept as received), never the batch or the actor
                events.append(FrameFailed(batch.url, traceback.format_exc()))
                if keep_raw and reading is None:
                    records.append((raw_stream, raw_record(batch.venue, batch.url, received_ns, conn_id, conn_msg_seq, raw), ()))
                rejected = Rejected(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:200])
                letters.append(self._dead_letter(raw, rejected, delivery, events))
                if batch.venue == coinbase.VENUE:  # whatever it held of a book was not applied
                    self._unreadable_book(BookSource(sender, batch.url, conn_id), frame, delivery, now, records, letters, events)
        if batch.frames:
            self.metrics.set("k2_binance_last_message_timestamp_seconds", batch.frames[-1][0] / 1e9, batch.venue)
            self._data_at[batch.venue] = now
        self._publish(records, letters, events)
        self._declare_gaps(now, events)
        self._report_not_owned(events)
        self._untaken.append((sender, batch.seq))
        self._awaiting.append((self._seq, sender, batch.seq))
        self._release(events)
        self._check_drain(events)
        return events

    def take_backfill(self, page: BackfilledTrades, now: float) -> list[Event[A]]:
        """A page of REST history inside a gap: shaped like streamed trades, marked backfilled,
        and published in id order; ids published meanwhile are duplicates as ever."""
        delivery = Delivery(page.venue, page.url, page.received_us)
        response = RestResponse(page.venue, page.url, page.target, page.conn_id, page.received_us * 1000, page.body, page.symbol)
        lineage = response.lineage()
        events: list[Event[A]] = []
        letters = [self._dead_letter(raw, rejected, delivery, events) for raw, rejected in page.rejected]
        records: list[Shaped] = []
        for trade in sorted(page.trades, key=lambda trade: trade.trade_id if isinstance(trade, (KrakenTrade, CoinbaseTrade))
                            else event_id(trade)):
            outcome = self._accept(trade, delivery, now, streamed=False, events=events)
            if isinstance(outcome, Rejected):
                letters.append(self._dead_letter(json.dumps(dataclasses.asdict(trade)).encode(), outcome, delivery, events))
            elif outcome is not None:
                records.append((*outcome, lineage))
        if records:
            first_id, last_id = records[0][1]["source_sequence"], records[-1][1]["source_sequence"]
            self.metrics.inc("k2_backfill_trades_total", page.symbol, amount=len(records))
            events.append(Backfilled(page.stream, page.venue, page.symbol, len(records), first_id, last_id))
        if self._rules.raw:  # the response the records come from, kept as the venue sent it, first
            records.insert(0, (_raw_stream(page.venue), response.raw_record(), ()))
        self._publish(records, letters, events)
        self._report_not_owned(events)
        return events

    def take_snapshot(self, fetched: FetchedSnapshot, now: float) -> list[Event[A]]:
        """A REST snapshot of a book, asked for: kept in the raw record as received, and the
        book rebuilt from it. One that cannot be read is a dead letter, and asked for again."""
        response = RestResponse(fetched.venue, fetched.url, fetched.target, fetched.conn_id, fetched.received_us * 1000,
                                fetched.body, fetched.symbol)
        events: list[Event[A]] = []
        records: list[Shaped] = [(RAW, response.raw_record(), ())] if self._rules.raw else []
        letters: list[DeadLetter] = []
        snapshot = self._adapter.snapshot(fetched.target, fetched.symbol, fetched.body)
        key = (fetched.venue, fetched.symbol)
        sync = self._books.get(key)
        if isinstance(snapshot, Rejected):
            letters.append(self._dead_letter(fetched.body, snapshot, Delivery(fetched.venue, fetched.url, fetched.received_us),
                                             events))
            if sync is not None:
                events.append(SnapshotWanted(*key))
        elif sync is not None:
            self._book_outputs(fetched.venue, sync.snapshot(snapshot), now, records, letters, events)
        self._publish(records, letters, events)
        return events

    def archive(self, responses: tuple[RestResponse, ...]) -> list[Event[A]]:
        """REST responses the records were shaped with (exchangeInfo, read at start) to the raw
        record. A new Normaliser archives them again: the producer finds them in Kafka already."""
        events: list[Event[A]] = []
        if self._rules.raw:
            self._publish([(RAW, response.raw_record(), ()) for response in responses], [], events)
        return events

    def take_poisoned_frames(self, poisoned: PoisonedFrames) -> list[Event[A]]:
        """Frames of a RawBatch the Normaliser failed on twice: to the DLQ unparsed, and to
        the raw topic as every frame."""
        events: list[Event[A]] = []
        rejected = Rejected(POISON_MESSAGE, poisoned.detail)
        letters = [self._dead_letter(raw, rejected, Delivery(poisoned.venue, poisoned.url, received_ns // 1000), events)
                   for received_ns, _, _, raw in poisoned.frames]
        archived: list[Shaped] = [
            (_raw_stream(poisoned.venue), raw_record(poisoned.venue, poisoned.url, received_ns, conn_id, conn_msg_seq, raw), ())
            for received_ns, conn_id, conn_msg_seq, raw in poisoned.frames
        ] if self._rules.raw else []
        self._publish(archived, letters, events)
        return events

    # --- what the producer answers ---

    def delivered(self, seqs: tuple[int, ...]) -> list[Event[A]]:
        for seq in seqs:
            self._forget(seq)
        events: list[Event[A]] = []
        self._release(events)
        return events

    def poisoned(self, batch: RecordBatch, detail: str) -> list[Event[A]]:
        """The producer failed twice on a batch: its records go to the DLQ as JSON instead.
        A batch of dead letters alone that fails is counted and reported, never sent again."""
        events: list[Event[A]] = []
        if self._forget(batch.seq) is None:
            return events
        if batch.records:
            letters = [record_dead_letter(read_body(record.stream, record.body), record.stream, POISON_MESSAGE, detail)
                       for record in batch.records]
            for letter in letters:
                self._count_dead_letter(letter, events)
            self._publish_encoded([], letters + list(batch.dead_letters), events)
            # what waited for the batch waits for its dead letters (and, to keep the order, what came after it too)
            self._awaiting = collections.deque((self._seq if tag >= batch.seq else tag, sender, seq)
                                               for tag, sender, seq in self._awaiting)
        else:
            events.append(DeadLettersLost(len(batch.dead_letters)))
        self._release(events)
        return events

    def resend(self) -> list[Event[A]]:
        """A new producer never saw what the old one held: everything unacknowledged again,
        merged into a few large batches. The RawBatches waiting for them wait for the last."""
        batches = sorted(self._unacked.values(), key=lambda batch: batch.seq)
        records = [record for batch in batches for record in batch.records]
        letters = [letter for batch in batches for letter in batch.dead_letters]
        self.metrics.inc("k2_kafka_resent_records_total", amount=len(records))
        self._unacked.clear()
        self.held = 0
        events: list[Event[A]] = [Resent(len(records) + len(letters))]
        for start in range(0, max(len(records), len(letters)), RESEND_BATCH_RECORDS):
            end = start + RESEND_BATCH_RECORDS
            self._publish_encoded(records[start:end], letters[start:end], events)
        self._awaiting = collections.deque((self._seq, sender, seq) for _, sender, seq in self._awaiting)
        return events

    # --- time, and the orderly stop ---

    def tick(self, now: float) -> list[Event[A]]:
        events: list[Event[A]] = []
        for url, received in self._received.items():
            lost = received.lost(now)
            if lost:
                self.metrics.inc("k2_actor_batches_lost_total", "connection_to_normaliser", amount=len(lost))
                events.append(BatchesLost(url, tuple(lost)))
        self._declare_gaps(now, events)
        for (venue, _), sync in self._books.items():
            self._book_outputs(venue, sync.tick(now), now, [], [], events)
        if self._kraken_books is not None:
            events += self._kraken_books.due(now)
        if self._coinbase_books is not None:
            events += self._coinbase_books.due(now)
        if now - self._summary_at >= SUMMARY_EVERY_SECONDS:
            events.append(TradeSummary(now - self._summary_at, self._trades, self.held))
            if self._dead_letters:
                events.append(DeadLetterSummary(now - self._summary_at, self._dead_letters))
            self._trades, self._dead_letters, self._summary_at = {}, {}, now
        self._check_data(now, events)
        self._check_books(now, events)
        self.metrics.set("k2_buffered_records", self.held)
        self.metrics.set("k2_binance_gaps_pending", self._sequences.pending())
        self._check_drain(events)
        return events

    def drain(self, last_batches: Mapping[str, int]) -> list[Event[A]]:
        """Finish every RawBatch up to these numbers (per endpoint URL), then say Drained."""
        self._drain = last_batches
        events: list[Event[A]] = []
        self._check_drain(events)
        return events

    def snapshots_wanted(self) -> list[tuple[str, str]]:
        """(venue, symbol) of the books waiting for a snapshot."""
        return [key for key, sync in self._books.items() if sync.snapshot_asked]

    def open_gaps(self, stream: str) -> list[Gap]:
        return self._sequences.open_gaps(stream)

    def own(self, symbols: frozenset[str], positions: Positions, now: float) -> None:
        """Cluster mode: the symbols owned from now on; tracking of those newly owned resumes
        from `positions` (what Kafka holds), and that of those no longer owned is forgotten."""
        self._sequences.forget((self._owned or frozenset()) - symbols)
        self._sequences.resume(positions, now)
        for key in [key for key in self._books if key[1] not in symbols]:  # rebuilt should the symbol come back
            del self._books[key]
            self._books_lost_at.pop(key, None)
        if self._kraken_books is not None:
            self._kraken_books.forget({pair for pair in self._kraken_books.pairs() if kraken.record_symbol(pair) not in symbols})
        if self._coinbase_books is not None:
            self._coinbase_books.forget({product for product in self._coinbase_books.products()
                                         if coinbase.record_symbol(product) not in symbols})
        if self._rules.coinbase is not None:
            self._tickers.forget({product for product in self._rules.coinbase.products if coinbase.record_symbol(product) not in symbols})
        # The staleness of a venue's data counts only while it has symbols to stream, and from then.
        carried = {venue: bool(symbols & venue_symbols) for venue, venue_symbols in self._venue_symbols.items()}
        self._data_at = {venue: at for venue, at in self._data_at.items() if carried.get(venue, bool(symbols & self._rules.symbols))}
        self._owned = symbols

    # --- inside ---

    def _take_reading(self, reading: Reading, frame: Frame, delivery: Delivery, sender: A, now: float,
                      records: list[Shaped], letters: list[DeadLetter], events: list[Event[A]]) -> None:
        _, conn_id, conn_msg_seq, raw = frame
        if delivery.venue == coinbase.VENUE:
            self._tickers.heard(conn_id, now)
        if reading.sequence is not None and self._coinbase_books is not None:  # before its events: was a frame lost?
            source = BookSource(sender, delivery.endpoint, conn_id)
            self._coinbase_book_outputs(self._coinbase_books.frame(source, reading.sequence, now), frame, delivery, now,
                                        records, letters, events)
        for event in reading.events:
            if isinstance(event, DepthDiff):
                rejected = self._take_diff(event, delivery, now, records, letters, events)
                if rejected is not None:
                    letters.append(self._dead_letter(raw, rejected, delivery, events))
                continue
            if isinstance(event, Instruments):
                self._learn(event, events)
                continue
            if isinstance(event, Products):
                self._learn_products(event, events)
                continue
            if isinstance(event, BookEvent):
                rejected = self._take_book_event(event, reading.sequence, BookSource(sender, delivery.endpoint, conn_id), frame,
                                                 delivery, now, records, letters, events)
                if rejected is not None:
                    letters.append(self._dead_letter(raw, rejected, delivery, events))
                continue
            if isinstance(event, BookMessage):
                rejected = self._take_book_message(event, BookSource(sender, delivery.endpoint, conn_id), frame, now,
                                                   records, letters, events)
                if rejected is not None:
                    letters.append(self._dead_letter(raw, rejected, delivery, events))
                continue
            if isinstance(event, CoinbaseQuote) and not self._tickers.wanted(event, conn_id, now):
                # another connection's copy, or the touch as last published: a duplicate
                self.metrics.inc("k2_binance_duplicate_trades_total", delivery.venue, coinbase.record_symbol(event.product_id),
                                 coinbase.TICKER_STREAM)
                continue
            outcome = self._accept(event, delivery, now, streamed=True, events=events)
            if isinstance(outcome, Rejected):
                letters.append(self._dead_letter(raw, outcome, delivery, events))
            elif outcome is not None:
                records.append((*outcome, frame_lineage(conn_id, conn_msg_seq, frame[0])))
        for rejected in reading.rejected:
            letters.append(self._dead_letter(raw, rejected, delivery, events))
        if reading.sequence is not None and any(rejected.stream == coinbase.BOOK_STREAM for rejected in reading.rejected):
            self._unreadable_book(BookSource(sender, delivery.endpoint, conn_id), frame, delivery, now, records, letters, events)
        for action in reading.actions:
            if isinstance(action, Replace):
                events.append(ShutdownAnnounced(delivery.endpoint))
            else:
                if action.refusal is not None:
                    self.metrics.inc("k2_binance_subscription_refusals_total", delivery.endpoint)
                events.append(Answered(sender, delivery.endpoint, action.request_id, action.refusal))

    def _accept(self, event: MarketEvent | KrakenTrade | KrakenQuote | CoinbaseTrade | CoinbaseQuote, delivery: Delivery,
                now: float, streamed: bool, events: list[Event[A]]) -> tuple[str, Record] | Rejected | None:
        """(stream type, record) to publish, a Rejected for the DLQ, or None (a duplicate, or
        another instance's)."""
        # Validate before tracking: an event that cannot be stored must not claim its id.
        if isinstance(event, (KrakenTrade, KrakenQuote)):
            if self._kraken is None:
                raise ValueError("a Kraken event, and Kraken is not configured")
            if self._another_instances(kraken.record_symbol(event.symbol)):
                return None
            shaped = self._kraken.shape(event, delivery, streamed)
        elif isinstance(event, (CoinbaseTrade, CoinbaseQuote)):
            if self._coinbase is None:
                raise ValueError("a Coinbase event, and Coinbase is not configured")
            if self._another_instances(coinbase.record_symbol(event.product_id)):
                return None
            shaped = self._coinbase.shape(event, delivery, streamed)
        else:
            if self._another_instances(event.symbol):
                return None
            shaped = self._adapter.shape(event, delivery, streamed)
        if isinstance(shaped, Rejected):
            return shaped
        stream, record = shaped
        # Tracked by the record's symbol (Kraken's pairs are spelled otherwise on the wire) and
        # number: what Kafka holds is read back by the same two.
        tracked_id, symbol = record["source_sequence"], record["symbol"]
        backfilled = not streamed
        if streamed:
            self.metrics.inc("k2_binance_messages_received_total", delivery.venue, symbol, stream)
        key = (delivery.venue, symbol)
        verdict = self._sequences.observe(stream, key, tracked_id, now)
        if verdict is Verdict.REGRESSED and not backfilled:
            highest = self._sequences.last_id(stream, key)
            detail = f"{stream} id {tracked_id} is more than {DEDUP_WINDOW_IDS} behind {highest}, the highest seen"
            return Rejected(ID_REGRESSED, detail, stream)
        if verdict in (Verdict.DUPLICATE, Verdict.REGRESSED):  # history outside every open gap is a duplicate
            self.metrics.inc("k2_binance_duplicate_trades_total", delivery.venue, symbol, stream)
            return None
        if verdict is Verdict.RECOVERED and not backfilled:
            events.append(Recovered(stream, delivery.venue, symbol, tracked_id))
            self.metrics.inc("k2_binance_recovered_trades_total", delivery.venue, symbol)
        if isinstance(event, KrakenTrade):
            self._note_trade_time(key, tracked_id, event.timestamp_us)
        elif isinstance(event, CoinbaseQuote):
            self._tickers.published(event)
        self._count_published(symbol, stream)
        return stream, record

    def _note_trade_time(self, key: tuple[str, str], trade_id: int, time_us: int) -> None:
        highest = self._trade_times.get(key)
        if highest is not None and trade_id <= highest[0]:
            return
        if highest is not None and trade_id > highest[0] + 1:
            floors = self._gap_floors.setdefault(key, [])
            floors.append((highest[0] + 1, highest[1]))
            del floors[:-GAP_FLOORS_KEPT]
        self._trade_times[key] = (trade_id, time_us)

    def kraken_history(self, gap: Gap) -> tuple[str, int | None] | None:
        """Where Kraken's history of a gap is asked for: the pair (in Kraken's spelling) and
        the time of the trade before the gap, None when this Normaliser never saw it (the gap
        began before its start); None when no subscribed pair makes that record symbol."""
        pair = next((i.symbol for i in self._instruments.values() if i.record_symbol == gap.symbol), None)
        if pair is None:
            return None
        floors = [at for first_id, at in self._gap_floors.get((gap.venue, gap.symbol), []) if first_id <= gap.first_id]
        return pair, (floors[-1] if floors else None)

    def _learn(self, instruments: Instruments, events: list[Event[A]]) -> None:
        """Kraken's description of its pairs (on every connection, before its data): the
        subscribed ones' records are made with it from now on."""
        rules = self._rules.kraken
        if rules is None:
            return
        changed = {pair.symbol: pair for pair in instruments.pairs
                   if pair.symbol in rules.symbols and self._instruments.get(pair.symbol) != pair}
        if changed or self._kraken is None:
            self._instruments.update(changed)
            self._kraken = KrakenAdapter(dict(self._instruments), rules.max_frame_bytes)
        if changed:
            events.append(InstrumentsLearned(tuple(self._instruments.values())))

    def coinbase_history(self, gap: Gap) -> str | None:
        """The product (in Coinbase's spelling) whose history holds a gap's trades; None when
        no subscribed product makes that record symbol."""
        return next((p.product_id for p in self._products.values() if p.record_symbol == gap.symbol), None)

    def _learn_products(self, described: Products, events: list[Event[A]]) -> None:
        """Coinbase's description of its products (the status channel, on every connection,
        before its data): the subscribed ones' records are made with it from now on."""
        rules = self._rules.coinbase
        if rules is None:
            return
        changed = {product.product_id: product for product in described.products
                   if product.product_id in rules.products and self._products.get(product.product_id) != product}
        if changed or self._coinbase is None:
            self._products.update(changed)
            self._coinbase = CoinbaseAdapter(dict(self._products), rules.max_frame_bytes)
        if changed:
            events.append(ProductsLearned(tuple(self._products.values())))

    def _take_diff(self, diff: DepthDiff, delivery: Delivery, now: float, records: list[Shaped], letters: list[DeadLetter],
                   events: list[Event[A]]) -> Rejected | None:
        """A diff to its symbol's book (made at its first diff); why not, for the DLQ."""
        symbol = diff.symbol
        rejected = unsubscribed(symbol, self._rules.symbols, BOOK)
        if rejected is not None or self._another_instances(symbol):
            return rejected
        self.metrics.inc("k2_binance_messages_received_total", delivery.venue, symbol, BOOK)
        key = (delivery.venue, symbol)
        sync = self._books.get(key)
        outputs: list[BookOutput] = []
        if sync is None:
            rules = self._rules
            sync = self._books[key] = BookSync(symbol, rules.gap_grace_seconds, BOOK_MAX_WAITING_DIFFS, rules.book_depth,
                                               rules.book_cadence_ms)
            self._books_lost_at[key] = now
            outputs = sync.start()
        self._book_outputs(delivery.venue, outputs + sync.diff(diff, now), now, records, letters, events)
        return None

    def _take_book_message(self, message: BookMessage, source: BookSource[A], frame: Frame, now: float,
                           records: list[Shaped], letters: list[DeadLetter], events: list[Event[A]]) -> Rejected | None:
        """A Kraken book message to its connection's book of the pair; why not, for the DLQ."""
        instrument, rules = self._instruments.get(message.symbol), self._rules.kraken
        if instrument is None or rules is None or self._kraken_books is None:
            return Rejected(UNSUBSCRIBED_SYMBOL, f"a book message of {message.symbol[:40]!r}, which was not subscribed",
                            kraken.BOOK_STREAM)
        if self._another_instances(kraken.record_symbol(message.symbol)):
            return None
        received_ns, conn_id, conn_msg_seq, _ = frame
        delivery = Delivery(kraken.VENUE, source.endpoint, received_ns // 1000)
        self.metrics.inc("k2_binance_messages_received_total", kraken.VENUE, instrument.record_symbol, kraken.BOOK_STREAM)
        for output in self._kraken_books.message(message, instrument, source, delivery.received_us, now):
            if isinstance(output, CheckedTop):
                self._publish_checked_top(output, rules.book_depth, delivery, frame_lineage(conn_id, conn_msg_seq, received_ns),
                                          now, records, letters, events)
            else:
                self._book_news(output, events)
        return None

    def _publish_checked_top(self, top: CheckedTop, depth: int, delivery: Delivery, lineage: Headers, now: float,
                             records: list[Shaped], letters: list[DeadLetter], events: list[Event[A]]) -> None:
        assert self._kraken is not None  # (it read the message)
        self._publish_window(kraken.BOOK_STREAM, top, self._kraken.shape_book(top, delivery, depth), delivery, lineage, now,
                             records, letters, events)

    def _take_book_event(self, event: BookEvent, sequence: int | None, source: BookSource[A], frame: Frame, delivery: Delivery,
                         now: float, records: list[Shaped], letters: list[DeadLetter], events: list[Event[A]]) -> Rejected | None:
        """A Coinbase level2 event to its connection's book of the product; why not, for the DLQ."""
        if self._coinbase_books is None or sequence is None or event.product_id not in self._products:
            return Rejected(UNSUBSCRIBED_SYMBOL, f"a level2 event of {event.product_id[:40]!r}, whose book was not subscribed",
                            coinbase.BOOK_STREAM)
        symbol = self._products[event.product_id].record_symbol
        if self._another_instances(symbol):
            return None
        self.metrics.inc("k2_binance_messages_received_total", coinbase.VENUE, symbol, coinbase.BOOK_STREAM)
        self._coinbase_book_outputs(self._coinbase_books.event(event, sequence, source, now), frame, delivery, now,
                                    records, letters, events)
        return None

    def _unreadable_book(self, source: BookSource[A], frame: Frame, delivery: Delivery, now: float, records: list[Shaped],
                         letters: list[DeadLetter], events: list[Event[A]]) -> None:
        if self._coinbase_books is not None:
            self._coinbase_book_outputs(self._coinbase_books.unreadable(source, now), frame, delivery, now, records, letters, events)

    def _coinbase_book_outputs(self, outputs: list[BooksLost | ReconnectWanted[A] | SequencedTop | SymbolOutOfSync | SymbolInSync],
                               frame: Frame, delivery: Delivery, now: float, records: list[Shaped], letters: list[DeadLetter],
                               events: list[Event[A]]) -> None:
        received_ns, conn_id, conn_msg_seq, _ = frame
        for output in outputs:
            if isinstance(output, SequencedTop):
                assert self._coinbase is not None and self._rules.coinbase is not None  # (it read the frame)
                shaped = self._coinbase.shape_book(output, delivery, self._rules.coinbase.book_depth)
                self._publish_window(coinbase.BOOK_STREAM, output, shaped, delivery,
                                     frame_lineage(conn_id, conn_msg_seq, received_ns), now, records, letters, events)
            else:
                self._book_news(output, events)

    def _publish_window(self, stream: str, top: CheckedTop | SequencedTop, shaped: Record | Rejected, delivery: Delivery,
                        lineage: Headers, now: float, records: list[Shaped], letters: list[DeadLetter],
                        events: list[Event[A]]) -> None:
        """A book's record of a cadence window (Kraken's, Coinbase's)."""
        if isinstance(shaped, Rejected):
            body = json.dumps({"symbol": top.symbol, "window_us": top.window_us, "bids": top.bids, "asks": top.asks})
            letters.append(self._dead_letter(body.encode(), shaped, delivery, events))
            return
        symbol = shaped["symbol"]
        # Each window once, whichever connection's book gave it first (and not again after a restart).
        if self._sequences.observe(stream, (delivery.venue, symbol), top.window_us, now) is Verdict.NEW:
            records.append((stream, shaped, lineage))
            self._count_published(symbol, stream)

    def _book_news(self, news: ChecksumFailed | ResubscribeWanted[A] | BooksLost | ReconnectWanted[A] | SymbolOutOfSync
                   | SymbolInSync, events: list[Event[A]]) -> None:
        if isinstance(news, SymbolOutOfSync):
            self.metrics.inc("k2_book_resyncs_total", news.symbol, news.reason)
        elif isinstance(news, SymbolInSync):
            self.metrics.observe("k2_book_resync_seconds", [news.seconds])
        events.append(news)

    def _book_outputs(self, venue: str, outputs: list[BookOutput], now: float, records: list[Shaped],
                      letters: list[DeadLetter], events: list[Event[A]]) -> None:
        for output in outputs:
            key = (venue, output.symbol)
            if isinstance(output, BookTop):
                self._publish_top(venue, output, now, records, letters, events)
            elif isinstance(output, FetchSnapshot):
                events.append(SnapshotWanted(venue, output.symbol))
            elif isinstance(output, OutOfSync):  # (a stale snapshot comes while it is out of sync already)
                self._books_lost_at.setdefault(key, now if output.since is None else output.since)
                self.metrics.inc("k2_book_resyncs_total", output.symbol, output.reason.value)
                events.append(BookLost(venue, output))
            else:
                seconds = now - self._books_lost_at.pop(key, now)
                self.metrics.observe("k2_book_resync_seconds", [seconds])
                events.append(BookRebuilt(venue, output, seconds))

    def _publish_top(self, venue: str, top: BookTop, now: float, records: list[Shaped], letters: list[DeadLetter],
                     events: list[Event[A]]) -> None:
        diff = top.diff
        endpoint, conn_id, conn_msg_seq = diff.source
        shaped = self._adapter.shape_book(top, venue, self._rules.book_depth)
        if isinstance(shaped, Rejected):
            body = json.dumps({"symbol": top.symbol, "update_id": diff.final_update_id, "bids": top.bids, "asks": top.asks})
            letters.append(self._dead_letter(body.encode(), shaped, Delivery(venue, endpoint, diff.recv_ts_ns // 1000), events))
            return
        if self._sequences.observe(BOOK, (venue, top.symbol), diff.final_update_id, now) is not Verdict.NEW:
            return  # published before a restart: Kafka has it
        records.append((BOOK, shaped, frame_lineage(conn_id, conn_msg_seq, diff.recv_ts_ns)))
        self._count_published(top.symbol, BOOK)

    def _another_instances(self, symbol: str) -> bool:
        """Cluster mode: a configured symbol of a shard this instance does not own: its owner
        publishes it; here it is counted and dropped."""
        if self._owned is None or symbol in self._owned or symbol not in self._configured:
            return False
        self._not_owned += 1
        self.metrics.inc("k2_cluster_events_not_owned_total", symbol)
        return True

    def _count_published(self, symbol: str, stream: str) -> None:
        """For the summary: trades by symbol, other stream types as symbol@stream."""
        key = symbol if stream == TRADE else f"{symbol}@{stream}"
        self._trades[key] = self._trades.get(key, 0) + 1

    def _say(self, check: ReadyCheck, events: list[Event[A]]) -> None:
        """A /ready check is said on every change, and each tick while it fails (its detail
        counts seconds)."""
        if check != self._checks.get(check.name) or not check.ok:
            self._checks[check.name] = check
            events.append(check)

    def _check_books(self, now: float, events: list[Event[A]]) -> None:
        lost_at = dict(self._books_lost_at)
        books = set(self._books)
        if self._kraken_books is not None:  # (by Kraken's spelling of the pair)
            books |= {(kraken.VENUE, pair) for pair in self._kraken_books.pairs()}
            lost_at |= {(kraken.VENUE, pair): at for pair, at in self._kraken_books.lost_since().items()}
        if self._coinbase_books is not None:  # (by Coinbase's product id)
            books |= {(coinbase.VENUE, product) for product in self._coinbase_books.products()}
            lost_at |= {(coinbase.VENUE, product): at for product, at in self._coinbase_books.lost_since().items()}
        if not books:
            return
        lost = {f"{venue} {symbol}": now - at for (venue, symbol), at in lost_at.items()}
        for key in books:
            self.metrics.set("k2_book_in_sync", 0.0 if key in lost_at else 1.0, key[1])
        if not lost:
            self._say(ReadyCheck(BOOKS_CHECK, True, f"{len(books)} books in sync"), events)
            return
        named = ", ".join(f"{name} for {seconds:.0f} s" for name, seconds in sorted(lost.items()))
        self._say(ReadyCheck(BOOKS_CHECK, max(lost.values()) <= BOOK_OUT_OF_SYNC_READY_SECONDS,
                             f"{len(books) - len(lost)} of {len(books)} books in sync; being rebuilt: {named}"), events)

    def _dead_letter(self, raw: bytes, rejected: Rejected, delivery: Delivery, events: list[Event[A]]) -> DeadLetter:
        letter = DeadLetter(raw[: self._rules.max_frame_bytes], rejected.reason, rejected.detail, delivery.endpoint,
                            delivery.received_us, rejected.stream)
        self._count_dead_letter(letter, events)
        return letter

    def _report_not_owned(self, events: list[Event[A]]) -> None:
        if self._not_owned:
            events.append(NotOwnedDropped(self._not_owned))
            self._not_owned = 0

    def _count_dead_letter(self, letter: DeadLetter, events: list[Event[A]]) -> None:
        count = self._dead_letters[letter.reason] = self._dead_letters.get(letter.reason, 0) + 1
        if count <= DEAD_LETTERS_LOGGED_PER_REASON:
            events.append(DeadLettered(letter))
        elif count == DEAD_LETTERS_LOGGED_PER_REASON + 1:
            events.append(DeadLettersThrottled(letter.reason))
        self.metrics.inc("k2_binance_message_errors_total", letter.reason, letter.stream)

    def _publish(self, records: list[Shaped], letters: list[DeadLetter], events: list[Event[A]]) -> None:
        """Records leave as their Avro bodies; one the schema refuses becomes a dead letter."""
        encoded: list[Encoded] = []
        for stream, record, headers in records:
            try:
                body = write_body(stream, record)
            except Exception as exc:  # one record the schema refuses (ValueError, TypeError, OverflowError) must not sink the batch
                name = record.get("message_id") or f"{record.get('conn_id')}/{record.get('conn_msg_seq')}"
                letter = record_dead_letter(record, stream, SERIALIZATION_FAILED, f"{name}: {type(exc).__name__}: {exc}"[:200])
                self._count_dead_letter(letter, events)
                letters.append(letter)
                continue
            venue, whose, which = identity(stream)
            received_us, event_us = ((record["recv_ts_ns"] // 1000, 0) if is_raw(stream)  # frames are not timed
                                     else (record["ingestion_timestamp"], record["timestamp"]))
            encoded.append(Encoded(stream, record[venue], record[whose], record[which], received_us, event_us, body, headers))
        self._publish_encoded(encoded, letters, events)

    def _publish_encoded(self, records: list[Encoded], letters: list[DeadLetter], events: list[Event[A]]) -> None:
        if records or letters:
            self._seq += 1
            batch = RecordBatch(self._seq, tuple(records), tuple(letters))
            self._unacked[batch.seq] = batch
            self.held += len(records) + len(letters)
            events.append(Publish(batch))

    def _forget(self, seq: int) -> RecordBatch | None:
        """The batch is no longer this ledger's to hold (acknowledged, or given up)."""
        batch = self._unacked.pop(seq, None)
        if batch is not None:
            self.held -= len(batch.records) + len(batch.dead_letters)
        return batch

    def _release(self, events: list[Event[A]]) -> None:
        """Confirm the RawBatches whose records (and those of every batch before them) Kafka
        acknowledged, and release the connections' RawBatches, but only while fewer than
        max_buffered_records wait for Kafka: past that their windows stay full, their readers
        pause, and TCP slows the exchange. Memory stays bounded, nothing is shed."""
        self._confirm(events)
        if self.held >= self._rules.max_buffered_records:
            if not self._holding_back:
                self._holding_back = True
                events.append(Backpressure(True, self.held))
            return
        if self._holding_back:
            self._holding_back = False
            events.append(Backpressure(False, self.held))
        untaken, self._untaken = self._untaken, []
        events.extend(Release(sender, seq) for sender, seq in untaken)

    def _confirm(self, events: list[Event[A]]) -> None:
        """One Confirmed per connection, for the last of its batches now confirmed."""
        oldest_unacked = next(iter(self._unacked), self._seq + 1)  # numbered in order, and a dict keeps it
        awaiting = self._awaiting
        confirmed: list[tuple[A, int]] = []  # addresses are not hashable: a short list, not a dict
        while awaiting and awaiting[0][0] < oldest_unacked:
            _, sender, seq = awaiting.popleft()
            index = next((i for i, (to, _) in enumerate(confirmed) if to == sender), None)
            if index is None:
                confirmed.append((sender, seq))
            else:
                confirmed[index] = (sender, max(seq, confirmed[index][1]))
        events.extend(Confirmed(sender, seq) for sender, seq in confirmed)

    def _declare_gaps(self, now: float, events: list[Event[A]]) -> None:
        for stream, gap in self._sequences.declare_due(now):
            self.metrics.inc("k2_binance_trade_gaps_total", gap.venue, gap.symbol, stream)
            self.metrics.inc("k2_binance_missing_trades_total", gap.venue, gap.symbol, stream, amount=gap.size)
            events.append(GapDeclared(stream, gap))

    def _check_data(self, now: float, events: list[Event[A]]) -> None:
        silent = {venue: now - at for venue, at in self._data_at.items() if now - at > self._rules.stale_timeout_seconds}
        if self._owned is not None and not self._owned:
            ok, detail = True, "no symbols owned (cluster mode: a standby until the group assigns this instance a shard)"
        elif not self._data_at:
            ok, detail = False, "no data from the exchange yet"
        elif silent:
            ok, detail = False, "no data for " + ", ".join(f"{seconds:.0f} s from {venue}" for venue, seconds in sorted(silent.items()))
        else:
            ok, detail = True, "data from " + ", ".join(sorted(self._data_at)) + " within the stale timeout"
        self._say(ReadyCheck(DATA_CHECK, ok, detail), events)

    def _check_drain(self, events: list[Event[A]]) -> None:
        if self._drain is None:
            return
        if all(url in self._received and self._received[url].complete_through(last) or last == 0
               for url, last in self._drain.items()):
            self._drain = None
            self._declare_gaps(float("inf"), events)  # a stop says what it knows is missing, grace or not
            missing = sum(gap.size for stream in CONSECUTIVE for gap in self._sequences.open_gaps(stream))
            events.append(Drained(self._seq, missing))


def _raw_stream(venue: str) -> str:
    """The raw record a venue's frames and REST answers are kept in."""
    return {kraken.VENUE: kraken.RAW_STREAM, coinbase.VENUE: coinbase.RAW_STREAM}.get(venue, RAW)
