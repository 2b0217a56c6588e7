"""Command line: start, validate-config, demo, tail."""

from __future__ import annotations

import argparse
import json
import sys

from k2actors import __version__
from k2actors.config import ConfigError, effective_config, load_config

EXIT_CONFIG_ERROR = 2


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
    if args.command == "demo":
        from k2actors.demo import run_demo

        return run_demo(config, args.duration, args.rate)
    from k2actors.tail import run_tail

    return run_tail(config, args.topic, args.from_beginning, args.max, args.json)


def _environ() -> dict[str, str]:
    # The one place the environment is read: K2_* overrides go into the loaded config.
    import os

    return dict(os.environ)
