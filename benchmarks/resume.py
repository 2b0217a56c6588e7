"""How long the start-up read of what Kafka holds takes on a big topic.

`python benchmarks/resume.py [--records N] [--tail N]`: a local broker and registry, a
3-partition trade topic filled with N Avro trade records, then a checkpoint as the running
service writes it (the offsets after the last acknowledged record) and N more records after
it, as a crash would leave them. It times the service's own read (k2actors.outlets:
the newest checkpoint, then the tail after it) and, for comparison, the read without a
checkpoint (the newest records of each partition).
"""

from __future__ import annotations

import argparse
import time

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2actors.config import KafkaConfig
from k2actors.core.binance import TRADE, Trade
from k2actors.core.normalise import Delivery, normalise_trade
from k2actors.core.ranges import IdRanges
from k2actors.core.resume import Checkpoint
from k2actors.localstack.broker import TansuBroker
from k2actors.localstack.registry import SchemaRegistryDouble
from k2actors.outlets import read_checkpoints, read_held, resume_consumer, schema_for

TOPIC = "market.crypto.trades.binance"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


def fill(broker: str, registry_url: str, records: int, tail: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(TOPIC, 3), NewTopic(f"{TOPIC}.state", 1)]).values():
        future.result(timeout=10)
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), schema_for(TRADE))
    context = SerializationContext(TOPIC, MessageField.VALUE)
    values = {}
    for symbol in SYMBOLS:  # the bulk is read by no one: one valid record per symbol, repeated
        trade = Trade(symbol, 1, "1.5", "2", 1_700_000_000_000, 1_700_000_000_000, True, True)
        record = normalise_trade(trade, Delivery("BINANCE", "ws://bench", 1_700_000_000_000_000), {})
        assert isinstance(record, dict)
        values[symbol] = serializer(record, context)
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 50, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 2_000_000, "compression.type": "lz4"})
    ends: dict[int, int] = {}

    def delivered(error, message) -> None:  # as the service records what Kafka acknowledged
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

    started = time.monotonic()
    for index in range(records):
        symbol = SYMBOLS[index % 3]
        while True:
            try:
                producer.produce(TOPIC, values[symbol], symbol.encode(), partition=index % 3, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush()
    print(f"filled {TOPIC} with {records:,} records in {time.monotonic() - started:.0f} s")
    per_symbol = records // 3
    checkpoint = Checkpoint(TRADE, {("BINANCE", s): IdRanges([(1, per_symbol)]) for s in SYMBOLS}, dict(ends))
    producer.produce(f"{TOPIC}.state", checkpoint.encode(), TRADE.encode())
    for index in range(tail):
        producer.produce(TOPIC, values[SYMBOLS[index % 3]], partition=index % 3)
    producer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--tail", type=int, default=3000, help="records after the checkpoint (about a second at 3,000/s)")
    options = parser.parse_args()
    with TansuBroker() as broker, SchemaRegistryDouble() as registry:
        fill(broker.bootstrap_servers, registry.url, options.records, options.tail)
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, schema_registry_url=registry.url, topic=TOPIC)
        client = SchemaRegistryClient({"url": registry.url})
        for with_checkpoint in (True, False):
            started = time.monotonic()
            consumer = resume_consumer(kafka)  # as the service reads: one consumer for the whole read
            try:
                checkpoints = read_checkpoints(consumer, TopicPartition(kafka.state_topic, 0))
                checkpoint = checkpoints.get(TRADE) if with_checkpoint else None
                ids, tail = read_held(consumer, kafka, client, TRADE, checkpoint)
            finally:
                consumer.close()
            print(f"start-up read {'with' if with_checkpoint else 'without'} a checkpoint: {time.monotonic() - started:.2f} s "
                  f"({tail:,} records {'after it' if with_checkpoint else 'newest'}, {len(ids)} streams)")


if __name__ == "__main__":
    main()
