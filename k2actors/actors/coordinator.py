"""FailoverCoordinator: the supervisor. Creates every other actor, wires them together,
decides which connections are active, restarts children that die, and stops the
pipeline in order (stop reading, drain the normaliser, flush the producer). Failover and
the circuit breaker are k2actors.core.failover's; who to restart and rewire is
k2actors.core.supervision's."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from thespian.actors import ActorAddress, ActorTypeDispatcher, ChildActorExited, WakeupMessage

from k2actors import processes
from k2actors.actors.backfill import BackfillActor
from k2actors.actors.connection import ConnectionActor
from k2actors.actors.membership import MembershipActor
from k2actors.actors.metrics import MetricsActor
from k2actors.actors.normaliser import Normaliser
from k2actors.actors.producer import ProducerActor
from k2actors.actors.shell import ADMIN_PID_VARIABLE, TICK, seconds
from k2actors.config import Endpoint, coinbase_rules
from k2actors.core.binance import BOOK
from k2actors.core.breaker import BreakerState, CircuitBreaker
from k2actors.core.cluster import Acquire, Release, ShardEvent, Shards
from k2actors.core.coinbase import Product
from k2actors.core.failover import AttemptBudget, DarkDeadline, FailoverPolicy
from k2actors.core.kraken import Instrument
from k2actors.core.ledger import KrakenRules
from k2actors.core.payloads import Positions
from k2actors.core.sequence import GAP_GRACE_SECONDS
from k2actors.core.supervision import ActorRole, ConnectionRole, Restart, Role, Supervision
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import (
    AcquireShard,
    BackfillSetup,
    CoinbaseProducts,
    ComponentStatus,
    Connect,
    ConnectionClosed,
    ConnectionSetup,
    ConnectionStreaming,
    CoordinatorAlive,
    Drain,
    Flushed,
    Heartbeat,
    KrakenHistory,
    KrakenInstruments,
    MembershipSetup,
    MetricsReady,
    MetricsSetup,
    NormaliserSetup,
    PipelineAlive,
    PipelineFailed,
    PipelineStarted,
    PipelineStopped,
    ProducerSetup,
    ReadingStopped,
    ReleaseShard,
    Rotate,
    ServerShutdownNotice,
    SetupFailed,
    ShardAcquired,
    ShardFenced,
    ShardsAssigned,
    ShardsLost,
    StartPipeline,
    StopPipeline,
    StopReading,
    SymbolsOwned,
)

log = logging.getLogger("k2actors.coordinator")
# What /ready and the log say when no venue is enabled.
NO_VENUE = "binance.enabled, kraken.enabled and coinbase.enabled are false"

_CLASSES = {Role.METRICS: MetricsActor, Role.PRODUCER: ProducerActor, Role.NORMALISER: Normaliser, Role.BACKFILL: BackfillActor,
            Role.MEMBERSHIP: MembershipActor}


class _Started:
    """What the coordinator holds once StartPipeline has come."""

    def __init__(self, start: StartPipeline, service: ActorAddress):
        self.config = start.config
        self.quote_assets = start.quote_assets
        self.exchange_info = start.exchange_info
        self.service_pid = start.service_pid
        self.service = service
        self.dark = DarkDeadline(start.config.circuit_breaker.exit_after_open_seconds)
        binance = start.config.binance
        self.endpoints: dict[str, Endpoint] = {e.url: e for venue in start.config.venues for e in venue.endpoints}
        cluster = start.config.cluster
        # The BackfillActor makes every REST request after the start: history for gaps, snapshots for books.
        kraken, coinbase = start.config.kraken, start.config.coinbase
        self.supervision = Supervision(tuple(self.endpoints), binance.backfill or BOOK in binance.streams
                                       or (kraken.enabled and kraken.backfill) or (coinbase.enabled and coinbase.backfill),
                                       cluster.enabled)
        # Cluster mode: the shards this instance holds (k2actors.core.cluster); the symbols
        # streamed are only those of the shards it owns.
        symbols = start.config.record_symbols
        self.shards = Shards(symbols, cluster.session_timeout_seconds) if cluster.enabled else None
        self.symbols: tuple[str, ...] = () if cluster.enabled else symbols
        # Kraken's subscribed pairs as a Normaliser last learned them from the connections: a
        # Normaliser that replaces it starts with them (it sees no frame from before its start).
        self.kraken_instruments: tuple[Instrument, ...] = ()
        self.coinbase_products: tuple[Product, ...] = ()  # and Coinbase's products likewise
        self.generation: int | None = None
        self.rebalances = 0  # assignments received from the group


class FailoverCoordinator(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._run: _Started | None = None
        self._admin_pid = os.getppid()  # Thespian's admin, this process's parent
        os.environ[ADMIN_PID_VARIABLE] = str(self._admin_pid)  # for the children, forked from here
        self._children: dict[ActorRole, ActorAddress] = {}
        self._policies: dict[str, FailoverPolicy] = {}  # endpoint URL -> the policy it belongs to
        self._wanted: set[str] = set()  # URLs that should be connected now
        self._streaming: set[str] = set()
        self._pipeline_started = False
        self._stopping = False
        self._stop_reply: ActorAddress | None = None
        self._reading_stopped: dict[str, int] = {}
        self._metrics = MetricBuffer()
        self._circuits: dict[FailoverPolicy, BreakerState] = {}  # last state logged

    @property
    def run(self) -> _Started:
        if self._run is None:
            raise RuntimeError("the coordinator has not been started")
        return self._run

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: ActorAddress) -> None:
        self._on_wakeup(message.payload)

    def receiveMsg_ConnectionStreaming(self, message: ConnectionStreaming, sender: ActorAddress) -> None:
        self._on_streaming(message.url)

    def receiveMsg_ConnectionClosed(self, message: ConnectionClosed, sender: ActorAddress) -> None:
        self._on_closed(message)

    def receiveMsg_Heartbeat(self, message: Heartbeat, sender: ActorAddress) -> None:
        role = self._role_of(sender)
        if role is not None:
            self.run.supervision.heartbeat(role, message.pid, time.monotonic())

    def receiveMsg_ServerShutdownNotice(self, message: ServerShutdownNotice, sender: ActorAddress) -> None:
        role = ConnectionRole(message.url)
        if role in self._children and not self._stopping:
            self.send(self._children[role], Rotate("server_shutdown"))

    def receiveMsg_KrakenInstruments(self, message: KrakenInstruments, sender: ActorAddress) -> None:
        self.run.kraken_instruments = message.instruments

    def receiveMsg_CoinbaseProducts(self, message: CoinbaseProducts, sender: ActorAddress) -> None:
        self.run.coinbase_products = message.products

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: ActorAddress) -> None:
        role = self._role_of(message.childAddress)
        if role is not None and not self._stopping:
            self._restart(self.run.supervision.exited(role))

    def receiveMsg_StartPipeline(self, message: StartPipeline, sender: ActorAddress) -> None:
        self._start(message, sender)

    def receiveMsg_MetricsReady(self, message: MetricsReady, sender: ActorAddress) -> None:
        self._start_pipeline(message.port)

    def receiveMsg_SetupFailed(self, message: SetupFailed, sender: ActorAddress) -> None:
        self._stopping = True  # the service shuts everything down: nothing is to be restarted
        log.error("%s could not start: %s", message.component, message.reason)
        self.send(self.run.service, PipelineFailed(f"{message.component}: {message.reason}"))

    def receiveMsg_StopPipeline(self, message: StopPipeline, sender: ActorAddress) -> None:
        self._stop(sender)

    def receiveMsg_ReadingStopped(self, message: ReadingStopped, sender: ActorAddress) -> None:
        self._on_reading_stopped(message)

    def receiveMsg_Flushed(self, message: Flushed, sender: ActorAddress) -> None:
        if self._stop_reply is not None:
            self.send(self._stop_reply, PipelineStopped(message.undelivered, message.missing))

    # --- cluster mode ---

    def receiveMsg_ShardsAssigned(self, message: ShardsAssigned, sender: ActorAddress) -> None:
        run = self.run
        if run.shards is None or self._stopping:
            return
        run.generation = message.generation
        run.rebalances += 1
        self._metrics.inc("k2_cluster_rebalances_total")
        if message.generation is not None:
            self._metrics.set("k2_cluster_generation", message.generation)
        log.info("group %s assigned shards %s of %d (generation %s)", run.config.cluster.group_id, list(message.shards),
                 len(run.shards.table), message.generation,
                 extra={"event": "shards_assigned", "shards": list(message.shards), "generation": message.generation})
        self._act_shards(run.shards.assign(message.shards))

    def receiveMsg_ShardsLost(self, message: ShardsLost, sender: ActorAddress) -> None:
        run = self.run
        if run.shards is None or self._stopping:
            return
        log.error("this instance lost its place in group %s (its session expired): every shard is released until it "
                  "rejoins", run.config.cluster.group_id, extra={"event": "shards_lost"})
        self._act_shards(run.shards.lose())

    def receiveMsg_ShardAcquired(self, message: ShardAcquired, sender: ActorAddress) -> None:
        if self.run.shards is not None and not self._stopping:
            self._act_shards(self.run.shards.acquired(message.shard, message.acquisition), message.positions)

    def receiveMsg_ShardFenced(self, message: ShardFenced, sender: ActorAddress) -> None:
        if self.run.shards is not None and not self._stopping:
            self._act_shards(self.run.shards.fenced(message.shard, message.acquisition, time.monotonic()))

    def _act_shards(self, events: list[ShardEvent], positions: Positions | None = None) -> None:
        run = self.run
        assert run.shards is not None
        for event in events:
            if isinstance(event, Acquire):
                log.info("acquiring shard %d (%s)", event.shard, ", ".join(event.symbols),
                         extra={"event": "shard_acquiring", "shard": event.shard})
                self.send(self._children[Role.PRODUCER], AcquireShard(event.shard, event.symbols, event.acquisition))
            elif isinstance(event, Release):
                log.info("releasing shard %d (%s): %s", event.shard, ", ".join(event.symbols), event.reason,
                         extra={"event": "shard_released", "shard": event.shard, "reason": event.reason})
                self._metrics.inc("k2_cluster_shards_released_total", event.reason)
                self.send(self._children[Role.PRODUCER], ReleaseShard(event.shard, event.acquisition))
            elif event.symbols != run.symbols:
                self._own(event.symbols, positions or {})
        for shard in range(len(run.shards.table)):
            self._metrics.set("k2_cluster_shard_owned", int(shard in run.shards.owned), str(shard))
        self._metrics.set("k2_cluster_shards_owned", len(run.shards.owned))
        self._report_cluster()

    def _report_cluster(self) -> None:
        for status in self._cluster_status():
            self.send(self._children[Role.METRICS], status)

    def _cluster_status(self) -> tuple[ComponentStatus, ...]:
        """The cluster line of /ready: not ready until the group has assigned this instance
        anything (even nothing), then what it owns. Said every tick too, as the exchange line
        is, so that a restarted MetricsActor has it."""
        run = self.run
        shards = run.shards
        if shards is None:
            return ()
        group = run.config.cluster.group_id
        if not run.rebalances:
            status = ComponentStatus("cluster", False, f"joining group {group}")
        else:
            acquiring = f", acquiring {sorted(shards.acquiring)}" if shards.acquiring else ""
            status = ComponentStatus("cluster", True, f"group {group}, generation {run.generation}, {run.rebalances} "
                                                      f"rebalances seen: owns shards {sorted(shards.owned)} of "
                                                      f"{len(shards.table)}{acquiring}")
        return (status,)

    def _own(self, symbols: tuple[str, ...], positions: Positions) -> None:
        """Stream these symbols from now on: the Normaliser first (tracking resumes from what
        Kafka holds), then the connections."""
        run = self.run
        carried_before = {url for url in run.endpoints if self._carries(url)}
        run.symbols = symbols
        self.send(self._children[Role.NORMALISER], SymbolsOwned(frozenset(symbols), positions))
        for role in run.supervision.pipeline:
            if isinstance(role, ConnectionRole):
                self._wire(role)
        carried = {url for url in run.endpoints if self._carries(url)}
        self._wanted &= carried
        self._streaming &= carried
        for policy in dict.fromkeys(self._policies.values()):  # a venue that had nothing to carry, and now has
            if policy.urls[0] in carried - carried_before:
                self._connect(policy.first(time.monotonic()).url)
        self._report_exchange()

    def _carries(self, url: str) -> bool:
        """The endpoint's venue has symbols to stream: in cluster mode, those of the shards owned."""
        config = self.run.config
        return bool(config.venue_symbols(config.venue_of(self.run.endpoints[url]), self.run.symbols))

    # --- start and wiring ---

    def _start(self, start: StartPipeline, sender: ActorAddress) -> None:
        self._run = _Started(start, sender)
        config = start.config
        endpoints = self._run.endpoints
        budget = AttemptBudget()  # one IP: every venue's attempts count against the same limit
        for venue in dict.fromkeys(e.venue for e in endpoints.values()):
            urls = tuple(url for url, e in endpoints.items() if e.venue == venue)
            section = config.venue_of(endpoints[urls[0]])
            groups = [urls] if section.mode == "failover" else [(url,) for url in urls]
            for group in groups:
                policy = FailoverPolicy(
                    group,
                    section.reconnect_delay_seconds,
                    section.reconnect_max_delay_seconds,
                    CircuitBreaker(config.circuit_breaker.failure_threshold, config.circuit_breaker.reset_timeout_seconds),
                    budget,
                )
                self._policies.update({url: policy for url in group})
        self._spawn(Role.METRICS)

    def _start_pipeline(self, port: int) -> None:
        if self._pipeline_started:
            return
        self._pipeline_started = True
        roles = self.run.supervision.pipeline
        for role in roles:  # every address first: the Normaliser and the backfill know each other
            self._create(role)
        for role in roles:
            self._wire(role)
        for policy in dict.fromkeys(self._policies.values()):
            if self._carries(policy.urls[0]):
                self._connect(policy.first(time.monotonic()).url)
        if not self.run.endpoints:
            log.warning("%s: no exchange connection will be made", NO_VENUE)
        self._report_cluster()
        self._report_exchange()
        self.send(self.run.service, PipelineStarted(port, self._admin_pid))
        self._on_wakeup(TICK)

    def _spawn(self, role: ActorRole) -> None:
        self._create(role)
        self._wire(role)

    def _create(self, role: ActorRole) -> None:
        self._children[role] = self.createActor(ConnectionActor if isinstance(role, ConnectionRole) else _CLASSES[role])
        self.run.supervision.started(role, time.monotonic())

    def _wire(self, role: ActorRole) -> None:
        run, children = self.run, self._children
        config = run.config
        binance, kafka, metrics = config.binance, config.kafka, children[Role.METRICS]
        message: MetricsSetup | ProducerSetup | NormaliserSetup | BackfillSetup | ConnectionSetup | MembershipSetup
        if isinstance(role, ConnectionRole):
            endpoint = run.endpoints[role.url]
            venue = config.venue_of(endpoint)
            message = ConnectionSetup(
                endpoint, config.venue_symbols(venue, run.symbols), venue.streams, venue.stale_timeout_seconds,
                venue.max_connection_age_seconds, kafka.max_buffered_records,
                venue.tls_ca_file, venue.tls_verify, venue.book_depth, config.raw.receipts_dir if config.raw.enabled else None,
                children[Role.NORMALISER], metrics,
            )
        elif role is Role.METRICS:
            message = MetricsSetup(config.metrics.port, config.metrics.bind_address)
        elif role is Role.PRODUCER:
            message = ProducerSetup(kafka, config.stream_types, config.raw, metrics, config.cluster, config.record_symbols)
        elif role is Role.NORMALISER:
            coinbase = config.coinbase
            message = NormaliserSetup(
                children[Role.PRODUCER], metrics, GAP_GRACE_SECONDS, frozenset(binance.symbols),
                children.get(Role.BACKFILL), binance.backfill, config.kraken.backfill, coinbase.backfill,
                run.quote_assets, run.exchange_info,
                kafka.max_buffered_records,
                binance.max_frame_bytes, binance.stale_timeout_seconds, None if run.shards is None else frozenset(run.symbols),
                config.raw.enabled, binance.book_depth, round(binance.book_cadence_seconds * 1000),
                KrakenRules(frozenset(config.kraken.symbols), config.kraken.max_frame_bytes, run.kraken_instruments,
                            config.kraken.book_depth, round(config.kraken.book_cadence_seconds * 1000))
                if config.kraken.enabled else None,
                coinbase_rules(coinbase, run.coinbase_products) if coinbase.enabled else None,
            )
        elif role is Role.MEMBERSHIP:
            assert run.shards is not None
            message = MembershipSetup(config.cluster, kafka, len(run.shards.table), metrics)
        else:
            message = BackfillSetup(children[Role.NORMALISER], children[Role.PRODUCER], metrics, binance.rest_urls,
                                    binance.backfill_max_age_seconds, binance.book_snapshot_limit,
                                    binance.tls_ca_file, binance.tls_verify,
                                    KrakenHistory(config.kraken.rest_url, config.kraken.backfill_max_age_seconds)
                                    if config.kraken.enabled and config.kraken.backfill else None,
                                    config.coinbase.rest_url if config.coinbase.enabled and config.coinbase.backfill else None)
        self.send(children[role], message)

    # --- connections ---

    def _note_circuit(self, policy: FailoverPolicy) -> None:
        state = policy.circuit(time.monotonic())
        previous = self._circuits.get(policy, BreakerState.CLOSED)
        if state is not previous:
            level = logging.ERROR if state is BreakerState.OPEN else logging.WARNING
            log.log(level, "circuit for %s: %s -> %s", ", ".join(policy.urls), previous.name.lower(), state.name.lower(),
                    extra={"event": "circuit_changed", "endpoints": list(policy.urls),
                           "from_state": previous.name.lower(), "to_state": state.name.lower()})
            self._circuits[policy] = state

    def _connect(self, url: str) -> None:
        self._note_circuit(self._policies[url])
        self._wanted = {u for u in self._wanted if self._policies[u] is not self._policies[url]} | {url}
        self.send(self._children[ConnectionRole(url)], Connect())

    def _on_streaming(self, url: str) -> None:
        policy = self._policies[url]
        dark_for = policy.streaming(time.monotonic())
        self._note_circuit(policy)
        self._streaming.add(url)
        self._report_exchange()
        if dark_for is not None:
            log.info("streaming from %s after %.1f s without data from %s", url, dark_for, ", ".join(policy.urls),
                     extra={"event": "streaming", "endpoint": url, "seconds_without_data": round(dark_for, 3)})

    def _on_closed(self, message: ConnectionClosed) -> None:
        self._streaming.discard(message.url)
        self._report_exchange()
        if self._stopping or not self._carries(message.url):  # cluster mode, no shard of the venue's: nothing to connect for
            return
        policy = self._policies[message.url]
        attempt = policy.ended(time.monotonic(), message.reason, message.detail, message.was_streaming, message.last_frame_at)
        self._note_circuit(policy)
        self._metrics.inc("k2_binance_reconnects_total", message.url, message.reason.value)
        if attempt.url != message.url:
            log.warning("failing over from %s to %s (%s)", message.url, attempt.url, message.detail,
                        extra={"event": "failover", "from_endpoint": message.url, "endpoint": attempt.url,
                               "reason": message.reason.value})
        log.info("next attempt: %s in %.1f s", attempt.url, attempt.delay,
                 extra={"event": "reconnect_scheduled", "endpoint": attempt.url, "delay_seconds": round(attempt.delay, 3)})
        self.wakeupAfter(seconds(attempt.delay), ("connect", attempt.url))

    def _report_exchange(self) -> None:
        for status in self._exchange_statuses():
            self.send(self._children[Role.METRICS], status)

    def _exchange_statuses(self) -> list[ComponentStatus]:
        """A /ready line per exchange: the endpoint in use, and why the others were left. One
        exchange down fails its own line, whatever the others do."""
        endpoints = self.run.endpoints
        if not endpoints:
            return [ComponentStatus("exchange", False, NO_VENUE)]
        statuses = []
        now = time.monotonic()
        for venue in dict.fromkeys(e.venue for e in endpoints.values()):
            urls = [url for url, e in endpoints.items() if e.venue == venue]
            policies = dict.fromkeys(self._policies[url] for url in urls)
            left = "".join(f"; left {url}: {why}" for p in policies for url, why in p.left.items())
            streaming = sorted(self._streaming.intersection(urls))
            if streaming:
                status = ComponentStatus(f"exchange {venue}", True, "streaming from " + ", ".join(streaming) + left)
            elif self.run.shards is not None and not self._carries(urls[0]):
                status = ComponentStatus(f"exchange {venue}", True, "no connection needed: this instance owns no shard of its symbols")
            else:
                circuits = ", ".join(f"{url} {self._policies[url].circuit(now).name.lower()}" for url in urls)
                status = ComponentStatus(f"exchange {venue}", False, f"no endpoint streaming; circuits: {circuits}{left}")
            statuses.append(status)
        return statuses

    # --- supervision ---

    def _role_of(self, address: ActorAddress) -> ActorRole | None:
        return next((r for r, a in self._children.items() if a == address), None)

    def _restart(self, restart: Restart) -> None:
        role = restart.role
        if restart.reason == "exited":
            log.error("%s actor exited; restarting it", role, extra={"event": "actor_restarting", "role": str(role), "reason": "exited"})
        else:
            log.error("%s actor (pid %s) silent for %.0f s; replacing it", role, restart.pid, restart.silent_for,
                      extra={"event": "actor_restarting", "role": str(role), "pid": restart.pid, "reason": "silent"})
        if restart.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(restart.pid, signal.SIGKILL)  # hung, perhaps: it must not come back to life
        self._metrics.inc("k2_actor_restarts_total", restart.kind, restart.reason)
        self._spawn(role)
        for dependant in restart.rewire:
            if dependant in self._children:  # the pipeline's actors exist only once metrics listen
                self._wire(dependant)
        if isinstance(role, ConnectionRole) and role.url in self._wanted:
            self._streaming.discard(role.url)
            self.send(self._children[role], Connect())
        if role is Role.PRODUCER and self.run.shards is not None:
            self._act_shards(self.run.shards.producer_restarted(time.monotonic()))  # the new producer has no shard writers

    def _on_wakeup(self, payload: object) -> None:
        if isinstance(payload, tuple) and payload[0] == "connect":
            if not self._stopping and self._carries(payload[1]):
                self._connect(payload[1])
            return
        now = time.monotonic()
        circuit_open = False
        for url, policy in self._policies.items():
            self._metrics.set("k2_circuit_breaker_state", int(policy.breaker_states(now)[url]), url)
            circuit_open = circuit_open or policy.circuit(now) is not BreakerState.CLOSED
        run = self.run
        if not processes.exists(run.service_pid):
            self._end_orphaned_actor_system()
        if not self._stopping:
            for restart in run.supervision.silent(now):
                self._restart(restart)
            if run.shards is not None:
                due = run.shards.due(now)
                if due:
                    self._act_shards(due)
            if run.endpoints and run.dark.expired(now, bool(self._streaming), circuit_open):
                reason = (
                    f"no endpoint has streamed for circuit_breaker.exit_after_open_seconds "
                    f"({run.config.circuit_breaker.exit_after_open_seconds:g} s) with the circuit open"
                )
                log.error("giving up: %s", reason, extra={"event": "service_giving_up"})
                self.send(run.service, PipelineFailed(reason))
        metrics = self._children[Role.METRICS]
        roots = {"service": run.service_pid, "actor_system": os.getppid(), "coordinator": os.getpid()}
        # One message a tick, not one per line of /ready and one for the metrics: at a quiet
        # market the service's idle cost is mostly its Thespian messages.
        self.send(metrics, CoordinatorAlive({**roots, **run.supervision.pids()},
                                            (*self._exchange_statuses(), *self._cluster_status()), self._metrics.take()))
        self.send(run.service, PipelineAlive())
        self.wakeupAfter(seconds(1), TICK)

    def _end_orphaned_actor_system(self) -> None:
        log.error("the service process %d is gone; shutting the actor system down", self.run.service_pid)
        processes.end_actor_system(self._admin_pid)

    # --- orderly stop ---

    def _stop(self, sender: ActorAddress) -> None:
        self._stopping, self._stop_reply = True, sender
        connections = [role for role in self._children if isinstance(role, ConnectionRole)]
        for role in connections:
            self.send(self._children[role], StopReading())
        if not connections:
            self.send(self._children[Role.NORMALISER], Drain({}))

    def _on_reading_stopped(self, message: ReadingStopped) -> None:
        self._reading_stopped[message.url] = message.last_batch
        if len(self._reading_stopped) == len(self.run.endpoints):
            self.send(self._children[Role.NORMALISER], Drain(dict(self._reading_stopped)))
