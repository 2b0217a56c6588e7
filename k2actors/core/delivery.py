"""The producer's account of what Kafka acknowledged, without Kafka.

librdkafka reports each record's delivery on the producer's poll thread; `Deliveries`
collects those reports (under a lock, the only thing the two threads share) and the actor
takes them once a tick: which RecordBatches are complete and to whom to confirm them, what
was produced per topic, what failed, and the latencies. `KafkaReadiness` turns that into the
Kafka line of /ready. `Handed` decides, record by record, whether one is produced at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

from k2actors.core.ranges import IdRanges, StreamPosition
from k2actors.core.raw import forget_oldest_sources
from k2actors.core.resume import Acknowledged, Checkpoint, Key
from k2actors.core.streams import SUPERSEDING, is_raw

A = TypeVar("A")  # who to confirm a batch to, opaque here

# Records waiting this long for an acknowledgement make Kafka "not ready".
ACK_OVERDUE_SECONDS = 5.0
# While Kafka is failing, its /ready detail is refreshed this often (it counts seconds).
FAILING_REPORT_SECONDS = 1.0


class Admission(Enum):
    PRODUCE = "produce"
    IN_KAFKA = "in_kafka"  # Kafka holds the id already, or it was handed to it: a resend
    SUPERSEDED = "superseded"  # a quote older than one of its symbol already handed


class Handed:
    """Ids in Kafka or handed to it, per (stream, venue, symbol): what Kafka held at start,
    and every id produced since. An id already there is never produced again.

    The Normaliser publishes quotes of a symbol in update order, but Thespian does not always
    deliver two RecordBatches in the order they were sent (a transmit that failed and waits to
    retry is overtaken by later ones). A quote older than one already handed would put its
    symbol's book back in time for every consumer, so it is not produced: the newer one
    already says what it would. Trades and aggregate trades are tracked by id, so their order
    does not matter."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str, str], IdRanges] = {}
        self._frames: dict[Key, IdRanges] = {}  # the raw record's: per (venue, conn_id), the conn_msg_seqs

    def resume(self, stream: str, ids: dict[Key, IdRanges]) -> None:
        if is_raw(stream):
            self._frames.update(ids)
        else:
            self._ids.update({(stream, venue, symbol): ranges for (venue, symbol), ranges in ids.items()})

    def admit_frame(self, venue: str, conn_id: str, conn_msg_seq: int) -> Admission:
        key = (venue, conn_id)
        ranges = self._frames.get(key)
        if ranges is None:
            ranges = self._frames[key] = IdRanges()
            forget_oldest_sources(self._frames)
        return Admission.PRODUCE if ranges.add(conn_msg_seq) else Admission.IN_KAFKA

    def frames(self, venue: str, conn_id: str) -> IdRanges | None:
        """The connection's frames in Kafka or handed to it, as far as this producer knows."""
        return self._frames.get((venue, conn_id))

    def admit(self, stream: str, venue: str, symbol: str, event_id: int) -> Admission:
        key = (stream, venue, symbol)
        ranges = self._ids.get(key)
        if ranges is None:
            ranges = self._ids[key] = IdRanges()
        if stream in SUPERSEDING:
            if ranges.high is not None and event_id < ranges.high:
                return Admission.SUPERSEDED
            return Admission.PRODUCE if ranges.supersede(event_id) else Admission.IN_KAFKA
        return Admission.PRODUCE if ranges.add(event_id) else Admission.IN_KAFKA

    def forget(self, symbols: frozenset[str]) -> None:
        """The symbols' shard went to another instance: what it hands to Kafka is its own."""
        for key in [key for key in self._ids if key[2] in symbols]:
            del self._ids[key]

    def positions(self) -> dict[tuple[str, str, str], StreamPosition]:
        return {key: position for key, ranges in self._ids.items() if (position := ranges.position()) is not None}


@dataclass(eq=False)
class PendingBatch(Generic[A]):
    seq: int
    outstanding: int  # records and dead letters Kafka has not answered for yet
    reply_to: A


# The account of a record outside cluster mode; in cluster mode each shard has its own
# (its checkpoints go with its transactions).
NO_SHARD = -1


class Landed(NamedTuple):
    """Where a record of a tracked stream landed: for checkpoints. (A tuple: one is made per
    record acknowledged, and a frozen dataclass costs several times as much to build.)"""

    stream: str
    key: Key
    event_id: int
    partition: int
    offset: int
    shard: int


@dataclass
class DeliveryReport(Generic[A]):
    confirmations: list[tuple[A, list[int]]] = field(default_factory=list)  # (reply to, batch seqs)
    produced: dict[str, int] = field(default_factory=dict)  # per topic
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (topic, error name, description)
    released: int = 0  # records of a shard whose transaction did not commit: its next owner's to resume
    receive_to_ack: list[float] = field(default_factory=list)  # seconds
    exchange_to_ack: list[float] = field(default_factory=list)


class Deliveries(Generic[A]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._report: DeliveryReport[A] = DeliveryReport()
        self._completed: list[PendingBatch[A]] = []
        self._accounts: dict[int, Acknowledged] = {}  # per shard, or NO_SHARD
        self.failed = 0  # records Kafka refused, in all

    def resume_from(self, stream: str, ids: dict[Key, IdRanges], shard: int = NO_SHARD) -> None:
        with self._lock:
            self._accounts.setdefault(shard, Acknowledged()).resume_from(stream, ids)

    def abandoned(self, stream: str, key: Key, first_id: int, last_id: int, shard: int = NO_SHARD) -> None:
        with self._lock:
            account = self._account(shard)
            if account is not None:  # a shard released meanwhile: its next owner settles its own gaps
                account.abandoned(stream, key, first_id, last_id)

    def _account(self, shard: int) -> Acknowledged | None:
        """The account news of `shard` goes to (under the lock): outside cluster mode it is made
        when first needed; a shard's exists only while the shard is held (from resume_from to
        forget), so news of a released one is dropped."""
        account = self._accounts.get(shard)
        if account is None and shard == NO_SHARD:
            account = self._accounts[NO_SHARD] = Acknowledged()
        return account

    def forget(self, shard: int) -> None:
        """The shard is no longer this instance's: its next owner keeps its account."""
        with self._lock:
            self._accounts.pop(shard, None)

    def checkpoints(self) -> list[tuple[int, Checkpoint]]:
        """(shard or NO_SHARD, checkpoint) of every stream type that changed since the last call."""
        with self._lock:
            return [(shard, checkpoint) for shard, account in self._accounts.items() for checkpoint in account.due()]

    def expect(self, seq: int, outstanding: int, reply_to: A) -> PendingBatch[A]:
        pending = PendingBatch(seq, outstanding, reply_to)
        if outstanding == 0:
            with self._lock:
                self._completed.append(pending)
        return pending

    def acknowledged(self, pending: PendingBatch[A], topic: str, latencies: tuple[float, float] | None,
                     landed: Landed | None) -> None:
        """Kafka took a record; `latencies` (receive to ack, exchange to ack) and where it
        landed for a record of a stream, None for a dead letter."""
        with self._lock:
            report = self._report
            report.produced[topic] = report.produced.get(topic, 0) + 1
            if landed is not None:
                account = self._account(landed.shard)
                if account is not None:  # a late acknowledgement of a released shard is its next owner's to read
                    account.acknowledged(landed.stream, landed.key, landed.event_id, landed.partition, landed.offset)
            if latencies is not None:
                report.receive_to_ack.append(latencies[0])
                report.exchange_to_ack.append(latencies[1])
            self._answered(pending)

    def refused(self, pending: PendingBatch[A], topic: str, name: str, description: str) -> None:
        with self._lock:
            self.failed += 1
            self._report.errors.append((topic, name, description))
            self._answered(pending)

    def released(self, pending: PendingBatch[A]) -> None:
        """Cluster mode: a record whose shard's transaction did not commit (the shard was
        released, or fenced by its new owner). Not a failure of this instance: whoever
        acquires the shard next reads what Kafka holds and backfills the rest."""
        with self._lock:
            self._report.released += 1
            self._answered(pending)

    def _answered(self, pending: PendingBatch[A]) -> None:
        pending.outstanding -= 1
        if pending.outstanding == 0:
            self._completed.append(pending)

    def news(self) -> bool:
        """Whether anything was acknowledged, refused or released since the last take."""
        with self._lock:
            report = self._report
            return bool(self._completed or report.produced or report.errors or report.released)

    def take(self) -> DeliveryReport[A]:
        """Everything since the last take; completed batches grouped by whom to tell, one
        message each (after an outage thousands of batches complete at once)."""
        with self._lock:
            report, self._report = self._report, DeliveryReport()
            completed, self._completed = self._completed, []
        for pending in completed:
            entry = next((e for e in report.confirmations if e[0] == pending.reply_to), None)  # addresses are not hashable
            if entry is None:
                entry = (pending.reply_to, [])
                report.confirmations.append(entry)
            entry[1].append(pending.seq)
        return report


class KafkaReadiness:
    """The Kafka check of /ready: ok while records are acknowledged, not while deliveries fail
    or records wait too long. `observe` returns (ok, detail) when it is worth sending: on any
    change, and about once a second while failing."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._servers = bootstrap_servers
        self._last: tuple[bool, str] | None = None
        self._sent_at = 0.0
        self._acked_at: float | None = None

    def setup_failed(self, failure: str, now: float) -> tuple[bool, str] | None:
        return self._say(False, f"setup failed ({self._servers}): {failure}", now)

    def connected(self, now: float) -> tuple[bool, str] | None:
        self._acked_at = now
        return self._say(True, f"connected to {self._servers}, nothing delivered yet", now)

    def observe(self, report: DeliveryReport[A], waiting: int, now: float) -> tuple[bool, str] | None:
        if report.produced:
            self._acked_at = now
            return self._say(True, f"delivering to {self._servers}", now)
        if report.errors:
            return self._say(False, f"delivery to {self._servers} failing: {report.errors[-1][1]}", now)
        if self._acked_at is not None and waiting and now - self._acked_at > ACK_OVERDUE_SECONDS:
            return self._say(False, f"no acknowledgement from {self._servers} for {now - self._acked_at:.0f} s; "
                                    f"{waiting} records waiting", now)
        return None

    def current(self) -> tuple[bool, str] | None:
        return self._last

    def _say(self, ok: bool, detail: str, now: float) -> tuple[bool, str] | None:
        last = self._last
        self._last = (ok, detail)
        changed = last is None or last[0] != ok or (ok and last[1] != detail)
        if changed or (not ok and now - self._sent_at >= FAILING_REPORT_SECONDS):
            self._sent_at = now
            return ok, detail
        return None
