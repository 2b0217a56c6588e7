"""Command line: start, validate-config, demo, tail, replay, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from k2actors import __version__
from k2actors.config import EXIT_CONFIG_ERROR, ConfigError, effective_config, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m k2actors",
        description="Stream Binance spot trades into Kafka as K2 v2 Avro records.",
    )
    parser.add_argument("--version", action="version", version=f"k2actors {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", metavar="PATH", help="YAML config file (default: built-in defaults, as in config.yaml)")
        return sub

    command("start", "Stream trades into Kafka until SIGTERM or SIGINT.")
    command("validate-config", "Print the effective configuration (secrets redacted), or the error.")
    demo = command("demo", "Run everything offline: local broker, registry and exchange simulator, and the pipeline.")
    demo.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=20.0, metavar="N", help="simulated trades per second per symbol (default 20)")
    replay = command("replay", "Derive the records again from the raw topic; compare them with the live topics, "
                               "or write them to a topic.")
    replay.add_argument("--since", type=_time, default=None, metavar="TIME",
                        help="frames received at or after TIME (seconds since the epoch, or ISO 8601; default: the beginning)")
    replay.add_argument("--until", type=_time, default=None, metavar="TIME", help="frames received before TIME (default: the end)")
    what = replay.add_mutually_exclusive_group()
    what.add_argument("--verify", action="store_true",
                      help="report every difference from the live topics (missing, extra, duplicated, or a field that "
                           "differs); exit 1 if any")
    what.add_argument("--to-topic", metavar="TOPIC", help="write the records to TOPIC (trades) and TOPIC.<stream type> (the others)")
    bench = command("bench", "Measure the pipeline against this machine's ceilings (local stack); figures as a table and JSON.")
    bench.add_argument("--symbols", type=int, default=3, metavar="N", help="number of symbols (default 3)")
    bench.add_argument("--rates", type=_rates, default=(500.0, 1000.0, 2000.0, 8000.0), metavar="R,R",
                       help="fixed offered rates in trades per second: CPU per trade, memory, latency (default 500,1000,2000,8000)")
    bench.add_argument("--arrivals", type=_arrivals, default=("bunched", "spread"), metavar="A,A",
                       help="how the fixed and limited rates' trades arrive: bunched (in 10 ms ticks), spread (1 ms "
                            "ticks, one by one); default both")
    bench.add_argument("--cpu-limit", type=float, default=0.5, metavar="CPUS",
                       help="the share of a CPU the service is held to in the limited phase, as compose's cpus: gives it (default 0.5)")
    bench.add_argument("--limited-rates", type=_rates, default=(2000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0),
                       metavar="R,R", help="offered rates tried in turn while held to --cpu-limit (default 2000,4000,...,12000)")
    bench.add_argument("--duration", type=float, default=30.0, metavar="S",
                       help="seconds of the maximum-load window; each fixed rate runs half as long (default 30)")
    bench.add_argument("--mode", choices=("failover", "hot_standby"), default="failover", help="binance.mode to run (default failover)")
    bench.add_argument("--soak", type=float, default=0.0, metavar="MINUTES", help="also soak at --soak-rate and report the memory slope")
    bench.add_argument("--soak-rate", type=float, default=5000.0, metavar="R", help="trades per second while soaking (default 5000)")
    bench.add_argument("--connections", type=int, default=0, metavar="N",
                       help="also run maximum load with 1 to N connections' worth of symbols (1,024 each)")
    bench.add_argument("--output", default="bench-results.json", metavar="PATH", help="where to write the figures as JSON")
    tail = command("tail", "Print the trades in the topic, decoded through the Schema Registry.")
    tail.add_argument("--topic", help="topic to read (default: kafka.topic from the config)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")
    tail.add_argument("--max", type=int, default=None, metavar="N", help="stop after N records")
    tail.add_argument("--json", action="store_true", help="print JSON lines instead of readable lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, environ=_environ())
    except ConfigError as exc:
        print(f"k2actors: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.command == "validate-config":
        print(json.dumps(effective_config(config), indent=2))
        return 0
    if args.command == "start":
        from k2actors.service import run

        return run(config)
    if args.command == "bench":
        from k2actors.bench import Options, run_bench

        return run_bench(Options(
            symbols=args.symbols, rates=args.rates, arrivals=args.arrivals, cpu_limit=args.cpu_limit,
            limited_rates=args.limited_rates,
            duration=args.duration, mode=args.mode, soak_minutes=args.soak,
            soak_rate=args.soak_rate, output=Path(args.output), config=args.config, connections=args.connections,
        ))
    if args.command == "replay":
        from k2actors.replay import run_replay

        return run_replay(config, args.since, args.until, args.verify, args.to_topic)
    if args.command == "demo":
        from k2actors.demo import run_demo

        return run_demo(config, args.duration, args.rate)
    from k2actors.tail import run_tail

    return run_tail(config, args.topic, args.from_beginning, args.max, args.json)


def _time(text: str) -> int:
    from k2actors.replay import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds since the epoch or an ISO 8601 time, got {text!r}") from None


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates such as 1000,10000, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def _arrivals(text: str) -> tuple[str, ...]:
    from k2actors.bench import ARRIVAL_TICK_SECONDS

    arrivals = tuple(part.strip() for part in text.split(","))
    unknown = [arrival for arrival in arrivals if arrival not in ARRIVAL_TICK_SECONDS]
    if unknown or not arrivals:
        raise argparse.ArgumentTypeError(f"expected arrivals among {', '.join(ARRIVAL_TICK_SECONDS)}, got {text!r}")
    return arrivals


def _environ() -> dict[str, str]:
    # The one place the environment is read: K2_* overrides go into the loaded config.
    import os

    return dict(os.environ)
