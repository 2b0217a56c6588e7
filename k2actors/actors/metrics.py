"""MetricsActor: owns the Prometheus registry and serves /metrics, /health and /ready.

/health answers 200 while the actor system is alive: the coordinator reports every
second, and silence for HEALTH_SILENCE_SECONDS means the system is not. /ready answers
200 only while an exchange connection streams and Kafka is taking records; both bodies
are JSON saying why.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from thespian.actors import Actor, ActorExitRequest, WakeupMessage

from k2actors.actors import TICK, report_alive, seconds
from k2actors.core.telemetry import (
    CATALOGUE,
    COUNTER,
    GAUGE,
    LATENCY_BUCKETS,
    MetricDeltas,
)
from k2actors.messages import (
    ComponentStatus,
    CoordinatorAlive,
    MetricsReady,
    MetricsSetup,
    SetupFailed,
)
from k2actors.processes import tree_memory_bytes

log = logging.getLogger("k2actors.metrics")

HEALTH_SILENCE_SECONDS = 10.0
READY_COMPONENTS = ("exchange", "kafka")


def build_registry() -> tuple[CollectorRegistry, dict]:
    registry = CollectorRegistry()
    metrics = {}
    for spec in CATALOGUE.values():
        if spec.kind == COUNTER:
            # prometheus_client appends _total to counters itself.
            metrics[spec.name] = Counter(spec.name.removesuffix("_total"), spec.help, spec.labels, registry=registry)
        elif spec.kind == GAUGE:
            metrics[spec.name] = Gauge(spec.name, spec.help, spec.labels, registry=registry)
        else:
            metrics[spec.name] = Histogram(spec.name, spec.help, spec.labels, buckets=LATENCY_BUCKETS, registry=registry)
    return registry, metrics


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Status:
    """The latest word from each component, read by the HTTP thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: dict[str, tuple[bool, str, float]] = {}
        self._coordinator_seen_at: float | None = None
        self._pids: dict[str, int] = {}

    def update(self, component: str, ok: bool, detail: str) -> None:
        with self._lock:
            self._components[component] = (ok, detail, time.monotonic())

    def coordinator_alive(self, pids: dict[str, int]) -> None:
        with self._lock:
            self._coordinator_seen_at, self._pids = time.monotonic(), dict(pids)

    def roots(self) -> tuple[int, ...]:
        """The processes every other process of the service descends from."""
        with self._lock:
            return tuple(self._pids[name] for name in ("service", "actor_system") if name in self._pids)

    def health(self) -> tuple[bool, dict]:
        with self._lock:
            seen_at, pids = self._coordinator_seen_at, dict(self._pids)
        if seen_at is None:
            return False, {"healthy": False, "reason": "the coordinator has not reported yet"}
        silent_for = time.monotonic() - seen_at
        if silent_for > HEALTH_SILENCE_SECONDS:
            return False, {"healthy": False, "reason": f"no word from the coordinator for {silent_for:.0f} s"}
        return True, {"healthy": True, "reason": "actor system alive", "actors": pids}

    def readiness(self) -> tuple[bool, dict]:
        with self._lock:
            checks = {
                name: {"ok": self._components[name][0], "detail": self._components[name][1]}
                if name in self._components
                else {"ok": False, "detail": "no report yet"}
                for name in READY_COMPONENTS
            }
        ready = all(check["ok"] for check in checks.values())
        return ready, {"ready": ready, "checks": checks}


def _handler(registry: CollectorRegistry, status: Status):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - scrapes are not log lines
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                return self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            if path in ("/health", "/ready"):
                ok, body = status.health() if path == "/health" else status.readiness()
                return self._reply(200 if ok else 503, json.dumps(body).encode(), "application/json")
            self._reply(404, b'{"error": "not found"}', "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class MetricsActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._registry, self._metrics = build_registry()
        self._status = Status()
        self._server: ThreadingHTTPServer | None = None
        self._coordinator = None

    def receiveMessage(self, message, sender):
        if isinstance(message, MetricDeltas):
            self._apply(message)
        elif isinstance(message, ComponentStatus):
            self._status.update(message.component, message.ok, message.detail)
        elif isinstance(message, CoordinatorAlive):
            self._status.coordinator_alive(message.pids)
        elif isinstance(message, WakeupMessage):
            report_alive(self, self._coordinator, self._parent_pid)
            self.wakeupAfter(seconds(1), TICK)
        elif isinstance(message, MetricsSetup):
            if self._coordinator is None:
                self.wakeupAfter(seconds(1), TICK)
                memory = self._metrics["k2_service_memory_bytes"]
                memory.set_function(lambda: tree_memory_bytes(*self._status.roots()))
            self._coordinator = sender
            self._serve(message.bind_address, message.port, sender)
        elif isinstance(message, ActorExitRequest) and self._server:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, address: str, port: int, sender) -> None:
        if self._server is not None:
            self.send(sender, MetricsReady(port))
            return
        try:
            server_class = _IPv6HTTPServer if ":" in address else ThreadingHTTPServer
            self._server = server_class((address, port), _handler(self._registry, self._status))
        except OSError as exc:
            self.send(sender, SetupFailed("metrics", f"cannot listen on {address} port {port}: {exc.strerror}"))
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("metrics, health and readiness on %s port %d", address, port)
        self.send(sender, MetricsReady(port))

    def _apply(self, deltas: MetricDeltas) -> None:
        for name, labels, amount in deltas.counters:
            metric = self._metrics[name]
            (metric.labels(*labels) if labels else metric).inc(amount)
        for name, labels, value in deltas.gauges:
            metric = self._metrics[name]
            (metric.labels(*labels) if labels else metric).set(value)
        for name, values in deltas.observations:
            histogram = self._metrics[name]
            for value in values:
                histogram.observe(value)
