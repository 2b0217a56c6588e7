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

`KrakenBackfill` asks for the pages of every declared gap, one request at a time, within a
budget of its own (Kraken's, not Binance's): at most one request a second, which Kraken
serves without throttling (it publishes no limit for public endpoints), and when it answers
that it is throttled, a backoff that grows. A page that fails MAX_ATTEMPTS times running
gives its gap up; what is given up is reported with its range, never skipped in silence.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from k2actors.core.backfill import (
    MAX_ATTEMPTS,
    PAGE_LIMIT,
    RETRY_BASE_SECONDS,
    RETRY_MAX_SECONDS,
    BackfillEvent,
    GapStarted,
    OpenGaps,
    Page,
    PageFetched,
    RestReply,
    Unfilled,
    holes,
)
from k2actors.core.backoff import backoff_delay
from k2actors.core.frames import Rejected
from k2actors.core.kraken import TRADE_STREAM, VENUE, HistoryPage, HistoryRefused, KrakenTrade, historical_trades
from k2actors.core.payloads import BackfilledTrades
from k2actors.core.telemetry import LogLine, MetricBuffer

TRADES_PATH = "/0/public/Trades"


@dataclass
class KrakenGapFill:
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

    def __str__(self) -> str:
        return f"{VENUE} {self.symbol} ids {self.first_id} to {self.last_id}"

    def fields(self) -> dict[str, object]:
        """Its fields in a JSON log line."""
        return {"venue": VENUE, "symbol": self.symbol, "stream": TRADE_STREAM, "first_id": self.first_id, "last_id": self.last_id}

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
# without throttling. Told it is throttled, the next request waits a backoff that grows.
REQUEST_INTERVAL_SECONDS = 1.0
THROTTLED_BASE_SECONDS = 5.0
THROTTLED_MAX_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class TradesRequest:
    """GET {base_url}{target}: a page of a pair's trades."""

    base_url: str
    path_and_query: str

    def target(self) -> str:
        return self.path_and_query


@dataclass(frozen=True, slots=True)
class Throttled:
    errors: tuple[str, ...]
    wait: float

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"REST requests to {VENUE} throttled ({'; '.join(self.errors)[:200]}): waiting {self.wait:.0f} s",
                       {"event": "backfill_rate_limited", "venue": VENUE, "retry_after": self.wait})


class KrakenBackfill:
    """Kraken's declared gaps, one request at a time, each page from where the last ended.
    The shell performs each TradesRequest and hands back its RestReply."""

    def __init__(self, rest_url: str, metrics: MetricBuffer, max_age_seconds: float, draw: Callable[[], float] = random.random):
        self._rest_url = rest_url
        self._max_age_us = int(max_age_seconds * 1_000_000)
        self.metrics = metrics
        self._draw = draw
        self._queue: collections.deque[KrakenGapFill] = collections.deque()
        self._gaps: OpenGaps[tuple[str, int, int]] = OpenGaps(metrics)  # by (symbol, first id, last id)
        self._in_flight = False
        self._failures = 0  # of the current page, running
        self._throttled = 0  # throttled answers, running
        self._next_at = 0.0  # no request before then

    @property
    def open_gaps(self) -> int:
        return len(self._gaps)

    @property
    def waiting(self) -> bool:
        return bool(self._queue) and not self._in_flight

    def add(self, symbol: str, pair: str, first_id: int, last_id: int, after_us: int | None, now: float,
            now_us: int) -> list[BackfillEvent]:
        """A gap of `pair`'s ids after a trade made at `after_us` (None: not known, as after a
        restart). History is asked for no further back than the backfill window: ids that
        lie before it are reported unserved."""
        key = (symbol, first_id, last_id)
        if key in self._gaps:
            return []
        window_starts = now_us - self._max_age_us
        gap = KrakenGapFill(symbol, pair, first_id, last_id, window_starts if after_us is None else max(after_us, window_starts))
        self._gaps.open(key, now)
        self._queue.append(gap)
        return [GapStarted(gap)]

    def next_request(self, now: float) -> TradesRequest | None:
        if self._in_flight or not self._queue or now < self._next_at:
            return None
        self._in_flight = True
        self._next_at = now + REQUEST_INTERVAL_SECONDS
        return TradesRequest(self._rest_url, self._queue[0].target())

    def answer(self, reply: RestReply, now: float) -> list[BackfillEvent | Throttled]:
        """What Kraken answered to the last request."""
        self._in_flight = False
        self.metrics.inc("k2_backfill_requests_total", str(reply.status or "error"))
        gap = self._queue[0]
        parsed: HistoryPage | HistoryRefused | Rejected | None = historical_trades(reply.body, gap.pair) if reply.status == 200 else None
        events: list[BackfillEvent | Throttled] = []
        if isinstance(parsed, HistoryRefused) and parsed.rate_limited:
            self._throttled += 1
            wait = backoff_delay(self._throttled, THROTTLED_BASE_SECONDS, THROTTLED_MAX_SECONDS, self._draw)
            self._next_at = now + max(wait, THROTTLED_BASE_SECONDS)
            return [Throttled(parsed.errors, self._next_at - now)]
        self._throttled = 0
        if isinstance(parsed, HistoryPage):
            self._failures = 0
            events += self._take_page(gap, parsed, reply)
        elif isinstance(parsed, (HistoryRefused, Rejected)):  # an answer, and not one that can be used
            detail = "; ".join(parsed.errors) if isinstance(parsed, HistoryRefused) else f"{parsed.reason}: {parsed.detail}"
            events.append(self._unfilled(gap, *gap.give_up(), "rest_unusable", detail[:300]))
        else:
            self._failures += 1
            if self._failures >= MAX_ATTEMPTS:
                detail = f"{self._failures} attempts failed, the last: {reply.status or ''} {reply.body[:200]!r}"
                events.append(self._unfilled(gap, *gap.give_up(), "rest_unavailable", detail))
            else:
                self._next_at = now + backoff_delay(self._failures, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS, self._draw)
        if gap.done:
            events += self._finish(now)
        return events

    def _take_page(self, gap: KrakenGapFill, page: HistoryPage, reply: RestReply) -> list[BackfillEvent | Throttled]:
        rejected = tuple((json.dumps([r.reason, r.detail]).encode(), r) for r in page.trades if isinstance(r, Rejected))
        got = gap.take(page)
        events: list[BackfillEvent | Throttled] = [
            self._unfilled(gap, first_id, last_id, "not_served", "Kraken's history does not serve these ids")
            for first_id, last_id in got.unserved]
        if got.trades or rejected:
            events.insert(0, PageFetched(BackfilledTrades(TRADE_STREAM, VENUE, gap.symbol, self._rest_url, reply.received_us,
                                                          tuple(got.trades), rejected, reply.target, reply.conn_id, reply.body)))
        return events

    def _unfilled(self, gap: KrakenGapFill, first_id: int, last_id: int, reason: str, detail: str) -> Unfilled:
        return self._gaps.unfilled((gap.symbol, gap.first_id, gap.last_id), gap, first_id, last_id, reason, detail)

    def _finish(self, now: float) -> list[BackfillEvent | Throttled]:
        gap = self._queue.popleft()
        self._failures = 0
        return list(self._gaps.close((gap.symbol, gap.first_id, gap.last_id), gap, now))
