"""Sets of ids kept as sorted, disjoint, inclusive ranges: what a stream has in Kafka.

Trade ids are consecutive per symbol, so what was published is almost always one range, and
a hole is a run of missing ids. Adding the next id extends the last range in constant time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a stream stands in Kafka: its highest id, and the runs of ids below it that are
    not there (to be declared missing and backfilled)."""

    high: int
    missing: tuple[tuple[int, int], ...] = ()


class IdRanges:
    def __init__(self, ranges: list[tuple[int, int]] | None = None):
        self._starts: list[int] = []
        self._ends: list[int] = []
        for first, last in ranges or ():
            self.add_range(first, last)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __contains__(self, value: int) -> bool:
        index = bisect.bisect_right(self._starts, value) - 1
        return index >= 0 and value <= self._ends[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdRanges) and self.ranges() == other.ranges()

    def __repr__(self) -> str:
        return f"IdRanges({self.ranges()})"

    @property
    def high(self) -> int | None:
        return self._ends[-1] if self._ends else None

    def add(self, value: int) -> bool:
        """Add one id; False if it was there already."""
        if self._ends and self._ends[-1] + 1 == value:  # the next id: the common case
            self._ends[-1] = value
            return True
        if value in self:
            return False
        self.add_range(value, value)
        return True

    def add_range(self, first: int, last: int) -> None:
        # Every range that touches or overlaps [first, last] merges into one.
        low = bisect.bisect_left(self._ends, first - 1)
        high = bisect.bisect_right(self._starts, last + 1)
        if low < high:
            first = min(first, self._starts[low])
            last = max(last, self._ends[high - 1])
        self._starts[low:high] = [first]
        self._ends[low:high] = [last]

    def supersede(self, value: int) -> bool:
        """For a stream whose newest record supersedes the older (a quote, a book): `value` and
        every id below it count as there from now on, kept as one range however sparse the ids
        (a day of quotes would otherwise be a range each). False if it was covered already."""
        if self._ends and value <= self._ends[-1]:
            return False
        self._starts, self._ends = [self._starts[0] if self._starts else value], [value]
        return True

    def update(self, other: IdRanges) -> None:
        for first, last in other.ranges():
            self.add_range(first, last)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def position(self) -> StreamPosition | None:
        """The highest id and the holes below it; None when there is nothing."""
        if not self._starts:
            return None
        holes = tuple((end + 1, start - 1) for end, start in zip(self._ends, self._starts[1:], strict=False))
        return StreamPosition(self._ends[-1], holes)
