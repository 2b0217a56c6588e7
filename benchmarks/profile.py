"""Where the service's CPU goes at a fixed rate, per actor process.

`python benchmarks/profile.py [--rate R] [--seconds S] [--books] [--arrival spread] [--py-spy DIR]`: a local
broker, registry and simulator, and the service at R trades/s (with --books, the book stream
too, measured once every book is in sync). It prints each process's share of a
core (from /proc) and the CPU per trade. With --py-spy (`pip install py-spy`), it also
samples each process while it holds the GIL and prints how much of each one's samples were
inside Thespian, our code and confluent-kafka; the raw stacks stay in DIR for a closer look.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from k2actors import processes
from k2actors.bench import ARRIVAL_TICK_SECONDS, Options, start_service, symbol_names, wait_books_in_sync
from k2actors.localstack.broker import TansuBroker
from k2actors.localstack.registry import SchemaRegistryDouble
from k2actors.localstack.simulator import ExchangeSimulator

OWNERS = (("thespian/", "Thespian"), ("k2actors/", "k2actors"), ("confluent_kafka", "confluent-kafka"))


def owner(stack: str) -> str:
    """Who a sample's time belongs to: the innermost frame of a library we know."""
    for frame in reversed(stack.split(";")):
        for marker, name in OWNERS:
            if marker in frame:
                return name
    return "other"


def shares(raw: Path) -> dict[str, float]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        counts[owner(stack)] += int(samples)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.most_common()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="offered trades per second, all symbols together")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to measure")
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--books", action="store_true", help="the book stream beside trades")
    parser.add_argument("--arrival", choices=sorted(ARRIVAL_TICK_SECONDS), default="bunched",
                        help="trades bunched in 10 ms ticks or spread out in 1 ms ticks (as the bench's --arrivals)")
    parser.add_argument("--py-spy", type=Path, help="sample each process with py-spy; its raw stacks go here")
    args = parser.parse_args()
    symbols = symbol_names(args.symbols)
    workdir = Path(tempfile.mkdtemp(prefix="k2actors-profile-"))
    with TansuBroker() as broker, SchemaRegistryDouble() as registry, \
            ExchangeSimulator(symbols, rate=args.rate / len(symbols), endpoints=2,
                              tick=ARRIVAL_TICK_SECONDS[args.arrival]) as exchange:
        service = start_service((broker, registry), exchange, Options(), symbols, "profile", workdir / "service.log",
                                books=args.books)
        try:
            service.wait_ready()
            if args.books:
                wait_books_in_sync(service, len(symbols))
            time.sleep(3)  # past connection and warm-up
            with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/health", timeout=5) as response:
                actors = json.load(response)["actors"]
            roles = {pid: role for role, pid in actors.items() if isinstance(pid, int)}
            pids = processes.trees((service.process.pid, actors["actor_system"]), processes.process_table())
            before = {pid: processes.cpu_seconds(pid) for pid in pids}
            produced_before = service.total("k2_kafka_messages_produced_total")
            samplers = {}
            if args.py_spy:
                args.py_spy.mkdir(parents=True, exist_ok=True)
                samplers = {pid: subprocess.Popen(
                    ["py-spy", "record", "--gil", "-r", "100", "-f", "raw", "-d", str(int(args.seconds)), "-p", str(pid),
                     "-o", str(args.py_spy / f"{pid}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for pid in pids}
            time.sleep(args.seconds)
            for sampler in samplers.values():
                sampler.wait()
            cores = {pid: (processes.cpu_seconds(pid) - before[pid]) / args.seconds for pid in pids}
            delivered = (service.total("k2_kafka_messages_produced_total") - produced_before) / args.seconds
        finally:
            service.stop()
    for pid, share in sorted(cores.items(), key=lambda item: -item[1]):
        raw = args.py_spy / f"{pid}.txt" if args.py_spy else None
        inside = ", ".join(f"{name} {part:.0%}" for name, part in shares(raw).items()) if raw and raw.exists() else ""
        print(f"{roles.get(pid, str(pid)):>40} {share:6.3f} core  {inside}")
    total = sum(cores.values())
    print(f"the whole service: {total:.3f} core at {delivered:,.0f} trades/s delivered, "
          f"{total / delivered * 1e6 if delivered else float('nan'):,.0f} µs per trade")
    return 0


if __name__ == "__main__":
    sys.exit(main())
