"""How long cluster mode's take-overs take.

`python benchmarks/cluster.py [--session-timeout S]`: a local broker, registry and
simulator, and instances of the service in cluster mode as a user starts them. It times a
second instance joining, a planned stop (SIGTERM) of one of two, and the loss of one of two
(SIGKILL of every process at once), each until the survivors own every shard, then reads
the topic back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

from k2actors import processes
from k2actors.localstack.broker import TansuBroker
from k2actors.localstack.registry import SchemaRegistryDouble
from k2actors.localstack.simulator import ExchangeSimulator
from k2actors.net import free_port
from k2actors.readback import missing_and_duplicates, trade_ids

TOPIC = "market.crypto.trades.binance"
SHARDS = {0, 1, 2}  # the simulator's three symbols


class Instance:
    def __init__(self, environment: dict[str, str], log_dir: str, name: str):
        self.port = free_port()
        log = open(os.path.join(log_dir, f"{name}.log"), "w")  # noqa: SIM115 - the process writes it until it ends
        self.process = subprocess.Popen([sys.executable, "-m", "k2actors", "start"],
                                        env={**environment, "K2_METRICS_PORT": str(self.port)}, stdout=log,
                                        stderr=subprocess.STDOUT)

    def get(self, path: str) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return ""

    def owned(self) -> set[int]:
        return {int(line.split('"')[1]) for line in self.get("/metrics").splitlines()
                if line.startswith("k2_cluster_shard_owned{") and line.endswith(" 1.0")}

    def all_processes(self) -> set[int]:
        roots = (self.process.pid, json.loads(self.get("/health"))["actors"]["actor_system"])
        return processes.trees(roots, processes.process_table())


def seconds_until(condition: Callable[[], bool], timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session-timeout", type=float, default=10.0, help="cluster.session_timeout_seconds")
    session_timeout = parser.parse_args().session_timeout
    with TansuBroker() as broker, SchemaRegistryDouble() as registry, ExchangeSimulator(rate=50, endpoints=2) as simulator, \
            tempfile.TemporaryDirectory() as log_dir:
        environment = {
            **os.environ,
            "K2_BINANCE_WEBSOCKET_URL": simulator.urls[0], "K2_BINANCE_FAILOVER_URLS": simulator.urls[1],
            "K2_BINANCE_REST_URLS": f"BINANCE={simulator.rest_url()}",
            "K2_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "K2_KAFKA_SCHEMA_REGISTRY_URL": registry.url,
            "K2_CLUSTER_ENABLED": "true", "K2_CLUSTER_SESSION_TIMEOUT_SECONDS": str(session_timeout),
        }
        first = Instance(environment, log_dir, "first")
        print(f"first instance owns every shard {seconds_until(lambda: first.owned() == SHARDS):.1f} s after its start")

        def shared(other: Instance) -> bool:
            mine, theirs = first.owned(), other.owned()
            return bool(mine) and bool(theirs) and mine | theirs == SHARDS and not mine & theirs

        second = Instance(environment, log_dir, "second")
        print(f"a second instance joins: the shards are split {seconds_until(lambda: shared(second)):.1f} s after its start")
        time.sleep(5)
        second.process.send_signal(signal.SIGTERM)
        print(f"SIGTERM of the second: the first owns every shard {seconds_until(lambda: first.owned() == SHARDS):.1f} s "
              f"after the signal")
        second.process.wait()

        third = Instance(environment, log_dir, "third")
        seconds_until(lambda: shared(third))
        time.sleep(5)
        for pid in third.all_processes():
            os.kill(pid, signal.SIGKILL)
        print(f"SIGKILL of every process of a third: the first owns every shard "
              f"{seconds_until(lambda: first.owned() == SHARDS):.1f} s after the kill")
        time.sleep(10)  # the gap backfilled
        first.process.send_signal(signal.SIGTERM)
        first.process.wait()
        ids = trade_ids(broker.bootstrap_servers, registry.url, TOPIC)
        missing, duplicated = missing_and_duplicates(ids)
        print(f"read back: {sum(map(len, ids.values())):,} trades, {missing} missing, {duplicated} duplicated")


if __name__ == "__main__":
    main()
