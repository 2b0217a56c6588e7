"""Normaliser: raw frames to v2 records; where a trade is shaped.

Every connection sends here, so this is where trade ids are tracked per (venue, symbol):
overlaps between connections are dropped as duplicates and gaps are declared. A frame that
cannot become a record goes to the dead-letter topic with its reason. All of that is the
ledger's (k2actors.core.ledger); this actor hands it what arrives and carries out what it
answers.
"""

from __future__ import annotations

import logging
import time

from thespian.actors import ActorAddress

from k2actors.actors.shell import Recipient, Supervised
from k2actors.core import coinbase, kraken
from k2actors.core.backfill import HISTORY
from k2actors.core.kraken_books import ResubscribeWanted
from k2actors.core.ledger import (
    Answered,
    Confirmed,
    Drained,
    Event,
    GapDeclared,
    InstrumentsLearned,
    Ledger,
    ProductsLearned,
    Publish,
    ReadyCheck,
    ReconnectWanted,
    Release,
    Rules,
    ShutdownAnnounced,
    SnapshotWanted,
)
from k2actors.core.payloads import BackfilledTrades, FetchedSnapshot, PoisonedFrames, RawBatch, RecordBatch
from k2actors.core.sequence import Gap
from k2actors.core.streams import CONSECUTIVE
from k2actors.core.telemetry import log_line
from k2actors.messages import (
    BackfillRequest,
    BatchesDelivered,
    BookSnapshotRequest,
    CoinbaseBackfillRequest,
    CoinbaseProducts,
    ComponentStatus,
    Drain,
    Flush,
    KrakenBackfillRequest,
    KrakenInstruments,
    NormaliserSetup,
    RawBatchesConfirmed,
    RawBatchTaken,
    ReplaceConnection,
    ResubscribeBook,
    SequenceQuery,
    SequenceState,
    ServerShutdownNotice,
    SubscriptionAnswer,
    SymbolsOwned,
)

log = logging.getLogger("k2actors.normaliser")

# A stop that comes while Kafka is still being reached waits this long for it (within the
# service's 12 s for the whole stop), then reports what it never handled.
DRAIN_WAIT_SECONDS = 4.0


class Normaliser(Supervised[NormaliserSetup]):
    SETUP = NormaliserSetup
    TICK_SECONDS = 0.5
    # SequenceState makes the Normaliser ready; a stop (Drain) must not wait for that.
    UNHELD = (SequenceState, Drain)
    TAKES_DATA = True

    def __init__(self) -> None:
        super().__init__()
        # Until the producer says where each stream stands, frames wait (the shell holds them).
        self._ledger: Ledger[Recipient] | None = None
        self._drain: tuple[Drain, float] | None = None  # a stop asked for before the ledger: (it, until when)

    def ready(self) -> bool:
        return self._ledger is not None

    @property
    def ledger(self) -> Ledger[Recipient]:
        if self._ledger is None:  # the shell holds data messages until ready()
            raise RuntimeError("the Normaliser has no ledger before the producer's SequenceState")
        return self._ledger

    def metrics_address(self) -> ActorAddress:
        return self.setup.metrics

    def configure(self, previous: NormaliserSetup | None) -> None:
        if self._ledger is None:
            self.send(self.setup.producer, SequenceQuery())
            return
        if previous is not None and self.setup.producer != previous.producer:
            self.forget_channel(previous.producer)
            self._act(self._ledger.resend())
        if previous is not None and self.setup.backfill != previous.backfill:  # the old backfill actor's work died with it
            for stream in CONSECUTIVE:
                for gap in self._ledger.open_gaps(stream):
                    self._request_backfill(stream, gap)
            for venue, symbol in self._ledger.snapshots_wanted():
                self._request_snapshot(venue, symbol)

    def receiveMsg_SequenceState(self, message: SequenceState, sender: ActorAddress) -> None:
        if self._ledger is not None:
            return
        setup = self.setup
        rules = Rules(setup.gap_grace_seconds, setup.symbols, setup.quote_assets, setup.max_buffered_records,
                      setup.max_frame_bytes, setup.stale_timeout_seconds, setup.raw, setup.book_depth, setup.book_cadence_ms,
                      setup.kraken, setup.coinbase)
        self._ledger = Ledger(rules, message.positions, time.monotonic(), self.metrics, setup.owned)
        if message.positions:
            missing = sum(last - first + 1 for position in message.positions.values() for first, last in position.missing)
            log.info("resuming id tracking of %d streams from what Kafka holds; %d ids below the highest are missing "
                     "and will be declared and backfilled", len(message.positions), missing,
                     extra={"event": "resumed", "streams": len(message.positions), "missing": missing})
        self._act(self._ledger.archive(setup.exchange_info))
        self.release_held()
        if self._drain is not None:  # a stop came while Kafka was being reached
            drain, self._drain = self._drain[0], None
            self._act(self._ledger.drain(drain.last_batches))

    def receiveMsg_SymbolsOwned(self, message: SymbolsOwned, sender: ActorAddress) -> None:
        self.ledger.own(message.symbols, message.positions, time.monotonic())

    def receiveMsg_RawBatch(self, message: RawBatch, sender: Recipient) -> None:
        self._act(self.ledger.take_raw(message, sender, time.monotonic()))

    def receiveMsg_BackfilledTrades(self, message: BackfilledTrades, sender: ActorAddress) -> None:
        self._act(self.ledger.take_backfill(message, time.monotonic()))

    def receiveMsg_FetchedSnapshot(self, message: FetchedSnapshot, sender: ActorAddress) -> None:
        self._act(self.ledger.take_snapshot(message, time.monotonic()))

    def receiveMsg_BatchesDelivered(self, message: BatchesDelivered, sender: Recipient) -> None:
        self._act(self.ledger.delivered(message.seqs))

    def receiveMsg_PoisonedFrames(self, message: PoisonedFrames, sender: Recipient) -> None:
        self._act(self.ledger.take_poisoned_frames(message))

    def receiveMsg_Drain(self, message: Drain, sender: ActorAddress) -> None:
        if self._ledger is None:  # Kafka has not answered yet: the drain waits for it a while
            self._drain = (message, time.monotonic() + DRAIN_WAIT_SECONDS)
        else:
            self._act(self._ledger.drain(message.last_batches))

    def on_poison(self, message: object, detail: str) -> None:
        if isinstance(message, RecordBatch) and self._ledger is not None:
            self._act(self._ledger.poisoned(message, detail))

    def on_channel_reset(self) -> None:
        if self._ledger is not None:  # the producer took nothing of what the channel held: sent again
            self._act(self._ledger.resend())

    def on_tick(self, now: float) -> None:
        if self._ledger is not None:
            self._act(self._ledger.tick(now))
        elif self._drain is not None and now > self._drain[1]:  # Kafka never answered: what came was never handled
            self._drain = None
            frames = sum(len(batch.frames) for batch in self.held(RawBatch))
            if frames:
                log.error("stopping before Kafka was ready: %d frames received were never handled; the next start "
                          "resumes from Kafka and backfills their trades", frames, extra={"event": "frames_unhandled", "count": frames})
            self.deliver(self.setup.producer, Flush(0, 0, frames))

    def _request_backfill(self, stream: str, gap: Gap) -> None:
        setup = self.setup
        if setup.backfill is None:
            return
        if stream in HISTORY and setup.fill_gaps:
            self.send(setup.backfill, BackfillRequest(stream, gap.venue, gap.symbol, gap.first_id, gap.last_id))
        elif stream == kraken.TRADE_STREAM and setup.fill_kraken_gaps:
            history = self.ledger.kraken_history(gap)
            if history is not None:  # (its trades were shaped with the pair's instrument: it is there)
                pair, after_us = history
                self.send(setup.backfill, KrakenBackfillRequest(gap.symbol, pair, gap.first_id, gap.last_id, after_us))
        elif stream == coinbase.TRADE_STREAM and setup.fill_coinbase_gaps:
            product_id = self.ledger.coinbase_history(gap)
            if product_id is not None:  # (its trades were shaped with the product's description: it is there)
                self.send(setup.backfill, CoinbaseBackfillRequest(gap.symbol, product_id, gap.first_id, gap.last_id))

    def _request_snapshot(self, venue: str, symbol: str) -> None:
        if self.setup.backfill is not None:  # there is one whenever books are streamed
            self.send(self.setup.backfill, BookSnapshotRequest(venue, symbol))

    def _act(self, events: list[Event[Recipient]]) -> None:
        for event in events:
            if isinstance(event, Publish):
                self.deliver(self.setup.producer, event.batch)
            elif isinstance(event, Release):
                self.deliver(event.to, RawBatchTaken(event.seq))
            elif isinstance(event, Confirmed):
                self.deliver(event.to, RawBatchesConfirmed(event.seq))
            elif isinstance(event, Answered):
                log_line(log, event.report())
                self.deliver(event.to, SubscriptionAnswer(event.request_id, event.refusal))
            elif isinstance(event, ReadyCheck):
                self.send(self.setup.metrics, ComponentStatus(event.name, event.ok, event.detail))
            elif isinstance(event, SnapshotWanted):
                self._request_snapshot(event.venue, event.symbol)
            elif isinstance(event, ResubscribeWanted):
                log_line(log, event.report())
                self.deliver(event.source.connection, ResubscribeBook(event.source.conn_id, event.pair))
            elif isinstance(event, ReconnectWanted):
                log_line(log, event.report())
                self.deliver(event.source.connection, ReplaceConnection(event.source.conn_id))
            elif isinstance(event, InstrumentsLearned):
                self.send(self.coordinator, KrakenInstruments(event.instruments))
            elif isinstance(event, ProductsLearned):
                self.send(self.coordinator, CoinbaseProducts(event.products))
            elif isinstance(event, Drained):
                self.flush_metrics()
                # On the channel, after the last batch: the producer flushes once it has them all.
                self.deliver(self.setup.producer, Flush(event.last_seq, event.missing))
            else:
                log_line(log, event.report())
                if isinstance(event, GapDeclared):  # the REST history serves trades and aggregate trades
                    self._request_backfill(event.stream, event.gap)
                elif isinstance(event, ShutdownAnnounced):
                    self.send(self.coordinator, ServerShutdownNotice(event.url))
