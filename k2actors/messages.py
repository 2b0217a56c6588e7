"""Every message the actors exchange, as frozen dataclasses.

The path of a trade: ConnectionActor --RawBatch--> Normaliser --RecordBatch--> ProducerActor,
which answers BatchesDelivered. These travel on data channels (k2actors.channel), the rest
by Thespian. Batches carry sequence numbers because what a channel held is lost with its
receiver: a restarted one is sent again what was never confirmed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from thespian.actors import ActorAddress

from k2actors.config import ClusterConfig, Config, Endpoint, KafkaConfig, RawConfig
from k2actors.core.coinbase import Product
from k2actors.core.kraken import Instrument
from k2actors.core.ledger import CoinbaseRules, KrakenRules
from k2actors.core.payloads import Positions
from k2actors.core.raw import RestResponse
from k2actors.core.reasons import EndReason
from k2actors.core.telemetry import MetricDeltas

# --- service (main process) <-> FailoverCoordinator ---


@dataclass(frozen=True)
class StartPipeline:
    config: Config
    quote_assets: Mapping[str, str]  # symbol -> quote asset, from exchangeInfo; may be empty
    exchange_info: tuple[RestResponse, ...]  # the answers they came from, for the raw record
    service_pid: int  # the service's main process: when it is gone, the actor system must go too


@dataclass(frozen=True)
class PipelineStarted:
    metrics_port: int
    admin_pid: int  # Thespian's admin process: whatever of the actor system outlives a shutdown is ended


@dataclass(frozen=True)
class PipelineFailed:
    """The pipeline cannot run (or can no longer run); the service exits non-zero."""

    reason: str


@dataclass(frozen=True)
class StopPipeline:
    pass


@dataclass(frozen=True)
class PipelineAlive:
    """The coordinator's heartbeat to the service; its silence means the coordinator is gone."""


@dataclass(frozen=True)
class PipelineStopped:
    undelivered: int  # records Kafka never acknowledged; 0 on a clean stop
    missing: int  # trade ids declared missing and not (yet) backfilled: the next start fills them


# --- FailoverCoordinator -> children: setup and control ---


@dataclass(frozen=True)
class MetricsSetup:
    port: int
    bind_address: str


@dataclass(frozen=True)
class MetricsReady:
    port: int


@dataclass(frozen=True)
class SetupFailed:
    component: str
    reason: str


@dataclass(frozen=True)
class ProducerSetup:
    kafka: KafkaConfig
    streams: tuple[str, ...]  # every stream type published (Config.stream_types): each has its topic and schema subject
    raw: RawConfig  # enabled: frames to the raw topic too; and where the connections' receipts are
    metrics: ActorAddress
    cluster: ClusterConfig
    symbols: tuple[str, ...]  # binance.symbols: in cluster mode, what the shards are made of


@dataclass(frozen=True)
class NormaliserSetup:
    producer: ActorAddress
    metrics: ActorAddress
    gap_grace_seconds: float
    symbols: frozenset[str]  # subscribed; a trade of any other symbol is a dead letter
    backfill: ActorAddress | None  # the BackfillActor (REST requests), when backfill or books are on
    fill_gaps: bool  # binance.backfill: declared gaps are sent to the BackfillActor
    fill_kraken_gaps: bool  # kraken.backfill: ... and Kraken's
    fill_coinbase_gaps: bool  # coinbase.backfill: ... and Coinbase's
    quote_assets: Mapping[str, str]
    exchange_info: tuple[RestResponse, ...]  # the answers quote_assets came from, for the raw record
    max_buffered_records: int
    max_frame_bytes: int
    stale_timeout_seconds: float  # /ready: a venue without data for longer is not ready
    owned: frozenset[str] | None  # cluster mode: the symbols of the shards this instance owns; None: every symbol
    raw: bool  # raw.enabled: every frame to the raw topic as well
    book_depth: int
    book_cadence_ms: int
    kraken: KrakenRules | None  # when kraken.enabled
    coinbase: CoinbaseRules | None  # when coinbase.enabled


@dataclass(frozen=True)
class BackfillSetup:
    normaliser: ActorAddress
    producer: ActorAddress
    metrics: ActorAddress
    rest_urls: Mapping[str, str]  # venue -> REST base URL
    max_age_seconds: float  # ids older than this are reported unfilled, not fetched
    snapshot_limit: int  # levels a side of a book's REST snapshot
    tls_ca_file: str
    tls_verify: bool
    kraken: KrakenHistory | None  # when Kraken's gaps are filled
    coinbase_rest_url: str | None  # coinbase.rest_url, when Coinbase's gaps are filled


@dataclass(frozen=True)
class BackfillRequest:
    """A declared gap: fetch these ids from the venue's history of this stream type."""

    stream: str  # trade or aggTrade
    venue: str
    symbol: str
    first_id: int
    last_id: int


@dataclass(frozen=True)
class KrakenBackfillRequest:
    """A declared gap of Kraken trades: its history is served by time, from after the trade
    before the gap (`after_us`; None: not known, the backfill window's start instead)."""

    symbol: str  # the records'
    pair: str  # Kraken's spelling
    first_id: int
    last_id: int
    after_us: int | None


@dataclass(frozen=True)
class CoinbaseBackfillRequest:
    """A declared gap of Coinbase trades: its history is paged by trade id."""

    symbol: str  # the records'
    product_id: str  # Coinbase's spelling
    first_id: int
    last_id: int


@dataclass(frozen=True)
class KrakenHistory:
    """Where Kraken's gaps are filled from (kraken.rest_url), how far back (kraken.backfill_max_age_seconds)."""

    rest_url: str
    max_age_seconds: float


@dataclass(frozen=True)
class BookSnapshotRequest:
    """A book is to be rebuilt: fetch a REST snapshot of it."""

    venue: str
    symbol: str


@dataclass(frozen=True)
class IdsAbandoned:
    """Backfill gave these ids up (reported unfilled): the producer's checkpoints count them as
    settled, so that the next start does not declare them missing again."""

    stream: str
    venue: str
    symbol: str
    first_id: int
    last_id: int



@dataclass(frozen=True)
class ConnectionSetup:
    endpoint: Endpoint
    symbols: tuple[str, ...]
    streams: tuple[str, ...]
    stale_timeout_seconds: float
    max_connection_age_seconds: float
    max_buffered_frames: int
    tls_ca_file: str
    tls_verify: bool
    book_depth: int  # the venue's book records' levels a side (Kraken's books are subscribed to hold them)
    receipts_dir: str | None  # raw.receipts_dir when the raw record is on: a receipt per connection there
    normaliser: ActorAddress
    metrics: ActorAddress


@dataclass(frozen=True)
class Connect:
    pass


@dataclass(frozen=True)
class StopReading:
    pass


@dataclass(frozen=True)
class Rotate:
    """Make before break: open a new connection, and close the old one once the new one streams."""

    reason: str


@dataclass(frozen=True)
class Drain:
    """Finish every batch up to these sequence numbers (per endpoint URL), then flush."""

    last_batches: Mapping[str, int]


@dataclass(frozen=True)
class Flush:
    last_batch: int
    missing: int  # carried on to PipelineStopped
    unprocessed: int = 0  # frames the Normaliser never handled (Kafka was never ready): undelivered too


@dataclass(frozen=True)
class MembershipSetup:
    cluster: ClusterConfig
    kafka: KafkaConfig
    shards: int  # the control topic has one partition per shard
    metrics: ActorAddress


@dataclass(frozen=True)
class AcquireShard:
    """To the producer: take the shard's transactional id (fencing its former owner), read
    what Kafka holds for its symbols, then answer ShardAcquired."""

    shard: int
    symbols: tuple[str, ...]
    acquisition: int  # said again in the answers: a late answer about an earlier one is told apart


@dataclass(frozen=True)
class ReleaseShard:
    """To the producer: commit what the shard's writer holds, and produce no more of it."""

    shard: int
    acquisition: int  # the acquisition it ends (a later one of the same shard is left alone)


@dataclass(frozen=True)
class SymbolsOwned:
    """To the Normaliser: the symbols of every shard this instance owns now, and where the
    streams of the newly owned ones stand in Kafka (id tracking resumes from there)."""

    symbols: frozenset[str]
    positions: Positions


# --- children -> FailoverCoordinator ---


@dataclass(frozen=True)
class ShardsAssigned:
    """The group's assignment for this instance, after a rebalance (the whole set)."""

    shards: tuple[int, ...]
    generation: int | None  # the group's generation, when librdkafka says


@dataclass(frozen=True)
class ShardsLost:
    """The group gave up on this instance (its session expired): another may own its shards."""


@dataclass(frozen=True)
class ShardAcquired:
    shard: int
    acquisition: int
    positions: Positions  # where the shard's streams stand in Kafka


@dataclass(frozen=True)
class ShardFenced:
    """The shard's transaction failed (another producer took its transactional id, or Kafka
    refused it): the writer is gone."""

    shard: int
    acquisition: int
    detail: str


@dataclass(frozen=True)
class Heartbeat:
    """Every child, at least once a second while its message loop turns (a busy child beats
    between data messages, never behind them): silence means it is hung or was killed."""

    pid: int


@dataclass(frozen=True)
class ConnectionStreaming:
    """Data flows from the endpoint (a handshake alone is not enough: a flapping endpoint
    accepts and drops)."""

    url: str


@dataclass(frozen=True)
class ConnectionClosed:
    url: str
    reason: EndReason
    detail: str
    was_streaming: bool
    last_frame_at: float | None  # monotonic (one clock for every process of the machine); None: no frame came


@dataclass(frozen=True)
class ReadingStopped:
    url: str
    last_batch: int


@dataclass(frozen=True)
class ServerShutdownNotice:
    url: str


@dataclass(frozen=True)
class KrakenInstruments:
    """Kraken's subscribed pairs as last described (Normaliser -> coordinator), for the next Normaliser."""

    instruments: tuple[Instrument, ...]


@dataclass(frozen=True)
class CoinbaseProducts:
    """Coinbase's subscribed products as last described (Normaliser -> coordinator), for the next Normaliser."""

    products: tuple[Product, ...]


@dataclass(frozen=True)
class Flushed:
    undelivered: int
    missing: int


# --- the path of a trade (its payloads, RawBatch, RecordBatch and the rest, are the core's:
# k2actors.core.payloads) ---


@dataclass(frozen=True)
class ChannelReset:
    """A receiver closed the data channel this came on: the sender starts a new one and
    accounts for what the old one carried as after the receiver's restart."""

    detail: str


@dataclass(frozen=True)
class RawBatchTaken:
    """The Normaliser has taken this RawBatch: its sender may send another."""

    seq: int


@dataclass(frozen=True)
class RawBatchesConfirmed:
    """Kafka has what came of the sender's RawBatches up to `seq`: it need keep them no longer."""

    seq: int


@dataclass(frozen=True)
class SubscriptionAnswer:
    """The exchange answered one of a connection's requests (its id as the exchange echoed it):
    `refusal` is the venue's (code, message), None for success. The Normaliser, which reads
    the frames, tells the connection on the channel they came on."""

    request_id: object
    refusal: tuple[int, str] | None


@dataclass(frozen=True)
class ReplaceConnection:
    """Coinbase's connection `conn_id` lost a frame: its books cannot be trusted; replace it,
    make before break, so that its successor's subscriptions bring fresh snapshots (the
    Normaliser, which follows every connection's numbering, tells the connection actor)."""

    conn_id: str


@dataclass(frozen=True)
class ResubscribeBook:
    """Kraken's book of `pair` on connection `conn_id` failed its checksum: ask that connection
    for a fresh snapshot (the Normaliser, which verifies books, tells the connection)."""

    conn_id: str
    pair: str





@dataclass(frozen=True)
class BatchesDelivered:
    """Kafka acknowledged every record of these batches. One message per tick, never one
    per batch: after an outage thousands of batches complete at once."""

    seqs: tuple[int, ...]


@dataclass(frozen=True)
class SequenceQuery:
    """A new Normaliser asks the producer where each (venue, symbol) stands."""


@dataclass(frozen=True)
class SequenceState:
    positions: Positions


# --- to the MetricsActor (MetricDeltas lives in core.telemetry) ---


@dataclass(frozen=True)
class ComponentStatus:
    """Input to /ready and /health: is this part of the service doing its job, and why not."""

    component: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class CoordinatorAlive:
    """Input to /health: the coordinator's heartbeat, with the process of every actor; and
    what the coordinator says every tick: its lines of /ready and its metric deltas."""

    pids: Mapping[str, int]  # role (or service, actor_system, coordinator) -> pid
    statuses: tuple[ComponentStatus, ...]
    deltas: MetricDeltas
