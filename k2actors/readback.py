"""Reading a topic back to check it: every record now in it, and its trade ids per symbol.

The benchmark and the tests prove "nothing lost, nothing duplicated" with these. Reads by
partition assignment, without a consumer group, each partition to its EOF or, while a
service still writes to it (it may then never report an EOF), past everything it held when
the read began; a read that stalls raises rather than coming back short.

The end offset a broker reports is not the end of what can be read: transaction markers take
offsets no consumer receives, and Tansu reports the start of the last batch plus one, with
the rest of that batch still to come. So the end as of the start of the read proves nothing
alone. A later, higher end does: a batch began at it minus one, after every record of the
batches before it, so a position at or past it means those were all read. That later end is
taken once and kept: chasing the newest end could go on for as long as the service writes
(for ever, where open transactions hold a read_committed position below it).

Ends are asked at read_uncommitted: the log's end. Records are read committed, but a read
committed end is the last stable offset, which Tansu reports as 0 for every partition while
any transaction is open anywhere, as a cluster's shard writers keep one open nearly always.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def read_partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> list[Message]:
    """Every record now in `topic`."""
    return list(messages({"bootstrap.servers": bootstrap}, topic, timeout))


def records(bootstrap: str, registry_url: str, topic: str, timeout: float = 10.0) -> list[dict]:
    """Every record now in `topic`, decoded through the registry, in offset order per partition."""
    return list(_decoded(bootstrap, registry_url, topic, timeout))


def trade_ids(bootstrap: str, registry_url: str, topic: str, timeout: float = 10.0) -> dict[str, list[int]]:
    """The trade ids in `topic` per symbol, in offset order, decoded through the registry.
    Only the ids are kept: a soak's millions of records never sit in memory at once."""
    ids: dict[str, list[int]] = {}
    for record in _decoded(bootstrap, registry_url, topic, timeout):
        ids.setdefault(record["symbol"], []).append(record["source_sequence"])
    return ids


def _decoded(bootstrap: str, registry_url: str, topic: str, timeout: float) -> Iterator[dict]:
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    context = SerializationContext(topic, MessageField.VALUE)
    for message in messages({"bootstrap.servers": bootstrap}, topic, timeout):
        yield deserialize(message.value(), context)


def messages(settings: Mapping[str, Any], topic: str, timeout: float = 10.0) -> Iterator[Message]:
    """Every record now in `topic`, as it is read; `settings`: the client's (bootstrap servers,
    security). A read that stalls for `timeout` seconds raises: a short read must never pass
    for records missing from the topic."""
    consumer = Consumer({**settings, "group.id": "k2actors-readback", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    log_ends = Consumer({**settings, "group.id": "k2actors-readback", "isolation.level": "read_uncommitted"})
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        except KafkaException as exc:
            raise TimeoutError(f"reading {topic} back: no metadata within {timeout:.0f} s ({exc})") from None
        first_ends = {p: _end(log_ends, topic, p, timeout) for p in metadata.partitions}
        unfinished = {p for p, end in first_ends.items() if end > 0}
        bounds: dict[int, int] = {}  # per partition, the first end seen above its first
        consumer.assign([TopicPartition(topic, p, 0) for p in unfinished])
        read = 0
        deadline = time.monotonic() + timeout
        while unfinished:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} back: partitions {sorted(unfinished)} not read to their end "
                                   f"({read} records read), nothing arrived for {timeout:.0f} s")
            for message in consumer.consume(10_000, 0.5):
                deadline = time.monotonic() + timeout
                error = message.error()
                if error is None:
                    read += 1
                    yield message
                elif error.code() == KafkaError._PARTITION_EOF:
                    unfinished.discard(message.partition())
            if unfinished:
                positions = consumer.position([TopicPartition(topic, p) for p in unfinished])
                for position in positions:
                    partition = position.partition
                    if partition not in bounds and position.offset >= first_ends[partition] - 1 and \
                            (end := _end(log_ends, topic, partition, timeout)) > first_ends[partition]:
                        bounds[partition] = end  # asked for only once the read is past the first: none is needed before
                    if partition in bounds and position.offset >= bounds[partition] - 1:
                        unfinished.discard(partition)
    finally:
        consumer.close()
        log_ends.close()


def _end(consumer: Consumer, topic: str, partition: int, timeout: float) -> int:
    return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)[1]


def missing_and_duplicates(
    ids: dict[str, list[int]], expected: dict[str, tuple[int, int]] | None = None
) -> tuple[int, int]:
    """Ids absent and ids present more than once. `expected` gives each symbol's first and
    last id when they are known; otherwise ids must run unbroken from each symbol's first."""
    missing = duplicates = 0
    for symbol, seen in ids.items():
        first, last = expected[symbol] if expected else (min(seen), max(seen))
        unique = set(seen)
        missing += (last - first + 1) - len(unique & set(range(first, last + 1)))
        duplicates += len(seen) - len(unique)
    if expected:
        missing += sum(last - first + 1 for symbol, (first, last) in expected.items() if symbol not in ids)
    return missing, duplicates
