"""Cluster mode's pure core: the shard table, and one instance's shards through assignments,
acquisitions, fences and losses."""

import struct

from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.cluster import MAX_SHARDS, Acquire, Release, Shards, Subscribe, group_generation, shard_symbols, transactional_id

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


def test_every_instance_derives_the_same_shards_from_the_same_symbols_in_any_order():
    assert shard_symbols(SYMBOLS) == shard_symbols(reversed(SYMBOLS)) == (("BNBUSDT",), ("BTCUSDT",), ("ETHUSDT",))


@given(st.sets(st.from_regex(r"[A-Z]{3,8}USDT", fullmatch=True), min_size=1, max_size=60))
def test_each_symbol_is_in_exactly_one_shard_and_shards_are_even(symbols):
    table = shard_symbols(symbols)
    assert len(table) == min(len(symbols), MAX_SHARDS)
    assert sorted(s for shard in table for s in shard) == sorted(symbols)
    sizes = [len(shard) for shard in table]
    assert max(sizes) - min(sizes) <= 1


def test_transactional_ids_name_the_group_and_the_shard():
    assert transactional_id("prod", 3) == "k2actors-prod-shard-3"


def test_the_generation_is_read_from_librdkafkas_group_metadata_and_unknown_formats_give_none():
    assert group_generation(b"CGMDv2:" + struct.pack("=i", 7) + b"g\x00\x00\x01") == 7
    assert group_generation(b"CGMDv2:\xff\xff\xff\xffg\x00") == -1  # not in a group yet
    assert group_generation(b"CGMDv3:\x01\x00\x00\x00") is None
    assert group_generation(b"CGMDv2:\x01") is None


def shards() -> Shards:
    return Shards(SYMBOLS, refence_after_seconds=10.0)


def test_an_assigned_shard_is_acquired_first_and_streamed_only_once_acquired():
    plan = shards()
    assert plan.assign([0, 2]) == [Acquire(0, ("BNBUSDT",), 1), Acquire(2, ("ETHUSDT",), 2)]
    assert plan.subscription() == Subscribe(())  # nothing streams before Kafka has been read
    assert plan.acquired(2, 2) == [Subscribe(("ETHUSDT",))]
    assert plan.acquired(0, 1) == [Subscribe(("BNBUSDT", "ETHUSDT"))]
    assert plan.owned == {0, 2} and not plan.acquiring


def test_shards_that_stay_through_a_rebalance_keep_streaming_and_only_the_others_move():
    plan = shards()
    for event in plan.assign([0, 1, 2]):
        plan.acquired(event.shard, event.acquisition)
    # a second instance joined: eager assignment gives this one its share again
    assert plan.assign([0, 2]) == [Release(1, ("BTCUSDT",), "reassigned", 2), Subscribe(("BNBUSDT", "ETHUSDT"))]
    assert plan.assign([0, 1, 2]) == [Acquire(1, ("BTCUSDT",), 4)]  # it left again: no release of the others


def test_a_shard_released_while_being_acquired_is_not_streamed_when_its_acquisition_completes():
    plan = shards()
    plan.assign([1])
    assert plan.assign([]) == [Release(1, ("BTCUSDT",), "reassigned", 1), Subscribe(())]
    assert plan.acquired(1, 1) == []
    assert plan.owned == set()


def test_answers_about_an_earlier_acquisition_of_the_same_shard_are_ignored():
    plan = shards()
    plan.assign([1])
    plan.assign([])
    plan.assign([1])  # acquisition 2
    assert plan.acquired(1, 1) == [] and plan.fenced(1, 1, now=5.0) == []  # late answers about acquisition 1
    assert plan.acquired(1, 2) == [Subscribe(("BTCUSDT",))]


def test_a_lost_session_releases_everything_until_the_group_assigns_again():
    plan = shards()
    plan.assign([0, 1])
    plan.acquired(0, 1)
    assert plan.lose() == [Release(0, ("BNBUSDT",), "lost", 1), Release(1, ("BTCUSDT",), "lost", 2), Subscribe(())]
    assert plan.due(1000.0) == []  # nothing is taken back without an assignment
    assert plan.assign([0]) == [Acquire(0, ("BNBUSDT",), 3)]


def test_a_fenced_shard_waits_for_the_rebalance_that_gave_it_away_and_is_taken_back_only_if_none_comes():
    plan = shards()
    plan.assign([0, 1])
    plan.acquired(0, 1)
    plan.acquired(1, 2)
    assert plan.fenced(1, 2, now=100.0) == [Release(1, ("BTCUSDT",), "fenced", 2), Subscribe(("BNBUSDT",))]
    assert plan.fenced(1, 2, now=101.0) == []  # reported once
    assert plan.due(109.0) == []
    assert plan.due(110.0) == [Acquire(1, ("BTCUSDT",), 3)]  # still ours by the group, after the refence delay
    assert plan.due(200.0) == []


def test_the_rebalance_that_follows_a_fence_decides_and_cancels_the_refence():
    plan = shards()
    plan.assign([0, 1])
    plan.acquired(1, 2)
    plan.fenced(1, 2, now=100.0)
    assert plan.assign([0]) == []  # another instance has it; shard 0 is still being acquired
    assert plan.due(500.0) == []


def test_a_new_producer_takes_the_shards_again_once_no_rebalance_says_they_are_anothers():
    plan = shards()
    plan.assign([0, 2])
    plan.acquired(0, 1)
    assert plan.producer_restarted(now=50.0) == [
        Release(0, ("BNBUSDT",), "producer restarted", 1), Release(2, ("ETHUSDT",), "producer restarted", 2), Subscribe(()),
    ]
    assert plan.due(55.0) == []
    assert plan.due(60.0) == [Acquire(0, ("BNBUSDT",), 3), Acquire(2, ("ETHUSDT",), 4)]


def test_after_a_pause_the_rebalance_decides_what_a_new_producer_takes():
    plan = shards()
    plan.assign([0, 2])
    plan.producer_restarted(now=50.0)
    assert plan.assign([1]) == [Acquire(1, ("BTCUSDT",), 3)]
    assert plan.due(100.0) == []


def test_shards_outside_the_table_are_ignored():
    plan = shards()
    assert plan.assign([0, 7]) == [Acquire(0, ("BNBUSDT",), 1)]


@given(st.lists(st.one_of(
    st.tuples(st.just("assign"), st.sets(st.integers(0, 2))),
    st.tuples(st.just("acquired"), st.integers(0, 2)),  # the answer about the shard's latest acquisition
    st.tuples(st.just("fenced"), st.integers(0, 2)),
    st.tuples(st.just("late answer"), st.tuples(st.integers(0, 2), st.integers(1, 12))),  # about any acquisition
    st.tuples(st.just("lose"), st.none()),
    st.tuples(st.just("producer_restarted"), st.none()),
    st.tuples(st.just("due"), st.none()),
), max_size=30))
def test_whatever_happens_only_assigned_shards_are_held_and_only_owned_ones_stream(steps):
    plan = shards()
    now = 0.0
    streamed: tuple[str, ...] = ()
    latest: dict[int, int] = {}  # shard -> its latest acquisition, as the producer knows it
    for kind, argument in steps:
        now += 4.0
        if kind == "assign":
            events = plan.assign(argument)
        elif kind == "acquired":
            events = plan.acquired(argument, latest.get(argument, 0))
        elif kind == "fenced":
            events = plan.fenced(argument, latest.get(argument, 0), now)
        elif kind == "late answer":
            events = plan.acquired(*argument) + plan.fenced(*argument, now)
        elif kind == "lose":
            events = plan.lose()
        elif kind == "producer_restarted":
            events = plan.producer_restarted(now)
        else:
            events = plan.due(now)
        for event in events:
            if isinstance(event, Subscribe):
                streamed = event.symbols
            elif isinstance(event, Acquire):
                latest[event.shard] = event.acquisition
        assert (plan.owned | plan.acquiring) <= plan.assigned
        assert not plan.owned & plan.acquiring
        assert streamed == plan.subscription().symbols  # every change of what is owned was said
