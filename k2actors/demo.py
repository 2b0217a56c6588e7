"""`demo`: the whole service offline. Local broker, registry double and the Binance, Kraken
and Coinbase simulators, the real pipeline on top, and a line a second of what it delivers
(read from its /metrics)."""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from k2actors.config import Config, Endpoint
from k2actors.core.coinbase import VENUE as COINBASE
from k2actors.core.kraken import VENUE as KRAKEN
from k2actors.net import free_port
from k2actors.service import run


def sample_totals(port: int, topics: tuple[str, ...]) -> dict[str, float]:
    """Received per symbol and venue (`BTCUSD@KRAKEN`: two venues may carry a symbol), trades
    delivered (to `topics`; the raw record's frames are not counted) and DLQ totals from the
    service's own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "k2_binance_messages_received_total":
                name = f"{sample.labels['symbol']}@{sample.labels['exchange']}"
                totals[name] = totals.get(name, 0) + sample.value  # (each stream type of it)
            elif sample.name == "k2_dlq_messages_total" or (
                    sample.name == "k2_kafka_messages_produced_total" and sample.labels["topic"] in topics):
                totals[sample.name] = totals.get(sample.name, 0) + sample.value
    return totals


def _report_every_second(port: int, topics: tuple[str, ...], stop: threading.Event) -> None:
    previous: dict[str, float] = {}
    started = time.monotonic()
    while not stop.wait(1.0):
        try:
            totals = sample_totals(port, topics)
        except OSError:
            continue
        symbols = sorted(name for name in totals if not name.startswith("k2_"))  # every venue's, as its records name them
        rates = "  ".join(f"{s} {totals[s] - previous.get(s, 0):4.0f}/s" for s in symbols)
        print(
            f"[{time.monotonic() - started:5.0f} s]  {rates}  "
            f"delivered {totals.get('k2_kafka_messages_produced_total', 0):.0f}  "
            f"dlq {totals.get('k2_dlq_messages_total', 0):.0f}",
            flush=True,
        )
        previous = totals


def run_demo(config: Config, duration: float | None, rate: float) -> int:
    from k2actors.localstack.broker import TansuBroker
    from k2actors.localstack.coinbase import CoinbaseSimulator
    from k2actors.localstack.kraken import KrakenSimulator
    from k2actors.localstack.registry import SchemaRegistryDouble
    from k2actors.localstack.simulator import ExchangeSimulator

    symbols = config.binance.symbols
    with (TansuBroker() as broker, SchemaRegistryDouble() as registry, ExchangeSimulator(symbols, rate=rate) as exchange,
          KrakenSimulator(config.kraken.symbols, rate=rate) as kraken,
          CoinbaseSimulator(config.coinbase.symbols, rate=rate) as coinbase):
        demo = replace(
            config,
            binance=replace(
                config.binance,
                enabled=True,
                websocket_url=Endpoint(exchange.urls[0], "BINANCE"),
                failover_urls=(Endpoint(exchange.urls[1], "BINANCE"),),
                # exchangeInfo and backfill ask the simulator too: the demo never leaves the machine
                rest_urls={**config.binance.rest_urls, "BINANCE": exchange.rest_url()},
                reconnect_delay_seconds=0.5,
            ),
            kraken=replace(config.kraken, enabled=True, websocket_url=Endpoint(kraken.urls[0], KRAKEN),
                           rest_url=kraken.rest_url(), reconnect_delay_seconds=0.5),
            coinbase=replace(config.coinbase, enabled=True, websocket_url=Endpoint(coinbase.urls[0], COINBASE),
                             rest_url=coinbase.rest_url(), reconnect_delay_seconds=0.5),
            kafka=replace(config.kafka, bootstrap_servers=broker.bootstrap_servers, schema_registry_url=registry.url),
            metrics=replace(config.metrics, port=free_port()),
        )
        print(
            f"k2actors demo: Binance simulator {exchange.urls[0]}, Kraken simulator {kraken.urls[0]} and "
            f"Coinbase simulator {coinbase.urls[0]} "
            f"({rate:g} trades/s per symbol), "
            f"Kafka {broker.bootstrap_servers}, Schema Registry {registry.url}, "
            f"metrics http://127.0.0.1:{demo.metrics.port}/metrics\n"
            f"Topics {demo.kafka.topic}, {demo.kafka.kraken_trade_topic} and {demo.kafka.coinbase_trade_topic}. "
            + (f"Stopping after {duration:g} s." if duration else "Ctrl-C to stop.") + "\n"
            f"Its trades, from another terminal: K2_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers} "
            f"K2_KAFKA_SCHEMA_REGISTRY_URL={registry.url} python -m k2actors tail",
            flush=True,
        )
        stop = threading.Event()
        if duration:
            timer = threading.Timer(duration, stop.set)
            timer.daemon = True
            timer.start()
        reporting = threading.Event()

        def start_reporting() -> None:
            threading.Thread(
                target=_report_every_second, daemon=True,
                args=(demo.metrics.port, (demo.kafka.topic, demo.kafka.kraken_trade_topic, demo.kafka.coinbase_trade_topic),
                      reporting)
            ).start()

        try:
            return run(demo, on_started=start_reporting, stop=stop)
        finally:
            reporting.set()
