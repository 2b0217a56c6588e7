"""What Kafka already holds, so that a start continues where the last run stopped.

While it runs, the producer writes a checkpoint of each stream type's topic about once a
second to a compacted state topic: per (venue, symbol) the ids Kafka acknowledged, as
ranges, and per partition the offset after the last acknowledged record. On start it reads
the newest checkpoint and then the topic's tail from those offsets (what landed after the
checkpoint, acknowledged or not). Both together are exactly what the topic holds, without
reading the topic from its beginning: the highest id of each stream, and the holes below it
(gaps still being backfilled when the last run ended) to declare and fill again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from k2actors.core.ranges import IdRanges, StreamPosition
from k2actors.core.raw import forget_oldest_sources
from k2actors.core.streams import SUPERSEDING, is_raw

Key = tuple[str, str]  # (venue, symbol)
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A state record this version cannot read."""


@dataclass(frozen=True)
class Checkpoint:
    stream: str
    ids: Mapping[Key, IdRanges]
    offsets: Mapping[int, int]  # partition -> offset after the last acknowledged record

    def encode(self) -> bytes:
        return json.dumps({
            "version": FORMAT_VERSION,
            "stream": self.stream,
            "ids": [[venue, symbol, ranges.ranges()] for (venue, symbol), ranges in sorted(self.ids.items())],
            "offsets": {str(partition): offset for partition, offset in sorted(self.offsets.items())},
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        try:
            state = json.loads(raw)
            if state["version"] != FORMAT_VERSION:
                raise CheckpointError(f"state format {state['version']!r}, this version reads {FORMAT_VERSION}")
            ids = {(venue, symbol): IdRanges([(first, last) for first, last in ranges]) for venue, symbol, ranges in state["ids"]}
            offsets = {int(partition): int(offset) for partition, offset in state["offsets"].items()}
            return cls(str(state["stream"]), ids, offsets)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"unreadable state record: {type(exc).__name__}: {exc}") from exc


@dataclass
class Acknowledged:
    """The producer's running account for checkpoints: ids and offsets Kafka acknowledged."""

    ids: dict[str, dict[Key, IdRanges]] = field(default_factory=dict)  # per stream type
    offsets: dict[str, dict[int, int]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

    def acknowledged(self, stream: str, key: Key, event_id: int, partition: int, offset: int) -> None:
        # Once per record acknowledged: nothing is built that is not needed.
        ranges = self.ids.get(stream, {}).get(key)
        if ranges is None:
            ranges = self.ids.setdefault(stream, {})[key] = IdRanges()
        if stream in SUPERSEDING:
            ranges.supersede(event_id)
        else:
            ranges.add(event_id)
        offsets = self.offsets.get(stream)
        if offsets is None:
            offsets = self.offsets[stream] = {}
        if offset >= offsets.get(partition, 0):
            offsets[partition] = offset + 1
        self.changed.add(stream)

    def abandoned(self, stream: str, key: Key, first_id: int, last_id: int) -> None:
        """Ids given up as unfilled are settled: the next start must not declare them again."""
        self.ids.setdefault(stream, {}).setdefault(key, IdRanges()).add_range(first_id, last_id)
        self.offsets.setdefault(stream, {})
        self.changed.add(stream)

    def resume_from(self, stream: str, ids: Mapping[Key, IdRanges]) -> None:
        """What Kafka held at start counts as acknowledged: the next checkpoint carries it on."""
        mine = self.ids.setdefault(stream, {})
        for key, ranges in ids.items():
            mine.setdefault(key, IdRanges()).update(ranges)

    def due(self) -> list[Checkpoint]:
        """A checkpoint of each stream type that changed since the last call."""
        for stream, ids in self.ids.items():
            if is_raw(stream):
                forget_oldest_sources(ids)
        due = [Checkpoint(stream, {key: IdRanges(ranges.ranges()) for key, ranges in self.ids[stream].items()},
                          dict(self.offsets[stream])) for stream in sorted(self.changed)]
        self.changed.clear()
        return due


def held(checkpoint: Checkpoint | None, tail: Iterable[tuple[str, str, int]]) -> dict[Key, IdRanges]:
    """What a topic holds: its newest checkpoint and the (venue, symbol, id) of every record
    after the checkpoint's offsets."""
    ids: dict[Key, IdRanges] = {key: IdRanges(ranges.ranges()) for key, ranges in (checkpoint.ids if checkpoint else {}).items()}
    for venue, symbol, event_id in tail:
        ids.setdefault((venue, symbol), IdRanges()).add(event_id)
    return ids


def positions(stream: str, ids: Mapping[Key, IdRanges]) -> dict[tuple[str, str, str], StreamPosition]:
    """Where each (stream, venue, symbol) stands, for the Normaliser's id tracking."""
    found = {}
    for (venue, symbol), ranges in ids.items():
        position = ranges.position()
        if position is not None:
            found[(stream, venue, symbol)] = position
    return found
