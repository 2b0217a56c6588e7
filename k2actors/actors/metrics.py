"""MetricsActor: owns the Prometheus registry and serves /metrics, /health and /ready.

/health answers 200 while the actor system is alive: the coordinator reports every
second, and silence for HEALTH_SILENCE_SECONDS means the system is not. /ready answers
200 only while every exchange streams and Kafka is taking records; both bodies
are JSON saying why.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from thespian.actors import ActorAddress

from k2actors.actors.shell import Supervised
from k2actors.core.health import Status
from k2actors.core.telemetry import (
    CATALOGUE,
    COUNTER,
    GAUGE,
    LATENCY_BUCKETS,
    MetricDeltas,
    MetricSpec,
    Observed,
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

class _Registry:
    """The Prometheus objects of the metric catalogue, by kind."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.histograms = _Histograms([spec for spec in CATALOGUE.values() if spec.kind not in (COUNTER, GAUGE)])
        self.registry.register(self.histograms)
        for spec in CATALOGUE.values():
            if spec.kind == COUNTER:
                # prometheus_client appends _total to counters itself.
                self.counters[spec.name] = Counter(spec.name.removesuffix("_total"), spec.help, spec.labels, registry=self.registry)
            elif spec.kind == GAUGE:
                self.gauges[spec.name] = Gauge(spec.name, spec.help, spec.labels, registry=self.registry)

    def apply(self, deltas: MetricDeltas) -> None:
        for name, labels, amount in deltas.counters:
            counter = self.counters[name]
            (counter.labels(*labels) if labels else counter).inc(amount)
        for name, labels, value in deltas.gauges:
            gauge = self.gauges[name]
            (gauge.labels(*labels) if labels else gauge).set(value)
        for name, observed in deltas.observations:
            self.histograms.add(name, observed)


_BOUNDS = [floatToGoString(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]  # `le` as prometheus_client writes it


class _Histograms(Collector):
    """The catalogue's histograms (none has labels), as counts per bucket: the actors count
    their observations into LATENCY_BUCKETS (Observed), and here the counts are added up.
    Exposed as prometheus_client's Histogram exposes them, cumulative `le` buckets and a sum."""

    def __init__(self, specs: list[MetricSpec]) -> None:
        assert not any(spec.labels for spec in specs), "a histogram with labels needs counts per label set"
        self._specs = specs
        self._lock = threading.Lock()  # scrapes run on the HTTP server's threads
        self._counts = {spec.name: [0] * (len(LATENCY_BUCKETS) + 1) for spec in specs}
        self._sums = dict.fromkeys(self._counts, 0.0)

    def add(self, name: str, observed: Observed) -> None:
        with self._lock:
            counts = self._counts[name]
            for index, count in enumerate(observed.counts):
                counts[index] += count
            self._sums[name] += observed.total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            snapshot = {name: (list(itertools.accumulate(counts)), self._sums[name]) for name, counts in self._counts.items()}
        for spec in self._specs:
            cumulative, total = snapshot[spec.name]
            yield HistogramMetricFamily(spec.name, spec.help, buckets=list(zip(_BOUNDS, cumulative, strict=True)), sum_value=total)


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(registry: CollectorRegistry, status: Status):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - scrapes are not log lines
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                return self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            if path in ("/health", "/ready"):
                ok, body = status.health(time.monotonic()) if path == "/health" else status.readiness()
                return self._reply(200 if ok else 503, json.dumps(body).encode(), "application/json")
            self._reply(404, b'{"error": "not found"}', "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class MetricsActor(Supervised[MetricsSetup]):
    SETUP = MetricsSetup
    TAKES_DATA = True  # the other actors' metric deltas

    def __init__(self) -> None:
        super().__init__()
        self._registry = _Registry()
        self._status = Status()
        self._server: ThreadingHTTPServer | None = None

    def configure(self, previous: MetricsSetup | None) -> None:
        if previous is None:
            memory = self._registry.gauges["k2_service_memory_bytes"]
            memory.set_function(lambda: tree_memory_bytes(*self._status.roots()))
        self._serve(self.setup.bind_address, self.setup.port)

    def metrics_address(self) -> ActorAddress:
        return self.myAddress

    def receiveMsg_MetricDeltas(self, deltas: MetricDeltas, sender: ActorAddress) -> None:
        self._registry.apply(deltas)

    def receiveMsg_ComponentStatus(self, message: ComponentStatus, sender: ActorAddress) -> None:
        self._status.update(message.component, message.ok, message.detail)

    def receiveMsg_CoordinatorAlive(self, message: CoordinatorAlive, sender: ActorAddress) -> None:
        self._status.coordinator_alive(message.pids, time.monotonic())
        for status in message.statuses:
            self.receiveMsg_ComponentStatus(status, sender)
        self._registry.apply(message.deltas)

    def flush_metrics(self) -> None:
        """Its own counters need no message."""
        self._registry.apply(self.metrics.take())

    def on_exit(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, address: str, port: int) -> None:
        if self._server is not None:
            self.send(self.coordinator, MetricsReady(port))
            return
        try:
            server_class = _IPv6HTTPServer if ":" in address else ThreadingHTTPServer
            self._server = server_class((address, port), _handler(self._registry.registry, self._status))
        except OSError as exc:
            self.send(self.coordinator, SetupFailed("metrics", f"cannot listen on {address} port {port}: {exc.strerror}"))
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("metrics, health and readiness on %s port %d", address, port)
        self.send(self.coordinator, MetricsReady(port))
