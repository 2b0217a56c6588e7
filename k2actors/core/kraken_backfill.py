"""Filling a gap in a Kraken pair's trade ids from its REST history, page by page.

Kraken serves trades by time, not by id (`GET /0/public/Trades?pair=&since=&count=`: the
trades after `since`, in nanoseconds, at most 1000, and `last`, the `since` of the next
page). A gap of ids after trade t is asked for from a microsecond before t's time (so that
`since` being exclusive or not makes no difference, nor REST's times having digits below
the microsecond that the stream's have not: t comes again, a duplicate), and
paged on `last` (again a nanosecond before it: trades of the same time that did not fit the
page come on the next) until a trade past the gap's last id shows the gap is behind: what
the pages did not have is then known to be unserved. A page that does not move on means
the history ends there: the rest of the gap is unserved too.

`KrakenBackfill` asks for the pages (k2actors.core.paged_backfill) at most once a second,
which Kraken serves without throttling (it publishes no limit for public endpoints).
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from k2actors.core.backfill import (
    PAGE_LIMIT,
    BackfillEvent,
    Page,
    RestReply,
    holes,
)
from k2actors.core.frames import Rejected
from k2actors.core.kraken import TRADE_STREAM, VENUE, HistoryPage, HistoryRefused, KrakenTrade, historical_trades
from k2actors.core.paged_backfill import PagedBackfill, PageOf, Throttle, TradeIdGap, Unusable
from k2actors.core.telemetry import MetricBuffer

TRADES_PATH = "/0/public/Trades"


@dataclass
class KrakenGapFill(TradeIdGap):
    """One gap of `pair`'s trade ids (`symbol`: its records'), the trade before it seen at `after_us`."""

    symbol: str
    pair: str
    first_id: int
    last_id: int
    after_us: int
    since_ns: int = field(init=False)  # the next page's `since`
    next_id: int = field(init=False)  # the first id not yet filled or found unserved

    def __post_init__(self) -> None:
        self.since_ns = (self.after_us - 1) * 1000
        self.next_id = self.first_id

    venue = VENUE
    stream = TRADE_STREAM

    @property
    def done(self) -> bool:
        return self.next_id > self.last_id

    def give_up(self) -> tuple[int, int]:
        """The ids still unfilled, now abandoned."""
        remaining = (self.next_id, self.last_id)
        self.next_id = self.last_id + 1
        return remaining

    def target(self) -> str:
        """The path and query of the next page."""
        # assetVersion=1: the pair named as the WebSocket names it, not as XXBTZUSD
        query = {"pair": self.pair, "since": self.since_ns, "count": PAGE_LIMIT, "assetVersion": 1}
        return f"{TRADES_PATH}?" + urllib.parse.urlencode(query)

    def read(self, reply: RestReply) -> PageOf | Throttle | Unusable | None:
        if reply.status != 200:
            return None
        parsed = historical_trades(reply.body, self.pair)
        if isinstance(parsed, HistoryPage):
            return PageOf(self.take(parsed), tuple(row for row in parsed.trades if isinstance(row, Rejected)))
        if isinstance(parsed, HistoryRefused):
            return Throttle(parsed.errors) if parsed.rate_limited else Unusable("; ".join(parsed.errors))
        return Unusable(f"{parsed.reason}: {parsed.detail}")

    def take(self, page: HistoryPage) -> Page[KrakenTrade]:
        """A page asked for with `target()`: the gap's trades it has, in id order, and the ids
        it shows cannot be had."""
        by_id = {trade.trade_id: trade for trade in page.trades if isinstance(trade, KrakenTrade)}
        inside = sorted(i for i in by_id if self.next_id <= i <= self.last_id)
        unserved, expected = holes(self.next_id, inside)
        past_the_gap = any(i > self.last_id for i in by_id)
        stuck = page.last - 1 <= self.since_ns
        if (past_the_gap or stuck) and expected <= self.last_id:
            unserved.append((expected, self.last_id))
            expected = self.last_id + 1
        self.next_id = expected
        self.since_ns = max(page.last - 1, self.since_ns)
        return Page([by_id[i] for i in inside], unserved)


# Kraken publishes no limit for its public REST endpoints; one request a second is served
# without throttling.
REQUEST_INTERVAL_SECONDS = 1.0


class KrakenBackfill(PagedBackfill[KrakenGapFill]):
    def __init__(self, rest_url: str, metrics: MetricBuffer, max_age_seconds: float, draw: Callable[[], float] = random.random):
        super().__init__(VENUE, "Kraken's history", rest_url, REQUEST_INTERVAL_SECONDS, metrics, draw)
        self._max_age_us = int(max_age_seconds * 1_000_000)

    def add(self, symbol: str, pair: str, first_id: int, last_id: int, after_us: int | None, now: float,
            now_us: int) -> list[BackfillEvent]:
        """A gap of `pair`'s ids after a trade made at `after_us` (None: not known, as after a
        restart). History is asked for no further back than the backfill window: ids that
        lie before it are reported unserved."""
        window_starts = now_us - self._max_age_us
        after = window_starts if after_us is None else max(after_us, window_starts)
        return self.enqueue(KrakenGapFill(symbol, pair, first_id, last_id, after), now)
