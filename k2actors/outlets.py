"""Where records go: each stream type's topic and Avro serializer, the producer's settings,
and the preparation before the first record (topics created, schemas registered)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2actors.clients import kafka_settings, registry_settings
from k2actors.config import KafkaConfig
from k2actors.core.avro import schema_for, write_body
from k2actors.core.ranges import IdRanges
from k2actors.core.resume import Checkpoint, CheckpointError, Key, held
from k2actors.core.streams import STREAM_TYPES, identity, is_raw
from k2actors.logs import quiet_librdkafka_logger

log = logging.getLogger("k2actors.producer")
# librdkafka's own log lines, through the service's logging (one format, JSON included)
# rather than printed to stderr by the C library.
LIBRDKAFKA_LOG = logging.getLogger("k2actors.librdkafka")

# The raw topic takes frames as large as a venue sends (a book snapshot can be several MB):
# beyond Kafka's default of 1 MB per record, for the topic and for the producer.
RAW_MAX_MESSAGE_BYTES = 16 * 2**20


def control_topic(kafka: KafkaConfig, group_id: str) -> str:
    """Cluster mode: one partition per shard, assigned through the consumer group; each
    shard's checkpoints are written to its partition."""
    return f"{kafka.topic}.cluster.{group_id}"


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
        "message.max.bytes": RAW_MAX_MESSAGE_BYTES + 2**16,  # the record's envelope beyond its value
    }


class AvroWriter:
    """Confluent's wire format: the magic byte 0, the 4-byte schema id, then the record's
    Avro body (k2actors.core.avro), the same bytes as confluent-kafka's AvroSerializer at
    about half its cost. The Normaliser writes the bodies; the producer puts the header in front."""

    def __init__(self, schema_id: int, stream: str):
        self.header = b"\x00" + schema_id.to_bytes(4, "big")
        self._stream = stream

    def __call__(self, record: Mapping[str, Any]) -> bytes:
        return self.header + write_body(self._stream, record)


def register(registry: SchemaRegistryClient, topic: str, stream: str) -> AvroWriter:
    """Register the stream type's schema under the topic's value subject; its writer."""
    subject = f"{topic}-value"
    schema = schema_for(stream)
    schema_id = registry.register_schema(subject, Schema(schema, "AVRO"))
    log.info("schema registered as id %s under subject %s", schema_id, subject)
    return AvroWriter(schema_id, stream)


@dataclass(frozen=True)
class Outlet:
    """Where one stream type's records go."""

    topic: str
    write: AvroWriter


class Preparation(threading.Thread):
    """Create missing topics, register the schemas, and find out what each stream's topic
    already holds (k2actors.core.resume); no record is produced before all three."""

    def __init__(self, kafka: KafkaConfig, streams: tuple[str, ...], resume: bool):
        """`resume`: read what the topics hold for every symbol. (In cluster mode each shard's
        writer reads its own when the shard is acquired, and the raw topic, which every
        instance writes its own connections' frames to, is read from its tail alone: the
        state topic's checkpoints are the single instance's.)"""
        super().__init__(name="kafka-setup", daemon=True)
        self._kafka = kafka
        self._streams = streams
        self._resume = resume
        self.outlets: dict[str, Outlet] = {}
        self.held: dict[str, dict[Key, IdRanges]] = {}  # per stream type: what its topic holds
        self.failure: str | None = None
        # Until Kafka answers, librdkafka retries about twenty times a second: its lines are
        # kept, and the last one is part of the one line each failed attempt gives.
        self._logger, self._librdkafka = quiet_librdkafka_logger("k2actors.librdkafka.setup")

    def run(self) -> None:
        kafka = self._kafka
        try:
            if kafka.create_topics:
                self._create_topics()
            registry = SchemaRegistryClient(registry_settings(kafka))
            for stream in self._streams:
                topic = kafka.topic_for(stream)
                self.outlets[stream] = Outlet(topic, register(registry, topic, stream))
            if self._resume:
                self.held = read_what_kafka_holds(kafka, registry, self._streams, TopicPartition(kafka.state_topic, 0), None,
                                                  self._logger)
            elif raw_streams := [stream for stream in self._streams if is_raw(stream)]:
                # the other instances write to them all the while: the read is bounded in time
                consumer = resume_consumer(kafka, self._logger)
                try:
                    for stream in raw_streams:
                        self.held[stream] = read_held(consumer, kafka, registry, stream, None,
                                                      time.monotonic() + RAW_TAIL_SECONDS)[0]
                finally:
                    consumer.close()
        except Exception as exc:  # registry or broker not there yet: the actor retries, and says so
            reason = f" ({self._librdkafka.last})" if self._librdkafka.last else ""
            self.failure = f"{type(exc).__name__}: {exc}"[:300] + reason[:300]

    def _create_topics(self) -> None:
        kafka = self._kafka
        settings: dict[str, Any] = {**kafka_settings(kafka), "logger": self._logger}
        admin = AdminClient(settings)
        try:
            existing = admin.list_topics(timeout=10).topics
            wanted = [NewTopic(kafka.topic_for(stream), num_partitions=kafka.topic_partitions,
                               config={"max.message.bytes": str(RAW_MAX_MESSAGE_BYTES)} if is_raw(stream) else {})
                      for stream in self._streams]
            wanted.append(NewTopic(kafka.dead_letter_topic, num_partitions=kafka.topic_partitions))
            # One partition, compacted: only each stream type's newest checkpoint matters.
            wanted.append(NewTopic(kafka.state_topic, num_partitions=1, config={"cleanup.policy": "compact"}))
            missing = [t for t in wanted if t.topic not in existing]
            futures = admin.create_topics(missing) if missing else {}
            for topic, future in futures.items():
                try:
                    future.result(timeout=10)
                    log.info("created topic %s", topic)
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise
        finally:
            # librdkafka queues its log lines until polled: this is where a refused SASL
            # handshake or TLS certificate says why the broker was unreachable.
            admin.poll(0)


# Without a checkpoint (the first start of this version on a topic) only the newest records
# of each partition are read; ids before them count as published.
TAIL_WITHOUT_CHECKPOINT = 10_000
READ_TIMEOUT_SECONDS = 10.0
# Cluster mode: how long a producer reads the raw topic's tail at start, for the frames of its
# own connections a predecessor may have handed to Kafka already.
RAW_TAIL_SECONDS = 5.0


def resume_consumer(kafka: KafkaConfig, logger: logging.Logger = LIBRDKAFKA_LOG) -> Consumer:
    """The consumer `read_checkpoints` and `read_held` read with; the caller closes it.
    A short fetch wait: the end of a partition is reported as soon as the broker has nothing more.
    It reads committed records only: records of a transaction a fenced former owner of a shard
    left open are aborted, and must count as missing (librdkafka's default, said here)."""
    return Consumer({**kafka_settings(kafka), "group.id": "k2actors-resume", "enable.auto.commit": False, "fetch.wait.max.ms": 50,
                     "enable.partition.eof": True, "isolation.level": "read_committed", "logger": logger})


def _read_to_end(consumer: Consumer, starts: dict[TopicPartition, int], give_up_at: float | None = None) -> Iterator[Message]:
    """Every record from the given offsets until each partition reports its end. Ends are not
    counted from end offsets (a broker may report the start of its last batch): a partition
    is done when the consumer says it reached the end. `give_up_at` (monotonic): stop there,
    ends or not (a topic others write to all the while)."""
    open_partitions = {(tp.topic, tp.partition) for tp in starts}
    consumer.assign([TopicPartition(tp.topic, tp.partition, offset) for tp, offset in starts.items()])
    deadline = time.monotonic() + READ_TIMEOUT_SECONDS
    while open_partitions and (give_up_at is None or time.monotonic() < give_up_at):
        if time.monotonic() > deadline:
            raise TimeoutError(f"resume: partitions {sorted(open_partitions)} sent nothing for {READ_TIMEOUT_SECONDS:.0f} s")
        for message in consumer.consume(10_000, 0.5):
            deadline = time.monotonic() + READ_TIMEOUT_SECONDS
            error = message.error()
            if error is None:
                yield message
            elif error.code() == KafkaError._PARTITION_EOF:
                open_partitions.discard((message.topic(), message.partition()))
            else:
                raise KafkaException(error)


def read_what_kafka_holds(kafka: KafkaConfig, registry: SchemaRegistryClient, streams: tuple[str, ...],
                          checkpoints: TopicPartition, symbols: frozenset[str] | None,
                          logger: logging.Logger) -> dict[str, dict[Key, IdRanges]]:
    """Per stream type, the ids its topic holds: the newest checkpoint in `checkpoints` and
    the records after it; only of `symbols` when given (a shard's)."""
    started = time.monotonic()
    holds: dict[str, dict[Key, IdRanges]] = {}
    consumer = resume_consumer(kafka, logger)  # one for the whole read: each costs a connection and metadata
    try:
        found = read_checkpoints(consumer, checkpoints)
        for stream in streams:
            ids, tail = read_held(consumer, kafka, registry, stream, found.get(stream))
            holds[stream] = ids if symbols is None else {key: ranges for key, ranges in ids.items() if key[1] in symbols}
            log.info("%s: %d streams resumed from Kafka (checkpoint %s, %d records after it) in %.2f s",
                     kafka.topic_for(stream), len(holds[stream]), "found" if stream in found else "none", tail,
                     time.monotonic() - started, extra={"event": "kafka_resume_read", "topic": kafka.topic_for(stream),
                                                        "streams": len(holds[stream]), "tail_records": tail})
    finally:
        consumer.close()
    return holds


def read_checkpoints(consumer: Consumer, partition: TopicPartition) -> dict[str, Checkpoint]:
    """The newest checkpoint of each stream type in a partition of checkpoints (its last few records)."""
    low, high = consumer.get_watermark_offsets(partition, timeout=10)
    found: dict[str, Checkpoint] = {}
    for message in _read_to_end(consumer, {partition: max(low, high - 2 * len(STREAM_TYPES))}):
        try:
            checkpoint = Checkpoint.decode(message.value() or b"")
        except CheckpointError as exc:
            log.error("checkpoints %s[%d] offset %d: %s; ignored", partition.topic, partition.partition, message.offset(), exc)
            continue
        found[checkpoint.stream] = checkpoint
    return found


def read_held(consumer: Consumer, kafka: KafkaConfig, registry: SchemaRegistryClient, stream: str,
              checkpoint: Checkpoint | None, give_up_at: float | None = None) -> tuple[dict[Key, IdRanges], int]:
    """What the stream's topic holds: the checkpoint plus every record after its offsets,
    and how many records that tail read."""
    topic = kafka.topic_for(stream)
    deserialize = AvroDeserializer(registry)
    context = SerializationContext(topic, MessageField.VALUE)
    starts = {}
    for number in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
        partition = TopicPartition(topic, number)
        low, high = consumer.get_watermark_offsets(partition, timeout=10)
        start = checkpoint.offsets.get(number, low) if checkpoint else high - TAIL_WITHOUT_CHECKPOINT
        starts[partition] = max(low, start)
    venue, whose, which = identity(stream)
    tail = [(record[venue], record[whose], record[which])
            for record in (deserialize(message.value(), context) for message in _read_to_end(consumer, starts, give_up_at))]
    return held(checkpoint, tail), len(tail)
