"""A Coinbase-compatible spot exchange simulator: the Advanced Trade market-data WebSocket,
Coinbase Exchange's REST trades, faults.

Built from Coinbase's documentation (docs.cdp.coinbase.com: Advanced Trade WebSocket
overview, channels and rate limits; Exchange REST "Get product trades" and pagination) and
from real captured frames (tests/data/README.md). One live market (the Binance simulator's
`Market`: consecutive trade ids per product, an order book per product that moves with its
trades), served by one or more endpoints on their own ports. Each serves:

- `/`, the WebSocket: `{"type": "subscribe", "channel", "product_ids"}`, one channel a
  message, answered by a `subscriptions` frame listing the connection's whole set (a product
  the market does not list left out, with no error; a channel it does not know answered as
  Coinbase does, `{"type": "error", "message": "authentication failure"}`). A connection
  that subscribes to nothing within 5 s is closed. Every frame of a connection is numbered,
  `sequence_num` from 0 across its channels, and timed to the nanosecond (trailing zeros
  cut). Channels: `market_trades` (the last 50 trades on subscribing, then every 250 ms the
  trades since, newest first, `side` the maker's, `trade_id` a string of digits), `ticker`
  (on every match: the price and the best bid and offer), `level2` (data on `l2_data`: the
  whole book, its levels unsorted, then the levels changed, each with its new quantity, 0
  removing it), `heartbeats` (every second, `heartbeat_counter` counting), `status` (the
  products' base and quote). Numbers are strings without trailing zeros.
- `GET /products/<id>/trades?after=<id>&limit=<n>`: the trades below `after` (the newest
  without it), newest first, at most 1000, with `CB-BEFORE` and `CB-AFTER`.
- scripted faults (`CoinbaseEndpointControl`): drop without a close frame, stall with the
  socket open, a handshake followed by a drop (flapping), refusal of new connections, a
  sequence number skipped, HTTP 429 to REST requests.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from k2actors.localstack.orderbook import units_text
from k2actors.localstack.serving import Controls, Endpoint, ServedMarket, TimedTrade, send_queued
from k2actors.localstack.simulator import Market

PATH = "/"
TRADES_PATH = re.compile(r"/products/([^/]+)/trades")
TRADE_SNAPSHOT = 50
TRADE_BATCH_SECONDS = 0.25
HEARTBEAT_SECONDS = 1.0
SUBSCRIBE_WITHIN_SECONDS = 5.0
MAX_TRADES_PER_PAGE = 1000
HISTORY_PER_PRODUCT = 200_000
CLIENT_QUEUE_LIMIT = 100_000
CHANNELS = ("market_trades", "ticker", "level2", "heartbeats", "status")
PADDING_GAP_CENTS = 100_000
UNITS = 100_000_000  # a quantity of 1


@dataclass(eq=False)  # each connection its own, in its endpoint's set
class _Client:
    connection: ServerConnection
    subscriptions: dict[str, set[str]] = field(default_factory=dict)  # channel -> products ("heartbeats" for heartbeats)
    books: dict[str, tuple[dict[int, int], dict[int, int]]] = field(default_factory=dict)  # what it was last sent
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    sequence_num: int = 0

    def products(self, channel: str) -> set[str]:
        return self.subscriptions.get(channel, set())


class _Endpoint(Endpoint):
    def __init__(self, index: int):
        super().__init__(index)
        self.sequence_skips = 0  # frames whose number is to be skipped, one a frame, on every connection
        self.history_refusals = 0  # REST requests to answer with HTTP 429
        self.history_requests: list[float] = []


class CoinbaseSimulator(ServedMarket[_Endpoint, Market]):
    """`with CoinbaseSimulator(("BTC-USD",), rate=50) as sim: sim.urls`"""

    def __init__(self, products: tuple[str, ...] = ("BTC-USD", "ETH-USD", "SOL-USD"), rate: float = 20.0,
                 endpoints: int = 1, tick: float = 0.01, host: str = "127.0.0.1", seed: int = 13, port: int = 0,
                 snapshot_padding: int = 0):
        """`snapshot_padding`: levels added to each side of every level2 snapshot, far from the
        touch and never updated, to make a snapshot as large as a busy product's (BTC-USD's is
        over 4 MiB); `sent_book` leaves them out."""
        super().__init__(Market(tuple(products), rate, seed), [_Endpoint(i) for i in range(endpoints)], host, port, None,
                         "coinbase-simulator", PATH)
        self._tick = tick
        self._history: dict[str, collections.deque[TimedTrade]] = {
            p: collections.deque(maxlen=HISTORY_PER_PRODUCT) for p in products}
        self._unsent: dict[str, list[TimedTrade]] = {p: [] for p in products}  # since the last market_trades batch
        self._heartbeats = 0
        self._padding = snapshot_padding

    def endpoint(self, index: int) -> CoinbaseEndpointControl:
        return CoinbaseEndpointControl(self, self._endpoints[index])

    def sent_book(self, product: str, endpoint: int = 0) -> tuple[dict[str, str], dict[str, str]]:
        """The whole book, price to quantity as Coinbase writes them, as the endpoint's (one)
        connection was last sent it: a stalled endpoint's stays as it was."""
        return self.call(self._sent_book(product, self._endpoints[endpoint]))

    # --- internals, all on the simulator's event loop ---

    async def _sent_book(self, product: str, endpoint: _Endpoint) -> tuple[dict[str, str], dict[str, str]]:
        (client,) = endpoint.clients
        bids, asks = client.books[product]
        return {_price(p): _quantity(q) for p, q in bids.items()}, {_price(p): _quantity(q) for p, q in asks.items()}

    async def _start(self) -> None:
        await self._listen(self._serve_client, self._http)
        loop = asyncio.get_running_loop()
        loop.create_task(self._run_market())
        loop.create_task(self._every(TRADE_BATCH_SECONDS, self._send_trades))
        loop.create_task(self._every(HEARTBEAT_SECONDS, self._send_heartbeats))

    async def _run_market(self) -> None:
        while not self._stopping:
            traded: set[str] = set()
            for position, (product, trade) in enumerate(self.market.tick(time.time())):
                timed = TimedTrade(trade, trade.time_ms * 1000 + position)
                self._history[product].append(timed)
                self._unsent[product].append(timed)
                traded.add(product)
            for product in sorted(traded):
                self.market.take_touches(product)  # the ticker reads the touch itself, on every match
                self._broadcast_ticker(product)
                self._broadcast_book(product)
            await asyncio.sleep(self._tick)

    async def _every(self, seconds: float, send: Callable[[], None]) -> None:
        while not self._stopping:
            await asyncio.sleep(seconds)
            send()

    def _clients(self) -> list[tuple[_Endpoint, _Client]]:
        return [(endpoint, client) for endpoint in self._endpoints if not endpoint.stalled for client in list(endpoint.clients)]

    def _send_trades(self) -> None:
        batches = {product: [_trade(product, t) for t in reversed(trades)] for product, trades in self._unsent.items() if trades}
        for unsent in self._unsent.values():
            unsent.clear()
        for endpoint, client in self._clients():
            items = [t for product in sorted(client.products("market_trades") & batches.keys()) for t in batches[product]]
            if items:
                self._send(endpoint, client, "market_trades", [{"type": "update", "trades": items}])

    def _send_heartbeats(self) -> None:
        self._heartbeats += 1
        now = datetime.now(UTC)
        current_time = now.strftime("%Y-%m-%d %H:%M:%S.%f") + f" +0000 UTC m=+{self._heartbeats:.9f}"
        for endpoint, client in self._clients():
            if "heartbeats" in client.subscriptions:
                self._send(endpoint, client, "heartbeats", [{"current_time": current_time, "heartbeat_counter": self._heartbeats}])

    def _broadcast_ticker(self, product: str) -> None:
        for endpoint, client in self._clients():
            if product in client.products("ticker"):
                self._send(endpoint, client, "ticker", [{"type": "update", "tickers": [self._ticker(product)]}])

    def _broadcast_book(self, product: str) -> None:
        book = self.market.books[product]
        for endpoint, client in self._clients():
            if product not in client.products("level2"):
                continue
            bids, asks = client.books[product]
            updates = _changes("bid", bids, book.bids) + _changes("offer", asks, book.asks)
            client.books[product] = (dict(book.bids), dict(book.asks))
            if updates:
                self._send(endpoint, client, "l2_data", [{"type": "update", "product_id": product, "updates": updates}])

    def _ticker(self, product: str) -> dict:
        (bid, bid_quantity), (ask, ask_quantity) = self.market.books[product].best()
        history = self._history[product]
        last = _trimmed(history[-1].trade.price) if history else _price(bid)
        return {"type": "ticker", "product_id": product, "price": last, "volume_24_h": "0", "low_24_h": last, "high_24_h": last,
                "low_52_w": last, "high_52_w": last, "price_percent_chg_24_h": "0", "best_bid": _price(bid),
                "best_ask": _price(ask), "best_bid_quantity": _quantity(bid_quantity), "best_ask_quantity": _quantity(ask_quantity)}

    def _send(self, endpoint: _Endpoint, client: _Client, channel: str, events: list[dict]) -> None:
        """A numbered frame to the client (a scripted skip loses it: its number and what it carried)."""
        if endpoint.sequence_skips > 0:
            endpoint.sequence_skips -= 1
            client.sequence_num += 1
            return
        timestamp = _timestamp(time.time_ns())
        if channel == "l2_data":  # its levels are timed by the matching engine: here, when sent
            for event in events:
                for update in event["updates"]:
                    update["event_time"] = timestamp
        client.queue.put_nowait(json.dumps({"channel": channel, "client_id": "", "timestamp": timestamp,
                                            "sequence_num": client.sequence_num, "events": events}, separators=(",", ":")))
        client.sequence_num += 1
        if client.queue.qsize() > CLIENT_QUEUE_LIMIT:
            client.connection.transport.abort()

    # --- a client ---

    async def _http(self, endpoint: _Endpoint, connection: ServerConnection, request) -> Response | None:
        path = urlsplit(request.path)
        trades = TRADES_PATH.fullmatch(path.path)
        if trades is not None:
            return self._trades(endpoint, connection, unquote(trades.group(1)), parse_qs(path.query))
        if path.path != PATH:
            return _json(connection, {"message": "NotFound"}, HTTPStatus.NOT_FOUND)
        if endpoint.refusing:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "endpoint refuses new connections\n")
        return None

    async def _serve_client(self, endpoint: _Endpoint, connection: ServerConnection) -> None:
        if endpoint.flapping:
            connection.transport.abort()
            return
        client = _Client(connection)
        endpoint.clients.add(client)
        writer = asyncio.create_task(send_queued(client.connection, client.queue))
        deadline = asyncio.get_running_loop().call_later(SUBSCRIBE_WITHIN_SECONDS, self._close_unsubscribed, client)
        try:
            async for message in connection:
                self._handle_request(endpoint, client, message)
        except ConnectionClosed:
            pass
        finally:
            deadline.cancel()
            endpoint.clients.discard(client)
            writer.cancel()

    @staticmethod
    def _close_unsubscribed(client: _Client) -> None:
        if not client.subscriptions:
            client.connection.transport.abort()

    def _handle_request(self, endpoint: _Endpoint, client: _Client, message: str | bytes) -> None:
        try:
            request = json.loads(message)
            kind, channel, products = request["type"], request.get("channel"), request.get("product_ids", [])
            if kind not in ("subscribe", "unsubscribe") or not isinstance(products, list):
                raise ValueError(kind)
        except (ValueError, KeyError, TypeError):
            client.queue.put_nowait('{"type":"error","message":"subscribe or unsubscribe required"}')
            return
        if channel not in CHANNELS:
            client.queue.put_nowait('{"type":"error","message":"authentication failure"}')
            return
        known = {p for p in products if p in self.market.books} if channel != "heartbeats" else {"heartbeats"}
        if kind == "unsubscribe":  # with no product ids: the whole channel
            held = client.subscriptions.get(channel, set())
            gone = known if products else set(held)
            held -= gone
            if channel == "level2":
                for product in gone:
                    client.books.pop(product, None)
            if not held:
                client.subscriptions.pop(channel, None)
            self._acknowledge(endpoint, client)
            return
        new = known - client.products(channel)
        client.subscriptions.setdefault(channel, set()).update(known)
        self._acknowledge(endpoint, client)
        for frame in self._snapshots(channel, sorted(new), client):
            self._send(endpoint, client, *frame)

    def _acknowledge(self, endpoint: _Endpoint, client: _Client) -> None:
        held = {channel: sorted(products) for channel, products in sorted(client.subscriptions.items())}
        self._send(endpoint, client, "subscriptions", [{"subscriptions": held}])

    def _snapshots(self, channel: str, products: list[str], client: _Client) -> list[tuple[str, list[dict]]]:
        if channel == "market_trades" and products:
            # the last trades already sent in a batch: those not yet sent come in the next one
            recent = [_trade(p, t) for p in products for t in reversed(_sent(self._history[p], self._unsent[p]))]
            return [("market_trades", [{"type": "snapshot", "trades": recent}])]
        if channel == "ticker" and products:
            return [("ticker", [{"type": "snapshot", "tickers": [self._ticker(p) for p in products]}])]
        if channel == "status" and products:
            described = [{"product_type": "SPOT", "id": p, "base_currency": p.split("-")[0], "quote_currency": p.split("-")[1],
                          "base_increment": "0.00000001", "quote_increment": "0.01", "display_name": p.replace("-", "/"),
                          "status": "online", "status_message": "", "min_market_funds": "1"} for p in products]
            return [("status", [{"type": "snapshot", "products": described}])]
        frames = []
        for product in products if channel == "level2" else ():
            book = self.market.books[product]
            client.books[product] = (dict(book.bids), dict(book.asks))
            # the whole book, its sides interleaved as Coinbase sends them
            bids, asks = _levels("bid", book.bids.items()), _levels("offer", book.asks.items())
            if self._padding:  # a thousand dollars beyond each side's far end, a cent apart
                far_bid, far_ask = min(book.bids) - PADDING_GAP_CENTS, max(book.asks) + PADDING_GAP_CENTS
                bids += _levels("bid", ((price, UNITS) for price in range(far_bid, max(far_bid - self._padding, 0), -1)))
                asks += _levels("offer", ((price, UNITS) for price in range(far_ask, far_ask + self._padding)))
            updates = [level for pair in zip(asks, bids, strict=False) for level in pair] + asks[len(bids):] + bids[len(asks):]
            frames.append(("l2_data", [{"type": "snapshot", "product_id": product, "updates": updates}]))
        return frames

    def _trades(self, endpoint: _Endpoint, connection: ServerConnection, product: str, query: dict) -> Response:
        endpoint.history_requests.append(time.monotonic())
        if endpoint.history_refusals > 0:
            endpoint.history_refusals -= 1
            return _json(connection, {"message": "Public rate limit exceeded"}, HTTPStatus.TOO_MANY_REQUESTS)
        if product not in self._history:
            return _json(connection, {"message": "NotFound"}, HTTPStatus.NOT_FOUND)
        try:
            after = int(query["after"][0]) if "after" in query else None
            limit = max(1, min(int(query.get("limit", [str(MAX_TRADES_PER_PAGE)])[0]), MAX_TRADES_PER_PAGE))
        except ValueError:
            return _json(connection, {"message": "Invalid after or limit"}, HTTPStatus.BAD_REQUEST)
        below = [t for t in self._history[product] if after is None or t.trade.trade_id < after]
        rows = below[-limit:][::-1]
        response = _json(connection, [{"time": _timestamp(t.time_us * 1000), "trade_id": t.trade.trade_id,
                                       "price": _trimmed(t.trade.price), "size": _trimmed(t.trade.quantity),
                                       "side": "buy" if t.trade.buyer_is_maker else "sell"} for t in rows], HTTPStatus.OK)
        if rows:
            response.headers["CB-BEFORE"], response.headers["CB-AFTER"] = str(rows[0].trade.trade_id), str(rows[-1].trade.trade_id)
        return response


class CoinbaseEndpointControl(Controls[_Endpoint]):
    """Scripted faults for one endpoint; safe to call from any thread."""

    def skip_sequence(self) -> None:
        """Lose the next frame to each connection: its number is left out and what it carried
        (a trade batch, a ticker, a book update) is never sent."""
        self._endpoint.sequence_skips += 1

    def refuse_history(self, times: int) -> None:
        """Answer the next `times` REST trades requests with HTTP 429."""
        self._endpoint.history_refusals += times

    def history_request_times(self) -> list[float]:
        return list(self._endpoint.history_requests)


def _trade(product: str, timed: TimedTrade) -> dict:
    trade = timed.trade
    return {"product_id": product, "trade_id": str(trade.trade_id), "price": _trimmed(trade.price),
            "size": _trimmed(trade.quantity), "time": _timestamp(timed.time_us * 1000),
            "side": "BUY" if trade.buyer_is_maker else "SELL"}  # the maker's side


def _sent(history: collections.deque[TimedTrade], unsent: list[TimedTrade]) -> list[TimedTrade]:
    """The last TRADE_SNAPSHOT trades of `history` before those not yet sent."""
    trades = list(history)
    return trades[:len(trades) - len(unsent)][-TRADE_SNAPSHOT:]


def _changes(side: str, sent: dict[int, int], now: dict[int, int]) -> list[dict]:
    changed = [(price, quantity) for price, quantity in now.items() if sent.get(price) != quantity]
    return _levels(side, changed + [(price, 0) for price in sent.keys() - now.keys()])


def _levels(side: str, levels: Iterable[tuple[int, int]]) -> list[dict]:
    return [{"side": side, "event_time": "", "price_level": _price(price), "new_quantity": _quantity(quantity)}
            for price, quantity in levels]


def _price(cents: int) -> str:
    return _trimmed(f"{cents // 100}.{cents % 100:02d}")


def _quantity(units: int) -> str:
    return _trimmed(units_text(units))


def _trimmed(decimal: str) -> str:
    """Coinbase writes its numbers without trailing zeros: 88355.5, 64281, 0.5."""
    return decimal.rstrip("0").rstrip(".") if "." in decimal else decimal


def _timestamp(nanoseconds: int) -> str:
    """RFC 3339 to the nanosecond, trailing zeros cut, as Coinbase writes its times."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    digits = f"{fraction:09d}".rstrip("0")
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (f".{digits}" if digits else "") + "Z"


def _json(connection: ServerConnection, payload: object, status: HTTPStatus) -> Response:
    response = connection.respond(status, json.dumps(payload, separators=(",", ":")))
    del response.headers["Content-Type"]  # respond() says text/plain
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response
