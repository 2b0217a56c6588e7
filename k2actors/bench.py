"""`bench`: the real pipeline measured against the ceilings of the machine it runs on.

Everything runs here, in one run: the local broker, the registry double, the exchange
simulator, and the service itself as `python -m k2actors start` (the same command, actors
and configuration path as in production, configured through K2_* variables). Phases:

1. ceilings: how fast a bare websocket-client connection receives prepared frames (the
   simulator writes a tape's frames encoded once, so the receiver is what is measured; the
   simulator's own sending rate is reported apart), how fast a bare confluent-kafka producer
   delivers records of the same size, and the bare loop: one process, one thread, websocket-
   client -> parse -> shape -> Avro -> confluent-kafka, every record acknowledged, the honest
   "no actors" reference;
2. maximum load: the simulator replays a tape of consecutive trades as fast as it can, and
   the pipeline's sustained rate (acknowledged by Kafka) is measured over the middle of it;
3. fixed offered rates: CPU per trade, memory, and receive-to-ack, receive-to-produce (the
   pipeline's own share) and exchange-to-ack percentiles from the service's own histograms;
   memory with a quiet market (idle);
4. held to a share of a CPU by a cgroup, as compose's `cpus:` holds it: fixed rates in
   steps, up to the highest the service carries with nothing lost and under 2 s behind;
5. order books: 3 and 100 symbols at a fixed rate, trades alone and trades with the book
   stream, so that the books' own CPU and memory show as the difference;
6. optionally a soak: memory sampled at a fixed rate, and its slope;
7. optionally scaling: maximum load again with 1 to N connections' worth of symbols
   (1,024 trade streams each), with how busy the machine's cores were.

Every phase ends by reading its topic back: a missing or duplicated trade fails the run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import websocket
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client.parser import text_string_to_metric_families
from thespian.actors import Actor, ActorExitRequest, ActorSystem

from k2actors import processes
from k2actors.config import KafkaConfig
from k2actors.core.binance import MAX_STREAMS_PER_CONNECTION, Trade, parse_frame
from k2actors.core.frames import Rejected
from k2actors.core.normalise import Delivery, normalise_trade
from k2actors.localstack.broker import TansuBroker
from k2actors.localstack.registry import SchemaRegistryDouble
from k2actors.localstack.simulator import ExchangeSimulator
from k2actors.net import free_port
from k2actors.outlets import producer_settings, register
from k2actors.processes import CpuLimit
from k2actors.readback import missing_and_duplicates, trade_ids

FIRST_ID = 1_000_000
SAMPLE_SECONDS = 0.5
# Held to a CPU share, a rate holds when this much of it is delivered, this close to the exchange.
HOLDS_DELIVERED_FRACTION = 0.97
HOLDS_BEHIND_SECONDS = 2.0
# Books: at this many trades a second per symbol the simulator's book of each symbol changes
# in every 100 ms, so each sends a diff every 100 ms, as Binance's busiest symbols do.
BOOK_TRADES_PER_SYMBOL = 20.0
BOOK_SYMBOL_COUNTS = (3, 100)
# 100 symbols' snapshots at once within the REST weight budget (5 each, 1,000 a minute).
BOOK_BENCH_SNAPSHOT_LIMIT = 100
# How trades arrive: bunched in the simulator's 10 ms ticks, or spread out in 1 ms ticks, as a
# venue sends a busy market's trades one by one. Spread out, the same rate wakes every process
# more often, so it costs more a trade.
ARRIVAL_TICK_SECONDS = {"bunched": 0.01, "spread": 0.001}
# cryptofeed 3.0.1, the most-used Python feed handler, measured on this machine by the cost
# issue (the same simulator and broker, three symbols, its Kafka backend with acks=all, its
# queue set to block so that it loses nothing): CPU per trade by arrival and offered rate,
# and at maximum load its CPU per trade and rate. The bench's targets are drawn against them.
CRYPTOFEED_MICROSECONDS_PER_TRADE = {("spread", 500.0): 191.0, ("spread", 2000.0): 99.0, ("spread", 8000.0): 52.0,
                                     ("bunched", 500.0): 132.0, ("bunched", 2000.0): 64.0, ("bunched", 8000.0): 57.0}
CRYPTOFEED_MAX_LOAD = (43.0, 22_165.0)  # µs per trade, trades/s
# The cost issue's other targets.
TARGET_IDLE_CORES = 0.01
TARGET_MEMORY_IDLE_MIB = 80
TARGET_MEMORY_MAX_LOAD_MIB = 200
TARGET_LATENCY_RATE, TARGET_RECEIVE_TO_ACK_P99_MS = 1000.0, 20.0
TARGET_HELD_RATES = {"bunched": 10_000.0, "spread": 5_000.0}  # carried at 0.5 CPU


@dataclass(frozen=True)
class Options:
    symbols: int = 3
    rates: tuple[float, ...] = (500.0, 1000.0, 2000.0, 8000.0)  # offered trades per second, all symbols together
    arrivals: tuple[str, ...] = ("bunched", "spread")  # keys of ARRIVAL_TICK_SECONDS
    cpu_limit: float = 0.5  # a share of one CPU, as compose's `cpus:` gives it
    limited_rates: tuple[float, ...] = (2000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0)
    duration: float = 30.0  # seconds of the maximum-load window, and of each latency phase / 2
    mode: str = "failover"
    soak_minutes: float = 0.0
    soak_rate: float = 5000.0
    output: Path = Path("bench-results.json")
    connections: int = 0  # scaling: also run maximum load with 1..connections connections' worth of symbols
    config: str | None = None  # passed to the service, as `start --config` takes it


def symbol_names(count: int) -> tuple[str, ...]:
    return tuple(f"B{i:03d}USDT" for i in range(count))


# --- the tape: consecutive trades, as a combined stream delivers them ---


def tape_frames(symbols: tuple[str, ...], count: int) -> list[str]:
    # Trade times from now on, one per millisecond: the service refuses trades timed
    # implausibly far from their receipt, and a tape is replayed within minutes.
    start_ms = int(time.time() * 1000)
    frames = []
    for n in range(count):
        symbol = symbols[n % len(symbols)]
        trade_id = FIRST_ID + n // len(symbols)
        data = (
            f'{{"e":"trade","E":{start_ms + n},"s":"{symbol}","t":{trade_id},"p":"{40000 + n % 997}.12000000",'
            f'"q":"0.{n % 99999 + 1:08d}","T":{start_ms + n},"m":{"true" if n % 2 else "false"},"M":true}}'
        )
        frames.append(f'{{"stream":"{symbol.lower()}@trade","data":{data}}}')
    return frames


def write_tape(path: Path, frames: list[str]) -> None:
    path.write_text("\n".join(frames) + "\n")


# --- ceilings ---


def websocket_ceiling(url: str, symbol: str, expected: int) -> float:
    """Frames per second a bare websocket-client connection receives, first frame to last,
    from a tape of one symbol's trades."""
    ws = websocket.create_connection(f"{url}?streams={symbol.lower()}@trade", skip_utf8_validation=True)
    try:
        ws.recv_data()
        started, received = time.perf_counter(), 1
        while received < expected:
            ws.recv_data()
            received += 1
        return (received - 1) / (time.perf_counter() - started)
    finally:
        ws.close()


def bare_loop(stack, symbols: tuple[str, ...], count: int, workdir: Path) -> dict:
    """The single-process reference, run in a process of its own so that its CPU time is
    its own (librdkafka's threads included), on the same tape, broker and registry."""
    broker, registry = stack
    topic = "bench.bare-loop"
    tape = workdir / "bare-loop.tape"
    write_tape(tape, tape_frames(symbols, count))
    _create_topic(broker.bootstrap_servers, topic)
    with ExchangeSimulator(symbols, rate=0, endpoints=1, tape=tape) as exchange:
        tape.unlink()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            rate, cpu = pool.apply(_bare_loop_process, (exchange.urls[0], symbols, count, broker.bootstrap_servers,
                                                        registry.url, topic))
    expected = {s: (FIRST_ID, FIRST_ID + count // len(symbols) - 1) for s in symbols}
    check = loss_and_duplicates(broker.bootstrap_servers, registry.url, topic, expected)
    return {"rate": rate, "trades": count, "cpu_microseconds_per_trade": cpu / count * 1e6, **check}


def _bare_loop_process(url: str, symbols: tuple[str, ...], count: int, bootstrap: str, registry_url: str,
                       topic: str) -> tuple[float, float]:
    """(trades per second from the first frame to the last acknowledgement, CPU seconds)."""
    kafka = KafkaConfig(bootstrap_servers=bootstrap, schema_registry_url=registry_url, topic=topic)
    write = register(SchemaRegistryClient({"url": registry_url}), topic, "trade")  # as the service writes
    producer = Producer(producer_settings(kafka))
    acknowledged = 0

    def on_delivery(error, message):
        nonlocal acknowledged
        acknowledged += error is None

    streams = "/".join(f"{symbol.lower()}@trade" for symbol in symbols)
    ws = websocket.create_connection(f"{url}?streams={streams}", skip_utf8_validation=True)
    cpu_start = _cpu_seconds_of_this_process()
    started = 0.0
    for n in range(count):
        raw = ws.recv_data()[1]
        if n == 0:
            started = time.perf_counter()
        trade = parse_frame(raw, 65536)
        assert isinstance(trade, Trade), trade  # the tape is made of trades
        record = normalise_trade(trade, Delivery("BINANCE", url, time.time_ns() // 1000), {})
        assert not isinstance(record, Rejected), record
        _produce(producer, topic, record["symbol"].encode(), write(record), on_delivery)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds_of_this_process() - cpu_start
    ws.close()
    if acknowledged != count:
        raise BenchFailure(f"the bare loop had {acknowledged} of {count} records acknowledged")
    return count / elapsed, cpu


class EchoActor(Actor):
    """Answers each message with itself, and "cpu" with its process's CPU time so far."""

    def receiveMessage(self, message, sender):
        if message == "cpu":
            self.send(sender, _cpu_seconds_of_this_process())
        elif not isinstance(message, ActorExitRequest):
            self.send(sender, message)


def thespian_message_cost(round_trips: int = 2000) -> float:
    """CPU microseconds an actor process spends to take one small message and send one, on
    multiprocTCPBase with this package's transport change: what every hop between the
    pipeline's actors costs each side, whatever the batch carries."""
    import k2actors.thespian_transport  # noqa: F401 - as every actor process has it

    system = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()})
    try:
        echo = system.createActor(EchoActor)
        before = system.ask(echo, "cpu", 10)
        for _ in range(round_trips):
            system.ask(echo, b"x" * 250, 10)
        after = system.ask(echo, "cpu", 10)
    finally:
        system.shutdown()
    return (after - before) / round_trips * 1e6


def _cpu_seconds_of_this_process() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def producer_ceiling(broker: str, registry_url: str, frames: list[str], topic: str) -> float:
    """Records per second a bare producer delivers, same settings and record size as the service."""
    kafka = KafkaConfig(bootstrap_servers=broker, schema_registry_url=registry_url, topic=topic)
    write = register(SchemaRegistryClient({"url": registry_url}), topic, "trade")
    delivery = Delivery("BINANCE", "ws://bench", time.time_ns() // 1000)
    values = []
    for raw in frames:
        trade = parse_frame(raw, 65536)
        assert isinstance(trade, Trade), trade  # the tape is made of trades
        record = normalise_trade(trade, delivery, {})
        assert not isinstance(record, Rejected), record
        values.append((record["symbol"].encode(), write(record)))
    _create_topic(broker, topic)
    producer = Producer(producer_settings(kafka))
    acknowledged = 0

    def on_delivery(error, message):
        nonlocal acknowledged
        acknowledged += error is None

    started = time.perf_counter()
    for key, value in values:
        _produce(producer, topic, key, value, on_delivery)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    if acknowledged != len(values):
        raise BenchFailure(f"the bare producer delivered {acknowledged} of {len(values)} records")
    return acknowledged / elapsed


def _produce(producer: Producer, topic: str, key: bytes, value: bytes | None, on_delivery) -> None:
    """One record, waiting while librdkafka's queue is full; delivery reports served as it goes."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.005)
    producer.poll(0)


def _create_topic(broker: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(topic, num_partitions=3)]).values():
        future.result(timeout=10)


# --- the service, as a user runs it ---


class BenchFailure(Exception):
    pass


class ServiceProcess:
    def __init__(self, env: dict[str, str], log_path: Path, config: str | None, limit: CpuLimit | None = None):
        self.port = int(env["K2_METRICS_PORT"])
        self._log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "k2actors", "start", *(["--config", config] if config else [])], env={**os.environ, **env},
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=limit.join if limit else None,
        )

    def samples(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return flat_samples(response.read().decode())

    def total(self, name: str) -> float:
        return sum(v for k, v in self.samples().items() if k.startswith(name + "{"))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchFailure(f"the service exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise BenchFailure(f"the service was not ready within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
            actors = json.load(response)["actors"]
        return processes.tree_cpu_seconds(self.process.pid, actors["actor_system"])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self._log.close()
        if code != 0:
            last_lines = "\n".join(self._log_path.read_text().splitlines()[-15:])
            raise BenchFailure(f"the service stopped with status {code}; the end of its log:\n{last_lines}")


def service_env(broker: str, registry: str, url: str, symbols: tuple[str, ...], topic: str, mode: str,
                failover_urls: list[str], raw: bool = True) -> dict[str, str]:
    return {
        "K2_BINANCE_WEBSOCKET_URL": url,
        "K2_BINANCE_FAILOVER_URLS": ",".join(failover_urls),
        "K2_BINANCE_SYMBOLS": ",".join(symbols),
        "K2_BINANCE_MODE": mode,
        "K2_BINANCE_REST_URLS": "BINANCE=http://127.0.0.1:1",  # no exchangeInfo needed: every quote is USDT
        "K2_KAFKA_BOOTSTRAP_SERVERS": broker,
        "K2_KAFKA_SCHEMA_REGISTRY_URL": registry,
        "K2_KAFKA_TOPIC": topic,
        "K2_KAFKA_RAW_TOPIC": f"{topic}.raw",
        "K2_RAW_ENABLED": "true" if raw else "false",
        "K2_METRICS_PORT": str(free_port()),
        "K2_LOG_LEVEL": "WARNING",
    }


# --- reading Kafka back ---


def loss_and_duplicates(broker: str, registry: str, topic: str, expected: dict[str, tuple[int, int]] | None) -> dict:
    """Per topic: records read back, trades missing and duplicated (see readback)."""
    try:
        ids = trade_ids(broker, registry, topic, timeout=120)
    except TimeoutError as exc:
        raise BenchFailure(str(exc)) from None
    missing, duplicates = missing_and_duplicates(ids, expected)
    return {"records": sum(map(len, ids.values())), "missing": missing, "duplicates": duplicates}


# --- percentiles from a Prometheus histogram ---


def flat_samples(text: str) -> dict[str, float]:
    """Every sample of a /metrics page, as {'name{label=value,...}': value}, labels sorted."""
    flat = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            flat[f"{sample.name}{{{labels}}}"] = sample.value
    return flat


def histogram(samples: dict[str, float], name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs, ascending; the series of every label set (each
    exchange's) added up."""
    counts: dict[float, float] = {}
    for key, value in samples.items():
        if key.startswith(f"{name}_bucket{{"):
            bound = float(key.split("le=", 1)[1].split(",", 1)[0].rstrip("}"))
            counts[bound] = counts.get(bound, 0) + value
    return sorted(counts.items())


def percentile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of what was observed between two scrapes, interpolated in its bucket."""
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before or [(bound, 0) for bound, _ in after], strict=False)]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


# --- the phases ---


def start_service(stack, exchange: ExchangeSimulator, options: Options, symbols: tuple[str, ...], topic: str,
                  log_path: Path, limit: CpuLimit | None = None, raw: bool = True, books: bool = False) -> ServiceProcess:
    """`books`: the book stream beside trades, its snapshots from the simulator's REST."""
    broker, registry = stack
    env = service_env(broker.bootstrap_servers, registry.url, exchange.urls[0], symbols, topic, options.mode,
                      exchange.urls[1:], raw)
    if books:
        env.update({"K2_BINANCE_STREAMS": "trade,book", "K2_KAFKA_BOOK_TOPIC": f"{topic}.books",
                    "K2_BINANCE_REST_URLS": f"BINANCE={exchange.rest_url()}",
                    "K2_BINANCE_BOOK_SNAPSHOT_LIMIT": str(BOOK_BENCH_SNAPSHOT_LIMIT)})
    return ServiceProcess(env, log_path, options.config, limit)


def machine_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        times = [int(n) for n in stat.readline().split()[1:]]
    idle = times[3] + times[4]  # idle and iowait
    return sum(times) - idle, sum(times)


def max_load(stack, options: Options, symbols: tuple[str, ...], ceiling: float, workdir: Path,
             name: str = "max-load", raw: bool = True) -> dict:
    """`raw`: the raw record on (every frame archived too, as the service runs by default)."""
    broker, registry = stack
    count = int(ceiling * options.duration * 1.25) // len(symbols) * len(symbols)
    tape = workdir / f"{name}.tape"
    write_tape(tape, tape_frames(symbols, count))
    topic = f"bench.{name}"
    with ExchangeSimulator(symbols, rate=0, endpoints=2, tape=tape) as exchange:
        tape.unlink()  # loaded; a tape is hundreds of megabytes, the log is what to keep
        service = start_service(stack, exchange, options, symbols, topic, workdir / f"{name}.log", raw=raw)
        try:
            service.wait_ready()
            memory_start = service.total("k2_service_memory_bytes")
            cpu_start = service.cpu_seconds()
            trace = []  # (time, acknowledged, machine CPU jiffies)
            deadline = time.monotonic() + options.duration * 10 + 60
            while time.monotonic() < deadline:
                produced = trades_produced(service.samples(), topic)
                trace.append((time.monotonic(), produced, machine_cpu_jiffies()))
                if produced >= count:
                    break
                time.sleep(SAMPLE_SECONDS)
            cpu = service.cpu_seconds() - cpu_start
            memory_end = service.total("k2_service_memory_bytes")
            reported_missing = service.total("k2_binance_missing_trades_total")
        finally:
            service.stop()
    window = [(t, n, jiffies) for t, n, jiffies in trace if 0.05 * count <= n <= 0.95 * count]
    if len(window) < 2:
        raise BenchFailure(f"the {name} phase produced too few samples to measure a rate")
    (t0, n0, (busy0, total0)), (t1, n1, (busy1, total1)) = window[0], window[-1]
    expected = {s: (FIRST_ID, FIRST_ID + count // len(symbols) - 1) for s in symbols}
    check = loss_and_duplicates(broker.bootstrap_servers, registry.url, topic, expected)
    return {
        "trades": count,
        "window_seconds": round(t1 - t0, 1),
        "rate": (n1 - n0) / (t1 - t0),
        "symbols": len(symbols),
        "connections": -(-len(symbols) // MAX_STREAMS_PER_CONNECTION),
        "machine_cpu_busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else None,
        "memory_start_bytes": memory_start,
        "memory_end_bytes": memory_end,
        "cpu_microseconds_per_trade": cpu / count * 1e6,
        "reported_missing": reported_missing,
        "raw": raw,
        **check,
    }


def fixed_rate(stack, options: Options, symbols: tuple[str, ...], rate: float, seconds: float, workdir: Path,
               name: str, memory_every: float | None = None, cpus: float | None = None, raw: bool = True,
               books: bool = False, arrival: str = "bunched") -> dict:
    """`cpus`: the whole service held to that share of one CPU by a cgroup; `raw`: the raw record on;
    `books`: the book stream too (measured once every book is in sync); `arrival`: a key of
    ARRIVAL_TICK_SECONDS."""
    broker, registry = stack
    topic = f"bench.{name}"
    limit = CpuLimit(cpus, f"k2actors-bench-{os.getpid()}-{name}") if cpus else None
    try:
        with ExchangeSimulator(symbols, rate=rate / len(symbols), endpoints=2, tick=ARRIVAL_TICK_SECONDS[arrival]) as exchange:
            service = start_service(stack, exchange, options, symbols, topic, workdir / f"{name}.log", limit, raw, books)
            try:
                service.wait_ready()
                if books:
                    wait_books_in_sync(service, len(symbols))
                time.sleep(2)  # past connection and warm-up
                before, cpu_before = service.samples(), service.cpu_seconds()
                memory = []
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    time.sleep(memory_every or SAMPLE_SECONDS)
                    if memory_every:
                        memory.append((time.monotonic() - started, service.total("k2_service_memory_bytes")))
                after, cpu_after = service.samples(), service.cpu_seconds()
                exchange.set_rate(0)
                _wait_drained(service, topic)
                reported_missing = service.total("k2_binance_missing_trades_total")
            finally:
                service.stop()
    finally:
        if limit is not None:
            limit.remove()
    delivered = trades_produced(after, topic) - trades_produced(before, topic)
    result: dict[str, object] = {
        "offered_rate": rate,
        "arrival": arrival,
        "raw": raw,
        "delivered_rate": delivered / seconds,
        "cpu_microseconds_per_trade": (cpu_after - cpu_before) / delivered * 1e6 if delivered else None,
        "cores": (cpu_after - cpu_before) / seconds,
        "memory_bytes": _sum(after, "k2_service_memory_bytes"),
        "reported_missing": reported_missing,
        "book_records_rate": (trades_produced(after, f"{topic}.books") - trades_produced(before, f"{topic}.books")) / seconds,
    }
    for metric, label in (("k2_trade_receive_to_ack_seconds", "receive_to_ack"),
                          ("k2_trade_receive_to_produce_seconds", "receive_to_produce"),
                          ("k2_trade_exchange_to_ack_seconds", "exchange_to_ack")):
        b, a = histogram(before, metric), histogram(after, metric)
        for q, suffix in ((0.5, "p50"), (0.99, "p99"), (0.999, "p99_9")):
            value = percentile(b, a, q)
            result[f"{label}_{suffix}_ms"] = None if value is None else value * 1000
    if memory:
        result["memory_samples"] = memory
        result["memory_end_bytes"] = memory[-1][1]
        result["memory_slope_bytes_per_minute"] = _slope(memory) * 60
        # Warm-up growth (allocator arenas, client buffers) is front-loaded; a leak keeps going.
        result["memory_slope_second_half_bytes_per_minute"] = _slope(memory[len(memory) // 2 :]) * 60
    result.update(loss_and_duplicates(broker.bootstrap_servers, registry.url, topic, None))
    return result


def wait_books_in_sync(service: ServiceProcess, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while service.total("k2_book_in_sync") < count:
        if time.monotonic() > deadline:
            raise BenchFailure(f"{service.total('k2_book_in_sync'):.0f} of {count} books in sync after {timeout:.0f} s")
        time.sleep(SAMPLE_SECONDS)


def books(stack, options: Options, seconds: float, workdir: Path) -> list[dict]:
    """What order books cost: for each count of symbols, the same offered trades alone and with
    the book stream (every book in sync first); the books' share is the difference."""
    phases = []
    for count in BOOK_SYMBOL_COUNTS:
        symbols = symbol_names(count)
        for with_books in (False, True):
            phase = fixed_rate(stack, options, symbols, BOOK_TRADES_PER_SYMBOL * count, seconds, workdir,
                               f"books-{count}-{'on' if with_books else 'off'}", books=with_books)
            phases.append({"symbols": count, "books": with_books, **phase})
    return phases


def _wait_drained(service: ServiceProcess, topic: str, timeout: float = 120) -> None:
    """With the market quiet, until every trade received is in Kafka: a phase that offered
    more than the service carries ends with an orderly stop, not a stop with a backlog."""
    deadline, previous = time.monotonic() + timeout, -1.0
    while time.monotonic() < deadline:
        samples = service.samples()
        received = _sum(samples, "k2_binance_messages_received_total", "stream=trade")
        unique = received - _sum(samples, "k2_binance_duplicate_trades_total", "stream=trade")
        produced = trades_produced(samples, topic)
        if received == previous and produced >= unique and not _sum(samples, "k2_buffered_records"):
            return
        previous = received
        time.sleep(SAMPLE_SECONDS)
    raise BenchFailure(f"the service had not delivered what it received {timeout:.0f} s after the market went quiet")


def cpu_limited(stack, options: Options, symbols: tuple[str, ...], seconds: float, workdir: Path, arrival: str) -> dict:
    """Held to options.cpu_limit of a CPU: the offered rates in turn, until one does not hold
    (less than HOLDS_DELIVERED_FRACTION of it delivered, p99 exchange-to-ack past
    HOLDS_BEHIND_SECONDS, or a trade lost)."""
    steps = []
    for rate in options.limited_rates:
        phase = fixed_rate(stack, options, symbols, rate, seconds, workdir, f"limited-{arrival}-{rate:.0f}",
                           cpus=options.cpu_limit, arrival=arrival)
        behind = phase["exchange_to_ack_p99_ms"]
        phase["holds"] = (phase["delivered_rate"] >= HOLDS_DELIVERED_FRACTION * rate and behind is not None
                          and behind < HOLDS_BEHIND_SECONDS * 1000 and not phase["missing"] and not phase["duplicates"])
        steps.append(phase)
        if not phase["holds"]:
            break
    held = [step["offered_rate"] for step in steps if step["holds"]]
    return {"cpus": options.cpu_limit, "arrival": arrival, "highest_rate_held": max(held, default=0.0), "steps": steps}


def trades_produced(samples: dict[str, float], topic: str) -> float:
    """Records Kafka acknowledged on the trade topic (not the raw topic's, nor dead letters)."""
    return samples.get(f"k2_kafka_messages_produced_total{{topic={topic}}}", 0.0)


def _sum(samples: dict[str, float], name: str, label: str = "") -> float:
    """The metric over its label sets (those with `label`, `name=value`, when given)."""
    return sum(v for k, v in samples.items() if k.startswith(name + "{") and label in k)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def run_bench(options: Options) -> int:
    try:
        return _run(options)
    except BenchFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1


def _run(options: Options) -> int:
    symbols = symbol_names(options.symbols)
    results: dict = {"options": {**options.__dict__, "output": str(options.output)}, "machine": {"cpus": os.cpu_count()}}
    workdir = Path(tempfile.mkdtemp(prefix="k2actors-bench-"))
    print(f"service logs in {workdir}", flush=True)
    results["thespian_message_cpu_microseconds"] = message_cost = thespian_message_cost()
    print(f"a Thespian message costs its receiver, which answers it, {message_cost:.0f} µs of CPU", flush=True)
    with TansuBroker() as broker, SchemaRegistryDouble() as registry:
        stack = (broker, registry)
        probe = tape_frames(symbols[:1], 100_000)
        write_tape(workdir / "ceiling.tape", probe)
        with ExchangeSimulator(symbols[:1], rate=0, endpoints=1, tape=workdir / "ceiling.tape") as exchange:
            ws_ceiling = websocket_ceiling(exchange.urls[0], symbols[0], len(probe))
            frames, sending_seconds = exchange.replays[0]
        (workdir / "ceiling.tape").unlink()
        kafka_ceiling = producer_ceiling(broker.bootstrap_servers, registry.url,
                                         tape_frames(symbols, 20_000 // len(symbols) * len(symbols)), "bench.ceiling")
        # About a quarter of --duration at the bare loop's usual 20,000 trades/s here.
        bare_trades = max(int(5_000 * options.duration), 20_000) // len(symbols) * len(symbols)
        bare = bare_loop(stack, symbols, bare_trades, workdir)
        results["ceilings"] = {"websocket_receive_rate": ws_ceiling, "simulator_sending_rate": frames / sending_seconds,
                               "producer_delivery_rate": kafka_ceiling, "bare_loop": bare}
        print(f"ceilings: websocket receive {ws_ceiling:,.0f}/s (the simulator sends {frames / sending_seconds:,.0f}/s), "
              f"producer delivery {kafka_ceiling:,.0f}/s, bare loop {bare['rate']:,.0f}/s at "
              f"{bare['cpu_microseconds_per_trade']:.0f} µs per trade", flush=True)

        for raw in (True, False):
            load = max_load(stack, options, symbols, bare["rate"], workdir, "max-load" if raw else "max-load-raw-off", raw)
            load["fraction_of_websocket_ceiling"] = load["rate"] / ws_ceiling
            load["fraction_of_bare_loop"] = load["rate"] / bare["rate"]
            results["max_load" if raw else "max_load_raw_off"] = load
            print(f"maximum load, raw record {'on' if raw else 'off'}: {load['rate']:,.0f}/s sustained over "
                  f"{load['window_seconds']} s, {load['cpu_microseconds_per_trade']:.0f} µs per trade", flush=True)

        results["idle"] = fixed_rate(stack, options, symbols, float(len(symbols)), 10, workdir, "idle")
        print(f"idle (1 trade/s per symbol): {results['idle']['cores']:.3f} core, "
              f"{results['idle']['memory_bytes'] / 2**20:.0f} MiB", flush=True)
        results["fixed_rates"] = []
        for arrival in options.arrivals:
            for rate in options.rates:
                for raw in (True, False):
                    phase = fixed_rate(stack, options, symbols, rate, max(options.duration / 2, 5), workdir,
                                       f"rate-{arrival}-{rate:.0f}" + ("" if raw else "-raw-off"), raw=raw, arrival=arrival)
                    results["fixed_rates"].append(phase)
                    print(f"at {rate:,.0f}/s {arrival}, raw record {'on' if raw else 'off'}: "
                          f"{_us(phase['cpu_microseconds_per_trade'])} per trade, p99 receive to ack "
                          f"{_ms(phase['receive_to_ack_p99_ms'])}", flush=True)
        if CpuLimit.available():
            results["cpu_limited"] = []
            for arrival in options.arrivals:
                limited = cpu_limited(stack, options, symbols, max(options.duration / 2, 5), workdir, arrival)
                results["cpu_limited"].append(limited)
                print(f"held to {options.cpu_limit:g} CPU, trades {arrival}: carries {limited['highest_rate_held']:,.0f}/s",
                      flush=True)
        else:
            print("held to a CPU share: skipped, no writable cgroup here (root on Linux is needed)", flush=True)
        results["books"] = books(stack, options, max(options.duration / 2, 5), workdir)
        for off, on in zip(results["books"][::2], results["books"][1::2], strict=True):
            print(f"books, {on['symbols']} symbols: {off['cores']:.3f} cores without, {on['cores']:.3f} with; "
                  f"{_mib(off['memory_bytes'])} without, {_mib(on['memory_bytes'])} with", flush=True)
        if options.soak_minutes:
            results["soak"] = fixed_rate(stack, options, symbols, options.soak_rate, options.soak_minutes * 60, workdir,
                                         "soak", memory_every=10.0)
        results["scaling"] = []
        for connections in range(1, options.connections + 1):
            many = symbol_names(connections * MAX_STREAMS_PER_CONNECTION)
            phase = max_load(stack, options, many, bare["rate"], workdir, f"max-load-{connections}-connections")
            results["scaling"].append(phase)
            print(f"{connections} connection(s), {len(many)} symbols: {phase['rate']:,.0f}/s, "
                  f"machine CPU {phase['machine_cpu_busy']:.0%} busy", flush=True)
    options.output.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"figures written to {options.output}")
    bad = [p for p in _phases(results) if p["missing"] or p["duplicates"] or p.get("reported_missing")]
    if bad:
        print(f"FAILED: trades lost or duplicated in {len(bad)} phase(s): "
              + "; ".join(f"missing {p['missing']}, duplicates {p['duplicates']}" for p in bad), file=sys.stderr)
        return 1
    return 0


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} µs"


def _mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def format_table(results: dict) -> str:
    ceilings, load, bare = results["ceilings"], results["max_load"], results["ceilings"]["bare_loop"]
    off = results["max_load_raw_off"]
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| websocket receive ceiling (bare websocket-client, prepared frames) | {ceilings['websocket_receive_rate']:,.0f} frames/s |",
        f"| ... the simulator's own sending rate (prepared frames) | {ceilings['simulator_sending_rate']:,.0f} frames/s |",
        f"| producer delivery ceiling (bare confluent-kafka) | {ceilings['producer_delivery_rate']:,.0f} records/s |",
        f"| CPU of an actor taking one small Thespian message and sending one (multiprocTCPBase) | "
        f"{_us(results['thespian_message_cpu_microseconds'])} |",
        f"| bare loop, one process (websocket-client, parse, shape, Avro, confluent-kafka): rate, CPU per trade | "
        f"{bare['rate']:,.0f} trades/s, {_us(bare['cpu_microseconds_per_trade'])} |",
        f"| pipeline sustained rate, maximum load ({load['window_seconds']} s window) | {load['rate']:,.0f} trades/s |",
        f"| ... as a fraction of the bare loop / of the websocket ceiling | {load['fraction_of_bare_loop']:.0%} / "
        f"{load['fraction_of_websocket_ceiling']:.0%} |",
        f"| CPU time per trade at maximum load (whole service) | {_us(load['cpu_microseconds_per_trade'])} |",
        f"| ... with the raw record off: sustained rate, CPU per trade, memory at the end | {off['rate']:,.0f} trades/s, "
        f"{_us(off['cpu_microseconds_per_trade'])}, {_mib(off['memory_end_bytes'])} |",
        f"| machine's CPU busy during maximum load (service, simulator, broker) | {load['machine_cpu_busy']:.0%} |",
        f"| memory of the whole service (PSS): idle / start / end of maximum load | {_mib(results['idle']['memory_bytes'])} / "
        f"{_mib(load['memory_start_bytes'])} / {_mib(load['memory_end_bytes'])} |",
        f"| idle (1 trade a second per symbol): cores | {results['idle']['cores']:.3f} |",
    ]
    for phase in results["fixed_rates"]:
        rate = f"{phase['offered_rate']:,.0f}/s {phase['arrival']}, raw record {'on' if phase['raw'] else 'off'}"
        lines += [
            f"| at {rate}: CPU per trade, cores, memory | {_us(phase['cpu_microseconds_per_trade'])}, "
            f"{phase['cores']:.2f}, {_mib(phase['memory_bytes'])} |",
            f"| at {rate}: receive to ack p50 / p99 / p99.9 | {_ms(phase['receive_to_ack_p50_ms'])} / "
            f"{_ms(phase['receive_to_ack_p99_ms'])} / {_ms(phase['receive_to_ack_p99_9_ms'])} |",
            f"| at {rate}: receive to produce (the pipeline's share) p50 / p99 | {_ms(phase['receive_to_produce_p50_ms'])} / "
            f"{_ms(phase['receive_to_produce_p99_ms'])} |",
            f"| at {rate}: exchange to ack p50 / p99 / p99.9 | {_ms(phase['exchange_to_ack_p50_ms'])} / "
            f"{_ms(phase['exchange_to_ack_p99_ms'])} / {_ms(phase['exchange_to_ack_p99_9_ms'])} |",
        ]
    for limited in results.get("cpu_limited", []):
        steps = ", ".join(f"{s['offered_rate']:,.0f}/s {'holds' if s['holds'] else 'does not hold'} "
                          f"({s['delivered_rate']:,.0f}/s delivered, p99 {_ms(s['exchange_to_ack_p99_ms'])} behind)"
                          for s in limited["steps"])
        lines.append(f"| held to {limited['cpus']:g} CPU, trades {limited['arrival']}: highest rate carried (zero loss, "
                     f"< {HOLDS_BEHIND_SECONDS:g} s behind) | {limited['highest_rate_held']:,.0f} trades/s: {steps} |")
    for off, on in zip(results["books"][::2], results["books"][1::2], strict=True):
        lines.append(f"| order books, {on['symbols']} symbols at {on['offered_rate']:,.0f} trades/s (a diff every 100 ms each, a "
                     f"record a second each): cores and memory, trades alone / with books | {off['cores']:.3f} / "
                     f"{on['cores']:.3f} cores, {_mib(off['memory_bytes'])} / {_mib(on['memory_bytes'])}; "
                     f"{on['book_records_rate']:,.1f} book records/s |")
    if "soak" in results:
        soak = results["soak"]
        lines.append(f"| soak at {soak['offered_rate']:,.0f}/s: memory at end; slope, whole soak / second half | "
                     f"{soak['memory_end_bytes'] / 2**20:.0f} MiB; {soak['memory_slope_bytes_per_minute'] / 2**20:+.2f} / "
                     f"{soak['memory_slope_second_half_bytes_per_minute'] / 2**20:+.2f} MiB/min |")
    for phase in results["scaling"]:
        lines.append(f"| maximum load, {phase['connections']} connection(s) ({phase['symbols']:,} symbols): "
                     f"rate, machine CPU busy | {phase['rate']:,.0f} trades/s, {phase['machine_cpu_busy']:.0%} |")
    phases = _phases(results)
    lines.append(f"| trades missing / duplicated (all phases) | {sum(p['missing'] for p in phases)} / "
                 f"{sum(p['duplicates'] for p in phases)} |")
    return "\n".join(lines) + "\n\n" + format_targets(results)


def format_targets(results: dict) -> str:
    """The cost issue's targets against this run's figures: CPU per trade with the raw record
    off against cryptofeed's (twice its figure at 500/s, its figure above), then the rest."""
    lines = ["| target | this run | |", "|---|---|---|"]

    def row(target: str, figure: str, met: bool) -> None:
        lines.append(f"| {target} | {figure} | {'met' if met else 'not met'} |")

    for phase in results["fixed_rates"]:
        reference = CRYPTOFEED_MICROSECONDS_PER_TRADE.get((phase["arrival"], phase["offered_rate"]))
        ours = phase["cpu_microseconds_per_trade"]
        if phase["raw"] or reference is None or ours is None:
            continue
        bound = reference * (2 if phase["offered_rate"] < 1000 else 1)
        on = next((p["cpu_microseconds_per_trade"] for p in results["fixed_rates"] if p["raw"]
                   and (p["arrival"], p["offered_rate"]) == (phase["arrival"], phase["offered_rate"])), None)
        row(f"CPU per trade at {phase['offered_rate']:,.0f}/s {phase['arrival']} <= {bound:.0f} µs "
            f"(cryptofeed {reference:.0f} µs)", f"{ours:.0f} µs raw off ({_us(on)} raw on)", ours <= bound)
    off, on_load = results["max_load_raw_off"], results["max_load"]
    microseconds, rate = CRYPTOFEED_MAX_LOAD
    row(f"maximum load <= {microseconds:.0f} µs a trade and >= {rate:,.0f} trades/s (cryptofeed's)",
        f"{off['cpu_microseconds_per_trade']:.0f} µs, {off['rate']:,.0f}/s raw off "
        f"({_us(on_load['cpu_microseconds_per_trade'])}, {on_load['rate']:,.0f}/s raw on)",
        off["cpu_microseconds_per_trade"] <= microseconds and off["rate"] >= rate)
    for limited in results.get("cpu_limited", []):
        wanted = TARGET_HELD_RATES.get(limited["arrival"])
        if wanted is not None:
            row(f"held to {limited['cpus']:g} CPU, trades {limited['arrival']}: >= {wanted:,.0f}/s carried",
                f"{limited['highest_rate_held']:,.0f}/s", limited["highest_rate_held"] >= wanted)
    idle = results["idle"]
    row(f"idle <= {TARGET_IDLE_CORES:g} core", f"{idle['cores']:.3f} core", idle["cores"] <= TARGET_IDLE_CORES)
    row(f"memory (PSS) idle <= {TARGET_MEMORY_IDLE_MIB} MiB", _mib(idle["memory_bytes"]),
        idle["memory_bytes"] <= TARGET_MEMORY_IDLE_MIB * 2**20)
    peak = max(on_load["memory_end_bytes"], off["memory_end_bytes"])
    row(f"memory (PSS) at maximum load <= {TARGET_MEMORY_MAX_LOAD_MIB} MiB", _mib(peak), peak <= TARGET_MEMORY_MAX_LOAD_MIB * 2**20)
    for phase in results["fixed_rates"]:
        p99 = phase["receive_to_ack_p99_ms"]
        if phase["offered_rate"] == TARGET_LATENCY_RATE and p99 is not None:
            row(f"receive to ack p99 at {TARGET_LATENCY_RATE:,.0f}/s {phase['arrival']}, raw record "
                f"{'on' if phase['raw'] else 'off'} <= {TARGET_RECEIVE_TO_ACK_P99_MS:g} ms", _ms(p99),
                p99 <= TARGET_RECEIVE_TO_ACK_P99_MS)
    return "\n".join(lines)


def _phases(results: dict) -> list[dict]:
    return [results["ceilings"]["bare_loop"], results["max_load"], results["max_load_raw_off"], results["idle"],
            *results["fixed_rates"], *results["books"],
            *(step for limited in results.get("cpu_limited", []) for step in limited["steps"]),
            *([results["soak"]] if "soak" in results else []),
            *results["scaling"]]
