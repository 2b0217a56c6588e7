"""k2actors.core.link, directly: the flow window, the watchdog and make-before-break rotation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.link import (
    Drop,
    FlowWindow,
    Frame,
    ReadingPaused,
    ReadingResumed,
    Retire,
    Rotation,
    RotationCompleted,
    RotationFailed,
    silent_for,
)
from k2actors.core.reasons import ConnectionEnd, EndReason


def frames(start: int, count: int) -> list[Frame]:
    return [(i, "conn", i + 1, f"frame {i}".encode()) for i in range(start, start + count)]


def test_the_window_lets_a_few_batches_out_and_the_rest_leave_together_later():
    flow = FlowWindow(max_waiting=1000, window_batches=2)
    for start in (0, 1, 2, 3):
        flow.add(frames(start, 1))
        sent = flow.release()
        assert [seq for seq, _ in sent] == ([start + 1] if start < 2 else [])
    assert flow.waiting == 2
    flow.taken(2)
    [(seq, batch)] = flow.release()
    assert seq == 3 and [received for received, *_ in batch] == [2, 3]  # one batch, in order


def test_a_batch_holds_at_most_max_batch_frames():
    flow = FlowWindow(max_waiting=10_000, window_batches=4, max_batch_frames=3)
    flow.add(frames(0, 7))
    assert [len(batch) for _, batch in flow.release()] == [3, 3, 1]


def test_a_batch_stops_growing_at_max_batch_bytes_and_a_larger_frame_leaves_alone():
    flow = FlowWindow(max_waiting=10_000, window_batches=10, max_batch_bytes=100)
    sizes = [40, 40, 40, 250, 10, 90, 1]
    flow.add([(i, "conn", i + 1, b"x" * size) for i, size in enumerate(sizes)])
    assert [[len(frame) for *_, frame in batch] for _, batch in flow.release()] == [[40, 40], [40], [250], [10, 90], [1]]


def test_a_new_receiver_is_sent_first_every_batch_not_confirmed():
    flow = FlowWindow(max_waiting=10_000, window_batches=2, max_batch_frames=2)
    flow.add(frames(0, 7))
    assert [seq for seq, _ in flow.release()] == [1, 2]
    flow.taken(2)
    flow.confirmed(1)  # frames 0 and 1 are in Kafka; 2 and 3 (batch 2) not yet
    assert [seq for seq, _ in flow.release()] == [3, 4]  # taken: the window has room, whatever Kafka has
    flow.new_receiver()
    resent = flow.release()
    assert [seq for seq, _ in resent] == [5, 6]
    assert [received for _, batch in resent for received, *_ in batch] == [2, 3, 4, 5]
    flow.taken(6)
    assert [[received for received, *_ in batch] for _, batch in flow.release()] == [[6]]
    flow.confirmed(7)
    assert flow.unconfirmed == 0


def test_a_confirmation_says_each_connections_last_frame_now_in_kafka():
    flow = FlowWindow(max_waiting=10_000, window_batches=4, max_batch_frames=3)
    old = [(i, "old", i + 1, b"x") for i in range(4)]
    new = [(i, "new", i + 1, b"y") for i in range(3)]
    flow.add(old[:3] + [old[3], *new[:2]] + new[2:])  # a rotation: the old connection's last frames beside the new one's
    assert [seq for seq, _ in flow.release()] == [1, 2, 3]
    assert flow.confirmed(1) == {"old": 3}
    assert flow.confirmed(1) == {}  # said once
    assert flow.confirmed(3) == {"old": 4, "new": 3}


def test_everything_leaves_on_stop_whatever_the_window():
    flow = FlowWindow(max_waiting=10_000, window_batches=1, max_batch_frames=2)
    flow.add(frames(0, 5))
    assert [seq for seq, _ in flow.release(everything=True)] == [1, 2, 3]
    assert flow.waiting == 0


def test_a_new_receiver_has_nothing_in_flight():
    flow = FlowWindow(max_waiting=100, window_batches=1)
    flow.add(frames(0, 1))
    assert flow.release()
    flow.add(frames(1, 1))
    assert flow.release() == []  # the window is full: the old Normaliser never answered
    flow.new_receiver()
    assert [seq for seq, _ in flow.release()] == [2]


def test_reading_pauses_at_the_bound_of_frames_not_in_kafka_and_resumes_below_half_of_it():
    flow = FlowWindow(max_waiting=10, window_batches=1)
    flow.add(frames(0, 1))
    flow.release()
    flow.add(frames(1, 8))
    assert flow.reading_change() is None and flow.unconfirmed == 9
    flow.add(frames(9, 1))
    assert flow.reading_change() == ReadingPaused(10)  # one frame sent, nine waiting: none in Kafka yet
    assert flow.reading_change() is None  # said once
    flow.taken(1)
    flow.release()  # the nine leave as one batch: still not in Kafka
    assert flow.reading_change() is None and flow.unconfirmed == 10
    flow.confirmed(1)
    assert flow.reading_change() is None and flow.unconfirmed == 9  # above half the bound
    flow.confirmed(2)
    assert flow.reading_change() == ReadingResumed(0)
    assert flow.reading


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=60), st.integers(1, 5), st.integers(1, 20),
       st.integers(1, 200))
def test_no_frame_is_lost_duplicated_or_reordered(steps, window, max_batch, max_bytes):
    """Whatever the arrivals and acknowledgements, frames leave once each and in order, and
    never more than `window` batches are unacknowledged."""
    flow = FlowWindow(max_waiting=30, window_batches=window, max_batch_frames=max_batch, max_batch_bytes=max_bytes)
    sent, next_frame, acknowledged = [], 0, 0
    for count, acknowledge in steps:
        flow.add(frames(next_frame, count))
        next_frame += count
        if acknowledge and sent:
            acknowledged = sent[-1][0]
            flow.taken(acknowledged)
        sent += flow.release()
        flow.reading_change()
        assert flow.seq - acknowledged <= window
    sent += flow.release(everything=True)
    assert [seq for seq, _ in sent] == list(range(1, len(sent) + 1))
    assert [received for _, batch in sent for received, *_ in batch] == list(range(next_frame))
    assert all(len(batch) == 1 or sum(len(frame) for *_, frame in batch) <= max_bytes for _, batch in sent)


@dataclass
class FakeReader:
    opened: bool = True
    opened_at: float = 0.0
    streamed: bool = False
    last_frame_at: float = 0.0
    ended: ConnectionEnd | None = None


LOST = ConnectionEnd(EndReason.CONNECTION_LOST, "connection lost without a close frame")


@pytest.mark.parametrize(
    "reader, silence",
    [
        (FakeReader(last_frame_at=90.0), None),  # heard from 10 s ago, within the timeout
        (FakeReader(last_frame_at=50.0), 50.0),
        (FakeReader(opened=False, last_frame_at=0.0), None),  # still connecting: the connect timeout's job
        (FakeReader(last_frame_at=0.0, ended=LOST), None),  # already over
    ],
)
def test_the_watchdog_names_only_open_readers_silent_past_the_timeout(reader, silence):
    assert silent_for(reader, now=100.0, timeout=30.0) == silence


def test_a_rotation_retires_the_old_reader_once_the_new_one_streams():
    old, new = FakeReader(streamed=True), FakeReader()
    rotation = Rotation(old)
    assert rotation.can_rotate()
    rotation.begin(new, "max_age")
    assert not rotation.can_rotate()  # one rotation at a time
    assert rotation.settle() == []  # the new one has not delivered yet: both stay
    assert rotation.readers() == [old, new]
    new.streamed = True
    events = rotation.settle()
    assert events == [Retire(old, ConnectionEnd(EndReason.CLOSED_HERE, "rotated: max_age")), RotationCompleted("max_age")]
    assert rotation.current is new and rotation.readers() == [old, new]  # the old one still drains
    old.ended = ConnectionEnd(EndReason.CLOSED_HERE, "rotated: max_age")
    assert rotation.settle() == [Drop(old)]
    assert rotation.readers() == [new]


def test_a_replacement_that_fails_leaves_the_current_reader_alone():
    old, new = FakeReader(streamed=True), FakeReader(opened=False)
    rotation = Rotation(old)
    rotation.begin(new, "server_shutdown")
    failed = ConnectionEnd(EndReason.CONNECT_FAILED, "connect failed: refused")
    new.ended = failed
    assert rotation.settle() == [Drop(new), RotationFailed(failed)]
    assert rotation.current is old and rotation.readers() == [old] and rotation.can_rotate()


def test_when_the_old_connection_goes_first_the_successor_takes_over():
    old, new = FakeReader(streamed=True), FakeReader()
    rotation = Rotation(old)
    rotation.begin(new, "server_shutdown")
    old.ended = ConnectionEnd(EndReason.SERVER_CLOSED, "server closed the connection (code 1001)")
    assert rotation.settle() == [Drop(old)]
    assert rotation.current is new and rotation.successor is None


def test_a_reader_that_is_not_open_or_has_ended_is_not_rotated():
    assert not Rotation(FakeReader(opened=False)).can_rotate()
    assert not Rotation(FakeReader(ended=LOST)).can_rotate()
