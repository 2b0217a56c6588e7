"""`replay`: the records derived again from the raw record (k2actors.core.replay), then held
against the live topics (`--verify`) or written to a topic of their own (`--to-topic`).

Reads whole topics by partition assignment, without a consumer group, and holds them in
memory: a range (`--since`, `--until`) keeps a long raw topic's read to what is asked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2actors.clients import kafka_settings, registry_settings
from k2actors.config import Config, coinbase_rules
from k2actors.core.avro import read_body, write_body
from k2actors.core.ledger import KrakenRules
from k2actors.core.raw import RECV_TS_NS
from k2actors.core.replay import DIFFERS, DUPLICATE, EXTRA, MISSING, Derived, Replay, Rules, in_range, verify, wanted
from k2actors.core.streams import is_raw
from k2actors.outlets import producer_settings, register
from k2actors.readback import messages

# Differences printed one by one; the rest are counted.
DIFFERENCES_SHOWN = 20


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from seconds since the epoch or an ISO 8601 time (UTC unless it says)."""
    try:
        return int(float(text) * 1e9)
    except ValueError:
        moment = datetime.fromisoformat(text)  # a ValueError names what it could not read
        return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1e9)


def _live(stream: str, value: bytes) -> dict[str, Any]:
    """A record as a live topic holds it (past the magic byte and schema id)."""
    return read_body(stream, value[5:])


def _as_written(derived: Derived) -> Derived:
    """A derived record as it would be held: through the same writer and reader as the live
    records, so that both sides compare alike."""
    return Derived(derived.stream, read_body(derived.stream, write_body(derived.stream, derived.record)), derived.lineage)


def run_replay(config: Config, since: int | None, until: int | None, check: bool, to_topic: str | None) -> int:
    kafka, binance = config.kafka, config.binance
    settings = kafka_settings(kafka)
    registry = SchemaRegistryClient(registry_settings(kafka))
    kraken, coinbase = config.kraken, config.coinbase
    replay = Replay(Rules(frozenset(binance.symbols), binance.max_frame_bytes, binance.backfill_max_age_seconds,
                          binance.book_depth, round(binance.book_cadence_seconds * 1000),
                          KrakenRules(frozenset(kraken.symbols), kraken.max_frame_bytes, (), kraken.book_depth,
                                      round(kraken.book_cadence_seconds * 1000)) if kraken.enabled else None,
                          coinbase_rules(coinbase, ()) if coinbase.enabled else None))
    raw_topics = [kafka.raw_topic, *(topic for venue, topic in ((kraken, kafka.kraken_raw_topic), (coinbase, kafka.coinbase_raw_topic))
                                     if venue.enabled)]

    deserialize = AvroDeserializer(registry)
    for raw_topic in raw_topics:
        context = SerializationContext(raw_topic, MessageField.VALUE)
        for message in messages(settings, raw_topic):
            raw = deserialize(message.value(), context)
            if wanted(raw, since, until):
                replay.add(raw)
    derived = replay.derive()
    unique = replay.records()
    print(f"{len(replay)} raw records read from {', '.join(raw_topics)}: {len(unique)} records derived")
    if to_topic is not None:
        return _write(config, registry, unique, to_topic)
    if not check:
        return 0
    live = []
    for stream in (stream for stream in config.stream_types if not is_raw(stream)):
        topic = kafka.topic_for(stream)
        for message in messages(settings, topic):
            headers = dict(_headers(message))
            received = headers.get(RECV_TS_NS)
            if since is None and until is None or received is not None and in_range(int(received), since, until):
                live.append((stream, _live(stream, message.value() or b""), headers))
    alike = {source: [_as_written(d) for d in records] for source, records in derived.items()}
    differences = verify(alike, live)
    counts = {kind: sum(1 for d in differences if d.kind == kind) for kind in (MISSING, EXTRA, DUPLICATE, DIFFERS)}
    print(f"{len(live)} live records compared: {len(differences)} differences "
          f"({', '.join(f'{kind} {count}' for kind, count in counts.items())})")
    for difference in differences[:DIFFERENCES_SHOWN]:
        print(f"  {difference}")
    if len(differences) > DIFFERENCES_SHOWN:
        print(f"  ... and {len(differences) - DIFFERENCES_SHOWN} more")
    return 1 if differences else 0


def _headers(message: Message) -> Iterator[tuple[str, bytes]]:
    for header in message.headers() or []:
        name, value = header[0], header[1]
        yield name, value if isinstance(value, bytes) else (value or "").encode()


def _write(config: Config, registry: SchemaRegistryClient, records: list[Derived], to_topic: str) -> int:
    """Each stream type's records to `to_topic` (trades) or `<to_topic>.<stream type>`, keyed
    by symbol with their lineage, as the live topics hold them."""
    topics = {stream: to_topic if stream == "trade" else f"{to_topic}.{stream}" for stream in {d.stream for d in records}}
    writers = {stream: register(registry, topic, stream) for stream, topic in topics.items()}
    producer = Producer(producer_settings(config.kafka))
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message | None) -> None:
        if error is not None:
            failures.append(error)

    for derived in records:
        while True:
            try:
                producer.produce(topics[derived.stream], writers[derived.stream](derived.record), derived.record["symbol"].encode(),
                                 headers=list(derived.lineage), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(60)
    if failures or left:
        print(f"{len(failures) + left} records not written: {failures[0].str() if failures else 'not acknowledged within 60 s'}",
              file=sys.stderr)
        return 1
    print(f"{len(records)} records written to {', '.join(sorted(topics.values()))}")
    return 0
