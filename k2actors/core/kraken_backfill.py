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
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from k2actors.core.backfill import PAGE_LIMIT, Page, holes
from k2actors.core.kraken import HistoryPage, KrakenTrade

TRADES_PATH = "/0/public/Trades"


@dataclass
class KrakenGapFill:
    """One gap of `pair`'s trade ids, the trade before it seen at `after_us`."""

    pair: str
    first_id: int
    last_id: int
    after_us: int
    since_ns: int = field(init=False)  # the next page's `since`
    next_id: int = field(init=False)  # the first id not yet filled or found unserved

    def __post_init__(self) -> None:
        self.since_ns = (self.after_us - 1) * 1000
        self.next_id = self.first_id

    @property
    def done(self) -> bool:
        return self.next_id > self.last_id

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
