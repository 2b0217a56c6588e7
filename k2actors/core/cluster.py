"""Cluster mode without Kafka: which symbols make which shard, and what one instance does as
the group's assignment of shards to instances changes.

Every instance with the same configuration derives the same shards. A shard is *acquired*
before it is streamed: its producer takes the shard's transactional id (which fences any
former owner still writing it) and then reads what Kafka holds for its symbols. Only then
is it *owned*, and its symbols are subscribed. A shard that stays assigned through a
rebalance is neither released nor acquired again: it keeps streaming.

Every acquisition has a number of its own, carried by what the producer is told and what it
answers: messages between actors can arrive out of order, and a late answer about an
earlier acquisition of the same shard must not be taken for the current one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

# Each shard the instance owns costs a transactional producer (a few threads and a
# connection per broker), so symbols share shards beyond this many.
MAX_SHARDS = 16


def shard_symbols(symbols: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """The symbols of each shard, in shard order: the sorted symbols dealt round-robin, so
    that every instance derives the same table from the same set in any order."""
    ordered = sorted(symbols)
    count = min(len(ordered), MAX_SHARDS)
    return tuple(tuple(ordered[shard::count]) for shard in range(count))


def transactional_id(group_id: str, shard: int) -> str:
    return f"k2actors-{group_id}-shard-{shard}"


def group_generation(metadata: bytes) -> int | None:
    """The group generation in librdkafka's serialized consumer group metadata (what
    confluent-kafka's `consumer_group_metadata()` returns): "CGMDv2:" and an int32 in the
    machine's byte order (librdkafka copies it as it is). None for a format this does not know."""
    magic = b"CGMDv2:"
    if not metadata.startswith(magic) or len(metadata) < len(magic) + 4:
        return None
    (generation,) = struct.unpack_from("=i", metadata, len(magic))
    return int(generation)


@dataclass(frozen=True, slots=True)
class Acquire:
    """Fence the shard's former owner, read what Kafka holds for it, then report it acquired."""

    shard: int
    symbols: tuple[str, ...]
    acquisition: int


@dataclass(frozen=True, slots=True)
class Release:
    """Stop streaming and producing the shard."""

    shard: int
    symbols: tuple[str, ...]
    reason: str  # reassigned | lost | fenced | producer restarted
    acquisition: int  # the acquisition it ends


@dataclass(frozen=True, slots=True)
class Subscribe:
    """The symbols the connections carry from now on: those of the owned shards."""

    symbols: tuple[str, ...]


ShardEvent = Acquire | Release | Subscribe


class Shards:
    """One instance's shards. Fed the group's assignments and what the producer reports;
    returns what to do."""

    def __init__(self, symbols: Iterable[str], refence_after_seconds: float):
        self.table = shard_symbols(symbols)
        # A fenced shard that is still ours by the last assignment is acquired again only after
        # this long: the instance that fenced it was given it, and the rebalance that says so is
        # on its way to us; it is acquired again only if none comes.
        self._refence_after = refence_after_seconds
        self.assigned: frozenset[int] = frozenset()
        self.acquiring: set[int] = set()
        self.owned: set[int] = set()
        self._fenced: dict[int, float] = {}  # shard -> when
        self._acquisitions = 0
        self._current: dict[int, int] = {}  # shard held -> its acquisition

    def assign(self, shards: Iterable[int]) -> list[ShardEvent]:
        """The group's new assignment for this instance (eager: every rebalance gives the
        whole set again)."""
        assigned = frozenset(shard for shard in shards if 0 <= shard < len(self.table))
        held = self.acquiring | self.owned
        events: list[ShardEvent] = [self._release(shard, "reassigned") for shard in sorted(held - assigned)]
        self.assigned = assigned
        self._fenced.clear()
        events.extend(self._acquire(shard) for shard in sorted(assigned - held))
        return self._resubscribed(events)

    def lose(self) -> list[ShardEvent]:
        """The group gave up on this instance (its session timed out): every shard may
        already be another's."""
        events: list[ShardEvent] = [self._release(shard, "lost") for shard in sorted(self.acquiring | self.owned)]
        self.assigned = frozenset()
        self._fenced.clear()
        return self._resubscribed(events)

    def acquired(self, shard: int, acquisition: int) -> list[ShardEvent]:
        """The producer fenced the former owner and read what Kafka holds: stream it."""
        if shard not in self.acquiring or self._current.get(shard) != acquisition:
            return []  # released while it was being acquired, or an answer about an earlier acquisition
        self.acquiring.discard(shard)
        self.owned.add(shard)
        return [self.subscription()]

    def fenced(self, shard: int, acquisition: int, now: float) -> list[ShardEvent]:
        """Another producer took the shard's transactional id: this one can write no more."""
        if shard not in self.acquiring | self.owned or self._current.get(shard) != acquisition:
            return []
        self._fenced[shard] = now
        return self._resubscribed([self._release(shard, "fenced")])

    def due(self, now: float) -> list[ShardEvent]:
        """Fenced shards the group still says are ours, long after the fence: acquire them again."""
        due = [shard for shard, at in self._fenced.items() if now - at >= self._refence_after and shard in self.assigned]
        for shard in due:
            del self._fenced[shard]
        return [self._acquire(shard) for shard in sorted(due)]

    def producer_restarted(self, now: float) -> list[ShardEvent]:
        """A new producer has no writers: every shard held is released, and taken again like a
        fenced one. Not at once: a producer restart may follow a pause of the whole instance,
        after which this assignment is stale and the shards are another's; the rebalance
        that says so, or the refence delay, decides."""
        held = sorted(self.acquiring | self.owned)
        events: list[ShardEvent] = [self._release(shard, "producer restarted") for shard in held]
        self._fenced.update({shard: now for shard in held})
        return self._resubscribed(events)

    def subscription(self) -> Subscribe:
        return Subscribe(tuple(sorted(symbol for shard in self.owned for symbol in self.table[shard])))

    def _acquire(self, shard: int) -> Acquire:
        self.acquiring.add(shard)
        self._acquisitions += 1
        self._current[shard] = self._acquisitions
        return Acquire(shard, self.table[shard], self._acquisitions)

    def _release(self, shard: int, reason: str) -> Release:
        self.acquiring.discard(shard)
        self.owned.discard(shard)
        return Release(shard, self.table[shard], reason, self._current.pop(shard))

    def _resubscribed(self, events: list[ShardEvent]) -> list[ShardEvent]:
        """A release of an owned shard changes what the connections carry."""
        if any(isinstance(event, Release) for event in events):
            events.append(self.subscription())
        return events
