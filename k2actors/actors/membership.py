"""MembershipActor: cluster mode's seat in the Kafka consumer group that shares the shards.

The group consumes the control topic, one partition per shard, and the partitions a member
is assigned are the shards it owns: Kafka's group coordinator does membership, failure
detection (the session timeout) and assignment. A thread polls the consumer, since its
heartbeats and rebalance callbacks happen inside poll; the callbacks leave the news for the
actor's tick, which tells the coordinator. Leaving the group (closing the consumer) on a
planned stop hands the shards over at once.

Assignment is eager (`roundrobin`): each rebalance revokes everything and assigns the whole
set again. The coordinator keeps streaming what it is given back (k2actors.core.cluster);
the cooperative protocol would say so itself, but on the Tansu broker it leaves partitions
unowned (measured), and eager works on every broker.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from thespian.actors import ActorAddress

from k2actors.actors.shell import Supervised
from k2actors.clients import kafka_settings
from k2actors.core.backoff import backoff_delay
from k2actors.core.cluster import group_generation
from k2actors.messages import MembershipSetup, SetupFailed, ShardsAssigned, ShardsLost
from k2actors.outlets import LIBRDKAFKA_LOG, control_topic

log = logging.getLogger("k2actors.membership")

POLL_SECONDS = 0.2
CLOSE_TIMEOUT_SECONDS = 10.0


class _Mismatch(Exception):
    """The control topic exists with another number of partitions than there are shards."""


class _Member(threading.Thread):
    def __init__(self, setup: MembershipSetup):
        super().__init__(name="group-member", daemon=True)
        self._setup = setup
        self._topic = control_topic(setup.kafka, setup.cluster.group_id)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._news: list[ShardsAssigned | ShardsLost] = []
        self.failure: str | None = None  # a configuration the group cannot run with

    def take(self) -> list[ShardsAssigned | ShardsLost]:
        with self._lock:
            news, self._news = self._news, []
            return news

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                self._ensure_topic()
                self._member()
                return
            except _Mismatch as exc:
                self.failure = str(exc)
                return
            except KafkaException as exc:
                attempt += 1
                log.error("cluster: cannot join group %s yet (attempt %d): %s", self._setup.cluster.group_id, attempt,
                          f"{type(exc).__name__}: {exc}"[:300], extra={"event": "cluster_join_failed", "attempt": attempt})
                self._stopping.wait(backoff_delay(attempt, 1.0, 30.0))

    def _ensure_topic(self) -> None:
        setup = self._setup
        settings: dict[str, Any] = {**kafka_settings(setup.kafka), "logger": LIBRDKAFKA_LOG}
        admin = AdminClient(settings)
        topics = admin.list_topics(timeout=10).topics
        existing = topics.get(self._topic)
        if existing is None:
            if not setup.kafka.create_topics:
                raise KafkaException(f"control topic {self._topic} does not exist and kafka.create_topics is false")
            future = admin.create_topics([NewTopic(self._topic, num_partitions=setup.shards, config={"cleanup.policy": "compact"})])
            try:
                future[self._topic].result(timeout=10)
                log.info("created control topic %s with %d partitions, one per shard", self._topic, setup.shards)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
        elif len(existing.partitions) != setup.shards:
            raise _Mismatch(f"control topic {self._topic} has {len(existing.partitions)} partitions, but the enabled venues' symbols make "
                            f"{setup.shards} shards: every instance of a group needs the same symbols (a new symbol set "
                            f"takes a new cluster.group_id)")

    def _member(self) -> None:
        cluster = self._setup.cluster
        settings: dict[str, Any] = {
            **kafka_settings(self._setup.kafka),
            "group.id": cluster.group_id,
            "client.id": "k2actors-member",
            "session.timeout.ms": int(cluster.session_timeout_seconds * 1000),
            "heartbeat.interval.ms": max(500, int(cluster.session_timeout_seconds * 1000 / 10)),
            "partition.assignment.strategy": "roundrobin",
            "enable.auto.commit": False,
            "logger": LIBRDKAFKA_LOG,
        }
        consumer = Consumer(settings)
        consumer.subscribe([self._topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)
        try:
            while not self._stopping.is_set():
                consumer.poll(POLL_SECONDS)  # the control topic's records are checkpoints: paused, never read here
        finally:
            consumer.close()  # leaves the group: the others rebalance at once

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.pause(partitions)
        generation = group_generation(bytes(consumer.consumer_group_metadata()))
        with self._lock:
            self._news.append(ShardsAssigned(tuple(sorted(p.partition for p in partitions)), generation))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Eager: everything is revoked at every rebalance and most of it given back. The
        shards keep streaming until the new assignment says otherwise: any that another
        instance is given, that instance fences before it writes."""

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._news.append(ShardsLost())


class MembershipActor(Supervised[MembershipSetup]):
    SETUP = MembershipSetup
    TICK_SECONDS = 0.1

    def __init__(self) -> None:
        super().__init__()
        self._member: _Member | None = None

    def metrics_address(self) -> ActorAddress:
        return self.setup.metrics

    def configure(self, previous: MembershipSetup | None) -> None:
        if previous is None:
            self._member = _Member(self.setup)
            self._member.start()

    def on_tick(self, now: float) -> None:
        member = self._member
        if member is None:
            return
        if member.failure is not None:
            self.send(self.coordinator, SetupFailed("cluster", member.failure))
            self._member = None
            return
        for news in member.take():
            self.send(self.coordinator, news)

    def on_exit(self) -> None:
        member = self._member
        if member is not None:
            member.stop()
            member.join(timeout=CLOSE_TIMEOUT_SECONDS)
