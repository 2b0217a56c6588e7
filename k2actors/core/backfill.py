"""Filling declared gaps from the exchange's trade history: which ids to ask for next, what
an answer covers, and how much of Binance's request weight may be spent on it."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from k2actors.core.binance import Trade

HISTORICAL_TRADES_WEIGHT = 25  # Binance's weight of GET /api/v3/historicalTrades
PAGE_LIMIT = 1000  # rows per historicalTrades answer, at most
# Binance allows 6,000 weight per minute per IP; backfill takes at most a sixth of it
# (40 pages, 40,000 trades a minute), leaving the rest to whatever else shares the IP.
WEIGHT_PER_MINUTE = 1000
WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Page:
    trades: list[Trade]  # inside the gap, in id order, each id once
    unserved: list[tuple[int, int]]  # id ranges the venue no longer serves (or skipped)


@dataclass
class GapFill:
    """One gap, asked for page by page from its first id."""

    venue: str
    symbol: str
    first_id: int
    last_id: int
    next_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.next_id = self.first_id

    @property
    def done(self) -> bool:
        return self.next_id > self.last_id

    def request(self) -> tuple[int, int]:
        """fromId and limit of the next page."""
        return self.next_id, min(PAGE_LIMIT, self.last_id - self.next_id + 1)

    def take(self, trades: list[Trade]) -> Page:
        """An answer to `request()`: what it fills, and which ids it shows cannot be had."""
        start = self.next_id
        ids = sorted({t.trade_id for t in trades if start <= t.trade_id})
        by_id = {t.trade_id: t for t in trades}
        reached = min(ids[-1], self.last_id) if ids else self.last_id
        unserved, expected = [], start
        for trade_id in (i for i in ids if i <= reached):
            if trade_id > expected:
                unserved.append((expected, trade_id - 1))
            expected = trade_id + 1
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
