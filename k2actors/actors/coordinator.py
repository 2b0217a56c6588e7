"""FailoverCoordinator: the supervisor. Creates every other actor, wires them together,
decides which connections are active, restarts children that die, and stops the
pipeline in order (stop reading, drain the normaliser, flush the producer)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from thespian.actors import Actor, ChildActorExited, WakeupMessage

from k2actors import processes
from k2actors.actors import TICK, seconds
from k2actors.actors.backfill import BackfillActor
from k2actors.actors.connection import ConnectionActor
from k2actors.actors.metrics import MetricsActor
from k2actors.actors.normaliser import Normaliser
from k2actors.actors.producer import ProducerActor
from k2actors.config import Config
from k2actors.core.breaker import BreakerState, CircuitBreaker
from k2actors.core.failover import DarkDeadline, FailoverPolicy
from k2actors.core.reasons import reason_label
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import (
    BackfillSetup,
    ComponentStatus,
    Connect,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionSetup,
    CoordinatorAlive,
    Drain,
    Flushed,
    Heartbeat,
    MetricsReady,
    MetricsSetup,
    NormaliserSetup,
    PipelineAlive,
    PipelineFailed,
    PipelineStarted,
    PipelineStopped,
    ProducerSetup,
    ReadingStopped,
    Rotate,
    ServerShutdownNotice,
    SetupFailed,
    StartPipeline,
    StopPipeline,
    StopReading,
)

log = logging.getLogger("k2actors.coordinator")

# With several connections live (hot standby, or old and new during a rotation) one may
# run ahead of another for a moment; gaps are declared only when they outlast this.
GAP_GRACE_SECONDS = 2.0
# Every child reports each second; this much silence means it is hung or was killed
# without a ChildActorExited (SIGKILL), and it is replaced.
HEARTBEAT_TIMEOUT_SECONDS = 10.0

METRICS, PRODUCER, NORMALISER, BACKFILL = "metrics", "producer", "normaliser", "backfill"
_CLASSES = {METRICS: MetricsActor, PRODUCER: ProducerActor, NORMALISER: Normaliser, BACKFILL: BackfillActor}


def _connection_role(url: str) -> str:
    return f"connection {url}"


class FailoverCoordinator(Actor):
    def __init__(self) -> None:
        super().__init__()
        self._config: Config | None = None
        self._service = None
        self._children: dict[str, object] = {}  # role -> address
        self._policies: dict[str, FailoverPolicy] = {}  # endpoint URL -> the policy it belongs to
        self._endpoints = {}  # URL -> Endpoint
        self._wanted: set[str] = set()  # URLs that should be connected now
        self._streaming: set[str] = set()
        self._started = False
        self._stopping = False
        self._stop_reply = None
        self._reading_stopped: dict[str, int] = {}
        self._metrics = MetricBuffer()
        self._quote_assets: dict[str, str] = {}
        self._service_pid = 0
        self._heartbeats: dict[str, tuple[int | None, float]] = {}  # role -> (pid, when last heard)
        self._dark: DarkDeadline | None = None
        self._circuits: dict[FailoverPolicy, BreakerState] = {}  # last state logged

    def receiveMessage(self, message, sender):
        if isinstance(message, WakeupMessage):
            self._on_wakeup(message.payload)
        elif isinstance(message, ConnectionOpened):
            self._on_opened(message.url)
        elif isinstance(message, ConnectionClosed):
            self._on_closed(message)
        elif isinstance(message, Heartbeat):
            self._on_heartbeat(sender, message.pid)
        elif isinstance(message, ServerShutdownNotice):
            self._on_server_shutdown(message.url)
        elif isinstance(message, ChildActorExited):
            self._on_child_exited(message.childAddress)
        elif isinstance(message, StartPipeline):
            self._quote_assets, self._service_pid = message.quote_assets, message.service_pid
            self._start(message.config, sender)
        elif isinstance(message, MetricsReady):
            self._start_pipeline(message.port)
        elif isinstance(message, SetupFailed):
            log.error("%s could not start: %s", message.component, message.reason)
            self.send(self._service, PipelineFailed(f"{message.component}: {message.reason}"))
        elif isinstance(message, StopPipeline):
            self._stop(sender)
        elif isinstance(message, ReadingStopped):
            self._on_reading_stopped(message)
        elif isinstance(message, Flushed):
            self.send(self._stop_reply, PipelineStopped(message.undelivered))

    # --- start and wiring ---

    def _start(self, config: Config, sender) -> None:
        self._config, self._service = config, sender
        self._dark = DarkDeadline(config.circuit_breaker.exit_after_open_seconds)
        binance = config.binance
        self._endpoints = {e.url: e for e in binance.endpoints} if binance.enabled else {}
        for venue in dict.fromkeys(e.venue for e in self._endpoints.values()):
            urls = tuple(url for url, e in self._endpoints.items() if e.venue == venue)
            groups = [urls] if binance.mode == "failover" else [(url,) for url in urls]
            for group in groups:
                policy = FailoverPolicy(
                    group,
                    binance.max_reconnect_attempts,
                    binance.reconnect_delay_seconds,
                    binance.reconnect_max_delay_seconds,
                    CircuitBreaker(config.circuit_breaker.failure_threshold, config.circuit_breaker.reset_timeout_seconds),
                )
                self._policies.update({url: policy for url in group})
        self._spawn(METRICS)

    def _start_pipeline(self, port: int) -> None:
        if self._started:
            return
        self._started = True
        roles = (PRODUCER, NORMALISER, *self._backfill_role(), *map(_connection_role, self._endpoints))
        for role in roles:  # every address first: the Normaliser and the backfill know each other
            self._create(role)
        for role in roles:
            self._wire(role)
        for policy in dict.fromkeys(self._policies.values()):
            self._connect(policy.first().url)
        if not self._endpoints:
            log.warning("binance.enabled is false: no exchange connection will be made")
        self._report_exchange()
        self.send(self._service, PipelineStarted(port))
        self._on_wakeup(TICK)

    def _backfill_role(self) -> tuple[str, ...]:
        return (BACKFILL,) if self._config.binance.backfill and self._endpoints else ()

    def _spawn(self, role: str) -> None:
        self._create(role)
        self._wire(role)

    def _create(self, role: str) -> None:
        self._children[role] = self.createActor(_CLASSES.get(role, ConnectionActor))
        self._heartbeats[role] = (None, time.monotonic())

    def _wire(self, role: str) -> None:
        config, children = self._config, self._children
        if role == METRICS:
            message = MetricsSetup(config.metrics.port, config.metrics.bind_address)
        elif role == PRODUCER:
            message = ProducerSetup(config.kafka, config.binance.streams, children[METRICS])
        elif role == NORMALISER:
            message = NormaliserSetup(
                children[PRODUCER], children[METRICS], GAP_GRACE_SECONDS, frozenset(config.binance.symbols),
                children.get(BACKFILL), self._quote_assets,
                config.kafka.max_buffered_records, config.binance.max_frame_bytes,
            )
        elif role == BACKFILL:
            binance = config.binance
            message = BackfillSetup(children[NORMALISER], children[METRICS], binance.rest_urls,
                                    binance.tls_ca_file, binance.tls_verify)
        else:
            url = role.removeprefix(_connection_role(""))
            binance = config.binance
            message = ConnectionSetup(
                self._endpoints[url], binance.symbols, binance.streams, binance.stale_timeout_seconds,
                binance.max_connection_age_seconds, config.kafka.max_buffered_records,
                binance.tls_ca_file, binance.tls_verify, children[NORMALISER], children[METRICS],
            )
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
        self.send(self._children[_connection_role(url)], Connect())

    def _on_opened(self, url: str) -> None:
        self._policies[url].connected()
        self._note_circuit(self._policies[url])
        self._streaming.add(url)
        self._report_exchange()

    def _on_closed(self, message: ConnectionClosed) -> None:
        self._streaming.discard(message.url)
        self._report_exchange()
        if self._stopping:
            return
        policy = self._policies[message.url]
        attempt = policy.failed(time.monotonic(), message.was_streaming)
        self._note_circuit(policy)
        self._metrics.inc("k2_binance_reconnects_total", message.url, reason_label(message.reason))
        if attempt.url != message.url:
            log.warning("failing over from %s to %s", message.url, attempt.url,
                        extra={"event": "failover", "from_endpoint": message.url, "endpoint": attempt.url})
        log.info("next attempt: %s in %.1f s", attempt.url, attempt.delay,
                 extra={"event": "reconnect_scheduled", "endpoint": attempt.url, "delay_seconds": round(attempt.delay, 3)})
        self.wakeupAfter(seconds(attempt.delay), ("connect", attempt.url))

    def _report_exchange(self) -> None:
        if self._streaming:
            status = ComponentStatus("exchange", True, "streaming from " + ", ".join(sorted(self._streaming)))
        elif not self._endpoints:
            status = ComponentStatus("exchange", False, "binance.enabled is false")
        else:
            now = time.monotonic()
            circuits = {url: p.circuit(now).name.lower() for url, p in self._policies.items()}
            status = ComponentStatus("exchange", False, f"no endpoint streaming; circuits: {circuits}")
        self.send(self._children[METRICS], status)

    def _on_server_shutdown(self, url: str) -> None:
        role = _connection_role(url)
        if role in self._children and not self._stopping:
            self.send(self._children[role], Rotate("server_shutdown"))

    # --- supervision ---

    def _on_heartbeat(self, sender, pid: int) -> None:
        role = self._role_of(sender)
        if role is not None:
            self._heartbeats[role] = (pid, time.monotonic())

    def _role_of(self, address) -> str | None:
        return next((r for r, a in self._children.items() if a == address), None)

    def _on_child_exited(self, address) -> None:
        role = self._role_of(address)
        if role is not None and not self._stopping:
            log.error("%s actor exited; restarting it", role, extra={"event": "actor_restarting", "role": role, "reason": "exited"})
            self._restart(role, "exited")

    def _check_heartbeats(self, now: float) -> None:
        for role, (pid, heard_at) in list(self._heartbeats.items()):
            if now - heard_at > HEARTBEAT_TIMEOUT_SECONDS:
                log.error("%s actor (pid %s) silent for %.0f s; replacing it", role, pid, now - heard_at,
                          extra={"event": "actor_restarting", "role": role, "pid": pid, "reason": "silent"})
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # hung, perhaps: it must not come back to life
                self._restart(role, "silent")

    def _restart(self, role: str, reason: str) -> None:
        self._metrics.inc("k2_actor_restarts_total", role.split(" ")[0], reason)
        self._spawn(role)
        # Whoever talks to the new actor must learn its address.
        dependants = {
            METRICS: [PRODUCER, *self._backfill_role(), NORMALISER, *map(_connection_role, self._endpoints)],
            PRODUCER: [NORMALISER],
            NORMALISER: [*self._backfill_role(), *map(_connection_role, self._endpoints)],
            BACKFILL: [NORMALISER],
        }.get(role, [])
        for dependant in dependants:
            self._wire(dependant)
        url = role.removeprefix(_connection_role(""))
        if url in self._wanted:
            self._streaming.discard(url)
            self.send(self._children[role], Connect())

    def _on_wakeup(self, payload) -> None:
        if isinstance(payload, tuple) and payload[0] == "connect":
            if not self._stopping:
                self._connect(payload[1])
            return
        now = time.monotonic()
        circuit_open = False
        for url, policy in self._policies.items():
            self._metrics.set("k2_circuit_breaker_state", int(policy.breaker_states(now)[url]), url)
            circuit_open = circuit_open or policy.circuit(now) is not BreakerState.CLOSED
        if not processes.exists(self._service_pid):
            self._end_orphaned_actor_system()
        if not self._stopping:
            self._check_heartbeats(now)
            if self._endpoints and self._dark.expired(now, bool(self._streaming), circuit_open):
                reason = (
                    f"no endpoint has streamed for circuit_breaker.exit_after_open_seconds "
                    f"({self._config.circuit_breaker.exit_after_open_seconds:g} s) with the circuit open"
                )
                log.error("giving up: %s", reason, extra={"event": "service_giving_up"})
                self.send(self._service, PipelineFailed(reason))
        metrics = self._children[METRICS]
        pids = {role: pid for role, (pid, _) in self._heartbeats.items() if pid is not None}
        roots = {"service": self._service_pid, "actor_system": os.getppid(), "coordinator": os.getpid()}
        self.send(metrics, CoordinatorAlive({**roots, **pids}))
        self._report_exchange()
        deltas = self._metrics.take()
        if deltas:
            self.send(metrics, deltas)
        self.send(self._service, PipelineAlive())
        self.wakeupAfter(seconds(1), TICK)

    def _end_orphaned_actor_system(self) -> None:
        """The service process was killed without a word: the actor system it owned must go too,
        or a restarted service would find this one still streaming beside it. Nothing there has
        anything left to do: every process under Thespian's admin (this actor's parent) is
        ended, then the admin, then this actor, which has no one left to tell."""
        log.error("the service process %d is gone; shutting the actor system down", self._service_pid)
        admin = os.getppid()
        for pid in [*(processes.descendants(admin, processes.process_table()) - {os.getpid()}), admin]:
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.kill(pid, signal.SIGKILL)
        os._exit(1)

    # --- orderly stop ---

    def _stop(self, sender) -> None:
        self._stopping, self._stop_reply = True, sender
        connections = [role for role in self._children if role.startswith(_connection_role(""))]
        for role in connections:
            self.send(self._children[role], StopReading())
        if not connections:
            self.send(self._children[NORMALISER], Drain({}))

    def _on_reading_stopped(self, message: ReadingStopped) -> None:
        self._reading_stopped[message.url] = message.last_batch
        if len(self._reading_stopped) == len(self._endpoints):
            self.send(self._children[NORMALISER], Drain(dict(self._reading_stopped)))
