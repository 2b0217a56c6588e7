"""The metric catalogue, and the deltas actors accumulate before sending them.

Every metric the service exports is declared here once; the MetricsActor builds the
Prometheus objects from this table and the README documents the same names.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# Seconds; fine at the low end, where a healthy pipeline sits.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


CATALOGUE = {
    spec.name: spec
    for spec in (
        MetricSpec("k2_binance_connection_status", GAUGE, ("url",), "1 while the connection to this endpoint is streaming, else 0."),
        MetricSpec("k2_binance_messages_received_total", COUNTER, ("exchange", "symbol", "stream"), "Valid events (trades, aggregate trades, quotes, book diffs) streamed from the exchange, duplicates included."),
        MetricSpec("k2_binance_message_errors_total", COUNTER, ("error_type", "stream"), "Exchange frames that could not become a record."),
        MetricSpec("k2_binance_subscription_refusals_total", COUNTER, ("url",), "Requests (SUBSCRIBE, ...) the exchange refused with an error reply; a refused SUBSCRIBE is asked again with backoff."),
        MetricSpec("k2_binance_reconnects_total", COUNTER, ("url", "reason"), "Connections to an endpoint that ended and were replaced."),
        MetricSpec("k2_binance_read_pauses_total", COUNTER, ("url",), "Times reading paused because the Normaliser was far behind (backpressure)."),
        MetricSpec("k2_binance_last_message_timestamp_seconds", GAUGE, ("exchange",), "Unix time of the last frame received from any endpoint of the exchange."),
        MetricSpec("k2_binance_duplicate_trades_total", COUNTER, ("exchange", "symbol", "stream"), "Events dropped because their id was already published (quotes: not newer than the last)."),
        MetricSpec("k2_binance_trade_gaps_total", COUNTER, ("exchange", "symbol", "stream"), "Runs of missing trade (or aggregate trade) ids declared."),
        MetricSpec("k2_binance_gaps_pending", GAUGE, (), "Trade (or aggregate trade) ids noticed missing and still inside the grace period before a gap is declared."),
        MetricSpec("k2_binance_missing_trades_total", COUNTER, ("exchange", "symbol", "stream"), "Trade (or aggregate trade) ids declared missing."),
        MetricSpec("k2_binance_recovered_trades_total", COUNTER, ("exchange", "symbol"), "Trades that arrived after their id had been declared missing."),
        MetricSpec("k2_kafka_messages_produced_total", COUNTER, ("topic",), "Records acknowledged by Kafka."),
        MetricSpec("k2_kafka_produce_errors_total", COUNTER, ("topic", "error_type"), "Records Kafka did not acknowledge."),
        MetricSpec("k2_dlq_messages_total", COUNTER, ("reason", "stream"), "Frames routed to the dead-letter topic."),
        MetricSpec("k2_kafka_records_already_in_kafka_total", COUNTER, (), "Records not produced because Kafka already held their id (a resend after a producer restart)."),
        MetricSpec("k2_kafka_quotes_superseded_total", COUNTER, ("symbol",), "Quotes not produced because a newer one of their symbol reached the producer first (batches delivered out of order)."),
        MetricSpec("k2_cluster_shards_owned", GAUGE, (), "Cluster mode: shards this instance owns (streams and publishes)."),
        MetricSpec("k2_cluster_shard_owned", GAUGE, ("shard",), "Cluster mode: 1 for each shard this instance owns, else 0."),
        MetricSpec("k2_cluster_generation", GAUGE, (), "Cluster mode: the consumer group's generation at this instance's last assignment."),
        MetricSpec("k2_cluster_rebalances_total", COUNTER, (), "Cluster mode: assignments this instance received from its group."),
        MetricSpec("k2_cluster_shards_released_total", COUNTER, ("reason",), "Cluster mode: shards released: reassigned, lost (session expired), fenced, producer restarted."),
        MetricSpec("k2_cluster_records_not_owned_total", COUNTER, (), "Cluster mode: records not produced, or produced in a transaction that did not commit, because their shard was released or fenced meanwhile (its next owner resumes from what Kafka holds)."),
        MetricSpec("k2_cluster_events_not_owned_total", COUNTER, ("symbol",), "Cluster mode: streamed or backfilled events of a symbol whose shard this instance does not own, dropped."),
        MetricSpec("k2_kafka_resent_records_total", COUNTER, (), "Records re-sent to a recreated producer; some may be in Kafka twice, with the same message_id."),
        MetricSpec("k2_buffered_records", GAUGE, (), "Records waiting for Kafka's acknowledgement; at kafka.max_buffered_records the connections are held back."),
        MetricSpec("k2_raw_frames_lost_total", COUNTER, ("venue",), "Frames received and numbered but never in Kafka: their connection's process was killed first (counted from its receipt, at the next start or when the connection's actor was replaced). The venue cannot send them again; their trades are declared missing and backfilled."),
        MetricSpec("k2_connection_unconfirmed_frames", GAUGE, ("url",), "Frames an endpoint's connections received that are not yet in Kafka (with the Normaliser, or waiting to go to it); at kafka.max_buffered_records waiting, reading pauses."),
        MetricSpec("k2_channel_refusals_total", COUNTER, ("reason",), "Data channels between actors closed at once: a peer of another user (other_user), one without the service's proof (no_proof), a message over the size bound (oversized)."),
        MetricSpec("k2_circuit_breaker_state", GAUGE, ("url",), "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open."),
        MetricSpec("k2_actor_restarts_total", COUNTER, ("actor", "reason"), "Child actors the coordinator recreated: exited, or silent (no heartbeat)."),
        MetricSpec("k2_connection_rotations_total", COUNTER, ("url", "reason"), "Connections replaced make-before-break: max_age or server_shutdown."),
        MetricSpec("k2_poison_messages_total", COUNTER, ("message",), "Messages an actor failed on twice (Thespian's PoisonMessage); their trades go to the DLQ."),
        MetricSpec("k2_actor_batches_lost_total", COUNTER, ("link",), "Batches between actors that never arrived (sequence gap)."),
        MetricSpec("k2_backfill_requests_total", COUNTER, ("status",), "REST requests (trade history, book snapshots), by HTTP status (error: no answer)."),
        MetricSpec("k2_backfill_trades_total", COUNTER, ("symbol",), "Trades fetched from REST history into a gap and published."),
        MetricSpec("k2_backfill_gaps_open", GAUGE, (), "Gaps waiting for or being backfilled."),
        MetricSpec("k2_backfill_gaps_filled_total", COUNTER, ("symbol",), "Gaps whose every id the venue's history served."),
        MetricSpec("k2_backfill_unfilled_trades_total", COUNTER, ("symbol", "reason"), "Missing trade ids backfill could not fetch: rest_unavailable, rest_unusable, not_served, banned."),
        MetricSpec("k2_backfill_latency_seconds", HISTOGRAM, (), "From a gap's backfill request to its last page fetched."),
        MetricSpec("k2_book_in_sync", GAUGE, ("symbol",), "1 while the symbol's order book is in sync (its records published), 0 while it is being rebuilt."),
        MetricSpec("k2_book_resyncs_total", COUNTER, ("symbol", "reason"), "Order books that went out of sync and were rebuilt from a REST snapshot: gap, stale_snapshot, buffer_full, depth_exhausted."),
        MetricSpec("k2_book_resync_seconds", HISTOGRAM, (), "From a book out of sync (or first seen) to in sync again."),
        MetricSpec("k2_book_snapshots_total", COUNTER, ("symbol",), "REST snapshots of order books fetched."),
        MetricSpec("k2_service_memory_bytes", GAUGE, (), "Memory of the whole service, every actor process (proportional set size), read at scrape time."),
        MetricSpec("k2_trade_exchange_to_ack_seconds", HISTOGRAM, (), "Exchange trade time to Kafka acknowledgement."),
        MetricSpec("k2_trade_receive_to_ack_seconds", HISTOGRAM, (), "Receipt from the exchange to Kafka acknowledgement."),
        MetricSpec("k2_trade_receive_to_produce_seconds", HISTOGRAM, (), "Receipt from the exchange to the record handed to the Kafka client (the pipeline's own share)."),
    )
}


@dataclass(frozen=True)
class Observed:
    """A histogram's observations since the last send, counted into LATENCY_BUCKETS where
    they were made: the producer observes three latencies a trade, thousands a second, and
    the MetricsActor adds counts instead of observing each one."""

    counts: tuple[int, ...]  # per bucket, not cumulative: at or under each bound, then above the last
    total: float  # their sum


@dataclass(frozen=True)
class MetricDeltas:
    """What changed since the last send: counter increments, gauge values, observations."""

    counters: tuple[tuple[str, tuple[str, ...], float], ...] = ()
    gauges: tuple[tuple[str, tuple[str, ...], float], ...] = ()
    observations: tuple[tuple[str, Observed], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.counters or self.gauges or self.observations)


class MetricBuffer:
    """Accumulates changes in an actor, to be sent as one MetricDeltas."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        self._gauges: dict[tuple[str, tuple[str, ...]], float] = {}
        self._counts: dict[str, list[int]] = {}  # per histogram: how many fell in each bucket
        self._sums: dict[str, float] = defaultdict(float)

    def inc(self, name: str, *labels: str, amount: float = 1) -> None:
        self._counters[(name, labels)] += amount

    def set(self, name: str, value: float, *labels: str) -> None:
        self._gauges[(name, labels)] = value

    def observe(self, name: str, values: list[float]) -> None:
        counts = self._counts.setdefault(name, [0] * (len(LATENCY_BUCKETS) + 1))
        for value in values:
            counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1  # Prometheus buckets hold what is <= their bound
        self._sums[name] += sum(values)

    def take(self) -> MetricDeltas:
        deltas = MetricDeltas(
            counters=tuple((name, labels, value) for (name, labels), value in self._counters.items()),
            gauges=tuple((name, labels, value) for (name, labels), value in self._gauges.items()),
            observations=tuple((name, Observed(tuple(counts), self._sums[name])) for name, counts in self._counts.items()),
        )
        self._counters.clear()
        self._gauges.clear()
        self._counts.clear()
        self._sums.clear()
        return deltas


@dataclass(frozen=True, slots=True)
class LogLine:
    """What a core has to say about an event, for the shell to log: its level, the line for
    people, and the fields a JSON log carries (`event` names the kind of event)."""

    level: int
    message: str
    fields: Mapping[str, object] = field(default_factory=dict)


def log_line(logger: logging.Logger, line: LogLine) -> None:
    logger.log(line.level, "%s", line.message, extra=dict(line.fields))
