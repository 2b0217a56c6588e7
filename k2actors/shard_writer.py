"""Cluster mode: one shard's transactional producer, on a thread of its own.

Taking the shard's transactional id fences every former owner of the shard: from then on
the broker refuses whatever that owner (a paused or partitioned instance) still sends, and
aborts the transaction it left open. Only after that does the writer read what Kafka holds
for the shard's symbols (committed records only), so nothing a former owner wrote is missed
and nothing it writes later lands. Records are then produced in transactions committed
every COMMIT_INTERVAL_SECONDS, each shard's checkpoints with them, on the control topic's
partition of the shard.

A transaction that fails (fenced, or any other error) ends the writer: the shard is
released, and acquiring it again starts over from what Kafka holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from k2actors.clients import registry_settings
from k2actors.config import KafkaConfig
from k2actors.core.ranges import IdRanges
from k2actors.core.resume import Key
from k2actors.logs import quiet_librdkafka_logger
from k2actors.outlets import LIBRDKAFKA_LOG, read_what_kafka_holds

log = logging.getLogger("k2actors.producer")

# How long a record waits, at most, for the commit that makes it visible to read_committed
# consumers; each commit costs a round trip to the transaction coordinator.
COMMIT_INTERVAL_SECONDS = 0.1
TRANSACTION_TIMEOUT_SECONDS = 30.0
Report = Callable[[KafkaError | None, Message | None], None]


class Outgoing(NamedTuple):
    topic: str
    partition: int | None  # None: by key
    key: bytes | None
    value: bytes
    report: Report
    headers: list[tuple[str, str | bytes | None]] | None = None  # a record's lineage


# Given to the reports of records a writer never produced, or produced in a transaction that
# did not commit.
NOT_COMMITTED = KafkaError(KafkaError._PURGE_QUEUE, "the shard's transaction did not commit (shard released or fenced)")


class ShardWriter(threading.Thread):
    def __init__(self, shard: int, acquisition: int, symbols: frozenset[str], kafka: KafkaConfig, streams: tuple[str, ...],
                 control_topic: str, transactional_id: str, settings: dict[str, Any]):
        super().__init__(name=f"shard-{shard}", daemon=True)
        self.shard = shard
        self.acquisition = acquisition
        self.symbols = symbols
        self._kafka = kafka
        self._streams = streams
        self._control = TopicPartition(control_topic, shard)
        timeout_ms = int(TRANSACTION_TIMEOUT_SECONDS * 1000)
        # A transactional producer needs idempotence and acks=all, and a record may not wait
        # longer than its transaction may stay open.
        self._settings = {**settings, "transactional.id": transactional_id, "transaction.timeout.ms": timeout_ms,
                          "message.timeout.ms": timeout_ms, "enable.idempotence": True, "acks": "all"}
        self._lock = threading.Lock()
        self._queue: deque[Outgoing] = deque()
        self._wake = threading.Event()
        self._retiring = False
        self._unreported: dict[int, Outgoing] = {}  # produced, and Kafka has not answered yet
        self._produced = 0
        self.acquired = threading.Event()
        self.held: dict[str, dict[Key, IdRanges]] = {}  # per stream type, once acquired
        self.failure: str | None = None  # why the writer ended, if not retired
        self.ended = threading.Event()

    def put(self, outgoing: Outgoing) -> None:
        with self._lock:
            if not self.ended.is_set():
                self._queue.append(outgoing)
                self._wake.set()
                return
        outgoing.report(NOT_COMMITTED, None)

    def checkpoint(self, key: bytes, value: bytes) -> None:
        self.put(Outgoing(self._control.topic, self._control.partition, key, value, _ignore))

    def retire(self) -> None:
        """Commit what was given, then end."""
        with self._lock:
            self._retiring = True
            self._wake.set()

    def outstanding(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._unreported)

    def run(self) -> None:
        logger, lines = quiet_librdkafka_logger(f"k2actors.librdkafka.shard-{self.shard}")
        try:
            producer = Producer({**self._settings, "logger": LIBRDKAFKA_LOG})
            started = time.monotonic()
            producer.init_transactions(TRANSACTION_TIMEOUT_SECONDS)
            registry = SchemaRegistryClient(registry_settings(self._kafka))
            self.held = read_what_kafka_holds(self._kafka, registry, self._streams, self._control, self.symbols, logger)
            log.info("shard %d: transactional id taken (any former owner fenced) and what Kafka holds read in %.2f s",
                     self.shard, time.monotonic() - started,
                     extra={"event": "shard_fenced_former_owner", "shard": self.shard})
            self.acquired.set()
            self._write(producer)
        except Exception as exc:  # every way a writer can end is one failure: the shard is released
            reason = f" ({lines.last})" if lines.last else ""
            self.failure = f"{type(exc).__name__}: {exc}"[:300] + reason[:200]
        finally:
            with self._lock:
                self.ended.set()
                stranded = [*self._queue, *self._unreported.values()]
                self._queue, self._unreported = deque(), {}
            for outgoing in stranded:
                outgoing.report(NOT_COMMITTED, None)

    def _write(self, producer: Producer) -> None:
        begun_at: float | None = None
        while True:
            self._wake.wait(COMMIT_INTERVAL_SECONDS)
            with self._lock:
                self._wake.clear()
                batch, self._queue = self._queue, deque()
                retiring = self._retiring
            if batch and begun_at is None:
                producer.begin_transaction()
                begun_at = time.monotonic()
            for outgoing in batch:
                self._produce(producer, outgoing)
            producer.poll(0)
            if begun_at is not None and (retiring or time.monotonic() - begun_at >= COMMIT_INTERVAL_SECONDS):
                producer.commit_transaction(TRANSACTION_TIMEOUT_SECONDS)  # raises when fenced: the writer ends
                begun_at = None
            if retiring:
                return

    def _produce(self, producer: Producer, outgoing: Outgoing) -> None:
        self._produced += 1
        token = self._produced
        with self._lock:
            self._unreported[token] = outgoing
        report = partial(self._answered, token)
        while True:
            try:
                if outgoing.partition is None:
                    producer.produce(outgoing.topic, value=outgoing.value, key=outgoing.key, headers=outgoing.headers,
                                     on_delivery=report)
                else:
                    producer.produce(outgoing.topic, value=outgoing.value, key=outgoing.key, partition=outgoing.partition,
                                     headers=outgoing.headers, on_delivery=report)
                return
            except BufferError:
                producer.poll(0.005)  # librdkafka's queue is full: serve acknowledgements

    def _answered(self, token: int, error: KafkaError | None, message: Message) -> None:
        with self._lock:
            outgoing = self._unreported.pop(token, None)
        if outgoing is not None:  # not already given up when the writer ended
            outgoing.report(error, message)


def _ignore(error: KafkaError | None, message: Message | None) -> None:
    """A checkpoint that did not land is superseded by the next one."""
