"""Per-(venue, symbol) trade id tracking: drop duplicates, find gaps, never hide one.

Binance trade ids are consecutive per symbol. With more than one connection live
(hot standby, make-before-break rotation) ids can arrive out of order: a mirror that
reconnected may run ahead of the others. So a gap is noticed at once but declared only
after `grace_seconds`; ids that arrive inside that window fill it and are published.
What is still missing then is declared: counted, logged, and remembered so that a late
arrival is still published (as a recovery) rather than discarded as a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from k2actors.core.ranges import StreamPosition
from k2actors.core.streams import CONSECUTIVE, SUPERSEDING

Key = tuple[str, str]  # (venue, symbol)

# With several connections live (hot standby, or old and new during a rotation) one may
# run ahead of another for a moment; gaps (of trade ids, of a book's update ids) are declared
# only when they outlast this.
GAP_GRACE_SECONDS = 2.0
# Missing ranges remembered per key; beyond this the oldest are forgotten (bounded memory).
MAX_OPEN_RANGES = 1000
# How far behind the highest id an id may come and still be taken for a duplicate of one
# already published: a mirror lagging by this many trades is not a mirror but a bad message.
DEDUP_WINDOW_IDS = 100_000


class Verdict(Enum):
    NEW = "new"  # the next id, or one ahead of it (a gap opened)
    DUPLICATE = "duplicate"  # already published: drop
    FILLED = "filled"  # inside a gap not yet declared: publish
    RECOVERED = "recovered"  # inside a gap already declared missing: publish, count as recovered
    REGRESSED = "regressed"  # further back than any duplicate could be: reject


@dataclass(frozen=True, slots=True)
class Gap:
    venue: str
    symbol: str
    first_id: int
    last_id: int

    @property
    def size(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass
class _Range:
    first: int
    last: int
    opened_at: float
    declared: bool = False


@dataclass
class _SymbolState:
    high: int
    missing: list[_Range] = field(default_factory=list)  # ascending, disjoint


class SequenceTracker:
    def __init__(self, grace_seconds: float = 0.0):
        self._grace = grace_seconds
        self._states: dict[Key, _SymbolState] = {}

    def resume(self, positions: Mapping[Key, StreamPosition], now: float) -> None:
        """Continue from what Kafka holds (a restart): what follows the highest id without a
        break is new, a jump a gap; below it the holes are missing (declared after the grace,
        then backfilled) and everything else a duplicate."""
        for key, position in positions.items():
            if key not in self._states:
                missing = [_Range(first, last, now) for first, last in position.missing[-MAX_OPEN_RANGES:]]
                self._states[key] = _SymbolState(position.high, missing)

    def observe(self, key: Key, trade_id: int, now: float) -> Verdict:
        state = self._states.get(key)
        if state is None:
            self._states[key] = _SymbolState(high=trade_id)
            return Verdict.NEW
        if trade_id > state.high:
            if trade_id > state.high + 1:
                state.missing.append(_Range(state.high + 1, trade_id - 1, now))
                del state.missing[:-MAX_OPEN_RANGES]
            state.high = trade_id
            return Verdict.NEW
        for index, gap in enumerate(state.missing):
            if gap.first <= trade_id <= gap.last:
                _remove_id(state.missing, index, trade_id)
                return Verdict.RECOVERED if gap.declared else Verdict.FILLED
        return Verdict.DUPLICATE if trade_id >= state.high - DEDUP_WINDOW_IDS else Verdict.REGRESSED

    def declare_due(self, now: float) -> list[Gap]:
        """Gaps whose grace period has passed and that are still (partly) missing."""
        due = []
        for (venue, symbol), state in self._states.items():
            for gap in state.missing:
                if not gap.declared and now - gap.opened_at >= self._grace:
                    gap.declared = True
                    due.append(Gap(venue, symbol, gap.first, gap.last))
        return due

    def pending(self) -> int:
        """Ids noticed missing and still inside their grace period (not declared yet)."""
        return sum(gap.last - gap.first + 1 for state in self._states.values() for gap in state.missing if not gap.declared)

    def open_gaps(self) -> list[Gap]:
        """Ranges declared missing that are still missing."""
        return [
            Gap(venue, symbol, gap.first, gap.last)
            for (venue, symbol), state in self._states.items()
            for gap in state.missing
            if gap.declared
        ]

    def last_id(self, key: Key) -> int | None:
        state = self._states.get(key)
        return state.high if state else None

    def forget(self, symbols: frozenset[str]) -> None:
        for key in [key for key in self._states if key[1] in symbols]:
            del self._states[key]


def _remove_id(ranges: list[_Range], index: int, trade_id: int) -> None:
    gap = ranges[index]
    pieces = []
    if gap.first < trade_id:
        pieces.append(_Range(gap.first, trade_id - 1, gap.opened_at, gap.declared))
    if trade_id < gap.last:
        pieces.append(_Range(trade_id + 1, gap.last, gap.opened_at, gap.declared))
    ranges[index : index + 1] = pieces


class BatchSequence:
    """Sequence numbers of the batches one sender numbered 1, 2, 3, ...

    Delivery between actors is best effort and not always in order, so a batch that has not
    come is only missing until `grace_seconds` have passed; then it is lost.
    """

    def __init__(self, grace_seconds: float):
        self._grace = grace_seconds
        self._high: int | None = None  # the highest seq seen
        self._missing: dict[int, float] = {}  # seq -> when its absence was noticed

    def observe(self, seq: int, now: float) -> None:
        if self._high is None or seq > self._high:
            for absent in range(self._high + 1 if self._high is not None else seq, seq):
                self._missing[absent] = now
            self._high = seq
        else:
            self._missing.pop(seq, None)

    def lost(self, now: float) -> list[int]:
        """Batches missing for longer than the grace period; each is reported once."""
        overdue = sorted(seq for seq, noticed in self._missing.items() if now - noticed >= self._grace)
        for seq in overdue:
            del self._missing[seq]
        return overdue

    def complete_through(self, last: int) -> bool:
        """Every batch up to `last` has arrived or been given up as lost."""
        return (last == 0 or (self._high is not None and self._high >= last)) and not any(
            seq <= last for seq in self._missing
        )


class LatestUpdate:
    """Quote update ids per (venue, symbol): they only increase, with jumps (an order book
    changes between quotes), so there is no gap to find; an update no newer than the last
    published is a duplicate from another connection, or stale."""

    def __init__(self) -> None:
        self._last: dict[Key, int] = {}

    def resume(self, positions: Mapping[Key, StreamPosition], now: float) -> None:
        for key, position in positions.items():
            self._last.setdefault(key, position.high)

    def observe(self, key: Key, update_id: int) -> Verdict:
        if update_id <= self._last.get(key, -1):
            return Verdict.DUPLICATE
        self._last[key] = update_id
        return Verdict.NEW

    def forget(self, symbols: frozenset[str]) -> None:
        for key in [key for key in self._last if key[1] in symbols]:
            del self._last[key]


class StreamSequences:
    """Id tracking for every stream type: trade and aggregate trade ids run consecutively per
    symbol (gaps are found), those of quotes and books only increase."""

    def __init__(self, grace_seconds: float):
        self._gapless = {stream: SequenceTracker(grace_seconds) for stream in CONSECUTIVE}
        self._latest = {stream: LatestUpdate() for stream in SUPERSEDING}

    def resume(self, positions: Mapping[tuple[str, str, str], StreamPosition], now: float) -> None:
        """From the producer's (stream, venue, symbol) -> where the stream stands in Kafka."""
        by_stream: dict[str, dict[Key, StreamPosition]] = {}
        for (stream, venue, symbol), position in positions.items():
            by_stream.setdefault(stream, {})[(venue, symbol)] = position
        for stream, streams in by_stream.items():
            (self._gapless.get(stream) or self._latest[stream]).resume(streams, now)

    def observe(self, stream: str, key: Key, event_id: int, now: float) -> Verdict:
        if stream in self._gapless:
            return self._gapless[stream].observe(key, event_id, now)
        return self._latest[stream].observe(key, event_id)

    def declare_due(self, now: float) -> list[tuple[str, Gap]]:
        return [(stream, gap) for stream, tracker in self._gapless.items() for gap in tracker.declare_due(now)]

    def pending(self) -> int:
        return sum(tracker.pending() for tracker in self._gapless.values())

    def open_gaps(self, stream: str) -> list[Gap]:
        """Declared and still missing, for a stream type whose ids run consecutively."""
        return self._gapless[stream].open_gaps()

    def last_id(self, stream: str, key: Key) -> int | None:
        """The highest id seen, for a stream type whose ids run consecutively."""
        return self._gapless[stream].last_id(key)

    def forget(self, symbols: frozenset[str]) -> None:
        """The symbols went to another instance (cluster mode): their tracking, gaps included,
        is its business; should they come back, tracking resumes from Kafka."""
        for tracker in self._gapless.values():
            tracker.forget(symbols)
        for latest in self._latest.values():
            latest.forget(symbols)
