"""One stand-in as a foreground process, for a container: `python -m k2actors.localstack registry`,
`... exchange`, `... kraken` or `... coinbase`, until SIGTERM or SIGINT. The compose check runs
them in place of Confluent's Schema Registry and of the venues (scripts/compose-check)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import AbstractContextManager


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m k2actors.localstack", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    stand_ins = parser.add_subparsers(dest="stand_in", required=True, metavar="STAND_IN")
    registry = stand_ins.add_parser("registry", help="the Schema Registry double")
    registry.add_argument("--port", type=int, default=8081)
    exchange = stand_ins.add_parser("exchange", help="the Binance exchange simulator")
    exchange.add_argument("--port", type=int, default=9443, help="the first endpoint's port; endpoint i listens on port + i")
    exchange.add_argument("--endpoints", type=int, default=2)
    exchange.add_argument("--symbols", default="BTCUSDT,ETHUSDT,BNBUSDT", help="comma-separated")
    exchange.add_argument("--rate", type=float, default=20.0, help="trades per second per symbol")
    kraken = stand_ins.add_parser("kraken", help="the Kraken exchange simulator (WebSocket v2 and REST trades)")
    kraken.add_argument("--port", type=int, default=9450, help="the first endpoint's port; endpoint i listens on port + i")
    kraken.add_argument("--endpoints", type=int, default=1)
    kraken.add_argument("--symbols", default="BTC/USD,ETH/USD,SOL/USD", help="comma-separated, as Kraken spells them")
    kraken.add_argument("--rate", type=float, default=20.0, help="trades per second per symbol")
    coinbase = stand_ins.add_parser("coinbase", help="the Coinbase exchange simulator (Advanced Trade WebSocket and REST trades)")
    coinbase.add_argument("--port", type=int, default=9460, help="the first endpoint's port; endpoint i listens on port + i")
    coinbase.add_argument("--endpoints", type=int, default=1)
    coinbase.add_argument("--symbols", default="BTC-USD,ETH-USD,SOL-USD", help="comma-separated product ids")
    coinbase.add_argument("--rate", type=float, default=20.0, help="trades per second per product")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stand_in: AbstractContextManager
    if args.stand_in == "registry":
        from k2actors.localstack.registry import SchemaRegistryDouble

        stand_in = SchemaRegistryDouble(args.host, args.port)
    elif args.stand_in == "exchange":
        from k2actors.localstack.simulator import ExchangeSimulator

        symbols = tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip())
        stand_in = ExchangeSimulator(symbols, rate=args.rate, endpoints=args.endpoints, host=args.host, port=args.port)
    elif args.stand_in == "kraken":
        from k2actors.localstack.kraken import KrakenSimulator

        pairs = tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip())
        stand_in = KrakenSimulator(pairs, rate=args.rate, endpoints=args.endpoints, host=args.host, port=args.port)
    else:
        from k2actors.localstack.coinbase import CoinbaseSimulator

        products = tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip())
        stand_in = CoinbaseSimulator(products, rate=args.rate, endpoints=args.endpoints, host=args.host, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with stand_in:
        print(f"k2actors.localstack: {args.stand_in} listening on {args.host}:{args.port}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
