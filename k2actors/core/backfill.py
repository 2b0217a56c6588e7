"""The service's REST requests to the venue: filling declared gaps from its history (trades
from historicalTrades, aggregate trades from aggTrades) and the snapshots order books are
rebuilt from: which to ask for next, what an answer covers, and how much of Binance's
request weight may be spent on them."""

from __future__ import annotations

import collections
import json
import logging
import random
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from k2actors.core.backoff import backoff_delay
from k2actors.core.binance import AGG_TRADE, DEPTH_PATH, TRADE, AggTrade, Trade, depth_weight, historical_agg_trades, historical_trades
from k2actors.core.frames import Rejected
from k2actors.core.normalise import event_id
from k2actors.core.payloads import BackfilledTrades, FetchedSnapshot
from k2actors.core.telemetry import LogLine, MetricBuffer

HISTORICAL_TRADES_WEIGHT = 25  # Binance's weight of GET /api/v3/historicalTrades
AGG_TRADES_WEIGHT = 4  # and of GET /api/v3/aggTrades (since March 2025)
PAGE_LIMIT = 1000  # rows per answer, at most


@dataclass(frozen=True, slots=True)
class History:
    """Where a gapless stream type's history is served, what a request weighs, how to read it."""

    path: str
    weight: int
    parse: Callable[[bytes, str], Sequence[tuple[object, Trade | AggTrade | Rejected]] | Rejected]


HISTORY = {
    TRADE: History("/api/v3/historicalTrades", HISTORICAL_TRADES_WEIGHT, historical_trades),
    AGG_TRADE: History("/api/v3/aggTrades", AGG_TRADES_WEIGHT, historical_agg_trades),
}
# Binance allows 6,000 weight per minute per IP; the service takes at most a sixth of it
# (40 pages of trades, 40,000 trades, or 20 book snapshots of 1000 levels a minute),
# leaving the rest to whatever else shares the IP.
WEIGHT_PER_MINUTE = 1000
WINDOW_SECONDS = 60.0


T = TypeVar("T")  # a venue's trades


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    trades: list[T]  # inside the gap, in id order, each id once
    unserved: list[tuple[int, int]]  # id ranges the venue no longer serves (or skipped)


def holes(expected: int, ids: Iterable[int]) -> tuple[list[tuple[int, int]], int]:
    """The ranges of ids missing from `ids` (ascending, none below `expected`), and the id
    after the last of them."""
    missing = []
    for trade_id in ids:
        if trade_id > expected:
            missing.append((expected, trade_id - 1))
        expected = trade_id + 1
    return missing, expected


@dataclass
class GapFill:
    """One gap, asked for page by page from its first id."""

    venue: str
    symbol: str
    first_id: int
    last_id: int
    stream: str = TRADE
    next_id: int = field(init=False)
    # Set when the ids from next_id on are older than the backfill window: the first id at
    # this time (ms) is to be found before anything more is fetched.
    locate_from_ms: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.next_id = self.first_id

    def __str__(self) -> str:
        return f"{self.venue} {self.symbol} ids {self.first_id} to {self.last_id}"

    def fields(self) -> dict[str, object]:
        """Its fields in a JSON log line."""
        return {"venue": self.venue, "symbol": self.symbol, "stream": self.stream, "first_id": self.first_id,
                "last_id": self.last_id}

    @property
    def done(self) -> bool:
        return self.next_id > self.last_id

    def request(self) -> tuple[int, int]:
        """fromId and limit of the next page."""
        return self.next_id, min(PAGE_LIMIT, self.last_id - self.next_id + 1)

    def take(self, trades: list[Trade | AggTrade]) -> Page[Trade | AggTrade]:
        """An answer to `request()`: what it fills, and which ids it shows cannot be had."""
        start = self.next_id
        by_id = {event_id(t): t for t in trades}
        ids = sorted(i for i in by_id if start <= i)
        reached = min(ids[-1], self.last_id) if ids else self.last_id
        unserved, _ = holes(start, (i for i in ids if i <= reached))
        if not ids:
            unserved.append((start, self.last_id))  # nothing from there on: history ends before it
        self.next_id = reached + 1
        return Page([by_id[i] for i in ids if i <= reached], unserved)

    def give_up(self) -> tuple[int, int]:
        """The ids still unfilled, now abandoned."""
        remaining = (self.next_id, self.last_id)
        self.next_id = self.last_id + 1
        return remaining


class RequestBudget:
    """Request weight spent in the last minute, as Binance counts it per IP."""

    def __init__(self, weight_per_minute: int = WEIGHT_PER_MINUTE):
        self._limit = weight_per_minute
        self._spent: collections.deque[tuple[float, int]] = collections.deque()
        self._blocked_until = 0.0

    def delay(self, now: float, weight: int) -> float:
        """Seconds to wait before `weight` may be spent."""
        if now < self._blocked_until:
            return self._blocked_until - now
        self._expire(now)
        excess = sum(w for _, w in self._spent) + weight - self._limit
        for spent_at, spent in self._spent:
            if excess <= 0:
                break
            excess -= spent
            if excess <= 0:
                return spent_at + WINDOW_SECONDS - now
        return 0.0

    def spend(self, now: float, weight: int) -> None:
        self._spent.append((now, weight))

    def observe_used(self, now: float, used: int) -> None:
        """The exchange's own count (X-MBX-USED-WEIGHT-1M) includes others on this IP: what
        it counts beyond our own spending is spent too."""
        self._expire(now)
        others = used - sum(w for _, w in self._spent)
        if others > 0:
            self._spent.append((now, others))

    def block(self, now: float, seconds: float) -> None:
        """Told to wait (HTTP 429 or 418 with Retry-After): nothing is spent before then."""
        self._blocked_until = max(self._blocked_until, now + seconds)

    def _expire(self, now: float) -> None:
        while self._spent and now - self._spent[0][0] >= WINDOW_SECONDS:
            self._spent.popleft()


# --- the whole of backfill: gaps queued, one request at a time, what each answer means ---

# A page that fails this many times running (connection refused, 5xx) gives the gap up.
MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
# Retry-After when a 429 or 418 does not say; an IP ban (418) lasts minutes to days.
DEFAULT_RETRY_AFTER_SECONDS = {429: 60.0, 418: 600.0}


@dataclass(frozen=True, slots=True)
class RestRequest:
    """GET {base_url}{path}?symbol=&fromId=&limit= (or startTime= instead of fromId=)"""

    base_url: str
    path: str
    symbol: str
    from_id: int | None
    limit: int
    start_time_ms: int | None = None

    def query(self) -> dict[str, str | int]:
        since: dict[str, str | int] = {"startTime": self.start_time_ms} if self.start_time_ms is not None else {}
        return {"symbol": self.symbol, **({"fromId": self.from_id} if self.from_id is not None else since), "limit": self.limit}

    def target(self) -> str:
        """The resource asked for, as the venue names it: path and query."""
        return f"{self.path}?{urllib.parse.urlencode(self.query())}"


@dataclass(frozen=True, slots=True)
class RestReply:
    status: int | None  # None: no answer (refused, reset, timed out)
    body: bytes
    headers: Mapping[str, str]  # names in lower case
    received_us: int
    target: str  # what was asked for (RestRequest.target)
    conn_id: str  # fresh for every response: a page kept in the raw record is its connection's one message


@dataclass(frozen=True, slots=True)
class PageFetched:
    page: BackfilledTrades


@dataclass(frozen=True, slots=True)
class RateLimited:
    venue: str
    status: int
    retry_after: float

    def report(self) -> LogLine:
        return LogLine(logging.ERROR if self.status == 418 else logging.WARNING,
                       f"REST requests to {self.venue} refused with HTTP {self.status}: waiting {self.retry_after:.0f} s "
                       "as Retry-After says",
                       {"event": "backfill_rate_limited", "venue": self.venue, "status": self.status, "retry_after": self.retry_after})


class DescribedGap(Protocol):
    """A gap as the events below report it, whatever venue's history fills it."""

    @property
    def venue(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def stream(self) -> str: ...

    def fields(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class Unfilled:
    gap: DescribedGap
    first_id: int
    last_id: int
    reason: str  # rest_unavailable, rest_unusable, not_served, banned
    detail: str

    def report(self) -> LogLine:
        gap = self.gap
        return LogLine(logging.ERROR, f"cannot backfill {gap.venue} {gap.symbol} ids {self.first_id} to {self.last_id} "
                                      f"({self.reason}): they stay missing; {self.detail}",
                       {"event": "backfill_failed", **gap.fields(), "first_id": self.first_id, "last_id": self.last_id,
                        "reason": self.reason, "detail": self.detail})


@dataclass(frozen=True, slots=True)
class GapStarted:
    gap: DescribedGap

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"backfilling {self.gap}", {"event": "backfill_started", **self.gap.fields()})


@dataclass(frozen=True, slots=True)
class GapFilled:
    gap: DescribedGap

    def report(self) -> LogLine:
        return LogLine(logging.INFO, f"backfilled {self.gap}", {"event": "backfill_completed", **self.gap.fields()})


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    snapshot: FetchedSnapshot


@dataclass(frozen=True, slots=True)
class SnapshotFailed:
    """A book's snapshot could not be had this time; it is asked for again (a book is never
    given up)."""

    venue: str
    symbol: str
    attempt: int
    detail: str

    def report(self) -> LogLine:
        return LogLine(logging.WARNING, f"snapshot of the {self.venue} {self.symbol} book failed (attempt {self.attempt}): "
                                        f"{self.detail}; asking again",
                       {"event": "book_snapshot_failed", "venue": self.venue, "symbol": self.symbol, "attempt": self.attempt,
                        "detail": self.detail})


BackfillEvent = PageFetched | RateLimited | Unfilled | GapStarted | GapFilled | SnapshotTaken | SnapshotFailed
GapKey = tuple[str, str, str, int, int]  # stream type, venue, symbol, first id, last id
K = TypeVar("K")


class OpenGaps(Generic[K]):
    """The gaps being filled, by key: when each was asked for, and whether any of its ids were
    given up, which decide what finishing it says and counts."""

    def __init__(self, metrics: MetricBuffer) -> None:
        self._metrics = metrics
        self._requested_at: dict[K, float] = {}
        self._partly_unfilled: set[K] = set()

    def __len__(self) -> int:
        return len(self._requested_at)

    def __contains__(self, key: K) -> bool:
        return key in self._requested_at

    def open(self, key: K, now: float) -> None:
        self._requested_at[key] = now

    def unfilled(self, key: K, gap: DescribedGap, first_id: int, last_id: int, reason: str, detail: str) -> Unfilled:
        self._metrics.inc("k2_backfill_unfilled_trades_total", gap.symbol, reason, amount=last_id - first_id + 1)
        self._partly_unfilled.add(key)
        return Unfilled(gap, first_id, last_id, reason, detail)

    def close(self, key: K, gap: DescribedGap, now: float) -> list[BackfillEvent]:
        """The gap is done: filled, unless some of its ids were given up (said when they were)."""
        requested_at = self._requested_at.pop(key)
        if key in self._partly_unfilled:
            self._partly_unfilled.discard(key)
            return []
        self._metrics.inc("k2_backfill_gaps_filled_total", gap.symbol)
        self._metrics.observe("k2_backfill_latency_seconds", [now - requested_at])
        return [GapFilled(gap)]


class Backfill:
    """Book snapshots and declared gaps, one request at a time, snapshots first (a book is
    blind until rebuilt; a gap is filled as well later as now): within the request weight,
    waiting as Retry-After says on 429, giving every gap up while an IP ban (418) lasts (the
    snapshots wait it out), retrying a failed request with backoff and giving a gap up after
    MAX_ATTEMPTS. The shell performs each RestRequest and hands back its RestReply."""

    def __init__(self, rest_urls: Mapping[str, str], metrics: MetricBuffer, max_age_seconds: float, snapshot_limit: int,
                 budget: RequestBudget | None = None, draw: Callable[[], float] = random.random):
        self._rest_urls = rest_urls
        self._max_age_ms = int(max_age_seconds * 1000)
        self._snapshot_limit = snapshot_limit
        self._snapshots: dict[tuple[str, str], None] = {}  # (venue, symbol) asked for, in order
        self._asking: tuple[str, str] | None = None  # the snapshot in flight
        self.metrics = metrics
        self._budget = budget or RequestBudget()
        self._draw = draw
        self._queue: collections.deque[GapFill] = collections.deque()
        self._gaps: OpenGaps[GapKey] = OpenGaps(metrics)
        self._in_flight = False
        self._failures = 0  # of the current page, running
        self._retry_at = 0.0
        self._banned_until = 0.0

    @property
    def open_gaps(self) -> int:
        return len(self._gaps)

    @property
    def waiting(self) -> bool:
        """Requests are queued and none is in flight: one is to be made once its time comes
        (a retry's backoff, Retry-After, a ban, the weight budget)."""
        return bool(self._queue or self._snapshots) and not self._in_flight

    def ask_snapshot(self, venue: str, symbol: str) -> None:
        self._snapshots[(venue, symbol)] = None

    def add(self, stream: str, venue: str, symbol: str, first_id: int, last_id: int, now: float) -> list[BackfillEvent]:
        gap = GapFill(venue, symbol, first_id, last_id, stream)
        key = _key(gap)
        if key in self._gaps:
            return []
        self._gaps.open(key, now)
        self._queue.append(gap)
        return [GapStarted(gap)]

    def next_request(self, now: float) -> tuple[RestRequest | None, list[BackfillEvent]]:
        """The request to make now, if any (and gaps given up meanwhile, during a ban)."""
        events: list[BackfillEvent] = []
        if self._in_flight:
            return None, events
        while self._queue and now < self._banned_until:
            gap = self._queue[0]
            first_id, last_id = gap.give_up()
            events.append(self._unfilled(gap, first_id, last_id, "banned", "the venue banned this IP (HTTP 418)"))
            events += self._finish(now)
        if now < self._retry_at:
            return None, events
        if self._snapshots:
            return self._next_snapshot(now), events
        if not self._queue:
            return None, events
        gap = self._queue[0]
        # Finding where the backfill window starts: one aggregate trade from that time on
        # names both ids (`a`, and `f` of the trades it aggregates).
        history = HISTORY[AGG_TRADE if gap.locate_from_ms is not None else gap.stream]
        if not self._take_slot(now, history.weight):
            return None, events
        base_url = self._rest_urls[gap.venue]
        if gap.locate_from_ms is not None:
            return RestRequest(base_url, history.path, gap.symbol, None, 1, gap.locate_from_ms), events
        from_id, limit = gap.request()
        return RestRequest(base_url, history.path, gap.symbol, from_id, limit), events

    def _next_snapshot(self, now: float) -> RestRequest | None:
        if now < self._banned_until or not self._take_slot(now, depth_weight(self._snapshot_limit)):
            return None
        venue, symbol = self._asking = next(iter(self._snapshots))
        return RestRequest(self._rest_urls[venue], DEPTH_PATH, symbol, None, self._snapshot_limit)

    def _take_slot(self, now: float, weight: int) -> bool:
        """The one request in flight, if the weight budget allows it now: its weight spent."""
        if self._budget.delay(now, weight) > 0:
            return False
        self._budget.spend(now, weight)
        self._in_flight = True
        return True

    def answer(self, response: RestReply, now: float) -> list[BackfillEvent]:
        """What the venue answered to the last request."""
        self._in_flight = False
        self.metrics.inc("k2_backfill_requests_total", str(response.status or "error"))
        used = response.headers.get("x-mbx-used-weight-1m") or ""
        if used.isdigit():
            self._budget.observe_used(now, int(used))
        asking, self._asking = self._asking, None
        venue = asking[0] if asking is not None else self._queue[0].venue
        if response.status in (429, 418):
            retry_after = _retry_after(response.headers, DEFAULT_RETRY_AFTER_SECONDS[response.status])
            if response.status == 418:  # banned: gaps are given up until then, not waited for
                self._banned_until = now + retry_after
            else:
                self._budget.block(now, retry_after)
            return [RateLimited(venue, response.status, retry_after)]
        if asking is not None:
            return self._take_snapshot(asking, response, now)
        gap = self._queue[0]
        events: list[BackfillEvent] = []
        if response.status == 200:
            self._failures = 0
            events += self._locate(gap, response) if gap.locate_from_ms is not None else self._take_page(gap, response)
        else:
            self._failures += 1
            if self._failures >= MAX_ATTEMPTS:
                detail = f"{self._failures} attempts failed, the last: {response.status or ''} {response.body[:200]!r}"
                first_id, last_id = gap.give_up()
                events.append(self._unfilled(gap, first_id, last_id, "rest_unavailable", detail))
            else:
                self._retry_at = now + backoff_delay(self._failures, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS, self._draw)
        if gap.done:
            events += self._finish(now)
        return events

    def _take_snapshot(self, asking: tuple[str, str], response: RestReply, now: float) -> list[BackfillEvent]:
        venue, symbol = asking
        if response.status == 200:
            self._failures = 0
            del self._snapshots[asking]
            self.metrics.inc("k2_book_snapshots_total", symbol)
            return [SnapshotTaken(FetchedSnapshot(venue, symbol, self._rest_urls[venue], response.target, response.conn_id,
                                                  response.received_us, response.body))]
        self._failures += 1
        self._retry_at = now + backoff_delay(self._failures, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS, self._draw)
        return [SnapshotFailed(venue, symbol, self._failures, f"{response.status or 'no answer'}: {response.body[:200]!r}")]

    def _take_page(self, gap: GapFill, response: RestReply) -> list[BackfillEvent]:
        parsed = HISTORY[gap.stream].parse(response.body, gap.symbol)
        if isinstance(parsed, Rejected):
            first_id, last_id = gap.give_up()
            return [self._unfilled(gap, first_id, last_id, "rest_unusable", f"{parsed.reason}: {parsed.detail}")]
        trades = [event for _, event in parsed if not isinstance(event, Rejected)]
        rejected = tuple((json.dumps(row).encode(), event) for row, event in parsed if isinstance(event, Rejected))
        start = gap.next_id
        page = gap.take(trades)
        events: list[BackfillEvent] = [
            self._unfilled(gap, first_id, last_id, "not_served", "the venue's history does not serve these ids")
            for first_id, last_id in page.unserved
        ]
        cutoff_ms = response.received_us // 1000 - self._max_age_ms
        recent = [t for t in page.trades if t.trade_time_ms >= cutoff_ms]
        if len(recent) < len(page.trades):  # ids ascend with time: the old ones come first
            last_old = event_id(page.trades[len(page.trades) - len(recent) - 1])
            events.append(self._too_old(gap, start, last_old))
            if not recent and not gap.done:
                gap.locate_from_ms = cutoff_ms
        fetched = BackfilledTrades(gap.stream, gap.venue, gap.symbol, self._rest_urls[gap.venue], response.received_us,
                                   tuple(recent), rejected, response.target, response.conn_id, response.body)
        return [PageFetched(fetched), *events] if recent or rejected else events

    def _locate(self, gap: GapFill, response: RestReply) -> list[BackfillEvent]:
        """The answer to where the window starts: the ids before it are too old to fetch."""
        parsed = historical_agg_trades(response.body, gap.symbol)
        found = [] if isinstance(parsed, Rejected) else [event for _, event in parsed if isinstance(event, AggTrade)]
        gap.locate_from_ms = None
        if not found:  # nothing at all since the window's start: every id left is older
            first_id, last_id = gap.give_up()
            return [self._too_old(gap, first_id, last_id)]
        window_starts = found[0].agg_id if gap.stream == AGG_TRADE else found[0].first_trade_id
        if window_starts <= gap.next_id:
            return []
        first_id = gap.next_id
        gap.next_id = min(window_starts, gap.last_id + 1)
        return [self._too_old(gap, first_id, gap.next_id - 1)]

    def _too_old(self, gap: GapFill, first_id: int, last_id: int) -> Unfilled:
        detail = f"older than binance.backfill_max_age_seconds ({self._max_age_ms / 1000:g} s)"
        return self._unfilled(gap, first_id, last_id, "too_old", detail)

    def _unfilled(self, gap: GapFill, first_id: int, last_id: int, reason: str, detail: str) -> Unfilled:
        return self._gaps.unfilled(_key(gap), gap, first_id, last_id, reason, detail)

    def _finish(self, now: float) -> list[BackfillEvent]:
        gap = self._queue.popleft()
        self._failures, self._retry_at = 0, 0.0
        return self._gaps.close(_key(gap), gap, now)


def _key(gap: GapFill) -> GapKey:
    return gap.stream, gap.venue, gap.symbol, gap.first_id, gap.last_id


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    try:
        return max(float(headers.get("retry-after", default)), 0.0)
    except ValueError:
        return default
