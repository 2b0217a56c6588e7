"""Filling a gap in a Coinbase product's trade ids from its REST history, page by page.

Coinbase's Advanced Trade API pages its public trades by time only; Coinbase Exchange's
`GET /products/<id>/trades?after=<id>&limit=1000` pages them by trade id, in the same id
space as the WebSocket's: the (at most 1000) trades with ids below `after`, newest first.
A gap is asked for from its end, `after` = its last id + 1, and paged on each page's oldest
id until a page reaches the gap's first id; ids a page spans and does not hold, and the
rest of the gap when a page comes back empty, are not served.

`CoinbaseBackfill` asks for the pages (k2actors.core.paged_backfill) at most four times a
second, under the ten a second Coinbase allows an IP for public endpoints; HTTP 429 is its
throttle.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from k2actors.core.backfill import PAGE_LIMIT, BackfillEvent, Page, RestReply, holes
from k2actors.core.coinbase import TRADE_STREAM, VENUE, CoinbaseTrade, HistoryPage, historical_trades
from k2actors.core.paged_backfill import PagedBackfill, PageOf, Throttle, TradeIdGap, Unusable
from k2actors.core.telemetry import MetricBuffer

TOO_MANY_REQUESTS = 429
# Where its pages are asked for: PRODUCTS_PATH + <product id> + /trades (the raw record names them so).
PRODUCTS_PATH = "/products/"
REQUEST_INTERVAL_SECONDS = 0.25


@dataclass
class CoinbaseGapFill(TradeIdGap):
    """One gap of `product_id`'s trade ids (`symbol`: its records')."""

    symbol: str
    product_id: str
    first_id: int
    last_id: int
    after: int = field(init=False)  # the next page's `after`: every id from it on is filled or found unserved

    def __post_init__(self) -> None:
        self.after = self.last_id + 1

    venue = VENUE
    stream = TRADE_STREAM

    @property
    def done(self) -> bool:
        return self.after <= self.first_id

    def give_up(self) -> tuple[int, int]:
        """The ids still unfilled, now abandoned."""
        remaining = (self.first_id, self.after - 1)
        self.after = self.first_id
        return remaining

    def target(self) -> str:
        """The path and query of the next page."""
        query = urllib.parse.urlencode({"after": self.after, "limit": PAGE_LIMIT})
        return f"{PRODUCTS_PATH}{urllib.parse.quote(self.product_id)}/trades?{query}"

    def read(self, reply: RestReply) -> PageOf | Throttle | Unusable | None:
        if reply.status == TOO_MANY_REQUESTS:
            return Throttle((f"HTTP {TOO_MANY_REQUESTS} {reply.body[:100].decode(errors='replace')}",))
        if reply.status != 200:
            return None
        parsed = historical_trades(reply.body, self.product_id)
        if not isinstance(parsed, HistoryPage):
            return Unusable(f"{parsed.reason}: {parsed.detail}")
        return PageOf(self.take(parsed), tuple(row for row in parsed.trades if not isinstance(row, CoinbaseTrade)))

    def take(self, page: HistoryPage) -> Page[CoinbaseTrade]:
        """A page asked for with `target()`: the gap's trades it has, in id order, and the ids
        it shows cannot be had."""
        by_id = {trade.trade_id: trade for trade in page.trades if isinstance(trade, CoinbaseTrade)}
        oldest = page.oldest_id
        # A page that does not move on (empty, or nothing below `after`) is where the history ends.
        reached = max(self.first_id, oldest) if oldest is not None and oldest < self.after else self.first_id
        inside = sorted(i for i in by_id if reached <= i < self.after)
        unserved, expected = holes(reached, inside)
        if expected < self.after:
            unserved.append((expected, self.after - 1))
        self.after = reached
        return Page([by_id[i] for i in inside], unserved)


class CoinbaseBackfill(PagedBackfill[CoinbaseGapFill]):
    def __init__(self, rest_url: str, metrics: MetricBuffer, draw: Callable[[], float] = random.random):
        super().__init__(VENUE, "Coinbase's history", rest_url, REQUEST_INTERVAL_SECONDS, metrics, draw)

    def add(self, symbol: str, product_id: str, first_id: int, last_id: int, now: float) -> list[BackfillEvent]:
        """A gap of `product_id`'s ids."""
        return self.enqueue(CoinbaseGapFill(symbol, product_id, first_id, last_id), now)
