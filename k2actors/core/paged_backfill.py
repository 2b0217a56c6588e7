"""Filling gaps of trade ids from a venue's REST history, page by page, one request at a
time, within a budget of the venue's own (Kraken's, Coinbase's: not Binance's weight).

A `PagedGap` knows its venue's pages: what to ask for next, and what an answer holds (the
gap's trades, the ids it shows are not served, that the venue is throttling, or something
unusable). `PagedBackfill` asks for the pages of every declared gap in turn, at most one
request every `interval` seconds; told it is throttled, it waits a backoff that grows; a
page that fails MAX_ATTEMPTS times running gives its gap up. What is given up is reported
with its range, never skipped in silence.
"""

from __future__ import annotations

import collections
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from k2actors.core.backfill import (
    MAX_ATTEMPTS,
    RETRY_BASE_SECONDS,
    RETRY_MAX_SECONDS,
    BackfillEvent,
    GapStarted,
    OpenGaps,
    Page,
    PageFetched,
    RestReply,
    Unfilled,
)
from k2actors.core.backoff import backoff_delay
from k2actors.core.frames import Rejected
from k2actors.core.payloads import BackfilledTrades
from k2actors.core.telemetry import LogLine, MetricBuffer

THROTTLED_BASE_SECONDS = 5.0
THROTTLED_MAX_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class TradesRequest:
    """GET {base_url}{target}: a page of a symbol's trades."""

    base_url: str
    path_and_query: str

    def target(self) -> str:
        return self.path_and_query


@dataclass(frozen=True, slots=True)
class Throttled:
    venue: str
    errors: tuple[str, ...]
    wait: float

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"REST requests to {self.venue} throttled ({'; '.join(self.errors)[:200]}): "
                                        f"waiting {self.wait:.0f} s",
                       {"event": "backfill_rate_limited", "venue": self.venue, "retry_after": self.wait})


@dataclass(frozen=True, slots=True)
class Throttle:
    """The answer says the venue is throttling this client."""

    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unusable:
    """An answer, and not one that can be used (no page of trades): the gap is given up."""

    detail: str


@dataclass(frozen=True, slots=True)
class PageOf:
    """A page's use to its gap, and the rows of it that could not be read (for the DLQ)."""

    page: Page[Any]
    rejected: tuple[Rejected, ...]


class TradeIdGap:
    """How a gap of a symbol's trade ids is named in reports and log lines."""

    venue: str
    stream: str
    symbol: str  # its records'
    first_id: int
    last_id: int

    def __str__(self) -> str:
        return f"{self.venue} {self.symbol} ids {self.first_id} to {self.last_id}"

    def fields(self) -> dict[str, object]:
        """Its fields in a JSON log line."""
        return {"venue": self.venue, "symbol": self.symbol, "stream": self.stream, "first_id": self.first_id,
                "last_id": self.last_id}


class PagedGap(Protocol):
    """One gap of a symbol's trade ids, being filled page by page."""

    venue: str
    stream: str
    symbol: str  # its records'
    first_id: int
    last_id: int

    @property
    def done(self) -> bool: ...

    def give_up(self) -> tuple[int, int]:
        """The ids still unfilled, now abandoned."""
        ...

    def target(self) -> str:
        """The path and query of the next page."""
        ...

    def read(self, reply: RestReply) -> PageOf | Throttle | Unusable | None:
        """What the answer to `target()` holds for the gap (None: it failed, try again)."""
        ...

    def fields(self) -> dict[str, object]: ...


G = TypeVar("G", bound=PagedGap)


class PagedBackfill(Generic[G]):
    """A venue's declared gaps, one request at a time, each page from where the last ended.
    The shell performs each TradesRequest and hands back its RestReply."""

    def __init__(self, venue: str, history: str, rest_url: str, interval: float, metrics: MetricBuffer,
                 draw: Callable[[], float] = random.random):
        """`history`: what the venue's history is called in a report of ids it does not serve."""
        self._venue = venue
        self._history = history
        self._rest_url = rest_url
        self._interval = interval
        self.metrics = metrics
        self._draw = draw
        self._queue: collections.deque[G] = collections.deque()
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

    def enqueue(self, gap: G, now: float) -> list[BackfillEvent]:
        key = (gap.symbol, gap.first_id, gap.last_id)
        if key in self._gaps:
            return []
        self._gaps.open(key, now)
        self._queue.append(gap)
        return [GapStarted(gap)]

    def next_request(self, now: float) -> TradesRequest | None:
        if self._in_flight or not self._queue or now < self._next_at:
            return None
        self._in_flight = True
        self._next_at = now + self._interval
        return TradesRequest(self._rest_url, self._queue[0].target())

    def answer(self, reply: RestReply, now: float) -> list[BackfillEvent | Throttled]:
        """What the venue answered to the last request."""
        self._in_flight = False
        self.metrics.inc("k2_backfill_requests_total", str(reply.status or "error"))
        gap = self._queue[0]
        read = gap.read(reply)
        events: list[BackfillEvent | Throttled] = []
        if isinstance(read, Throttle):
            self._throttled += 1
            wait = backoff_delay(self._throttled, THROTTLED_BASE_SECONDS, THROTTLED_MAX_SECONDS, self._draw)
            self._next_at = now + max(wait, THROTTLED_BASE_SECONDS)
            return [Throttled(self._venue, read.errors, self._next_at - now)]
        self._throttled = 0
        if isinstance(read, PageOf):
            self._failures = 0
            events += self._take_page(gap, read, reply)
        elif isinstance(read, Unusable):
            events.append(self._unfilled(gap, *gap.give_up(), "rest_unusable", read.detail[:300]))
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

    def _take_page(self, gap: G, read: PageOf, reply: RestReply) -> list[BackfillEvent | Throttled]:
        rejected = tuple((json.dumps([r.reason, r.detail]).encode(), r) for r in read.rejected)
        events: list[BackfillEvent | Throttled] = [
            self._unfilled(gap, first_id, last_id, "not_served", f"{self._history} does not serve these ids")
            for first_id, last_id in read.page.unserved]
        if read.page.trades or rejected:
            events.insert(0, PageFetched(BackfilledTrades(gap.stream, self._venue, gap.symbol, self._rest_url, reply.received_us,
                                                          tuple(read.page.trades), rejected, reply.target, reply.conn_id,
                                                          reply.body)))
        return events

    def _unfilled(self, gap: G, first_id: int, last_id: int, reason: str, detail: str) -> Unfilled:
        return self._gaps.unfilled((gap.symbol, gap.first_id, gap.last_id), gap, first_id, last_id, reason, detail)

    def _finish(self, now: float) -> list[BackfillEvent | Throttled]:
        gap = self._queue.popleft()
        self._failures = 0
        return list(self._gaps.close((gap.symbol, gap.first_id, gap.last_id), gap, now))
