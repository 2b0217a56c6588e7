"""What the venue simulators share: one market served by several endpoints (each on a port
of its own, like a venue's mirrors) from an event loop on a thread of its own, and the
faults every endpoint can be scripted with: drop, stall, flap, refuse."""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

if TYPE_CHECKING:
    from k2actors.localstack.simulator import SimTrade


class Market(Protocol):
    """The simulators' market (k2actors.localstack.simulator.Market), as served here."""

    symbols: tuple[str, ...]

    def last_id(self, symbol: str) -> int: ...


@dataclass(frozen=True, slots=True)
class TimedTrade:
    """A trade of the market, timed to the microsecond as Kraken's and Coinbase's are: the
    trades of one tick are a microsecond apart."""

    trade: SimTrade
    time_us: int


async def send_queued(connection: ServerConnection, queue: asyncio.Queue[str], sent: Callable[[], None] = lambda: None) -> None:
    """A client's frames, in the order queued, until its connection closes; `sent` told of each."""
    try:
        while True:
            await connection.send(await queue.get())
            sent()
    except ConnectionClosed:
        pass


class Endpoint:
    def __init__(self, index: int):
        self.index = index
        self.clients: set[Any] = set()  # the simulator's clients, each with its `connection`
        self.stalled = False  # sockets open, nothing sent
        self.refusing = False  # new connections answered with HTTP 503
        self.flapping = False  # each new connection dropped once its handshake is done
        self.server: Server | None = None
        self.port = 0


E = TypeVar("E", bound=Endpoint)
M = TypeVar("M", bound=Market)


class ServedMarket(Generic[E, M]):
    """Its endpoints' servers, on the loop's thread; `call` runs a coroutine there from any thread."""

    def __init__(self, market: M, endpoints: list[E], host: str, first_port: int, tls: ssl.SSLContext | None,
                 name: str, path: str):
        """`path`: the WebSocket's, on every endpoint."""
        self.market = market
        self._path = path
        self.host = host
        self._endpoints = endpoints
        self._first_port = first_port  # endpoint i listens on first_port + i; 0: each on a free port
        self._tls = tls  # a server context: wss:// and https:// instead of ws:// and http://
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        self.call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    @property
    def urls(self) -> list[str]:
        """Each endpoint's WebSocket URL, as config expects it."""
        scheme = "wss" if self._tls else "ws"
        return [f"{scheme}://{self.host}:{endpoint.port}{self._path}" for endpoint in self._endpoints]

    def last_ids(self) -> dict[str, int]:
        return self.call(self._last_ids())

    def rest_url(self, index: int = 0) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self._endpoints[index].port}"

    # --- for the simulators, on the loop ---

    async def _start(self) -> None:
        raise NotImplementedError

    async def _listen(self, serve_client: Callable[[E, ServerConnection], Awaitable[None]],
                      answer_http: Callable[[E, ServerConnection, Request], Awaitable[Response | None]]) -> None:
        """Every endpoint listening: websocket clients to `serve_client`, every HTTP request
        (REST, and each websocket handshake first) to `answer_http`."""
        for endpoint in self._endpoints:
            server = endpoint.server = await serve(
                functools.partial(serve_client, endpoint), self.host, self._first_port + endpoint.index if self._first_port else 0,
                process_request=functools.partial(answer_http, endpoint),
                ping_interval=None,  # each venue's own pings, or none
                max_size=2**20, compression=None, ssl=self._tls)
            endpoint.port = server.sockets[0].getsockname()[1]

    async def _last_ids(self) -> dict[str, int]:
        return {s: self.market.last_id(s) for s in self.market.symbols}

    async def _stop(self) -> None:
        self._stopping = True
        servers = [endpoint.server for endpoint in self._endpoints if endpoint.server is not None]
        for server in servers:
            server.close()
        for endpoint in self._endpoints:
            for client in list(endpoint.clients):
                client.connection.transport.abort()
        for server in servers:
            await server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Controls(Generic[E]):
    """Scripted faults for one endpoint; safe to call from any thread."""

    def __init__(self, served: ServedMarket[E, Any], endpoint: E):
        self._served = served
        self._endpoint = endpoint

    def client_count(self) -> int:
        return self._served.call(self._count())

    def drop(self) -> None:
        """Cut every connection without a close frame."""
        self._each(lambda client: client.connection.transport.abort())

    def stall(self, stalled: bool = True) -> None:
        """Keep sockets open but send nothing at all, pings and heartbeats included."""
        self._endpoint.stalled = stalled

    def flap(self, flapping: bool = True) -> None:
        """Complete each new websocket handshake, then drop the connection at once."""
        self._endpoint.flapping = flapping

    def refuse(self, refusing: bool = True) -> None:
        """Answer new connection attempts with HTTP 503."""
        self._endpoint.refusing = refusing

    def _each(self, action: Callable[[Any], object]) -> None:
        self._served.call(self._for_each(action))

    async def _count(self) -> int:
        return len(self._endpoint.clients)

    async def _for_each(self, action: Callable[[Any], object]) -> None:
        for client in list(self._endpoint.clients):
            action(client)
