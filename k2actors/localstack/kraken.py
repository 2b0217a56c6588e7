"""A Kraken-compatible spot exchange simulator: WebSocket API v2, REST trades, faults.

Built from Kraken's documentation (docs.kraken.com/api/docs/websocket-v2: trade, ticker,
book, instrument, status, heartbeat, ping; the guide "spot-ws-book-v2"; REST "Get Recent
Trades") and from real captured sessions (tests/data/README.md). One live market (the
Binance simulator's `Market`: consecutive trade ids per symbol, an order book per symbol
that moves with its trades), served by one or more endpoints on their own ports. Each serves:

- `/v2`, the WebSocket API: a `status` frame on connecting; `subscribe` and `unsubscribe`
  (`params.channel`, `params.symbol` a list), each symbol acknowledged on its own, a symbol
  the market does not list refused ("Currency pair not supported"); `ping` answered by
  `pong`; a `heartbeat` every second a subscribed connection has nothing else to send.
  Channels: `trade` (the last 50 trades on subscribing, then every trade; `trade_id`
  consecutive per symbol), `ticker` (the best bid and offer, on every change: event
  trigger `bbo`), `book` (depth 10, 25, 100, 500 or 1000: a snapshot, then the levels that
  changed within the depth, each message with the CRC32 checksum of the best 10 levels a
  side, computed as Kraken computes it) and `instrument` (every pair's base, quote and
  precisions). Numbers are JSON numbers written at the instrument's precision, trailing
  zeros kept, as Kraken writes them.
- `GET /0/public/Trades?pair=&since=&count=`: the trades after `since` (nanoseconds), at
  most `count` (1000), and `last`, the `since` of the next page.
- scripted faults (`KrakenEndpointControl`): drop without a close frame, stall with the
  socket open, a handshake followed by a drop (flapping), refusal of new connections,
  refusal of subscriptions, a corrupted book update, refused REST requests.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import json
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from k2actors.core.kraken import BOOK_DEPTHS, CHECKSUM_LEVELS
from k2actors.localstack.orderbook import SimBook, units_text
from k2actors.localstack.serving import Controls, Endpoint, ServedMarket, TimedTrade, send_queued
from k2actors.localstack.simulator import Market, SimTrade

PATH = "/v2"
TRADES_PATH = "/0/public/Trades"
TRADE_SNAPSHOT = 50
MAX_TRADES_PER_PAGE = 1000
HISTORY_PER_SYMBOL = 200_000
HEARTBEAT_SECONDS = 1.0
CLIENT_QUEUE_LIMIT = 100_000
PRICE_PRECISION = 2  # the market moves in cents
QTY_PRECISION = 8
VERSION = "2.0.10"


@dataclass
class _BookView:
    """What a client was last sent of one book: the best `depth` levels a side."""

    depth: int
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)


class _Client:
    def __init__(self, connection: ServerConnection):
        self.connection = connection
        self.trades: set[str] = set()
        self.tickers: set[str] = set()
        self.books: dict[str, _BookView] = {}
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.last_sent = time.monotonic()

    def sent(self) -> None:
        self.last_sent = time.monotonic()

    @property
    def subscribed(self) -> bool:
        return bool(self.trades or self.tickers or self.books)


class _Endpoint(Endpoint):
    def __init__(self, index: int):
        super().__init__(index)
        self.subscriptions_refused = 0
        self.books_to_corrupt: set[str] = set()  # symbols whose next book update goes out with a wrong level
        self.history_faults: collections.deque[str] = collections.deque()  # error messages for the next REST requests
        self.history_requests: list[float] = []


class KrakenSimulator(ServedMarket[_Endpoint, Market]):
    """`with KrakenSimulator(("BTC/USD",), rate=50) as sim: sim.urls`"""

    def __init__(self, symbols: tuple[str, ...] = ("BTC/USD", "ETH/USD", "SOL/USD"), rate: float = 20.0,
                 endpoints: int = 1, tick: float = 0.01, host: str = "127.0.0.1", seed: int = 11, port: int = 0):
        super().__init__(Market(tuple(symbols), rate, seed), [_Endpoint(i) for i in range(endpoints)], host, port, None,
                         "kraken-simulator", PATH)
        self._tick = tick
        self._history: dict[str, collections.deque[TimedTrade]] = {
            s: collections.deque(maxlen=HISTORY_PER_SYMBOL) for s in symbols}
        self._stats = {s: _Ticker() for s in symbols}
        self._connections = 0

    def endpoint(self, index: int) -> KrakenEndpointControl:
        return KrakenEndpointControl(self, self._endpoints[index])

    def book(self, symbol: str, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The best `depth` levels a side now, as Kraken writes them, best first."""
        return self.call(self._book(symbol, depth))

    # --- internals, all on the simulator's event loop ---

    async def _book(self, symbol: str, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids, asks = _best(self.market.books[symbol], depth)
        return ([(_price(p), units_text(q)) for p, q in sorted(bids.items(), reverse=True)],
                [(_price(p), units_text(q)) for p, q in sorted(asks.items())])

    async def _start(self) -> None:
        await self._listen(self._serve_client, self._http)
        asyncio.get_running_loop().create_task(self._run_market())
        asyncio.get_running_loop().create_task(self._heartbeats())

    async def _run_market(self) -> None:
        while not self._stopping:
            now = time.time()
            traded: dict[str, list[TimedTrade]] = {}
            for position, (symbol, trade) in enumerate(self.market.tick(now)):
                kraken_trade = TimedTrade(trade, trade.time_ms * 1000 + position)
                traded.setdefault(symbol, []).append(kraken_trade)
                self._history[symbol].append(kraken_trade)
                self._stats[symbol].trade(trade)
            touched = {symbol: touches[-1] for symbol in traded if (touches := self.market.take_touches(symbol))}
            if traded:
                self._broadcast(traded, touched, _timestamp(int(now * 1_000_000)))
            await asyncio.sleep(self._tick)

    def _broadcast(self, traded: dict[str, list[TimedTrade]], touched: dict, timestamp: str) -> None:
        trade_frames = {symbol: _data("trade", "update", [_trade_item(symbol, t) for t in trades])
                        for symbol, trades in traded.items()}
        ticker_frames = {symbol: _data("ticker", "update", [self._ticker_item(symbol, bid, ask, timestamp)])
                         for symbol, (_, bid, ask) in touched.items()}
        for endpoint in self._endpoints:
            if endpoint.stalled:
                continue
            for client in list(endpoint.clients):
                for symbol in client.trades & trade_frames.keys():
                    client.queue.put_nowait(trade_frames[symbol])
                for symbol in client.tickers & ticker_frames.keys():
                    client.queue.put_nowait(ticker_frames[symbol])
                for symbol in client.books.keys() & traded.keys():
                    update = self._book_update(endpoint, client.books[symbol], symbol, timestamp)
                    if update is not None:
                        client.queue.put_nowait(update)
                if client.queue.qsize() > CLIENT_QUEUE_LIMIT:
                    client.connection.transport.abort()

    def _book_update(self, endpoint: _Endpoint, view: _BookView, symbol: str, timestamp: str) -> str | None:
        """The levels of the book's best `depth` that changed since the client's view: a level
        gone from the book is sent with quantity 0; one that only fell below the depth is not
        (the client cuts its book to the depth, as Kraken says)."""
        book = self.market.books[symbol]
        bids, asks = _best(book, view.depth)
        sides = []
        for before, now, levels in ((view.bids, bids, book.bids), (view.asks, asks, book.asks)):
            changed = [(price, quantity) for price, quantity in now.items() if before.get(price) != quantity]
            changed += [(price, 0) for price in before.keys() - now.keys() if price not in levels]
            sides.append(changed)
        view.bids, view.asks = bids, asks
        if not sides[0] and not sides[1]:
            return None
        crc = _checksum(bids, asks)
        if symbol in endpoint.books_to_corrupt:  # the best bid's quantity off by 1e-8; the checksum is of the true book
            endpoint.books_to_corrupt.discard(symbol)
            best = max(bids)
            sides[0].append((best, bids[best] + 1))
        return _data("book", "update", [{"symbol": symbol, "bids": _levels(sides[0]), "asks": _levels(sides[1]),
                                         "checksum": crc, "timestamp": timestamp}])

    def _ticker_item(self, symbol: str, best_bid: tuple[int, int], best_ask: tuple[int, int], timestamp: str) -> dict:
        (bid, bid_quantity), (ask, ask_quantity) = best_bid, best_ask
        stats = self._stats[symbol]
        return {"symbol": symbol, "bid": _Number(_price(bid)), "bid_qty": _Number(units_text(bid_quantity)),
                "ask": _Number(_price(ask)), "ask_qty": _Number(units_text(ask_quantity)), **stats.fields(), "timestamp": timestamp}

    # --- a client ---

    async def _http(self, endpoint: _Endpoint, connection: ServerConnection, request) -> Response | None:
        path = urlsplit(request.path)
        if path.path == TRADES_PATH:
            return self._trades(endpoint, connection, parse_qs(path.query))
        if path.path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown path\n")
        if endpoint.refusing:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "endpoint refuses new connections\n")
        return None

    async def _serve_client(self, endpoint: _Endpoint, connection: ServerConnection) -> None:
        if endpoint.flapping:
            connection.transport.abort()
            return
        client = _Client(connection)
        endpoint.clients.add(client)
        self._connections += 1
        client.queue.put_nowait(_data("status", "update", [{"version": VERSION, "system": "online", "api_version": "v2",
                                                            "connection_id": 2**63 + self._connections}]))
        writer = asyncio.create_task(send_queued(client.connection, client.queue, client.sent))
        try:
            async for message in connection:
                self._handle_request(endpoint, client, message)
        except ConnectionClosed:
            pass
        finally:
            endpoint.clients.discard(client)
            writer.cancel()

    async def _heartbeats(self) -> None:
        while not self._stopping:
            await asyncio.sleep(HEARTBEAT_SECONDS / 4)
            now = time.monotonic()
            for endpoint in self._endpoints:
                for client in list(endpoint.clients):
                    if (not endpoint.stalled and client.subscribed and client.queue.empty()
                            and now - client.last_sent >= HEARTBEAT_SECONDS):
                        client.last_sent = now
                        client.queue.put_nowait('{"channel":"heartbeat"}')

    def _handle_request(self, endpoint: _Endpoint, client: _Client, message: str | bytes) -> None:
        time_in = _timestamp(int(time.time() * 1_000_000))
        try:
            request = json.loads(message)
            method = request["method"]
            request_id = request.get("req_id")
            params = request.get("params", {})
            if not isinstance(method, str) or not isinstance(params, dict):
                raise TypeError(method)
        except (ValueError, KeyError, TypeError):
            client.queue.put_nowait(_reply({"error": "Malformed request", "method": "", "success": False}, time_in))
            return
        if method == "ping":
            client.queue.put_nowait(_reply({"method": "pong", **_id(request_id)}, time_in))
        elif method in ("subscribe", "unsubscribe"):
            for frame in self._subscription(endpoint, client, method, request_id, params, time_in):
                client.queue.put_nowait(frame)
        else:
            client.queue.put_nowait(_reply({"error": "Unsupported event", "method": method, **_id(request_id),
                                            "success": False}, time_in))

    def _subscription(self, endpoint: _Endpoint, client: _Client, method: str, request_id: object, params: dict,
                      time_in: str) -> list[str]:
        """The frames that answer a subscribe or unsubscribe: per symbol its acknowledgement
        (or refusal), a subscription's followed by its snapshot when asked for (the default)."""
        channel = params.get("channel")
        answered = {"method": method, **_id(request_id)}
        snapshot_wanted = params.get("snapshot", True) is not False
        if channel == "instrument":
            ack = _reply({**answered, "result": {"channel": channel, "snapshot": snapshot_wanted}, "success": True}, time_in)
            return [ack, self._instruments()] if method == "subscribe" and snapshot_wanted else [ack]
        if channel not in ("trade", "ticker", "book"):
            return [_reply({"error": f"Channel {str(channel)[:40]} not supported", **answered, "success": False}, time_in)]
        symbols = params.get("symbol")
        depth = params.get("depth", 10)
        if not isinstance(symbols, list) or not symbols or (channel == "book" and depth not in BOOK_DEPTHS):
            return [_reply({"error": "EGeneral:Invalid arguments", **answered, "success": False}, time_in)]
        if method == "subscribe" and endpoint.subscriptions_refused > 0:
            endpoint.subscriptions_refused -= 1
            return [_reply({"error": "EService:Unavailable", **answered, "success": False}, time_in)]
        frames = []
        for symbol in symbols:
            if symbol not in self.market.books:
                frames.append(_reply({"error": f"Currency pair not supported {str(symbol)[:40]}", **answered, "success": False,
                                      "symbol": str(symbol)[:40]}, time_in))
            elif method == "unsubscribe":
                _unsubscribe(client, channel, symbol)
                frames.append(_reply({**answered, "result": {"channel": channel, "symbol": symbol}, "success": True}, time_in))
            else:
                result, snapshot = self._subscribe(client, channel, symbol, params)
                frames.append(_reply({**answered, "result": {**result, "snapshot": snapshot_wanted}, "success": True}, time_in))
                frames += [snapshot] if snapshot_wanted else []
        return frames

    def _subscribe(self, client: _Client, channel: str, symbol: str, params: dict) -> tuple[dict, str]:
        """The acknowledgement's result, and the snapshot, of a subscription now made."""
        now = _timestamp(int(time.time() * 1_000_000))
        if channel == "trade":
            client.trades.add(symbol)
            recent = list(self._history[symbol])[-TRADE_SNAPSHOT:]
            return {"channel": channel, "symbol": symbol}, _data("trade", "snapshot", [_trade_item(symbol, t) for t in recent])
        if channel == "ticker":
            client.tickers.add(symbol)
            item = self._ticker_item(symbol, *self.market.books[symbol].best(), now)
            # The simulator's touch moves with its trades only: either trigger gives every change.
            trigger = params.get("event_trigger", "trades")
            return {"channel": channel, "event_trigger": trigger, "symbol": symbol}, _data("ticker", "snapshot", [item])
        depth = params.get("depth", 10)
        view = client.books[symbol] = _BookView(depth)
        view.bids, view.asks = _best(self.market.books[symbol], depth)
        book = {"symbol": symbol, "bids": _levels(sorted(view.bids.items(), reverse=True)), "asks": _levels(sorted(view.asks.items())),
                "checksum": _checksum(view.bids, view.asks), "timestamp": now}
        return {"channel": channel, "depth": depth, "symbol": symbol}, _data("book", "snapshot", [book])

    def _instruments(self) -> str:
        pairs = [{"symbol": symbol, "base": symbol.split("/")[0], "quote": symbol.split("/")[1], "status": "online",
                  "qty_precision": QTY_PRECISION, "qty_increment": _Number("0.00000001"), "price_precision": PRICE_PRECISION,
                  "cost_precision": 5, "marginable": False, "has_index": True, "cost_min": _Number("0.50"),
                  "tick_size": _Number("0.01"), "price_increment": _Number("0.01"), "qty_min": _Number("0.00010000")}
                 for symbol in self.market.symbols]
        assets = sorted({part for symbol in self.market.symbols for part in symbol.split("/")})
        return _data("instrument", "snapshot", {
            "assets": [{"id": asset, "status": "enabled", "precision": 8, "precision_display": 5, "borrowable": False,
                        "collateral_value": _Number("1.00"), "margin_rate": _Number("0.020000")} for asset in assets],
            "pairs": pairs})

    def _trades(self, endpoint: _Endpoint, connection: ServerConnection, query: dict) -> Response:
        endpoint.history_requests.append(time.monotonic())
        if endpoint.history_faults:
            return _json(connection, {"error": [endpoint.history_faults.popleft()]})
        pair = query.get("pair", [""])[0]
        if pair not in self._history:
            return _json(connection, {"error": ["EQuery:Unknown asset pair"]})
        try:
            since = int(query["since"][0]) if "since" in query else None
            count = max(1, min(int(query.get("count", [str(MAX_TRADES_PER_PAGE)])[0]), MAX_TRADES_PER_PAGE))
        except ValueError:
            return _json(connection, {"error": ["EGeneral:Invalid arguments"]})
        if since is None:  # the last trades
            rows = list(self._history[pair])[-count:]
        else:
            rows = [trade for trade in self._history[pair] if trade.time_us * 1000 > since][:count]
        last = rows[-1].time_us * 1000 if rows else since or 0
        # Kraken names the pair its own way (XXBTZUSD) unless asked with assetVersion=1
        key = pair if query.get("assetVersion") == ["1"] else "X" + pair.replace("/", "Z")
        return _json(connection, {"error": [], "result": {
            key: [[_price_text(t.trade.price), t.trade.quantity, _Number(f"{t.time_us // 1_000_000}.{t.time_us % 1_000_000:06d}"),
                    "s" if t.trade.buyer_is_maker else "b", _order_type(t.trade)[0], "", t.trade.trade_id] for t in rows],
            "last": str(last)}})


class _Ticker:
    """The day's figures a ticker carries besides the touch, from the trades seen."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.last = self.low = self.high = 0
        self.volume = 0  # 1e-8 units
        self.turnover = 0  # cents x 1e-8 units

    def trade(self, trade: SimTrade) -> None:
        price = int(_price_text(trade.price).replace(".", ""))  # cents
        units = int(trade.quantity.replace(".", ""))
        self.first = price if self.first is None else self.first
        self.low = min(self.low or price, price)
        self.high = max(self.high, price)
        self.last = price
        self.volume += units
        self.turnover += price * units

    def fields(self) -> dict:
        vwap = self.turnover // self.volume if self.volume else self.last
        change = self.last - (self.first or self.last)
        change_pct = f"{change * 100 / self.first:.2f}" if self.first else "0.00"
        return {"last": _Number(_price(self.last)), "volume": _Number(units_text(self.volume)), "vwap": _Number(_price(vwap)),
                "low": _Number(_price(self.low)), "high": _Number(_price(self.high)), "change": _Number(_signed_price(change)),
                "change_pct": _Number(change_pct)}


class _Number(str):
    """A number written as this text in JSON: Kraken's numbers keep their trailing zeros."""


def _encode(value: object) -> str:
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{_encode(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    return json.dumps(value)


def _unsubscribe(client: _Client, channel: str, symbol: str) -> None:
    if channel == "book":
        client.books.pop(symbol, None)
    elif channel == "trade":
        client.trades.discard(symbol)
    else:
        client.tickers.discard(symbol)


def _data(channel: str, kind: str, data: object) -> str:
    return _encode({"channel": channel, "type": kind, "data": data})


def _reply(body: dict, time_in: str) -> str:
    return _encode({**body, "time_in": time_in, "time_out": _timestamp(int(time.time() * 1_000_000))})


def _id(request_id: object) -> dict:
    return {} if request_id is None else {"req_id": request_id}


def _json(connection: ServerConnection, payload: dict) -> Response:
    response = connection.respond(HTTPStatus.OK, _encode(payload))
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response


def _trade_item(symbol: str, trade: TimedTrade) -> dict:
    sim = trade.trade
    return {"symbol": symbol, "side": "sell" if sim.buyer_is_maker else "buy", "price": _Number(_price_text(sim.price)),
            "qty": _Number(sim.quantity), "ord_type": _order_type(sim), "trade_id": sim.trade_id,
            "timestamp": _timestamp(trade.time_us)}


def _order_type(trade: SimTrade) -> str:
    return "market" if trade.trade_id % 3 == 0 else "limit"


def _best(book: SimBook, depth: int) -> tuple[dict[int, int], dict[int, int]]:
    return (dict(heapq.nlargest(depth, book.bids.items())), dict(heapq.nsmallest(depth, book.asks.items())))


def _checksum(bids: dict[int, int], asks: dict[int, int]) -> int:
    """Kraken's: the best 10 asks (lowest first), then the best 10 bids, each price and
    quantity without its point and leading zeros; in cents and 1e-8 units, those digits
    are the integers themselves."""
    ordered = sorted(asks.items())[:CHECKSUM_LEVELS] + sorted(bids.items(), reverse=True)[:CHECKSUM_LEVELS]
    return zlib.crc32("".join(f"{price}{quantity}" for price, quantity in ordered).encode())


def _levels(levels: list[tuple[int, int]]) -> list[dict]:
    return [{"price": _Number(_price(price)), "qty": _Number(units_text(quantity))} for price, quantity in levels]


def _price(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _signed_price(cents: int) -> str:
    return ("-" if cents < 0 else "") + _price(abs(cents))


def _price_text(binance_price: str) -> str:
    """The market's prices are written with 8 decimals; Kraken writes them at the pair's 2."""
    return binance_price[: binance_price.index(".") + 1 + PRICE_PRECISION]


def _timestamp(microseconds: int) -> str:
    return datetime.fromtimestamp(microseconds // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{microseconds % 1_000_000:06d}Z"


class KrakenEndpointControl(Controls[_Endpoint]):
    """Scripted faults for one endpoint; safe to call from any thread."""

    def refuse_subscriptions(self, times: int) -> None:
        """Refuse the next `times` subscribe requests (all their symbols)."""
        self._endpoint.subscriptions_refused += times

    def corrupt_book(self, symbol: str) -> None:
        """Send the next book update of `symbol` with one level's quantity wrong (its checksum true)."""
        self._endpoint.books_to_corrupt.add(symbol)

    def refuse_history(self, error: str, times: int) -> None:
        """Answer the next `times` REST trades requests with `error` ("EAPI:Rate limit exceeded", ...)."""
        self._endpoint.history_faults.extend([error] * times)

    def history_request_times(self) -> list[float]:
        return list(self._endpoint.history_requests)
