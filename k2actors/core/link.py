"""A connection actor's policy, without sockets or threads: how frames leave for the
Normaliser (the flow window and backpressure), when a connection is stale or too old, and
the make-before-break rotation of one connection's readers.

The shell owns the readers (threads on websockets) and feeds this module what they report;
these objects answer with what to do: batches to send, reading to pause or resume, readers
to close or to drop, rotations completed or failed.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from k2actors.core.reasons import ConnectionEnd, EndReason

# (receive time in nanoseconds since the epoch, the connection's id, the frame's number on it
# from 1, the frame as received): a plain tuple, made, pickled and read once per frame.
Frame = tuple[int, str, int, bytes]
CONN_ID: Final = 1  # where the connection's id is in a Frame
CONN_MSG_SEQ: Final = 2  # ... its number
PAYLOAD: Final = 3  # ... and its bytes

# RawBatches sent but not yet taken by the Normaliser. With the window full, frames wait in
# the backlog and leave together in the next batch: under load batches grow by themselves,
# and the actor never floods a mailbox (a flooded mailbox delays even its heartbeats).
WINDOW_BATCHES = 4
MAX_BATCH_FRAMES = 5000
# A batch stops growing past this many bytes of frames, so that it stays far inside what a
# data channel carries (core.framing.MAX_MESSAGE_BYTES) whatever the frames' size.
MAX_BATCH_BYTES = 8 * 2**20


@dataclass(frozen=True, slots=True)
class ReadingPaused:
    waiting_frames: int


@dataclass(frozen=True, slots=True)
class ReadingResumed:
    waiting_frames: int


class FlowWindow:
    """Frames from the readers to the Normaliser, numbered RawBatches 1, 2, 3, ...

    At most `window_batches` batches are in flight (sent, not yet taken by the Normaliser); the
    rest wait in the backlog. A batch is kept until the Normaliser confirms that Kafka has
    what came of it: a new Normaliser is sent again every batch not confirmed. Bounded
    memory without loss: at `max_waiting` frames not yet in Kafka the readers pause and TCP
    slows the sender; below half of it they read again. (Binance drops a client that falls
    too far behind; that ends as a reconnect and a reported gap, never as unbounded memory.)
    """

    def __init__(self, max_waiting: int, window_batches: int = WINDOW_BATCHES, max_batch_frames: int = MAX_BATCH_FRAMES,
                 max_batch_bytes: int = MAX_BATCH_BYTES):
        self._max_waiting = max_waiting
        self._window = window_batches
        self._max_batch = max_batch_frames
        self._max_bytes = max_batch_bytes
        self._backlog: collections.deque[Frame] = collections.deque()
        self._kept: collections.deque[tuple[int, tuple[Frame, ...]]] = collections.deque()  # sent, not yet confirmed
        self._kept_frames = 0
        self.seq = 0  # the last batch numbered
        self._taken = 0  # the last batch the Normaliser has taken
        self.reading = True

    @property
    def waiting(self) -> int:
        return len(self._backlog)

    @property
    def unconfirmed(self) -> int:
        """Frames not yet in Kafka: waiting, and sent to the Normaliser but not confirmed."""
        return len(self._backlog) + self._kept_frames

    def add(self, frames: list[Frame]) -> None:
        self._backlog.extend(frames)

    def taken(self, seq: int) -> None:
        """The Normaliser has taken every batch up to `seq`: the window has room again."""
        self._taken = max(self._taken, seq)

    def confirmed(self, seq: int) -> dict[str, int]:
        """Kafka has what came of every batch up to `seq`: they need be kept no longer. Per
        connection among their frames, the number of its last frame now in Kafka (a
        connection's frames leave in the order they came, and are confirmed in that order)."""
        kept = self._kept
        last: dict[str, int] = {}
        while kept and kept[0][0] <= seq:
            frames = kept.popleft()[1]
            self._kept_frames -= len(frames)
            for frame in frames:
                last[frame[CONN_ID]] = frame[CONN_MSG_SEQ]
        return last

    def new_receiver(self) -> None:
        """A new Normaliser (or a new channel to it): every batch not confirmed is sent again,
        first, in new batches. Nothing is in flight to the new one."""
        for _, frames in reversed(self._kept):
            self._backlog.extendleft(reversed(frames))
        self._kept.clear()
        self._kept_frames = 0
        self._taken = self.seq

    def release(self, everything: bool = False) -> list[tuple[int, tuple[Frame, ...]]]:
        """(seq, frames) of each batch to send now: while the window has room, or all of it
        (`everything`: the connection is stopping and nothing more will come)."""
        batches = []
        while self._backlog and (everything or self.seq - self._taken < self._window):
            self.seq += 1
            batch = (self.seq, self._next_batch())
            self._kept.append(batch)
            self._kept_frames += len(batch[1])
            batches.append(batch)
        return batches

    def _next_batch(self) -> tuple[Frame, ...]:
        """At most max_batch_frames frames and, beyond its first frame, max_batch_bytes."""
        backlog = self._backlog
        batch = [backlog.popleft()]
        size = len(batch[0][PAYLOAD])
        while backlog and len(batch) < self._max_batch and size + len(backlog[0][PAYLOAD]) <= self._max_bytes:
            frame = backlog.popleft()
            batch.append(frame)
            size += len(frame[PAYLOAD])
        return tuple(batch)

    def reading_change(self) -> ReadingPaused | ReadingResumed | None:
        """Whether the readers must pause or may resume, once the frames not yet in Kafka cross a bound."""
        if self.reading and self.unconfirmed >= self._max_waiting:
            self.reading = False
            return ReadingPaused(self.unconfirmed)
        if not self.reading and self.unconfirmed < self._max_waiting // 2:
            self.reading = True
            return ReadingResumed(self.unconfirmed)
        return None


class ReaderState(Protocol):
    """What a reader of one websocket connection reports."""

    @property
    def opened(self) -> bool: ...  # the handshake completed
    @property
    def opened_at(self) -> float: ...  # monotonic
    @property
    def streamed(self) -> bool: ...  # at least one data frame arrived
    @property
    def last_frame_at(self) -> float: ...  # monotonic: any frame, pings included
    @property
    def ended(self) -> ConnectionEnd | None: ...


R = TypeVar("R", bound=ReaderState)


def silent_for(reader: ReaderState, now: float, timeout: float) -> float | None:
    """How long an open reader has been silent, when that is longer than `timeout`. The
    watchdog is per connection: quiet symbols on a live connection are no fault."""
    if not reader.opened or reader.ended is not None:
        return None
    silence = now - reader.last_frame_at
    return silence if silence > timeout else None


@dataclass(frozen=True, slots=True)
class Retire(Generic[R]):
    """Close this reader; what it read until then still counts."""

    reader: R
    end: ConnectionEnd


@dataclass(frozen=True, slots=True)
class Drop(Generic[R]):
    """This reader has ended: collect its last frames and let it go."""

    reader: R


@dataclass(frozen=True, slots=True)
class RotationCompleted:
    reason: str


@dataclass(frozen=True, slots=True)
class RotationFailed:
    end: ConnectionEnd


RotationEvent = Retire[R] | Drop[R] | RotationCompleted | RotationFailed


class Rotation(Generic[R]):
    """One connection's worth of streams, replaced make-before-break: during a rotation two
    readers are live, and the current one streams until its successor has delivered data."""

    def __init__(self, current: R):
        self.current = current
        self.successor: R | None = None
        self.retiring: list[R] = []
        self._reason = ""

    def readers(self) -> list[R]:
        """Oldest first, so that frames taken in this order keep the order they were sent in."""
        return [*self.retiring, self.current, *([self.successor] if self.successor is not None else [])]

    def can_rotate(self) -> bool:
        return self.current.opened and self.current.ended is None and self.successor is None

    def begin(self, successor: R, reason: str) -> None:
        """`successor` is a new reader opened to replace the current one (after `can_rotate`)."""
        self.successor, self._reason = successor, reason

    def settle(self) -> list[RotationEvent[R]]:
        events: list[RotationEvent[R]] = []
        for reader in [r for r in self.retiring if r.ended is not None]:
            self.retiring.remove(reader)
            events.append(Drop(reader))
        successor = self.successor
        if successor is None:
            return events
        if successor.streamed:
            self.retiring.append(self.current)
            retired = ConnectionEnd(EndReason.CLOSED_HERE, f"rotated: {self._reason}")
            events += [Retire(self.current, retired), RotationCompleted(self._reason)]
            self.current, self.successor = successor, None
        elif successor.ended is not None:
            events += [Drop(successor), RotationFailed(successor.ended)]
            self.successor = None
        elif self.current.ended is not None:
            # The old connection went first (a serverShutdown does that): the successor takes over.
            events.append(Drop(self.current))
            self.current, self.successor = successor, None
        return events
