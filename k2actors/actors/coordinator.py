"""FailoverCoordinator: the supervisor. Creates every other actor, wires them together,
decides which connections are active, restarts children that die, and stops the
pipeline in order (stop reading, drain the normaliser, flush the producer)."""

from __future__ import annotations

import logging
import time

from thespian.actors import Actor, ChildActorExited, WakeupMessage

from k2actors.actors import TICK, seconds
from k2actors.actors.connection import ConnectionActor
from k2actors.actors.metrics import MetricsActor
from k2actors.actors.normaliser import Normaliser
from k2actors.actors.producer import ProducerActor
from k2actors.config import Config
from k2actors.core.breaker import CircuitBreaker
from k2actors.core.failover import FailoverPolicy
from k2actors.core.reasons import reason_label
from k2actors.core.telemetry import MetricBuffer
from k2actors.messages import (
    ComponentStatus,
    Connect,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionSetup,
    Drain,
    Flushed,
    MetricsReady,
    MetricsSetup,
    NormaliserSetup,
    PipelineFailed,
    PipelineStarted,
    PipelineStopped,
    ProducerSetup,
    ReadingStopped,
    SetupFailed,
    StartPipeline,
    StopPipeline,
    StopReading,
)

log = logging.getLogger("k2actors.coordinator")

# With several connections live (hot standby), a reconnected mirror may run ahead of the
# others for a moment; gaps are declared only when they outlast this.
HOT_STANDBY_GAP_GRACE_SECONDS = 2.0

METRICS, PRODUCER, NORMALISER = "metrics", "producer", "normaliser"
_CLASSES = {METRICS: MetricsActor, PRODUCER: ProducerActor, NORMALISER: Normaliser}


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

    def receiveMessage(self, message, sender):
        if isinstance(message, WakeupMessage):
            self._on_wakeup(message.payload)
        elif isinstance(message, ConnectionOpened):
            self._on_opened(message.url)
        elif isinstance(message, ConnectionClosed):
            self._on_closed(message)
        elif isinstance(message, ChildActorExited):
            self._on_child_exited(message.childAddress)
        elif isinstance(message, StartPipeline):
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
        for role in (PRODUCER, NORMALISER, *map(_connection_role, self._endpoints)):
            self._spawn(role)
        for policy in dict.fromkeys(self._policies.values()):
            self._connect(policy.first().url)
        if not self._endpoints:
            log.warning("binance.enabled is false: no exchange connection will be made")
        self._report_exchange()
        self.send(self._service, PipelineStarted(port))
        self._on_wakeup(TICK)

    def _spawn(self, role: str) -> None:
        cls = _CLASSES.get(role, ConnectionActor)
        self._children[role] = self.createActor(cls)
        self._wire(role)

    def _wire(self, role: str) -> None:
        config, children = self._config, self._children
        if role == METRICS:
            message = MetricsSetup(config.metrics.port)
        elif role == PRODUCER:
            message = ProducerSetup(config.kafka, children[METRICS])
        elif role == NORMALISER:
            grace = HOT_STANDBY_GAP_GRACE_SECONDS if config.binance.mode == "hot_standby" else 0.0
            message = NormaliserSetup(children[PRODUCER], children[METRICS], grace)
        else:
            url = role.removeprefix(_connection_role(""))
            message = ConnectionSetup(
                self._endpoints[url], config.binance.symbols, config.binance.stale_timeout_seconds,
                children[NORMALISER], children[METRICS],
            )
        self.send(children[role], message)

    # --- connections ---

    def _connect(self, url: str) -> None:
        self._wanted = {u for u in self._wanted if self._policies[u] is not self._policies[url]} | {url}
        self.send(self._children[_connection_role(url)], Connect())

    def _on_opened(self, url: str) -> None:
        self._policies[url].connected()
        self._streaming.add(url)
        self._report_exchange()

    def _on_closed(self, message: ConnectionClosed) -> None:
        self._streaming.discard(message.url)
        self._report_exchange()
        if self._stopping:
            return
        policy = self._policies[message.url]
        attempt = policy.failed(time.monotonic(), message.was_streaming)
        self._metrics.inc("k2_binance_reconnects_total", message.url, reason_label(message.reason))
        if attempt.url != message.url:
            log.warning("failing over from %s to %s", message.url, attempt.url)
        log.info("next attempt: %s in %.1f s", attempt.url, attempt.delay)
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

    # --- supervision ---

    def _on_child_exited(self, address) -> None:
        role = next((r for r, a in self._children.items() if a == address), None)
        if role is None or self._stopping:
            return
        log.error("%s actor exited; restarting it", role)
        self._metrics.inc("k2_actor_restarts_total", role.split(" ")[0])
        self._spawn(role)
        # Whoever talks to the new actor must learn its address.
        dependants = {
            METRICS: [PRODUCER, NORMALISER, *map(_connection_role, self._endpoints)],
            PRODUCER: [NORMALISER],
            NORMALISER: [*map(_connection_role, self._endpoints)],
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
        for url, policy in self._policies.items():
            self._metrics.set("k2_circuit_breaker_state", int(policy.breaker_states(now)[url]), url)
        metrics = self._children[METRICS]
        self.send(metrics, ComponentStatus("coordinator", True, "alive"))
        deltas = self._metrics.take()
        if deltas:
            self.send(metrics, deltas)
        self.wakeupAfter(seconds(1), TICK)

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
