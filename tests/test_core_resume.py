"""k2actors.core.ranges and k2actors.core.resume, directly: what Kafka holds, as ranges and
checkpoints, and where each stream resumes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.ranges import IdRanges, StreamPosition
from k2actors.core.raw import RAW, RAW_SOURCES_KEPT
from k2actors.core.resume import Acknowledged, Checkpoint, CheckpointError, held, positions
from k2actors.net import new_conn_id

KEY = ("BINANCE", "BTCUSDT")


def test_consecutive_ids_stay_one_range_and_repeats_are_refused():
    ranges = IdRanges()
    assert all(ranges.add(i) for i in range(10, 20))
    assert not ranges.add(15) and ranges.ranges() == [(10, 19)]
    ranges.add(25)
    ranges.add(22)
    assert ranges.ranges() == [(10, 19), (22, 22), (25, 25)] and 22 in ranges and 21 not in ranges
    ranges.add_range(20, 24)
    assert ranges.ranges() == [(10, 25)]


@given(st.lists(st.integers(0, 200), max_size=300))
def test_ranges_hold_exactly_the_ids_added(ids):
    ranges = IdRanges()
    for value in ids:
        ranges.add(value)
    expected = sorted(set(ids))
    assert [i for first, last in ranges.ranges() for i in range(first, last + 1)] == expected
    assert all(a[1] + 1 < b[0] for a, b in zip(ranges.ranges(), ranges.ranges()[1:], strict=False))  # disjoint, not touching
    position = ranges.position()
    if expected:
        assert position is not None and position.high == expected[-1]
        holes = {i for first, last in position.missing for i in range(first, last + 1)}
        assert holes == set(range(expected[0], expected[-1] + 1)) - set(expected)
    else:
        assert position is None


def test_a_checkpoint_round_trips_and_a_foreign_one_is_refused():
    checkpoint = Checkpoint("trade", {KEY: IdRanges([(1, 10), (12, 20)])}, {0: 31, 2: 7})
    assert Checkpoint.decode(checkpoint.encode()) == checkpoint
    with pytest.raises(CheckpointError, match="state format 2"):
        Checkpoint.decode(b'{"version": 2}')
    with pytest.raises(CheckpointError, match="unreadable"):
        Checkpoint.decode(b"not json")


def test_what_a_topic_holds_is_its_checkpoint_and_the_tail_after_it():
    checkpoint = Checkpoint("trade", {KEY: IdRanges([(1, 100)])}, {0: 50})
    ids = held(checkpoint, [("BINANCE", "BTCUSDT", 105), ("BINANCE", "BTCUSDT", 101), ("BINANCE", "ETHUSDT", 7)])
    assert positions("trade", ids) == {
        ("trade", "BINANCE", "BTCUSDT"): StreamPosition(105, ((102, 104),)),
        ("trade", "BINANCE", "ETHUSDT"): StreamPosition(7),
    }
    assert checkpoint.ids[KEY].ranges() == [(1, 100)]  # the checkpoint itself is left as it was


def test_acknowledgements_make_checkpoints_of_what_changed_only():
    book = Acknowledged()
    book.resume_from("trade", {KEY: IdRanges([(1, 10)])})
    book.acknowledged("trade", KEY, 11, partition=1, offset=40)
    book.acknowledged("trade", KEY, 13, partition=1, offset=41)
    [checkpoint] = book.due()
    assert checkpoint.ids == {KEY: IdRanges([(1, 11), (13, 13)])} and checkpoint.offsets == {1: 42}
    assert book.due() == []  # nothing new
    book.abandoned("trade", KEY, 12, 12)  # given up by backfill: settled, not declared again at the next start
    [checkpoint] = book.due()
    assert checkpoint.ids[KEY].ranges() == [(1, 13)]


def test_a_checkpoint_of_the_raw_record_keeps_only_its_newest_connections():
    account = Acknowledged()
    conn_ids = [new_conn_id() for _ in range(RAW_SOURCES_KEPT + RAW_SOURCES_KEPT // 10 + 1)]
    for offset, conn_id in enumerate(conn_ids):
        account.acknowledged(RAW, ("BINANCE", conn_id), 1, 0, offset)
    [checkpoint] = account.due()
    assert sorted(conn_id for _, conn_id in checkpoint.ids) == conn_ids[-RAW_SOURCES_KEPT:]
    assert checkpoint.offsets == {0: len(conn_ids)}
