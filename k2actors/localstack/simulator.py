"""A Binance-compatible spot exchange simulator: streams, pings, limits, faults, REST history.

One live market (per symbol: consecutive trade ids on a shared clock) served by several
endpoints on their own ports, like Binance's mirrors, so a client that is disconnected
misses what happened meanwhile. Each endpoint serves:

- `/stream?streams=btcusdt@trade/...` (combined envelope) and `/ws/<stream>[/<stream>...]`,
  for the trade, aggTrade, bookTicker and depth@100ms streams of each symbol (aggregate
  trades group a tick's consecutive trades at one price and side; each trade moves the
  symbol's order book, k2actors.localstack.orderbook, whose touch bookTicker reports and
  whose updates the depth stream sends as a diff every 100 ms);
- a ping every `ping_interval` seconds with a payload the pong must echo, and a drop of
  clients that do not answer within `pong_timeout`;
- SUBSCRIBE, UNSUBSCRIBE and LIST_SUBSCRIPTIONS; Binance's limits (5 incoming messages per
  second, 1024 streams per connection) enforced with close code 1008;
- scripted faults (`EndpointControl`): drop without a close frame, stall with the socket
  open, a handshake followed by a drop (flapping), a serverShutdown event, refusal of new
  connections, error replies to SUBSCRIBE, malformed frames, a depth diff left out;
- REST `GET /api/v3/historicalTrades`, `/api/v3/aggTrades` and `/api/v3/exchangeInfo` from
  the same history, and `/api/v3/depth` from the order book, with Binance's
  `X-MBX-USED-WEIGHT-1M` header, and scripted refusals (429, 418, 5xx) with Retry-After; a
  depth snapshot can also be served stale or late;
- `GET /control/rate?per_symbol=N`, which is no Binance path: the market's trades a second per
  symbol from now on, for whoever runs the simulator as a process (the compose check loads
  the stack with it).

With `tape=PATH` the endpoints replay a JSONL file of raw messages instead of the live
market, each line as one frame, in tape order, encoded once and written to the socket in
large writes (so a replay runs at the speed of the receiver, not of one send() per frame). A line in the combined envelope
(`{"stream":"btcusdt@trade",...}`) goes to the connections subscribed to its stream, from
the moment they subscribe (in the URL or by SUBSCRIBE), as Binance would send it; any other
line (garbage included) goes to every connection when it opens.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import ssl
import struct
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from k2actors.core.binance import MAX_DEPTH_LIMIT, depth_weight
from k2actors.localstack.orderbook import SimBook, cents_text, snapshot_body, units_text
from k2actors.localstack.serving import Controls, Endpoint, ServedMarket

MAX_STREAMS_PER_CONNECTION = 1024
DEPTH_STREAM = "depth@100ms"
DEPTH_INTERVAL_MS = 100
MAX_INCOMING_PER_SECOND = 5
HISTORY_PER_SYMBOL = 200_000
CONTROL_RATE_PATH = "/control/rate"
CLIENT_QUEUE_LIMIT = 100_000  # frames queued for one client before it counts as too slow
REPLAY_CHUNK_BYTES = 256 * 1024  # a replay's writes: whole frames, about this many bytes each
REPLAY_BUFFER_BYTES = 4 * 1024 * 1024  # unsent bytes a replay lets pile up before it waits
_START_PRICES_CENTS = {"BTC": 4_300_000, "ETH": 230_000, "BNB": 31_000, "SOL": 15_000}  # by base asset, whatever the venue's spelling
_QUOTES = ("USDT", "USDC", "FDUSD", "EURI", "BTC", "ETH", "BNB", "EUR", "USD")


@dataclass(frozen=True, slots=True)
class SimTrade:
    trade_id: int
    price: str
    quantity: str
    time_ms: int
    buyer_is_maker: bool


Touch = tuple[int, tuple[int, int], tuple[int, int]]  # (update id, (bid, quantity), (ask, quantity)) in cents and 1e-8


class Market:
    """The live market every endpoint serves: trades arrive on the clock at `rate` per symbol."""

    def __init__(self, symbols: tuple[str, ...], rate: float, seed: int = 7):
        self.symbols = symbols
        self.rate = rate
        self._random = random.Random(seed)
        self._price = {s: next((cents for base, cents in _START_PRICES_CENTS.items() if s.startswith(base)), 10_000)
                       for s in symbols}
        self._next_id = {s: 1_000_000 + 1000 * i for i, s in enumerate(symbols)}
        self._due = {s: 0.0 for s in symbols}
        self._history: dict[str, collections.deque[SimTrade]] = {s: collections.deque(maxlen=HISTORY_PER_SYMBOL) for s in symbols}
        self._next_agg_id = {s: 500_000 + 1000 * i for i, s in enumerate(symbols)}
        self._agg_history: dict[str, collections.deque[dict[str, object]]] = {
            s: collections.deque(maxlen=HISTORY_PER_SYMBOL) for s in symbols}
        # The order books move with the trades, from a random source of their own: the trades
        # are the same with or without anyone watching the books.
        book_random = random.Random(seed + 1)
        self.books = {s: SimBook(self._price[s], 7_000_000 + 1000 * i, book_random) for i, s in enumerate(symbols)}
        # The touch after each trade since the last taken: (update id, best bid, best ask)
        self._touches: dict[str, list[Touch]] = {s: [] for s in symbols}
        self._last_tick: float | None = None
        self._depth_due_ms = 0

    def tick(self, now: float) -> list[tuple[str, SimTrade]]:
        """The trades that happened since the last tick."""
        elapsed = 0.0 if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        trades = []
        time_ms = int(now * 1000)
        for symbol in self.symbols:
            self._due[symbol] += elapsed * self.rate
            count = int(self._due[symbol])
            self._due[symbol] -= count
            for _ in range(count):
                trades.append((symbol, self._new_trade(symbol, time_ms)))
        return trades

    def _new_trade(self, symbol: str, time_ms: int) -> SimTrade:
        step = max(self._price[symbol] // 20_000, 1)
        self._price[symbol] = max(self._price[symbol] + self._random.randint(-step, step), 1)
        trade = SimTrade(
            trade_id=self._next_id[symbol],
            price=cents_text(self._price[symbol]),
            quantity=units_text(self._random.randint(1_000, 50_000_000)),
            time_ms=time_ms,
            buyer_is_maker=self._random.random() < 0.5,
        )
        self._next_id[symbol] += 1
        self._history[symbol].append(trade)
        book = self.books[symbol]
        book.trade(self._price[symbol])
        self._touches[symbol].append((book.update_id, *book.best()))
        return trade

    def frames(self, trades: list[tuple[str, SimTrade]], event_ms: int) -> dict[str, list[str]]:
        """Stream name -> payloads, for every stream of the symbols that traded."""
        frames: dict[str, list[str]] = {}
        by_symbol: dict[str, list[SimTrade]] = {}
        for symbol, trade in trades:
            by_symbol.setdefault(symbol, []).append(trade)
        for symbol, symbol_trades in by_symbol.items():
            name = symbol.lower()
            frames[f"{name}@trade"] = [trade_payload(symbol, trade, event_ms) for trade in symbol_trades]
            frames[f"{name}@aggTrade"] = [self._agg_payload(symbol, run, event_ms) for run in _runs(symbol_trades)]
            frames[f"{name}@bookTicker"] = [_book_ticker_payload(symbol, touch) for touch in self.take_touches(symbol)]
        return frames

    def depth_frames(self, now_ms: int) -> dict[str, list[str]]:
        """Stream name -> payloads of `<symbol>@depth@100ms`: every 100 ms, a diff of each
        book that changed."""
        if now_ms < self._depth_due_ms:
            return {}
        self._depth_due_ms = now_ms + DEPTH_INTERVAL_MS
        frames = {}
        for symbol, book in self.books.items():
            payload = book.diff_payload(symbol, now_ms)
            if payload is not None:
                frames[f"{symbol.lower()}@{DEPTH_STREAM}"] = [payload]
        return frames

    def _agg_payload(self, symbol: str, run: list[SimTrade], event_ms: int) -> str:
        agg_id = self._next_agg_id[symbol]
        self._next_agg_id[symbol] += 1
        units = sum(int(t.quantity.replace(".", "")) for t in run)
        first = run[0]
        row = {"a": agg_id, "p": first.price, "q": units_text(units), "f": first.trade_id, "l": run[-1].trade_id,
               "T": first.time_ms, "m": first.buyer_is_maker, "M": True}
        self._agg_history[symbol].append(row)  # what GET /api/v3/aggTrades serves
        return json.dumps({"e": "aggTrade", "E": event_ms, "s": symbol, **row}, separators=(",", ":"))

    def take_touches(self, symbol: str) -> list[Touch]:
        """The touch after each of `symbol`'s trades since last taken."""
        touches, self._touches[symbol] = self._touches[symbol], []
        return touches

    def last_id(self, symbol: str) -> int:
        return self._next_id[symbol] - 1

    def agg_history(self, symbol: str, from_id: int | None, limit: int, start_ms: int | None = None) -> list[dict[str, object]]:
        rows = self._agg_history[symbol]
        if start_ms is not None:  # Binance: from the first aggregate trade at or after startTime
            return [row for row in rows if int(str(row["T"])) >= start_ms][:limit]
        if not rows:
            return []
        if from_id is None:
            return list(rows)[-limit:]
        start = max(from_id - int(str(rows[0]["a"])), 0)
        return [rows[i] for i in range(start, min(start + limit, len(rows)))]

    def history(self, symbol: str, from_id: int | None, limit: int) -> list[SimTrade]:
        trades = self._history[symbol]
        if not trades:
            return []
        if from_id is None:
            return list(trades)[-limit:]
        start = max(from_id - trades[0].trade_id, 0)
        return [trades[i] for i in range(start, min(start + limit, len(trades)))]


def _book_ticker_payload(symbol: str, touch: Touch) -> str:
    update_id, (bid, bid_quantity), (ask, ask_quantity) = touch
    return (
        f'{{"u":{update_id},"s":"{symbol}","b":"{cents_text(bid)}","B":"{units_text(bid_quantity)}",'
        f'"a":"{cents_text(ask)}","A":"{units_text(ask_quantity)}"}}'
    )


def _runs(trades: list[SimTrade]) -> list[list[SimTrade]]:
    """Consecutive trades at one price and side: one aggregate trade each."""
    runs: list[list[SimTrade]] = []
    for trade in trades:
        if runs and (runs[-1][-1].price, runs[-1][-1].buyer_is_maker) == (trade.price, trade.buyer_is_maker):
            runs[-1].append(trade)
        else:
            runs.append([trade])
    return runs


def trade_payload(symbol: str, trade: SimTrade, event_ms: int) -> str:
    return (
        f'{{"e":"trade","E":{event_ms},"s":"{symbol}","t":{trade.trade_id},"p":"{trade.price}",'
        f'"q":"{trade.quantity}","T":{trade.time_ms},"m":{"true" if trade.buyer_is_maker else "false"},"M":true}}'
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """Tape lines as websocket text frames, cut into writes at frame boundaries only: the
    connection's own frames (pings, replies) may go out between two writes."""

    writes: tuple[bytes, ...]
    frames: int


def _prepare(lines: list[str]) -> _Prepared:
    writes: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for line in lines:
        payload = line.encode()
        length = len(payload)
        if length < 126:
            header = bytes((0x81, length))  # FIN + text; a server's frames are not masked
        elif length < 65536:
            header = struct.pack("!BBH", 0x81, 126, length)
        else:
            header = struct.pack("!BBQ", 0x81, 127, length)
        pending += (header, payload)
        size += len(header) + length
        if size >= REPLAY_CHUNK_BYTES:
            writes.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        writes.append(b"".join(pending))
    return _Prepared(tuple(writes), len(lines))


class _Client:
    def __init__(self, connection: ServerConnection, streams: set[str], combined: bool):
        self.connection = connection
        self.streams = streams
        self.combined = combined
        self.queue: asyncio.Queue[str | _Prepared] = asyncio.Queue()
        self.incoming: collections.deque[float] = collections.deque()


# What a depth snapshot request is answered with instead of the book now: STALE, a delay in
# seconds, or (HTTP status, Retry-After).
SnapshotFault = str | float | tuple[int, float | None]


class _Endpoint(Endpoint):
    def __init__(self, index: int):
        super().__init__(index)
        self.subscriptions_refused = 0  # SUBSCRIBE requests still to be refused
        self.history_faults: collections.deque[tuple[int, float | None]] = collections.deque()  # (status, Retry-After)
        self.history_requests: list[float] = []  # when each historicalTrades request came (monotonic)
        self.weights: list[tuple[float, int]] = []  # (when, weight) of the weighed REST requests of the last minute
        self.snapshot_faults: collections.deque[SnapshotFault] = collections.deque()
        self.diffs_to_drop: set[str] = set()  # depth streams whose next diff this endpoint does not send


class ExchangeSimulator(ServedMarket[_Endpoint, Market]):
    """`with ExchangeSimulator(symbols, rate=50, endpoints=2) as sim: sim.urls`"""

    def __init__(
        self,
        symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT"),
        rate: float = 20.0,
        endpoints: int = 2,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        tick: float = 0.01,
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        seed: int = 7,
        tls: ssl.SSLContext | None = None,
        port: int = 0,
    ):
        super().__init__(Market(tuple(symbols), rate, seed), [_Endpoint(i) for i in range(endpoints)], host, port, tls,
                         "exchange-simulator", "/stream")  # the combined-stream base URL, as config expects it
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self._tick = tick
        self._tape = [(_tape_stream(line), line) for line in Path(tape).read_text().splitlines()] if tape else None
        self._ticker: asyncio.Task | None = None
        # (frames, seconds) of each tape replay that reached its last write: the simulator's
        # own sending rate, reported apart from what a receiver made of it.
        self.replays: list[tuple[int, float]] = []

    def endpoint(self, index: int) -> EndpointControl:
        return EndpointControl(self, self._endpoints[index])

    def set_rate(self, rate: float) -> None:
        self.market.rate = rate

    # --- internals, all on the simulator's event loop ---

    async def _start(self) -> None:
        await self._listen(self._serve_client, self._http)  # Binance-style pings are sent by _ping_loop
        if self._tape is None:
            self._ticker = asyncio.get_running_loop().create_task(self._run_market())

    async def _run_market(self) -> None:
        while not self._stopping:
            now = time.time()
            now_ms = int(now * 1000)
            trades = self.market.tick(now)
            payloads = self.market.frames(trades, now_ms) if trades else {}
            payloads.update(self.market.depth_frames(now_ms))
            if payloads:
                self._broadcast(payloads)
            await asyncio.sleep(self._tick)

    def _broadcast(self, payloads: dict[str, list[str]]) -> None:
        frames = {
            stream: [(payload, f'{{"stream":"{stream}","data":{payload}}}') for payload in stream_payloads]
            for stream, stream_payloads in payloads.items()
        }
        for endpoint in self._endpoints:
            if endpoint.stalled:
                continue
            for client in list(endpoint.clients):
                for stream in client.streams & frames.keys():
                    if stream in endpoint.diffs_to_drop:  # a diff lost on this endpoint only
                        endpoint.diffs_to_drop.discard(stream)
                        continue
                    for raw, combined in frames[stream]:
                        client.queue.put_nowait(combined if client.combined else raw)
                if client.queue.qsize() > CLIENT_QUEUE_LIMIT:
                    client.connection.transport.abort()  # too slow to keep up: Binance drops it too

    async def _http(self, endpoint: _Endpoint, connection: ServerConnection, request):
        path = urlsplit(request.path)
        if path.path in _HISTORY_WEIGHTS:
            return self._history(endpoint, connection, path.path, parse_qs(path.query))
        if path.path == "/api/v3/depth":
            return await self._depth(endpoint, connection, parse_qs(path.query))
        if path.path.startswith("/api/"):
            return _rest(self.market, connection, path.path, parse_qs(path.query))
        if path.path == CONTROL_RATE_PATH:
            return self._control_rate(connection, parse_qs(path.query))
        if endpoint.refusing:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "endpoint refuses new connections\n")
        streams = _requested_streams(path.path, parse_qs(path.query))
        if streams is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown path\n")
        if len(streams) > MAX_STREAMS_PER_CONNECTION:
            return connection.respond(HTTPStatus.BAD_REQUEST, "too many streams\n")
        return None

    def _control_rate(self, connection: ServerConnection, query: dict) -> Response:
        try:
            rate = float(query["per_symbol"][0])
        except (KeyError, ValueError):
            rate = -1.0
        if not rate >= 0:  # NaN included
            return connection.respond(HTTPStatus.BAD_REQUEST, "per_symbol: trades a second per symbol, a number >= 0\n")
        self.set_rate(rate)
        return _answer(connection, HTTPStatus.OK, {"per_symbol": rate})

    def _history(self, endpoint: _Endpoint, connection: ServerConnection, path: str, query: dict):
        """historicalTrades or aggTrades, with Binance's weight header and any scripted refusals."""
        endpoint.history_requests.append(time.monotonic())
        if endpoint.history_faults:
            return _refusal(connection, *endpoint.history_faults.popleft())
        return _weighed(endpoint, _rest(self.market, connection, path, query), _HISTORY_WEIGHTS[path])

    async def _depth(self, endpoint: _Endpoint, connection: ServerConnection, query: dict):
        """GET /api/v3/depth: the book now, or as scripted: refused, stale, or late."""
        fault = endpoint.snapshot_faults.popleft() if endpoint.snapshot_faults else None
        if isinstance(fault, tuple):
            return _refusal(connection, *fault)
        symbol = query.get("symbol", [""])[0]
        try:
            limit = int(query.get("limit", ["100"])[0])
        except ValueError:
            limit = 0
        if symbol not in self.market.books:
            return _answer(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
        if not 1 <= limit <= MAX_DEPTH_LIMIT:
            return _answer(connection, 400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."})
        book = self.market.books[symbol]
        snapshot = book.stale_snapshot(limit) if fault == STALE else book.snapshot(limit)
        if isinstance(fault, float):  # taken now, answered late: the diffs meanwhile are past it
            await asyncio.sleep(fault)
        return _weighed(endpoint, _answer(connection, 200, snapshot_body(snapshot)), depth_weight(limit))

    async def _serve_client(self, endpoint: _Endpoint, connection: ServerConnection) -> None:
        if endpoint.flapping:  # a load balancer in front of a dead server: the handshake, then nothing
            connection.transport.abort()
            return
        assert connection.request is not None  # the handshake is done
        path = urlsplit(connection.request.path)
        streams = _requested_streams(path.path, parse_qs(path.query)) or []
        client = _Client(connection, set(streams), combined=path.path.startswith("/stream"))
        endpoint.clients.add(client)
        tasks = [
            asyncio.create_task(self._write(client)),
            asyncio.create_task(self._ping_loop(endpoint, client)),
        ]
        self._replay(client, client.streams, opening=True)
        try:
            async for message in connection:
                await self._handle_request(endpoint, client, message)
        except ConnectionClosed:
            pass
        finally:
            endpoint.clients.discard(client)
            for task in tasks:
                task.cancel()

    def _replay(self, client: _Client, streams: set[str], opening: bool = False) -> None:
        if self._tape is None:
            return
        lines = [line for stream, line in self._tape if stream in streams or (opening and stream is None)]
        if lines:
            client.queue.put_nowait(_prepare(lines))

    async def _write(self, client: _Client) -> None:
        try:
            while True:
                item = await client.queue.get()
                if isinstance(item, _Prepared):
                    await self._write_prepared(client, item)
                else:
                    await client.connection.send(item)
        except ConnectionClosed:
            pass

    async def _write_prepared(self, client: _Client, prepared: _Prepared) -> None:
        transport = client.connection.transport
        started = time.perf_counter()
        for data in prepared.writes:
            while transport.get_write_buffer_size() > REPLAY_BUFFER_BYTES:
                if transport.is_closing():
                    return
                await asyncio.sleep(0.001)  # the receiver is behind: TCP holds the rest back
            if transport.is_closing():
                return
            transport.write(data)
        self.replays.append((prepared.frames, time.perf_counter() - started))

    async def _ping_loop(self, endpoint: _Endpoint, client: _Client) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if endpoint.stalled:
                continue
            try:
                pong = await client.connection.ping(str(int(time.time() * 1000)))
                await asyncio.wait_for(pong, self.pong_timeout)
            except TimeoutError:
                client.connection.transport.abort()  # no pong in time: dropped, as Binance does
                return
            except ConnectionClosed:
                return

    async def _handle_request(self, endpoint: _Endpoint, client: _Client, message) -> None:
        now = time.monotonic()
        client.incoming.append(now)
        while client.incoming and now - client.incoming[0] > 1.0:
            client.incoming.popleft()
        if len(client.incoming) > MAX_INCOMING_PER_SECOND:
            await client.connection.close(1008, "Too many requests")
            return
        try:
            request = json.loads(message)
            method, request_id = request["method"], request.get("id")
            params = request.get("params", [])
        except (ValueError, KeyError, TypeError):
            await client.connection.send(json.dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": None}))
            return
        if method == "SUBSCRIBE" and endpoint.subscriptions_refused > 0:
            # As Binance's spot servers answer a stream they will not serve (captured in public
            # sessions): nested, with the request's id, and nothing subscribed.
            endpoint.subscriptions_refused -= 1
            await client.connection.send(json.dumps({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": request_id},
                                                    separators=(",", ":")))
            return
        if method == "SUBSCRIBE":
            streams = client.streams | set(params)
            if len(streams) > MAX_STREAMS_PER_CONNECTION:
                await client.connection.close(1008, "Too many streams")
                return
            self._replay(client, streams - client.streams)
            client.streams = streams
            reply = None
        elif method == "UNSUBSCRIBE":
            client.streams -= set(params)
            reply = None
        elif method == "LIST_SUBSCRIPTIONS":
            reply = sorted(client.streams)
        else:
            await client.connection.send(json.dumps({"error": {"code": 2, "msg": f"Unknown method {method}"}, "id": request_id}))
            return
        await client.connection.send(json.dumps({"result": reply, "id": request_id}))


def _tape_stream(line: str) -> str | None:
    """The stream of a tape line in the combined envelope, as the bench writes it; None otherwise."""
    prefix = '{"stream":"'
    if not line.startswith(prefix):
        return None
    end = line.find('"', len(prefix))
    return line[len(prefix) : end] if end > 0 else None


def _requested_streams(path: str, query: dict) -> list[str] | None:
    if path == "/stream":
        return [s for s in query.get("streams", [""])[0].split("/") if s]
    if path.startswith("/ws"):
        return [s for s in path[len("/ws") :].split("/") if s]
    return None


# Binance's request weight of each history endpoint.
_HISTORY_WEIGHTS = {"/api/v3/historicalTrades": 25, "/api/v3/aggTrades": 4}


# A scripted snapshot fault: older than every diff a client has buffered.
STALE = "stale"


def _answer(connection: ServerConnection, status: int, payload) -> Response:
    response = connection.respond(status, json.dumps(payload))
    response.headers["Content-Type"] = "application/json"
    return response


def _refusal(connection: ServerConnection, status: int, retry_after: float | None) -> Response:
    response = connection.respond(status, json.dumps({"code": -1003, "msg": f"scripted HTTP {status}"}))
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _weighed(endpoint: _Endpoint, response: Response, weight: int) -> Response:
    """Binance's X-MBX-USED-WEIGHT-1M: the weight of the requests of the last minute, this one's included."""
    now = time.monotonic()
    endpoint.weights = [(at, used) for at, used in endpoint.weights if now - at < 60] + [(now, weight)]
    response.headers["X-MBX-USED-WEIGHT-1M"] = str(sum(used for _, used in endpoint.weights))
    return response


def _rest(market: Market, connection: ServerConnection, path: str, query: dict):
    if path in _HISTORY_WEIGHTS:
        symbol = query.get("symbol", [""])[0]
        if symbol not in market.symbols:
            return _answer(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = min(int(query.get("limit", ["500"])[0]), 1000)
            from_id = int(query["fromId"][0]) if "fromId" in query else None
            start_ms = int(query["startTime"][0]) if "startTime" in query else None
        except ValueError:
            return _answer(connection, 400, {"code": -1100, "msg": "Illegal characters found in a parameter."})
        if path == "/api/v3/aggTrades":
            return _answer(connection, 200, market.agg_history(symbol, from_id, limit, start_ms))
        rows = [
            {"id": t.trade_id, "price": t.price, "qty": t.quantity, "time": t.time_ms,
             "isBuyerMaker": t.buyer_is_maker, "isBestMatch": True}
            for t in market.history(symbol, from_id, limit)
        ]
        return _answer(connection, 200, rows)
    if path == "/api/v3/exchangeInfo":
        wanted = query.get("symbol") or json.loads(query.get("symbols", ["null"])[0]) or list(market.symbols)
        symbols = []
        for symbol in wanted:
            quote = next((q for q in _QUOTES if symbol.endswith(q)), symbol[-4:])
            symbols.append({"symbol": symbol, "status": "TRADING", "baseAsset": symbol[: -len(quote)], "quoteAsset": quote})
        return _answer(connection, 200, {"timezone": "UTC", "serverTime": int(time.time() * 1000), "symbols": symbols})
    return _answer(connection, 404, {"code": -1, "msg": "Unknown endpoint."})


class EndpointControl(Controls[_Endpoint]):
    """Scripted faults for one endpoint; safe to call from any thread."""

    def __init__(self, simulator: ExchangeSimulator, endpoint: _Endpoint):
        super().__init__(simulator, endpoint)
        self._simulator = simulator

    @property
    def url(self) -> str:
        return self._simulator.urls[self._endpoint.index]

    def refuse_subscriptions(self, times: int) -> None:
        """Answer the next `times` SUBSCRIBE requests with an error reply, subscribing nothing."""
        self._endpoint.subscriptions_refused += times

    def refuse_history(self, status: int, times: int, retry_after: float | None = None) -> None:
        """Answer the next `times` historicalTrades requests with `status` (429, 418, 503...)."""
        self._endpoint.history_faults.extend([(status, retry_after)] * times)

    def history_request_times(self) -> list[float]:
        return list(self._endpoint.history_requests)

    def drop_diff(self, symbol: str) -> None:
        """Leave the next diff of `symbol`'s depth stream out, on this endpoint only."""
        self._endpoint.diffs_to_drop.add(f"{symbol.lower()}@{DEPTH_STREAM}")

    def stale_snapshots(self, times: int) -> None:
        """Answer the next `times` depth snapshot requests with a snapshot seconds old."""
        self._endpoint.snapshot_faults.extend([STALE] * times)

    def delay_snapshots(self, seconds: float, times: int) -> None:
        """Answer the next `times` depth snapshot requests `seconds` late (taken when asked)."""
        self._endpoint.snapshot_faults.extend([float(seconds)] * times)

    def refuse_snapshots(self, status: int, times: int, retry_after: float | None = None) -> None:
        """Answer the next `times` depth snapshot requests with `status` (429, 418, 5xx)."""
        self._endpoint.snapshot_faults.extend([(status, retry_after)] * times)

    def server_shutdown(self) -> None:
        event = json.dumps({"e": "serverShutdown", "E": int(time.time() * 1000)})
        self.send_raw([event])

    def send_raw(self, frames: list[str | bytes]) -> None:
        """Put frames, as given, into every client's stream (text or binary)."""
        self._each(lambda client: [client.queue.put_nowait(f) for f in frames])
