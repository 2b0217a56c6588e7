"""The simulator's order book per symbol: levels that move with the trades, numbered updates,
and what Binance serves of it (the diff depth stream and the REST depth snapshot).

Every change of the book is an update with the next update id, as on Binance (the same ids
number the bookTicker stream). A trade consumes the levels it crosses, the touch re-forms
on either side of its price, and a level or two deeper changes, is added or goes. Each
`<symbol>@depth@100ms` diff covers the updates since the last one (`U` to `u`) and carries
every level they changed at its quantity after `u`, 0 for a level that went.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass

# Levels each side keeps at least (refilled at the far end), how far from the touch a level
# may drift before it goes (the book stays bounded however far the price walks), and
# snapshots kept for a stale one.
DEPTH = 60
MAX_TICKS_FROM_TOUCH = 4 * DEPTH
SNAPSHOTS_KEPT = 50
# The book after each diff, by the diff's last update id, for a minute of diffs: what a
# client's book must equal at that id. Its best HISTORY_DEPTH levels a side, packed as text
# (a minute of a hundred symbols' books is then some tens of MB).
HISTORY_DEPTH = 20
HISTORY_KEPT = 600


def cents_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}000000"


def units_text(units: int) -> str:  # units of 1e-8
    return f"{units // 100_000_000}.{units % 100_000_000:08d}"


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    last_update_id: int
    bids: tuple[tuple[int, int], ...]  # (price in cents, quantity in units of 1e-8), best first
    asks: tuple[tuple[int, int], ...]


class SimBook:
    def __init__(self, price_cents: int, first_update_id: int, rnd: random.Random) -> None:
        self._random = rnd
        self.bids: dict[int, int] = {price_cents - 1 - k: self._quantity() for k in range(DEPTH)}
        self.asks: dict[int, int] = {price_cents + 1 + k: self._quantity() for k in range(DEPTH)}
        self.update_id = first_update_id
        self._changed: dict[tuple[str, int], int] = {}  # since the last diff: (side, price) -> quantity
        self._first_unsent: int | None = None
        self._snapshots: collections.deque[BookSnapshot] = collections.deque(maxlen=SNAPSHOTS_KEPT)
        self._history: dict[int, str] = {}

    def _quantity(self) -> int:
        return self._random.randint(1_000, 900_000_000)

    def trade(self, price_cents: int) -> None:
        """The book around a trade at `price_cents`: one to three updates."""
        touch = {("b", p): 0 for p in self.bids if p >= price_cents}
        touch.update({("a", p): 0 for p in self.asks if p <= price_cents})
        touch[("b", price_cents - 1)] = self._quantity()
        touch[("a", price_cents + 1)] = self._quantity()
        self._update(touch)
        for _ in range(self._random.randint(0, 2)):  # orders placed and cancelled away from the touch
            side = self._random.choice(("b", "a"))
            offset = self._random.randint(2, DEPTH)
            price = price_cents - offset if side == "b" else price_cents + offset
            self._update({(side, price): self._random.choice((0, self._quantity()))})
        self._refill(price_cents)

    def _refill(self, price_cents: int) -> None:
        """Levels at the far end, so that each side keeps DEPTH, and those left far behind
        gone: one update, if any."""
        refill: dict[tuple[str, int], int] = {("b", p): 0 for p in self.bids if price_cents - p > MAX_TICKS_FROM_TOUCH}
        refill.update({("a", p): 0 for p in self.asks if p - price_cents > MAX_TICKS_FROM_TOUCH})
        for side, levels, step in (("b", self.bids, -1), ("a", self.asks, 1)):
            kept = [p for p in levels if (side, p) not in refill]
            far = min(kept, default=price_cents) if step < 0 else max(kept, default=price_cents)
            for _ in range(DEPTH - len(kept)):
                far += step
                refill[(side, far)] = self._quantity()
        if refill:
            self._update(refill)

    def _update(self, changes: dict[tuple[str, int], int]) -> None:
        self.update_id += 1
        if self._first_unsent is None:
            self._first_unsent = self.update_id
        for (side, price), quantity in changes.items():
            levels = self.bids if side == "b" else self.asks
            if quantity:
                levels[price] = quantity
            else:
                levels.pop(price, None)
            self._changed[(side, price)] = quantity

    def best(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(price, quantity) of the best bid and of the best ask."""
        bid, ask = max(self.bids), min(self.asks)
        return (bid, self.bids[bid]), (ask, self.asks[ask])

    def diff_payload(self, symbol: str, event_ms: int) -> str | None:
        """A depthUpdate of the updates since the last one; None when there were none."""
        if self._first_unsent is None:
            return None
        bids = [[cents_text(p), units_text(q)] for (side, p), q in self._changed.items() if side == "b"]
        asks = [[cents_text(p), units_text(q)] for (side, p), q in self._changed.items() if side == "a"]
        payload = (f'{{"e":"depthUpdate","E":{event_ms},"s":"{symbol}","U":{self._first_unsent},"u":{self.update_id},'
                   f'"b":{_levels(bids)},"a":{_levels(asks)}}}')
        self._changed, self._first_unsent = {}, None
        self._snapshots.append(self.snapshot())
        self._history[self.update_id] = _pack(self.snapshot(HISTORY_DEPTH))
        if len(self._history) > HISTORY_KEPT:
            del self._history[next(iter(self._history))]
        return payload

    def at(self, update_id: int) -> BookSnapshot | None:
        """The best HISTORY_DEPTH levels a side as they were after the diff that ended at
        `update_id`, if that was within the last HISTORY_KEPT diffs."""
        packed = self._history.get(update_id)
        return None if packed is None else _unpack(update_id, packed)

    def snapshot(self, limit: int | None = None) -> BookSnapshot:
        bids = sorted(self.bids.items(), reverse=True)[:limit]
        asks = sorted(self.asks.items())[:limit]
        return BookSnapshot(self.update_id, tuple(bids), tuple(asks))

    def stale_snapshot(self, limit: int) -> BookSnapshot:
        """The oldest snapshot kept (taken as a diff went out): older than any client's buffer."""
        old = self._snapshots[0] if self._snapshots else self.snapshot()
        return BookSnapshot(old.last_update_id, old.bids[:limit], old.asks[:limit])


def _pack(snapshot: BookSnapshot) -> str:
    return "|".join(" ".join(f"{price}:{quantity}" for price, quantity in side) for side in (snapshot.bids, snapshot.asks))


def _unpack(update_id: int, packed: str) -> BookSnapshot:
    bids, asks = (tuple((int(price), int(quantity)) for price, _, quantity in (level.partition(":") for level in side.split()))
                  for side in packed.split("|"))
    return BookSnapshot(update_id, bids, asks)


def _levels(levels: list[list[str]]) -> str:
    return "[" + ",".join(f'["{price}","{quantity}"]' for price, quantity in levels) + "]"


def snapshot_body(snapshot: BookSnapshot) -> dict[str, object]:
    """GET /api/v3/depth's answer."""
    return {"lastUpdateId": snapshot.last_update_id,
            "bids": [[cents_text(p), units_text(q)] for p, q in snapshot.bids],
            "asks": [[cents_text(p), units_text(q)] for p, q in snapshot.asks]}
