"""Fixtures that start the real local stack: Tansu broker, registry double, exchange simulator,
and the service itself as a separate process (`python -m k2actors start`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from k2actors import readback
from k2actors.localstack.broker import TansuBroker
from k2actors.localstack.registry import SchemaRegistryDouble
from k2actors.localstack.simulator import ExchangeSimulator
from k2actors.net import free_port
from k2actors.processes import CpuLimit

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker():
    with TansuBroker() as running:
        yield running


@pytest.fixture(scope="session")
def registry():
    with SchemaRegistryDouble() as running:
        yield running


@pytest.fixture
def simulator(request):
    """Rate 50 per symbol on two mirrors; a test may pass other arguments with indirect parametrize."""
    with ExchangeSimulator(**{"rate": 50, "endpoints": 2, **getattr(request, "param", {})}) as running:
        yield running


@pytest.fixture
def topic(request):
    """A topic name of this test's own, so tests sharing the broker never see each other's records."""
    return "trades." + request.node.name.replace("[", ".").replace("]", "").replace("/", ".")[:100]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def trade_ids(broker, registry, topic: str) -> dict[str, list[int]]:
    """The trade ids in `topic` per symbol, in offset order, decoded through the registry."""
    return readback.trade_ids(broker.bootstrap_servers, registry.url, topic)


def frames_by_connection(broker, registry, topic: str) -> dict[str, list[dict]]:
    """The raw topic's records per conn_id, in the order Kafka holds them."""
    found: dict[str, list[dict]] = defaultdict(list)
    for record in readback.records(broker.bootstrap_servers, registry.url, f"{topic}.raw"):
        found[record["conn_id"]].append(record)
    return found


def every_frame_once(broker, registry, topic: str) -> dict[str, list[dict]]:
    """The raw topic's frames per connection, checked: numbered 1, 2, 3, ... without a break
    or a repeat, in order, each connection of one endpoint."""
    connections = frames_by_connection(broker, registry, topic)
    for conn_id, frames in connections.items():
        numbers = [frame["conn_msg_seq"] for frame in frames]
        assert numbers == list(range(1, len(numbers) + 1)), f"{conn_id}: {numbers[:20]} ..."
        assert len({(frame["endpoint"], frame["exchange"]) for frame in frames}) == 1
        times = [frame["recv_ts_ns"] for frame in frames]
        assert times == sorted(times)
    return connections


@dataclass
class Service:
    """The service running as its own process, as a user runs it."""

    process: subprocess.Popen
    metrics_port: int
    topic: str
    log_path: Path
    env: dict = field(default_factory=dict)
    cpu_limit: CpuLimit | None = None

    def url(self, path: str) -> str:
        bound = self.env.get("K2_METRICS_BIND_ADDRESS", "0.0.0.0")
        return f"http://{'127.0.0.1' if bound == '0.0.0.0' else bound}:{self.metrics_port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url(path))

    def metrics(self) -> dict[str, float]:
        """Samples as {'name{labels}': value}."""
        status, body = self.get("/metrics")
        assert status == 200
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric(self, name: str) -> float:
        """The sum of a metric over all its label sets."""
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))

    def wait_ready(self, timeout: float = 30) -> dict:
        status_body = wait_until(lambda: (s := self.get("/ready"))[0] == 200 and s, timeout, "/ready to answer 200")
        return json.loads(status_body[1])

    def health(self) -> dict:
        return json.loads(self.get("/health")[1] or b"{}")

    def stop(self, timeout: float = 20) -> int:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.stop_seconds = time.monotonic() - started
        return code

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def start_service(broker, registry, simulator, topic, tmp_path):
    """Start `python -m k2actors start` against the local stack; extra env overrides allowed."""
    started: list[Service] = []
    limits: list[CpuLimit] = []

    def start(*, cpus: float | None = None, **overrides: str) -> Service:
        """`cpus`: hold the whole service (every actor process) to that share of one CPU."""
        port = free_port()
        env = {
            **os.environ,
            "K2_BINANCE_WEBSOCKET_URL": simulator.urls[0],
            "K2_BINANCE_FAILOVER_URLS": ",".join(simulator.urls[1:]),
            "K2_BINANCE_RECONNECT_DELAY_SECONDS": "0.2",
            "K2_BINANCE_REST_URLS": f"BINANCE={simulator.rest_url()}",
            "K2_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "K2_KAFKA_SCHEMA_REGISTRY_URL": registry.url,
            "K2_KAFKA_TOPIC": topic,
            "K2_KAFKA_RAW_TOPIC": f"{topic}.raw",
            "K2_RAW_RECEIPTS_DIR": str(tmp_path / "receipts"),  # shared by the test's services, as by one host's
            "K2_METRICS_PORT": str(port),
            "K2_LOG_LEVEL": "INFO",
            **overrides,
        }
        log_path = tmp_path / f"service-{len(started)}.log"
        limit = CpuLimit(cpus, f"k2actors-test-{os.getpid()}-{len(started)}") if cpus else None
        limits.extend([limit] if limit else [])
        process = subprocess.Popen(
            [sys.executable, "-m", "k2actors", "start"], env=env, cwd=REPO,
            stdout=log_path.open("w"), stderr=subprocess.STDOUT, preexec_fn=limit.join if limit else None,
        )
        service = Service(process, port, topic, log_path, env, limit)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()
    for limit in limits:
        limit.remove()
