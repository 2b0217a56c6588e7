"""ProducerActor: records to Kafka; where a trade leaves the service.

Owns the confluent-kafka Producer. A poll thread serves delivery reports as they arrive,
so acknowledgement latency is measured when the ack comes, not when the actor next wakes.
A RecordBatch is confirmed to the Normaliser only once Kafka has answered for every record
in it (k2actors.core.delivery keeps that account).

In cluster mode each shard the instance acquires has a transactional writer of its own
(k2actors.shard_writer), and a record is produced only through its shard's writer, once the
shard is acquired; dead letters go through the idempotent producer as ever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from thespian.actors import ActorAddress, ActorExitRequest

from k2actors import receipts
from k2actors.actors.shell import Recipient, Supervised, WakePipe, seconds
from k2actors.core.backoff import backoff_delay
from k2actors.core.cluster import shard_symbols, transactional_id
from k2actors.core.delivery import NO_SHARD, Admission, Deliveries, Handed, KafkaReadiness, Landed, PendingBatch
from k2actors.core.payloads import DeadLetter, RecordBatch
from k2actors.core.raw import frames_lost
from k2actors.core.streams import is_raw
from k2actors.messages import (
    AcquireShard,
    BatchesDelivered,
    ComponentStatus,
    Flush,
    Flushed,
    IdsAbandoned,
    ProducerSetup,
    ReleaseShard,
    SequenceQuery,
    SequenceState,
    ShardAcquired,
    ShardFenced,
)
from k2actors.outlets import LIBRDKAFKA_LOG, Outlet, Preparation, control_topic, producer_settings
from k2actors.shard_writer import Outgoing, ShardWriter

log = logging.getLogger("k2actors.producer")

SETUP_RETRY_BASE_SECONDS = 1.0
SETUP_RETRY_MAX_SECONDS = 30.0
FLUSH_DEADLINE_SECONDS = 10.0
# What Kafka acknowledged is checkpointed this often (k2actors.core.resume).
CHECKPOINT_EVERY_SECONDS = 1.0
# A receipt left behind is settled this long after it is first seen: the frames its connection
# handed on before its process died have reached Kafka by then, or are counted as in it
# (handed to the producer, which delivers them).
RECEIPT_GRACE_SECONDS = 10.0
RETRY_SETUP = "retry setup"
CHECK_FLUSH = "check flush"
# How late a batch's confirmation may reach the Normaliser after Kafka acknowledged it.
CONFIRM_EVERY_SECONDS = 0.1
FAST_TICK_SECONDS = 0.1


class ProducerActor(Supervised[ProducerSetup]):
    SETUP = ProducerSetup
    # Kafka's acknowledgements wake the actor (the poll thread says so, at most every
    # CONFIRM_EVERY_SECONDS), so a quiet producer ticks once a second; it ticks fast only
    # while it waits for something no acknowledgement tells of.
    TICK_SECONDS = 1.0
    # A stop must not wait for Kafka to be ready. (A SequenceQuery does: the answer is what
    # Kafka holds, read during the preparation.)
    UNHELD = (Flush,)
    TAKES_DATA = True

    def __init__(self) -> None:
        super().__init__()
        self._producer: Producer | None = None
        self._outlets: dict[str, Outlet] = {}
        self._deliveries: Deliveries[Recipient] = Deliveries()
        self._acknowledgements = WakePipe()
        self._readiness = KafkaReadiness("")
        self._stopping = threading.Event()
        self._setup_attempts = 0
        self._flush: tuple[Flush, float] | None = None  # (what to flush, deadline)
        self._flush_check_due = False
        self._handed = Handed()
        self._checkpoint_at = 0.0
        self._preparing: Preparation | None = None
        self._left_since: dict[Path, float] = {}  # receipts left behind, since when this producer has seen them
        self._fatal: str | None = None
        # Cluster mode: the writer of each shard acquired or being acquired; each configured
        # symbol's shard; and, for the shards acquired, which writer a symbol's records go to
        # (None outside cluster mode: everything goes through the one producer).
        self._writers: dict[int, ShardWriter] = {}
        self._shard_of: dict[str, int] = {}
        self._owned: dict[str, ShardWriter] | None = None

    def ready(self) -> bool:
        return self._producer is not None  # until Kafka and the schemas are ready, batches wait

    def metrics_address(self) -> ActorAddress:
        return self.setup.metrics

    def configure(self, previous: ProducerSetup | None) -> None:
        if previous is None:
            self._readiness = KafkaReadiness(self.setup.kafka.bootstrap_servers)
            if self.setup.cluster.enabled:
                self._owned = {}
                self._shard_of = {symbol: shard for shard, symbols in enumerate(shard_symbols(self.setup.symbols))
                                  for symbol in symbols}
            self._prepare()
        elif (status := self._readiness.current()) is not None:
            self.send(self.setup.metrics, ComponentStatus("kafka", *status))  # a new MetricsActor

    def receiveMsg_IdsAbandoned(self, message: IdsAbandoned, sender: ActorAddress) -> None:
        # Not handed: should one still arrive from the exchange it is published after all.
        self._deliveries.abandoned(message.stream, (message.venue, message.symbol), message.first_id, message.last_id,
                                   self._shard_of.get(message.symbol, NO_SHARD))

    def receiveMsg_SequenceQuery(self, message: SequenceQuery, sender: ActorAddress) -> None:
        self.send(sender, SequenceState(self._handed.positions()))

    # --- setup: topics and schema on a thread of its own, so the actor never blocks ---

    def _prepare(self) -> None:
        setup = self.setup
        self._preparing = Preparation(setup.kafka, setup.streams,
                                      resume=not setup.cluster.enabled)
        self._preparing.start()

    def on_wakeup(self, payload: object) -> None:
        if payload == RETRY_SETUP:
            self._prepare()
        elif payload == CHECK_FLUSH:
            self._flush_check_due = False
            self._check_flush()

    def _check_preparation(self, now: float) -> None:
        preparation = self._preparing
        if preparation is None or preparation.is_alive():
            return
        self._preparing = None
        if preparation.failure:
            self._setup_attempts += 1
            delay = backoff_delay(self._setup_attempts, SETUP_RETRY_BASE_SECONDS, SETUP_RETRY_MAX_SECONDS)
            log.error("producer setup failed (attempt %d, Kafka at %s, Schema Registry at %s), retrying in %.1f s: %s",
                      self._setup_attempts, self.setup.kafka.bootstrap_servers, self.setup.kafka.schema_registry_url, delay,
                      preparation.failure,
                      extra={"event": "kafka_setup_failed", "attempt": self._setup_attempts, "detail": preparation.failure})
            self._report(self._readiness.setup_failed(preparation.failure, now))
            self.wakeupAfter(seconds(delay), RETRY_SETUP)
            return
        self._outlets = preparation.outlets
        for stream, ids in preparation.held.items():
            self._deliveries.resume_from(stream, ids)
            self._handed.resume(stream, ids)
        settings = {**producer_settings(self.setup.kafka), "error_cb": self._on_kafka_error, "logger": LIBRDKAFKA_LOG}
        producer = self._producer = Producer(settings)
        threading.Thread(target=self._poll, args=(producer,), name="kafka-poll", daemon=True).start()
        self._report(self._readiness.connected(now))
        self.release_held()

    # --- cluster mode: shards ---

    def receiveMsg_AcquireShard(self, message: AcquireShard, sender: ActorAddress) -> None:
        setup = self.setup
        current = self._writers.get(message.shard)
        if current is not None and current.acquisition > message.acquisition:
            return  # overtaken by a later acquisition of the shard
        self._release(message.shard)  # a fenced writer's successor
        writer = self._writers[message.shard] = ShardWriter(
            message.shard, message.acquisition, frozenset(message.symbols), setup.kafka,
            tuple(stream for stream in setup.streams if not is_raw(stream)),  # the raw record is no shard's
            control_topic(setup.kafka, setup.cluster.group_id), transactional_id(setup.cluster.group_id, message.shard),
            producer_settings(setup.kafka),
        )
        writer.start()

    def receiveMsg_ReleaseShard(self, message: ReleaseShard, sender: ActorAddress) -> None:
        writer = self._writers.get(message.shard)
        if writer is not None and writer.acquisition == message.acquisition:  # not a later acquisition's writer
            self._release(message.shard)

    def _release(self, shard: int) -> None:
        writer = self._writers.pop(shard, None)
        if writer is None:
            return
        writer.retire()  # it commits what it was given: the next owner reads it
        self._forget(writer)

    def _forget(self, writer: ShardWriter) -> None:
        if self._owned is not None:
            for symbol in writer.symbols:
                if self._owned.get(symbol) is writer:
                    del self._owned[symbol]
        self._handed.forget(writer.symbols)
        self._deliveries.forget(writer.shard)

    def _check_writers(self) -> None:
        for shard, writer in list(self._writers.items()):
            if writer.ended.is_set() and writer.failure is not None:
                del self._writers[shard]
                self._forget(writer)
                log.warning("shard %d: its transaction failed, so it is released: %s", shard, writer.failure,
                            extra={"event": "shard_fenced", "shard": shard, "detail": writer.failure})
                self.send(self.coordinator, ShardFenced(shard, writer.acquisition, writer.failure))
            elif writer.acquired.is_set() and self._owned is not None and writer.symbols.isdisjoint(self._owned):
                positions = {}
                for stream, ids in writer.held.items():
                    self._handed.resume(stream, ids)
                    self._deliveries.resume_from(stream, ids, shard)
                    positions.update({(stream, venue, symbol): position for (venue, symbol), ranges in ids.items()
                                      if (position := ranges.position()) is not None})
                self._owned.update({symbol: writer for symbol in writer.symbols})
                self.send(self.coordinator, ShardAcquired(shard, writer.acquisition, positions))

    # --- producing ---

    def receiveMsg_RecordBatch(self, batch: RecordBatch, sender: Recipient) -> None:
        records = []
        in_kafka = not_owned = 0
        admit = self._handed.admit
        owned = self._owned
        for record in batch.records:
            stream = record.stream
            if is_raw(stream):  # a frame of this instance's own connections: archived whoever owns its symbol
                admission = self._handed.admit_frame(record.venue, record.key, record.event_id)
            elif owned is not None and record.key not in owned:  # its shard was released meanwhile
                not_owned += 1
                continue
            else:
                admission = admit(stream, record.venue, record.key, record.event_id)
            if admission is Admission.PRODUCE:
                records.append(record)
            elif admission is Admission.IN_KAFKA:  # a resend after a producer restart: some had landed
                in_kafka += 1
            else:
                log.warning("%s %s of %s not produced: a newer one was handed to Kafka first (batch %d came late)",
                            stream, record.event_id, record.key, batch.seq,
                            extra={"event": "quote_superseded", "stream": stream, "symbol": record.key, "batch": batch.seq})
                self.metrics.inc("k2_kafka_quotes_superseded_total", record.key)
        if in_kafka:
            self.metrics.inc("k2_kafka_records_already_in_kafka_total", amount=in_kafka)
        if not_owned:
            log.info("%d records of batch %d not produced: their shard is no longer this instance's, and its next owner "
                     "resumes from what Kafka holds", not_owned, batch.seq, extra={"event": "records_not_owned", "count": not_owned})
            self.metrics.inc("k2_cluster_records_not_owned_total", amount=not_owned)
        pending = self._deliveries.expect(batch.seq, len(records) + len(batch.dead_letters), sender)
        if pending.outstanding == 0:
            return
        received: list[int] = []
        for record in records:
            outlet = self._outlets[record.stream]
            value = outlet.write.header + record.body
            key = record.key.encode()
            if is_raw(record.stream):
                frame = _Trade(record.stream, (record.venue, record.key), record.event_id, record.received_us, 0, NO_SHARD)
                self._send(outlet.topic, key, value, None, partial(self._delivered, pending, outlet.topic, frame))
                continue
            writer = owned[record.key] if owned is not None else None
            trade = _Trade(record.stream, (record.venue, record.key), record.event_id, record.received_us, record.event_us,
                           NO_SHARD if writer is None else writer.shard)
            report = partial(self._delivered, pending, outlet.topic, trade)
            lineage: list[tuple[str, str | bytes | None]] = list(record.headers)
            if writer is None:
                self._send(outlet.topic, key, value, lineage, report)
            else:
                writer.put(Outgoing(outlet.topic, None, key, value, report, lineage))
            received.append(record.received_us)
        if received:
            produced_us = time.time_ns() // 1000
            self.metrics.observe("k2_trade_receive_to_produce_seconds", [(produced_us - us) / 1e6 for us in received])
        for letter in batch.dead_letters:
            topic = self.setup.kafka.dead_letter_topic
            self._send(topic, None, letter.raw, _headers(letter), partial(self._delivered, pending, topic, None))
            self.metrics.inc("k2_dlq_messages_total", letter.reason, letter.stream)

    def _send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, str | bytes | None]] | None,
              report: Callable[[KafkaError | None, Message | None], None]) -> None:
        producer = self._producer
        assert producer is not None  # batches are held until it exists
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
                return
            except BufferError:
                # librdkafka's queue is full: let the poll thread drain acknowledgements.
                time.sleep(0.005)
            except KafkaException as exc:  # refused outright (a record larger than Kafka takes): reported as a failed delivery
                report(exc.args[0], None)
                return

    def _poll(self, producer: Producer) -> None:
        woken_at = 0.0
        while not self._stopping.is_set():
            producer.poll(CONFIRM_EVERY_SECONDS)
            now = time.monotonic()
            if now - woken_at >= CONFIRM_EVERY_SECONDS and self._deliveries.news():  # a shard writer's too
                woken_at = now
                self._acknowledgements.wake()

    def watched(self) -> list[int]:
        return [self._acknowledgements.read_fd]

    def on_readable(self, fds: set[int]) -> None:
        self._acknowledgements.drain()
        self.on_tick(time.monotonic())

    def tick_seconds(self) -> float:
        """Fast while Kafka is being prepared or a shard acquired: ready, it is said at once."""
        acquiring = any(not writer.acquired.is_set() and not writer.ended.is_set() for writer in self._writers.values())
        return FAST_TICK_SECONDS if self._producer is None or acquiring else self.TICK_SECONDS

    def _delivered(self, pending: PendingBatch[Recipient], topic: str, trade: _Trade | None,
                   error: KafkaError | None, message: Message | None) -> None:
        """Runs on the poll thread (or a shard writer's). No message: never produced (a
        shard released first)."""
        if error is not None or message is None:
            if trade is not None and trade.shard != NO_SHARD:  # the shard's transaction did not commit
                self._deliveries.released(pending)
            else:
                self._deliveries.refused(pending, topic, error.name() if error else "NOT_PRODUCED", error.str() if error else "")
            return
        if trade is None:
            self._deliveries.acknowledged(pending, topic, None, None)
            return
        now_us = time.time_ns() // 1000
        latencies = None if is_raw(trade.stream) else ((now_us - trade.received_us) / 1e6, (now_us - trade.trade_us) / 1e6)
        landed = Landed(trade.stream, trade.key, trade.event_id, message.partition() or 0, message.offset() or 0, trade.shard)
        self._deliveries.acknowledged(pending, topic, latencies, landed)

    def _on_kafka_error(self, error: KafkaError) -> None:
        log.error("kafka client error: %s", error.str(), extra={"event": "kafka_error", "error": error.name()})
        if error.fatal():
            self._fatal = error.str()

    def receiveMsg_Flush(self, message: Flush, sender: Recipient) -> None:
        self._flush = (message, time.monotonic() + FLUSH_DEADLINE_SECONDS)
        self._check_flush()

    def on_exit(self) -> None:
        self._stopping.set()
        for writer in self._writers.values():
            writer.retire()
        for writer in self._writers.values():
            writer.join(timeout=FLUSH_DEADLINE_SECONDS)

    # --- the periodic tick: confirmations, metrics, status, flush ---

    def on_tick(self, now: float) -> None:
        self._check_preparation(now)
        self._check_writers()
        if self._fatal:
            # This producer can deliver nothing more. Exiting hands the work to a new one: the
            # coordinator recreates this actor and the Normaliser re-sends every unconfirmed batch.
            log.error("fatal kafka error, recreating the producer: %s", self._fatal, extra={"event": "kafka_fatal_error"})
            self._stopping.set()
            self.send(self.myAddress, ActorExitRequest())
            return
        report = self._deliveries.take()
        for reply_to, seqs in report.confirmations:
            self.deliver(reply_to, BatchesDelivered(tuple(seqs)))
        for topic, count in report.produced.items():
            self.metrics.inc("k2_kafka_messages_produced_total", topic, amount=count)
        if report.released:
            log.info("%d records of released shards not committed: each shard's next owner resumes from what Kafka holds",
                     report.released, extra={"event": "records_not_owned", "count": report.released})
            self.metrics.inc("k2_cluster_records_not_owned_total", amount=report.released)
        failures: dict[tuple[str, str], tuple[int, str]] = {}  # one line per topic and error, however many records
        for topic, name, description in report.errors:
            count, _ = failures.get((topic, name), (0, ""))
            failures[(topic, name)] = (count + 1, description)
            self.metrics.inc("k2_kafka_produce_errors_total", topic, name)
        for (topic, name), (count, description) in failures.items():
            log.error("kafka did not take %d record%s for %s: %s (%s)", count, "s" if count > 1 else "", topic, name, description,
                      extra={"event": "delivery_failed", "topic": topic, "error": name, "count": count})
        if report.receive_to_ack:
            self.metrics.observe("k2_trade_receive_to_ack_seconds", report.receive_to_ack)
            self.metrics.observe("k2_trade_exchange_to_ack_seconds", report.exchange_to_ack)
        self._report(self._readiness.observe(report, len(self._producer) if self._producer else 0, now))
        if now - self._checkpoint_at >= CHECKPOINT_EVERY_SECONDS:
            self._checkpoint_at = now
            self._write_checkpoints()
            if self.setup.raw.enabled and self._producer is not None:
                self._settle_receipts(now)
        self._check_flush()

    def _settle_receipts(self, now: float) -> None:
        """Receipts of connections whose process ended before Kafka had all their frames:
        after a grace for what was on its way (a connection actor killed alone), whatever
        Kafka still lacks is lost for good, and said so."""
        left = {receipt.path: receipt for receipt in receipts.left_behind(self.setup.raw.receipts_dir)}
        self._left_since = {path: self._left_since.get(path, now) for path in left}
        for path, receipt in left.items():
            if now - self._left_since[path] < RECEIPT_GRACE_SECONDS or not receipts.claim(receipt):
                continue
            lost = frames_lost(receipt.received, receipt.confirmed, self._handed.frames(receipt.venue, receipt.conn_id))
            count = sum(last - first + 1 for first, last in lost.ranges())
            if count:
                log.warning("%d frames received on connection %s to %s never reached Kafka: its process was killed first "
                            "(conn_msg_seq %s of %d); the venue cannot send them again, and the trade ids among them are "
                            "declared missing and backfilled", count, receipt.conn_id, receipt.endpoint,
                            ", ".join(f"{first}-{last}" for first, last in lost.ranges()), receipt.received,
                            extra={"event": "raw_frames_lost", "conn_id": receipt.conn_id, "endpoint": receipt.endpoint,
                                   "count": count, "received": receipt.received})
                self.metrics.inc("k2_raw_frames_lost_total", receipt.venue, amount=count)

    def _write_checkpoints(self) -> bool:
        """What Kafka acknowledged since the last checkpoint, to the state topic; whether
        there was anything to write."""
        checkpoints = self._deliveries.checkpoints()
        for shard, checkpoint in checkpoints:
            if shard == NO_SHARD and self.setup.cluster.enabled and is_raw(checkpoint.stream):
                continue  # the state topic is no instance's own in cluster mode (each reads the raw topic's tail instead)
            if shard == NO_SHARD:
                self._send(self.setup.kafka.state_topic, checkpoint.stream.encode(), checkpoint.encode(), None, _ignore)
            elif (writer := self._writers.get(shard)) is not None:
                writer.checkpoint(checkpoint.stream.encode(), checkpoint.encode())  # in the shard's transaction
        return bool(checkpoints)

    def _report(self, status: tuple[bool, str] | None) -> None:
        if status is not None:
            self.send(self.setup.metrics, ComponentStatus("kafka", *status))

    def _check_flush_soon(self) -> None:
        if not self._flush_check_due:
            self._flush_check_due = True
            self.wakeupAfter(seconds(FAST_TICK_SECONDS), CHECK_FLUSH)

    def _check_flush(self) -> None:
        if self._flush is None:
            return
        flush, deadline = self._flush
        outstanding = len(self._producer) + sum(writer.outstanding() for writer in self._writers.values()) if self._producer else sum(
            len(batch.records) + len(batch.dead_letters) for batch in self.held(RecordBatch)
        )
        if outstanding and time.monotonic() < deadline:
            self._check_flush_soon()  # not only at acknowledgements: the deadline too
            return
        if not outstanding and self._producer is not None and self._write_checkpoints():
            self._check_flush_soon()
            return  # the last checkpoint, so that the next start reads no tail at all; its ack comes at a later check
        self._flush = None
        undelivered = outstanding + self._deliveries.failed + flush.unprocessed
        if undelivered:
            log.error("stopping with %d records Kafka did not acknowledge", undelivered)
        else:
            log.info("all records up to batch %d delivered", flush.last_batch)
        self.send(self.coordinator, Flushed(undelivered, flush.missing))


class _Trade(NamedTuple):
    """What the delivery report of one record needs to know about it (one per record)."""

    stream: str
    key: tuple[str, str]  # (venue, symbol); for a raw record (venue, conn_id)
    event_id: int  # for a raw record its conn_msg_seq
    received_us: int
    trade_us: int  # the exchange's time (not for raw records: they are not timed)
    shard: int  # whose checkpoints it goes into: NO_SHARD outside cluster mode


def _ignore(error: KafkaError | None, message: Message | None) -> None:
    """A checkpoint that did not land is superseded by the next one within a second."""


def _headers(letter: DeadLetter) -> list[tuple[str, str | bytes | None]]:
    return [
        ("reason", letter.reason.encode()),
        ("detail", letter.detail.encode()),
        ("endpoint", letter.endpoint.encode()),
        ("received_at_us", str(letter.received_us).encode()),
        ("stream", letter.stream.encode()),
    ]

