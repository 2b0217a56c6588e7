"""`tail`: print the trades in a topic, decoded through the Schema Registry.

Reads by partition assignment, without a consumer group: a viewer commits no offsets and
starts at once.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime
from decimal import Decimal

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2actors.clients import kafka_settings, registry_settings
from k2actors.config import Config
from k2actors.logs import LastLibrdkafkaLine


def _plain(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def readable(record: dict) -> str:
    time_text = record["timestamp"].isoformat(timespec="microseconds")
    if "quote_id" in record:  # QuoteV2
        return (
            f"{time_text} {record['exchange']:<9} {record['symbol']:<10} QUOTE "
            f"{record['bid_quantity']} @ {record['bid_price']} / {record['ask_quantity']} @ {record['ask_price']} "
            f"{record['currency']}  {record['quote_id']}"
        )
    return (
        f"{time_text} {record['exchange']:<9} {record['symbol']:<10} {record['side']:<4} "
        f"{record['quantity']} @ {record['price']} {record['currency']}  {record['trade_id']}"
    )


REPEAT_AFTER_SECONDS = 60.0


class _LibrdkafkaLines(LastLibrdkafkaLine):
    """Until the topic is found librdkafka's lines are only kept, and the last one is the
    reason tail gives. Once records stream, each distinct line is printed at most once a
    minute, so that a broker lost meanwhile is not mistaken for a quiet market."""

    def __init__(self) -> None:
        super().__init__()
        self.printing = False
        self._printed_at: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        now = time.monotonic()
        if self.printing and now - self._printed_at.get(self.text, -REPEAT_AFTER_SECONDS) >= REPEAT_AFTER_SECONDS:
            self._printed_at[self.text] = now
            print(f"k2actors tail: kafka: {self.text}", file=sys.stderr, flush=True)


def run_tail(config: Config, topic: str | None, from_beginning: bool, max_records: int | None, as_json: bool) -> int:
    topic = topic or config.kafka.topic
    lines = _LibrdkafkaLines()
    librdkafka_log = logging.Logger("k2actors.tail.librdkafka")
    librdkafka_log.addHandler(lines)
    consumer = Consumer({
        **kafka_settings(config.kafka), "group.id": "k2actors-tail", "enable.auto.commit": False, "logger": librdkafka_log,
    })
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as exc:
            consumer.poll(0)  # serves the log lines queued meanwhile
            reason = f" ({lines.last})" if lines.last else ""
            print(f"k2actors tail: cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc.args[0].str()}{reason}",
                  file=sys.stderr)
            return 1
        if metadata is None or metadata.error is not None or not metadata.partitions:
            print(f"k2actors tail: topic {topic} not found at {config.kafka.bootstrap_servers}", file=sys.stderr)
            return 1
        lines.printing = True
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        # On stderr, so stdout stays records only: a quiet topic then still shows tail is working.
        partitions = len(metadata.partitions)
        print(f"k2actors tail: reading {topic} ({partitions} partition{'s' if partitions > 1 else ''}) from the "
              f"{'oldest' if from_beginning else 'newest'} record; Ctrl-C stops", file=sys.stderr, flush=True)
        consumer.assign([TopicPartition(topic, p, start) for p in metadata.partitions])
        decode = AvroDeserializer(SchemaRegistryClient(registry_settings(config.kafka)))
        context = SerializationContext(topic, MessageField.VALUE)
        printed = 0
        while not stop.is_set() and (max_records is None or printed < max_records):
            for message in consumer.consume(100, 0.5):
                if message.error() is not None or (max_records is not None and printed >= max_records):
                    continue
                record = decode(message.value(), context)
                print(json.dumps(record, default=_plain) if as_json else readable(record), flush=True)
                printed += 1
        return 0
    finally:
        consumer.close()
