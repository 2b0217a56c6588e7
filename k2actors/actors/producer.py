"""ProducerActor: records to Kafka; where a trade leaves the service.

Owns the confluent-kafka Producer and the Avro serializer. A poll thread serves delivery
reports as they arrive, so acknowledgement latency is measured when the ack comes, not
when the actor next wakes. A RecordBatch is confirmed to the Normaliser only once Kafka
has answered for every record in it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from importlib import resources

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from thespian.actors import Actor, ActorExitRequest, WakeupMessage

from k2actors.actors import TICK, report_alive, seconds
from k2actors.clients import kafka_settings, registry_settings
from k2actors.config import KafkaConfig
from k2actors.core.backoff import backoff_delay
from k2actors.core.binance import AGG_TRADE, BOOK_TICKER, SERIALIZATION_FAILED, TRADE
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import (
    BatchesDelivered,
    ComponentStatus,
    DeadLetter,
    Flush,
    Flushed,
    ProducerSetup,
    RecordBatch,
    SequenceQuery,
    SequenceState,
)

log = logging.getLogger("k2actors.producer")
# librdkafka's own log lines, through the service's logging (one format, JSON included)
# rather than printed to stderr by the C library.
LIBRDKAFKA_LOG = logging.getLogger("k2actors.librdkafka")

TICK_SECONDS = 0.1
SETUP_RETRY_BASE_SECONDS = 1.0
SETUP_RETRY_MAX_SECONDS = 30.0
FLUSH_DEADLINE_SECONDS = 10.0
HEARTBEAT_EVERY_TICKS = 10
# Records waiting this long for an acknowledgement make Kafka "not ready".
ACK_OVERDUE_SECONDS = 5.0


# Aggregate trades are trades too: TradeV2, on a topic of their own.
SCHEMA_FILES = {TRADE: "trade_v2.avsc", AGG_TRADE: "trade_v2.avsc", BOOK_TICKER: "quote_v2.avsc"}


def schema_for(stream: str) -> str:
    return resources.files("k2actors").joinpath(f"schemas/{SCHEMA_FILES[stream]}").read_text()


@dataclass(frozen=True)
class _Outlet:
    """Where one stream type's records go."""

    topic: str
    serializer: AvroSerializer
    context: SerializationContext


def producer_settings(kafka: KafkaConfig) -> dict:
    return {
        **kafka_settings(kafka),
        "client.id": "k2actors",
        "enable.idempotence": kafka.enable_idempotence,
        "acks": kafka.acks,
        "compression.type": kafka.compression_type,
        "linger.ms": kafka.linger_ms,
        "batch.size": kafka.batch_size,
        # While the broker is away, records wait (retried) instead of expiring: the bound on
        # what is held is max_buffered_records, enforced upstream by the Normaliser, which may
        # overshoot it by the batches already in flight (a window of a few thousand frames per
        # connection); librdkafka's own limit sits well above both.
        "message.timeout.ms": 0,
        "queue.buffering.max.messages": 2 * kafka.max_buffered_records + 100_000,
    }


@dataclass
class _PendingBatch:
    seq: int
    outstanding: int
    reply_to: object


class _Deliveries:
    """What the poll thread learned since the actor last looked; guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completed: list[_PendingBatch] = []
        self.produced: dict[str, int] = {}
        self.errors: list[tuple[str, str, str]] = []  # (topic, error name, description)
        self.receive_to_ack: list[float] = []
        self.exchange_to_ack: list[float] = []
        self.failed = 0


class _Preparation(threading.Thread):
    """Create missing topics and register the schemas; no record is produced before both."""

    def __init__(self, kafka: KafkaConfig, streams: tuple[str, ...]):
        super().__init__(name="kafka-setup", daemon=True)
        self._kafka = kafka
        self._streams = streams
        self.outlets: dict[str, _Outlet] = {}
        self.failure: str | None = None

    def run(self) -> None:
        kafka = self._kafka
        try:
            if kafka.create_topics:
                self._create_topics()
            registry = SchemaRegistryClient(registry_settings(kafka))
            for stream in self._streams:
                topic = kafka.topic_for(stream)
                subject = f"{topic}-value"
                schema = schema_for(stream)
                schema_id = registry.register_schema(subject, Schema(schema, "AVRO"))
                log.info("schema registered as id %s under subject %s", schema_id, subject)
                serializer = AvroSerializer(registry, schema)
                self.outlets[stream] = _Outlet(topic, serializer, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # registry or broker not there yet: the actor retries, and says so
            self.failure = f"{type(exc).__name__}: {exc}"[:300]

    def _create_topics(self) -> None:
        kafka = self._kafka
        admin = AdminClient({**kafka_settings(kafka), "logger": LIBRDKAFKA_LOG})
        try:
            existing = admin.list_topics(timeout=10).topics
            wanted = [*map(kafka.topic_for, self._streams), kafka.dead_letter_topic]
            missing = [t for t in wanted if t not in existing]
            futures = admin.create_topics([NewTopic(t, num_partitions=kafka.topic_partitions) for t in missing]) if missing else {}
            for topic, future in futures.items():
                try:
                    future.result(timeout=10)
                    log.info("created topic %s with %d partitions", topic, kafka.topic_partitions)
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise
        finally:
            # librdkafka queues its log lines until polled: this is where a refused SASL
            # handshake or TLS certificate says why the broker was unreachable.
            admin.poll(0)


class ProducerActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._setup: ProducerSetup | None = None
        self._coordinator = None
        self._producer: Producer | None = None
        self._outlets: dict[str, _Outlet] = {}
        self._waiting: list[tuple[RecordBatch, object]] = []  # arrived before Kafka and the schema were ready
        self._deliveries = _Deliveries()
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._setup_attempts = 0
        self._flush: tuple[object, int, float] | None = None  # (reply to, last batch, deadline)
        self._metrics = MetricBuffer()
        self._kafka_status: tuple[bool, str] | None = None
        self._last_ids: dict[tuple[str, str, str], int] = {}  # (stream, venue, symbol) -> highest id handed to Kafka
        self._preparing: _Preparation | None = None
        self._ticks = 0
        self._last_ack_at = time.monotonic()
        self._fatal: str | None = None

    def receiveMessage(self, message, sender):
        if isinstance(message, RecordBatch):
            if self._producer is None:
                self._waiting.append((message, sender))
            else:
                self._produce(message, sender)
        elif isinstance(message, WakeupMessage):
            self._on_tick(message.payload)
        elif isinstance(message, SequenceQuery):
            self.send(sender, SequenceState(dict(self._last_ids)))
        elif isinstance(message, ProducerSetup):
            first = self._setup is None
            self._setup, self._coordinator = message, sender
            if first:
                self._prepare()
                self.wakeupAfter(seconds(TICK_SECONDS), TICK)
            elif self._kafka_status:
                self.send(message.metrics, ComponentStatus("kafka", *self._kafka_status))  # a new MetricsActor
        elif isinstance(message, Flush):
            self._flush = (self._coordinator, message.last_batch, time.monotonic() + FLUSH_DEADLINE_SECONDS)
            self._check_flush()
        elif isinstance(message, ActorExitRequest):
            self._stopping.set()

    # --- setup: topics and schema on a thread of its own, so the actor never blocks ---

    def _prepare(self) -> None:
        self._preparing = _Preparation(self._setup.kafka, self._setup.streams)
        self._preparing.start()

    def _check_preparation(self) -> None:
        preparation = self._preparing
        if preparation is None or preparation.is_alive():
            return
        self._preparing = None
        if preparation.failure:
            self._setup_attempts += 1
            delay = backoff_delay(self._setup_attempts, SETUP_RETRY_BASE_SECONDS, SETUP_RETRY_MAX_SECONDS)
            log.error(
                "producer setup failed (attempt %d), retrying in %.1f s: %s",
                self._setup_attempts, delay, preparation.failure,
                extra={"event": "kafka_setup_failed", "attempt": self._setup_attempts, "detail": preparation.failure},
            )
            self._report(False, f"setup failed: {preparation.failure}")
            self.wakeupAfter(seconds(delay), "setup")
            return
        kafka = self._setup.kafka
        self._outlets = preparation.outlets
        self._producer = Producer({**producer_settings(kafka), "error_cb": self._on_kafka_error, "logger": LIBRDKAFKA_LOG})
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()
        self._last_ack_at = time.monotonic()
        self._report(True, "connected, nothing delivered yet")
        waiting, self._waiting = self._waiting, []
        for batch, sender in waiting:
            self._produce(batch, sender)

    # --- producing ---

    def _produce(self, batch: RecordBatch, sender) -> None:
        pending = _PendingBatch(batch.seq, len(batch.records) + len(batch.dead_letters), sender)
        if pending.outstanding == 0:
            with self._deliveries.lock:
                self._deliveries.completed.append(pending)
            return
        last_ids = self._last_ids
        dead_letters = list(batch.dead_letters)
        for stream, record in batch.records:
            outlet = self._outlets[stream]
            key = (stream, record["exchange"], record["symbol"])
            last_ids[key] = max(last_ids.get(key, record["source_sequence"]), record["source_sequence"])
            try:
                value = outlet.serializer(record, outlet.context)
            except Exception as exc:  # one record the schema refuses must not sink the batch
                log.error("record %s could not be serialized: %s", record["message_id"], exc,
                          extra={"event": "serialization_failed", "message_id": record["message_id"]})
                raw = json.dumps(record, default=str).encode()
                detail = f"{type(exc).__name__}: {exc}"[:200]
                dead_letters.append(DeadLetter(
                    raw, SERIALIZATION_FAILED, detail, record["vendor_data"]["endpoint"], record["ingestion_timestamp"], stream,
                ))
                continue
            report = partial(self._delivered, pending, record["ingestion_timestamp"], record["timestamp"])
            self._send(outlet.topic, record["symbol"].encode(), value, None, report)
        for letter in dead_letters:
            headers = [
                ("reason", letter.reason.encode()),
                ("detail", letter.detail.encode()),
                ("endpoint", letter.endpoint.encode()),
                ("received_at_us", str(letter.received_us).encode()),
                ("stream", letter.stream.encode()),
            ]
            report = partial(self._delivered, pending, None, None)
            self._send(self._setup.kafka.dead_letter_topic, None, letter.raw, headers, report)
            self._metrics.inc("k2_dlq_messages_total", letter.reason, letter.stream)

    def _send(self, topic, key, value, headers, report) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
                return
            except BufferError:
                # librdkafka's queue is full: let the poll thread drain acknowledgements.
                time.sleep(0.005)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    def _delivered(self, pending: _PendingBatch, received_us, trade_us, error, message) -> None:
        """Runs on the poll thread."""
        now_us = time.time_ns() // 1000
        d = self._deliveries
        with d.lock:
            if error is None:
                d.produced[message.topic()] = d.produced.get(message.topic(), 0) + 1
                if received_us is not None:
                    d.receive_to_ack.append((now_us - received_us) / 1e6)
                    d.exchange_to_ack.append((now_us - trade_us) / 1e6)
            else:
                d.failed += 1
                d.errors.append((message.topic(), error.name(), error.str()))
            pending.outstanding -= 1
            if pending.outstanding == 0:
                d.completed.append(pending)

    def _on_kafka_error(self, error) -> None:
        log.error("kafka client error: %s", error.str(), extra={"event": "kafka_error", "error": error.name()})
        if error.fatal():
            self._fatal = error.str()

    # --- the periodic tick: confirmations, metrics, status, flush, heartbeat ---

    def _on_tick(self, payload) -> None:
        if payload == "setup":
            self._prepare()
            return
        self._check_preparation()
        if self._fatal:
            # This producer can deliver nothing more. Exiting hands the work to a new one: the
            # coordinator recreates this actor and the Normaliser re-sends every unconfirmed batch.
            log.error("fatal kafka error, recreating the producer: %s", self._fatal, extra={"event": "kafka_fatal_error"})
            self._stopping.set()
            self.send(self.myAddress, ActorExitRequest())
            return
        d = self._deliveries
        with d.lock:
            completed, d.completed = d.completed, []
            produced, d.produced = d.produced, {}
            errors, d.errors = d.errors, []
            receive_to_ack, d.receive_to_ack = d.receive_to_ack, []
            exchange_to_ack, d.exchange_to_ack = d.exchange_to_ack, []
        confirmations: list[tuple[object, list[int]]] = []  # ActorAddress is not hashable
        for pending in completed:
            entry = next((e for e in confirmations if e[0] == pending.reply_to), None)
            if entry is None:
                entry = (pending.reply_to, [])
                confirmations.append(entry)
            entry[1].append(pending.seq)
        for reply_to, seqs in confirmations:
            self.send(reply_to, BatchesDelivered(tuple(seqs)))
        for topic, count in produced.items():
            self._metrics.inc("k2_kafka_messages_produced_total", topic, amount=count)
        for topic, name, description in errors:
            log.error("kafka did not take a record for %s: %s (%s)", topic, name, description,
                      extra={"event": "delivery_failed", "topic": topic, "error": name})
            self._metrics.inc("k2_kafka_produce_errors_total", topic, name)
        if receive_to_ack:
            self._metrics.observe("k2_trade_receive_to_ack_seconds", receive_to_ack)
            self._metrics.observe("k2_trade_exchange_to_ack_seconds", exchange_to_ack)
        self._report_delivery(bool(produced), errors)
        deltas = self._metrics.take()
        if deltas:
            self.send(self._setup.metrics, deltas)
        self._check_flush()
        self._ticks += 1
        if self._ticks % HEARTBEAT_EVERY_TICKS == 0:
            report_alive(self, self._coordinator, self._parent_pid)
        self.wakeupAfter(seconds(TICK_SECONDS), TICK)

    def _report_delivery(self, acknowledged: bool, errors: list) -> None:
        now = time.monotonic()
        if acknowledged:
            self._last_ack_at = now
            self._report(True, "delivering")
        elif errors:
            self._report(False, f"delivery failing: {errors[-1][1]}")
        elif self._producer is not None and len(self._producer) and now - self._last_ack_at > ACK_OVERDUE_SECONDS:
            self._report(False, f"no acknowledgement for {now - self._last_ack_at:.0f} s; {len(self._producer)} records waiting")

    def _report(self, ok: bool, detail: str) -> None:
        # On every change, and about once a second while failing (the detail counts seconds).
        if self._kafka_status is None or ok != self._kafka_status[0] or (not ok and self._ticks % HEARTBEAT_EVERY_TICKS == 0):
            self.send(self._setup.metrics, ComponentStatus("kafka", ok, detail))
        self._kafka_status = (ok, detail)

    def _check_flush(self) -> None:
        if self._flush is None:
            return
        reply_to, last_batch, deadline = self._flush
        outstanding = len(self._producer) if self._producer else sum(
            len(batch.records) + len(batch.dead_letters) for batch, _ in self._waiting
        )
        if outstanding and time.monotonic() < deadline:
            return
        self._flush = None
        undelivered = outstanding + self._deliveries.failed
        if undelivered:
            log.error("stopping with %d records Kafka did not acknowledge", undelivered)
        else:
            log.info("all records up to batch %d delivered", last_batch)
        self.send(reply_to, Flushed(undelivered))
