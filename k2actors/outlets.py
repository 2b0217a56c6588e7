"""Where records go: each stream type's topic and Avro serializer, the producer's settings,
and the preparation before the first record (topics created, schemas registered)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2actors.clients import kafka_settings, registry_settings
from k2actors.config import KafkaConfig
from k2actors.core.binance import AGG_TRADE, BOOK_TICKER, TRADE

log = logging.getLogger("k2actors.producer")
# librdkafka's own log lines, through the service's logging (one format, JSON included)
# rather than printed to stderr by the C library.
LIBRDKAFKA_LOG = logging.getLogger("k2actors.librdkafka")

# Aggregate trades are trades too: TradeV2, on a topic of their own.
SCHEMA_FILES = {TRADE: "trade_v2.avsc", AGG_TRADE: "trade_v2.avsc", BOOK_TICKER: "quote_v2.avsc"}


def schema_for(stream: str) -> str:
    return resources.files("k2actors").joinpath(f"schemas/{SCHEMA_FILES[stream]}").read_text()


def producer_settings(kafka: KafkaConfig) -> dict[str, Any]:
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


@dataclass(frozen=True)
class Outlet:
    """Where one stream type's records go."""

    topic: str
    serializer: AvroSerializer
    context: SerializationContext


class Preparation(threading.Thread):
    """Create missing topics and register the schemas; no record is produced before both."""

    def __init__(self, kafka: KafkaConfig, streams: tuple[str, ...]):
        super().__init__(name="kafka-setup", daemon=True)
        self._kafka = kafka
        self._streams = streams
        self.outlets: dict[str, Outlet] = {}
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
                self.outlets[stream] = Outlet(topic, serializer, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # registry or broker not there yet: the actor retries, and says so
            self.failure = f"{type(exc).__name__}: {exc}"[:300]

    def _create_topics(self) -> None:
        kafka = self._kafka
        settings: dict[str, Any] = {**kafka_settings(kafka), "logger": LIBRDKAFKA_LOG}
        admin = AdminClient(settings)
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
