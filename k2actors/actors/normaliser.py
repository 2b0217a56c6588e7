"""Normaliser: raw frames to v2 records; where a trade is shaped.

Every connection sends here, so this is also where trade ids are tracked per
(venue, symbol): overlaps between connections are dropped as duplicates and gaps are
declared. A frame that cannot become a record goes to the dead-letter topic with its
reason. Record batches stay held until the producer says they were delivered.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from thespian.actors import Actor, PoisonMessage, WakeupMessage

from k2actors.actors import TICK, note_poison, report_alive, seconds
from k2actors.core.binance import (
    AGG_TRADE,
    ID_REGRESSED,
    INTERNAL_ERROR,
    POISON_MESSAGE,
    TRADE,
    Rejected,
    ServerShutdown,
    SubscriptionReply,
    parse_frame,
)
from k2actors.core.normalise import SHAPES, Delivery, shape_event
from k2actors.core.sequence import DEDUP_WINDOW_IDS, BatchSequence, StreamSequences, Verdict
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import (
    BackfilledTrades,
    BackfillRequest,
    BatchesDelivered,
    DeadLetter,
    Drain,
    Flush,
    NormaliserSetup,
    PoisonedFrames,
    RawBatch,
    RawBatchTaken,
    RecordBatch,
    SequenceQuery,
    SequenceState,
    ServerShutdownNotice,
)

log = logging.getLogger("k2actors.normaliser")

TICK_SECONDS = 0.5
RESEND_BATCH_RECORDS = 5000
# Batches can overtake one another between actors; one is lost only when this late.
BATCH_GRACE_SECONDS = 2.0
# Steady-state trades are summarised in the log at this interval, never logged one by one.
SUMMARY_EVERY_SECONDS = 60.0
# Dead letters are logged one by one up to this many per reason and interval; a flood of
# garbage is then summarised, not copied into the log (every one is still counted and kept).
DEAD_LETTERS_LOGGED_PER_REASON = 10

_GAP_NOUNS = {TRADE: "trades", AGG_TRADE: "aggregate trades"}


class Normaliser(Actor):
    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._setup: NormaliserSetup | None = None
        self._coordinator = None
        self._sequences: StreamSequences | None = None
        self._metrics = MetricBuffer()
        self._batches: dict[str, BatchSequence] = {}  # per endpoint URL, the RawBatches seen
        self._seq = 0
        self._unacked: dict[int, RecordBatch] = {}
        self._held = 0  # records in _unacked: beyond max_buffered_records, connections are held back
        self._untaken: list[tuple[object, int]] = []  # (connection, RawBatch seq) not yet released
        self._holding_back = False
        self._drain: dict | None = None
        # Raw batches wait here until the setup has come and the tracker knows where the
        # producer stands: delivery order between actors is not guaranteed.
        self._early: list[tuple[RawBatch, object]] = []
        self._ticks = 0
        self._summary: dict[str, int] = {}  # trades published per symbol since the last summary
        self._dead_letter_counts: dict[str, int] = {}  # per reason since the last summary
        self._summary_at = time.monotonic()

    def receiveMessage(self, message, sender):
        if isinstance(message, RawBatch):
            if self._sequences is None:
                self._early.append((message, sender))
            else:
                self._normalise(message, sender)
        elif isinstance(message, BackfilledTrades):
            self._take_backfill(message)
        elif isinstance(message, BatchesDelivered):
            for seq in message.seqs:
                self._forget(seq)
            self._release()
        elif isinstance(message, WakeupMessage):
            self._on_tick()
        elif isinstance(message, SequenceState):
            self._resume(message.last_ids)
        elif isinstance(message, NormaliserSetup):
            self._configure(message, sender)
        elif isinstance(message, PoisonedFrames):
            self._dead_letter_frames(message)
        elif isinstance(message, PoisonMessage):
            self._on_poison(message)
        elif isinstance(message, Drain):
            self._drain = message.last_batches
            self._finish_drain()

    def _configure(self, setup: NormaliserSetup, sender) -> None:
        rewired = self._setup is not None and setup.producer != self._setup.producer
        new_backfill = self._setup is not None and setup.backfill != self._setup.backfill
        if self._setup is None:
            self.wakeupAfter(seconds(TICK_SECONDS), TICK)
        self._setup, self._coordinator = setup, sender
        if self._sequences is None:
            self.send(setup.producer, SequenceQuery())
        elif rewired:
            self._resend_unconfirmed(setup.producer)
        if new_backfill and self._sequences is not None:
            for gap in self._sequences.open_gaps(TRADE):  # the old backfill actor's work died with it
                self._request_backfill(gap)

    def _resend_unconfirmed(self, producer) -> None:
        """A new producer never saw what the old one held: send it everything unconfirmed,
        merged into a few large batches (thousands of small messages would choke the mailbox)."""
        batches = sorted(self._unacked.values(), key=lambda batch: batch.seq)
        records = [record for batch in batches for record in batch.records]
        dead_letters = [letter for batch in batches for letter in batch.dead_letters]
        log.warning("producer replaced: re-sending %d unconfirmed records", len(records) + len(dead_letters),
                    extra={"event": "records_resent", "count": len(records) + len(dead_letters)})
        self._metrics.inc("k2_kafka_resent_records_total", amount=len(records))
        self._unacked.clear()
        for start in range(0, max(len(records), len(dead_letters)), RESEND_BATCH_RECORDS):
            self._seq += 1
            merged = RecordBatch(
                self._seq,
                tuple(records[start : start + RESEND_BATCH_RECORDS]),
                tuple(dead_letters[start : start + RESEND_BATCH_RECORDS]),
            )
            self._unacked[merged.seq] = merged
            self.send(producer, merged)

    def _resume(self, last_ids: dict) -> None:
        if self._sequences is not None:
            return
        self._sequences = StreamSequences(self._setup.gap_grace_seconds)
        self._sequences.resume(last_ids)
        if last_ids:
            log.info("resuming id tracking of %d streams from the producer's state", len(last_ids))
        early, self._early = self._early, []
        for batch, sender in early:
            self._normalise(batch, sender)

    def _on_tick(self) -> None:
        self._declare_lost_batches()
        self._declare_gaps()
        self._log_summary()
        self._metrics.set("k2_buffered_records", self._held)
        self._flush_metrics()
        self._ticks += 1
        if self._ticks % 2 == 0:
            report_alive(self, self._coordinator, self._parent_pid)
        self.wakeupAfter(seconds(TICK_SECONDS), TICK)

    def _normalise(self, batch: RawBatch, sender) -> None:
        self._take_batch(batch)
        self._untaken.append((sender, batch.seq))
        self._release()

    def _release(self) -> None:
        """Tell connections their batches are taken, but only while fewer than
        max_buffered_records wait for Kafka: past that the connections' windows stay full,
        their readers pause, and TCP slows the exchange. Memory stays bounded, nothing is shed."""
        if self._held >= self._setup.max_buffered_records:
            if not self._holding_back:
                self._holding_back = True
                log.warning("%d records waiting for Kafka: holding the connections back", self._held,
                            extra={"event": "backpressure_on", "waiting_records": self._held})
            return
        if self._holding_back:
            self._holding_back = False
            log.warning("Kafka caught up (%d records waiting): connections released", self._held,
                        extra={"event": "backpressure_off", "waiting_records": self._held})
        untaken, self._untaken = self._untaken, []
        for sender, seq in untaken:
            self.send(sender, RawBatchTaken(seq))

    def _take_batch(self, batch: RawBatch) -> None:
        now = time.monotonic()
        self._batches.setdefault(batch.url, BatchSequence(BATCH_GRACE_SECONDS)).observe(batch.seq, now)
        records, dead_letters = [], []
        for received_us, raw in batch.frames:
            try:
                self._take(raw, Delivery(batch.venue, batch.url, received_us), now, records, dead_letters)
            except Exception as exc:  # a bug costs one frame, to the DLQ, never the batch or the actor
                log.exception("frame from %s could not be handled", batch.url)
                rejected = Rejected(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:200])
                dead_letters.append(self._dead_letter(raw, rejected, batch.url, received_us))
        if batch.frames:
            self._metrics.set("k2_binance_last_message_timestamp_seconds", batch.frames[-1][0] / 1e6)
        self._publish(records, dead_letters)
        self._declare_gaps()
        self._finish_drain()

    def _forget(self, seq: int) -> RecordBatch | None:
        """The batch is no longer this actor's to hold (delivered, or given up)."""
        batch = self._unacked.pop(seq, None)
        if batch is not None:
            self._held -= len(batch.records) + len(batch.dead_letters)
        return batch

    def _publish(self, records: list, dead_letters: list) -> None:
        if records or dead_letters:
            self._seq += 1
            out = RecordBatch(self._seq, tuple(records), tuple(dead_letters))
            self._unacked[out.seq] = out
            self._held += len(records) + len(dead_letters)
            self.send(self._setup.producer, out)

    def _on_poison(self, poison: PoisonMessage) -> None:
        """The producer failed twice on a batch: its records go to the DLQ as JSON instead.
        A batch of dead letters alone that fails is counted and logged, never sent again."""
        note_poison(log, self._metrics, poison)
        batch = poison.poisonMessage
        if not isinstance(batch, RecordBatch) or self._forget(batch.seq) is None:
            return
        if batch.records:
            detail = str(poison.details)[:200]
            letters = [
                self._dead_letter(
                    json.dumps(record, default=str).encode(), Rejected(POISON_MESSAGE, detail, stream),
                    record["vendor_data"]["endpoint"], record["ingestion_timestamp"],
                )
                for stream, record in batch.records
            ]
            self._publish([], letters + list(batch.dead_letters))
        else:
            log.error("%d dead letters could not be produced; they are lost", len(batch.dead_letters),
                      extra={"event": "dead_letters_lost", "count": len(batch.dead_letters)})
        self._release()

    def _dead_letter_frames(self, poisoned: PoisonedFrames) -> None:
        rejected = Rejected(POISON_MESSAGE, poisoned.detail)
        self._publish([], [self._dead_letter(raw, rejected, poisoned.url, received_us) for received_us, raw in poisoned.frames])

    def _take(self, raw: bytes, delivery: Delivery, now: float, records: list, dead_letters: list) -> None:
        event = parse_frame(raw, self._setup.max_frame_bytes)
        if type(event) in SHAPES:
            self._route(self._accept(event, delivery, now), lambda: raw, delivery, records, dead_letters)
        elif isinstance(event, Rejected):
            dead_letters.append(self._dead_letter(raw, event, delivery.endpoint, delivery.received_us))
        elif isinstance(event, ServerShutdown):
            log.warning("%s announced serverShutdown", delivery.endpoint, extra={"event": "server_shutdown", "endpoint": delivery.endpoint})
            self.send(self._coordinator, ServerShutdownNotice(delivery.endpoint))
        elif isinstance(event, SubscriptionReply):
            log.debug("%s answered request %r: %r", delivery.endpoint, event.request_id, event.result)

    def _route(self, outcome, raw, delivery: Delivery, records: list, dead_letters: list) -> None:
        """A record to publish, a rejection to the DLQ (`raw()` gives its bytes), or nothing (a duplicate)."""
        if isinstance(outcome, Rejected):
            dead_letters.append(self._dead_letter(raw(), outcome, delivery.endpoint, delivery.received_us))
        elif outcome is not None:
            records.append(outcome)

    def _take_backfill(self, page: BackfilledTrades) -> None:
        """A page of REST history inside a gap: shaped like streamed trades, marked backfilled,
        and published in id order; ids published meanwhile are duplicates as ever."""
        if self._sequences is None:
            return  # not tracking yet: no gap of this Normaliser's can be open
        now, delivery = time.monotonic(), Delivery(page.venue, page.url, page.received_us)
        records, dead_letters = [], []
        for raw, rejected in page.rejected:
            dead_letters.append(self._dead_letter(raw, rejected, page.url, page.received_us))
        for trade in sorted(page.trades, key=lambda t: t.trade_id):
            raw = lambda trade=trade: json.dumps(dataclasses.asdict(trade)).encode()  # noqa: E731 - only for a dead letter
            self._route(self._accept(trade, delivery, now, backfilled=True), raw, delivery, records, dead_letters)
        if records:
            first_id, last_id = records[0][1]["source_sequence"], records[-1][1]["source_sequence"]
            self._metrics.inc("k2_backfill_trades_total", page.symbol, amount=len(records))
            log.info("backfilled %d trades of %s %s, ids %d to %d", len(records), page.venue, page.symbol, first_id, last_id,
                     extra={"event": "trades_backfilled", "venue": page.venue, "symbol": page.symbol, "count": len(records),
                            "first_id": first_id, "last_id": last_id})
        self._publish(records, dead_letters)

    def _accept(self, event, delivery: Delivery, now: float, backfilled: bool = False):
        """(stream type, record) to publish, a Rejected for the DLQ, or None (a duplicate)."""
        # Validate before tracking: an event that cannot be stored must not claim its id.
        shaped = shape_event(event, delivery, self._setup.quote_assets, None if backfilled else self._setup.symbols)
        if isinstance(shaped, Rejected):
            return shaped
        stream, record = shaped
        _, _, event_id = SHAPES[type(event)]
        if backfilled:
            record["vendor_data"]["backfilled"] = "true"
        else:
            self._metrics.inc("k2_binance_messages_received_total", event.symbol, stream)
        key = (delivery.venue, event.symbol)
        verdict = self._sequences.observe(stream, key, event_id(event), now)
        if verdict is Verdict.REGRESSED and not backfilled:
            highest = self._sequences.last_id(stream, key)
            return Rejected(ID_REGRESSED, f"{stream} id {event_id(event)} is more than {DEDUP_WINDOW_IDS} behind {highest}, the highest seen", stream)
        if verdict in (Verdict.DUPLICATE, Verdict.REGRESSED):  # history outside every open gap is a duplicate
            self._metrics.inc("k2_binance_duplicate_trades_total", event.symbol, stream)
            return None
        if verdict is Verdict.RECOVERED and not backfilled:
            log.warning("%s %s %s-%d arrived after it was declared missing", stream, event.symbol, delivery.venue, event_id(event),
                        extra={"event": "trade_recovered", "venue": delivery.venue, "symbol": event.symbol,
                               "stream": stream, "trade_id": event_id(event)})
            self._metrics.inc("k2_binance_recovered_trades_total", event.symbol)
        summary_key = event.symbol if stream == TRADE else f"{event.symbol}@{stream}"
        self._summary[summary_key] = self._summary.get(summary_key, 0) + 1
        return stream, record

    def _log_summary(self) -> None:
        now = time.monotonic()
        if now - self._summary_at < SUMMARY_EVERY_SECONDS:
            return
        counts = ", ".join(f"{symbol} {count}" for symbol, count in sorted(self._summary.items())) or "none"
        log.info("%d trades in the last %.0f s (%s); %d records waiting for Kafka",
                 sum(self._summary.values()), now - self._summary_at, counts, self._held,
                 extra={"event": "trade_summary", "trades": dict(self._summary), "waiting_records": self._held})
        if self._dead_letter_counts:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self._dead_letter_counts.items()))
            log.warning("%d dead letters in the last %.0f s (%s)",
                        sum(self._dead_letter_counts.values()), now - self._summary_at, reasons,
                        extra={"event": "dead_letter_summary", "reasons": dict(self._dead_letter_counts)})
        self._summary, self._dead_letter_counts, self._summary_at = {}, {}, now

    def _dead_letter(self, raw: bytes, rejected: Rejected, url: str, received_us: int) -> DeadLetter:
        count = self._dead_letter_counts[rejected.reason] = self._dead_letter_counts.get(rejected.reason, 0) + 1
        if count <= DEAD_LETTERS_LOGGED_PER_REASON:
            log.warning("dead letter from %s: %s (%s)", url, rejected.reason, rejected.detail,
                        extra={"event": "dead_letter", "endpoint": url, "reason": rejected.reason, "detail": rejected.detail})
        elif count == DEAD_LETTERS_LOGGED_PER_REASON + 1:
            log.warning("more dead letters for %s: counted, and summarised within %.0f s", rejected.reason, SUMMARY_EVERY_SECONDS)
        self._metrics.inc("k2_binance_message_errors_total", rejected.reason, rejected.stream)
        return DeadLetter(raw[: self._setup.max_frame_bytes], rejected.reason, rejected.detail, url, received_us, rejected.stream)

    def _declare_lost_batches(self) -> None:
        now = time.monotonic()
        for url, batches in self._batches.items():
            lost = batches.lost(now)
            if lost:
                log.error("%d batches from %s never arrived (seq %s)", len(lost), url, ", ".join(map(str, lost[:20])),
                          extra={"event": "batches_lost", "endpoint": url, "count": len(lost)})
                self._metrics.inc("k2_actor_batches_lost_total", "connection_to_normaliser", amount=len(lost))
        self._finish_drain()

    def _declare_gaps(self) -> None:
        for stream, gap in self._sequences.declare_due(time.monotonic()) if self._sequences else ():
            log.error(
                "gap in %s %s: %d %s missing, ids %d to %d",
                gap.venue, gap.symbol, gap.size, _GAP_NOUNS[stream], gap.first_id, gap.last_id,
                extra={"event": "gap_declared", "venue": gap.venue, "symbol": gap.symbol, "stream": stream,
                       "first_id": gap.first_id, "last_id": gap.last_id, "missing": gap.size},
            )
            self._metrics.inc("k2_binance_trade_gaps_total", gap.symbol, stream)
            self._metrics.inc("k2_binance_missing_trades_total", gap.symbol, stream, amount=gap.size)
            if stream == TRADE:  # the REST history serves trades
                self._request_backfill(gap)

    def _request_backfill(self, gap) -> None:
        if self._setup.backfill is not None:
            self.send(self._setup.backfill, BackfillRequest(gap.venue, gap.symbol, gap.first_id, gap.last_id))

    def _finish_drain(self) -> None:
        if self._drain is None:
            return
        if all(self._batches.get(url, BatchSequence(0)).complete_through(last) for url, last in self._drain.items()):
            self._drain = None
            self._flush_metrics()
            self.send(self._setup.producer, Flush(self._seq))

    def _flush_metrics(self) -> None:
        deltas = self._metrics.take()
        if deltas and self._setup:
            self.send(self._setup.metrics, deltas)
