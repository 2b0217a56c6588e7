"""k2actors.core.supervision and k2actors.core.delivery, directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.binance import AGG_TRADE, BOOK_TICKER, TRADE
from k2actors.core.delivery import ACK_OVERDUE_SECONDS, NO_SHARD, Admission, Deliveries, DeliveryReport, Handed, KafkaReadiness, Landed
from k2actors.core.ranges import IdRanges, StreamPosition
from k2actors.core.raw import RAW, RAW_SOURCES_KEPT
from k2actors.core.supervision import HEARTBEAT_TIMEOUT_SECONDS, ConnectionRole, Restart, Role, Supervision
from k2actors.net import new_conn_id

URLS = ("ws://a/stream", "ws://b/stream")
A, B = (ConnectionRole(url) for url in URLS)


def supervision(backfill: bool = True) -> Supervision:
    plan = Supervision(URLS, backfill)
    for role in (Role.METRICS, *plan.pipeline):
        plan.started(role, 0.0)
    return plan


def test_the_pipeline_is_every_child_but_metrics_in_wiring_order():
    assert supervision().pipeline == (Role.PRODUCER, Role.NORMALISER, Role.BACKFILL, A, B)
    assert supervision(backfill=False).pipeline == (Role.PRODUCER, Role.NORMALISER, A, B)
    assert Supervision((), backfill=True).pipeline == (Role.PRODUCER, Role.NORMALISER)  # nothing to backfill from
    # cluster mode: the group is joined last, once there is a pipeline for the shards it gives
    assert Supervision(URLS, backfill=True, cluster=True).pipeline == (Role.PRODUCER, Role.NORMALISER, Role.BACKFILL, A, B,
                                                                       Role.MEMBERSHIP)


@pytest.mark.parametrize(
    "role, rewire",
    [
        (Role.METRICS, (Role.PRODUCER, Role.BACKFILL, Role.NORMALISER, A, B)),
        (Role.PRODUCER, (Role.NORMALISER, Role.BACKFILL)),
        (Role.BACKFILL, (Role.NORMALISER,)),
        (Role.NORMALISER, (Role.BACKFILL, A, B)),
        (A, ()),
    ],
)
def test_a_restarted_child_is_made_known_to_whoever_talks_to_it(role, rewire):
    assert supervision().exited(role) == Restart(role, "exited", None, 0.0, rewire)


def test_only_a_child_silent_past_the_timeout_is_replaced_and_its_pid_is_named():
    plan = supervision()
    for role, pid in ((Role.METRICS, 10), (Role.PRODUCER, 11), (Role.NORMALISER, 12), (Role.BACKFILL, 13), (A, 14)):
        plan.heartbeat(role, pid, 5.0)
    plan.heartbeat(B, 15, 5.0 + HEARTBEAT_TIMEOUT_SECONDS)
    assert plan.silent(5.0 + HEARTBEAT_TIMEOUT_SECONDS) == []
    silent = plan.silent(5.1 + HEARTBEAT_TIMEOUT_SECONDS)
    assert [(r.role, r.pid, r.reason) for r in silent] == [
        (Role.METRICS, 10, "silent"), (Role.PRODUCER, 11, "silent"), (Role.NORMALISER, 12, "silent"),
        (Role.BACKFILL, 13, "silent"), (A, 14, "silent")]
    assert plan.pids() == {"metrics": 10, "producer": 11, "normaliser": 12, "backfill": 13,
                           "connection ws://a/stream": 14, "connection ws://b/stream": 15}


def test_a_child_that_never_beat_is_replaced_too_without_a_pid_to_kill():
    plan = supervision()
    [*_, last] = plan.silent(HEARTBEAT_TIMEOUT_SECONDS + 1)
    assert last.pid is None and last.kind == "connection"


def test_a_restart_starts_the_childs_clock_afresh():
    plan = supervision()
    plan.started(Role.PRODUCER, 20.0)
    assert Role.PRODUCER not in [r.role for r in plan.silent(25.0)]


def test_batches_are_confirmed_once_every_record_is_answered_grouped_by_sender():
    deliveries: Deliveries[str] = Deliveries()
    first, second, third = deliveries.expect(1, 2, "n1"), deliveries.expect(2, 1, "n2"), deliveries.expect(3, 1, "n1")
    deliveries.acknowledged(first, "trades", (0.01, 0.02), Landed("trade", ("BINANCE", "BTCUSDT"), 7, 0, 99, NO_SHARD))
    deliveries.acknowledged(second, "trades", None, None)
    deliveries.refused(third, "trades.dlq", "MSG_SIZE_TOO_LARGE", "too large")
    report = deliveries.take()
    assert report.confirmations == [("n2", [2]), ("n1", [3])]  # batch 1 still waits for a record
    assert report.produced == {"trades": 2} and report.errors == [("trades.dlq", "MSG_SIZE_TOO_LARGE", "too large")]
    assert report.receive_to_ack == [0.01] and report.exchange_to_ack == [0.02] and deliveries.failed == 1
    deliveries.acknowledged(first, "trades", None, None)
    assert deliveries.take().confirmations == [("n1", [1])]
    [(shard, checkpoint)] = deliveries.checkpoints()  # where the trade landed, for the next start
    assert shard == NO_SHARD
    assert checkpoint.ids[("BINANCE", "BTCUSDT")].ranges() == [(7, 7)] and checkpoint.offsets == {0: 100}
    assert deliveries.expect(4, 0, "n1").outstanding == 0 and deliveries.take().confirmations == [("n1", [4])]


def test_kafka_readiness_says_so_on_change_and_names_the_servers():
    readiness = KafkaReadiness("kafka:29092")
    assert readiness.setup_failed("KafkaException: timed out", 0.0) == (False, "setup failed (kafka:29092): KafkaException: timed out")
    assert readiness.connected(1.0) == (True, "connected to kafka:29092, nothing delivered yet")
    assert readiness.observe(DeliveryReport(), 10, 1.5) is None
    assert readiness.observe(DeliveryReport(produced={"t": 3}), 0, 2.0) == (True, "delivering to kafka:29092")
    assert readiness.observe(DeliveryReport(produced={"t": 3}), 0, 2.1) is None  # unchanged
    overdue = 2.0 + ACK_OVERDUE_SECONDS + 1
    assert readiness.observe(DeliveryReport(), 7, overdue) == (False, "no acknowledgement from kafka:29092 for 6 s; 7 records waiting")
    assert readiness.observe(DeliveryReport(), 7, overdue + 0.5) is None
    later = (False, "no acknowledgement from kafka:29092 for 7 s; 7 records waiting")
    assert readiness.observe(DeliveryReport(), 7, overdue + 1.0) == later  # refreshed once a second while failing
    assert readiness.current() == later


def test_an_id_kafka_holds_or_was_handed_is_never_produced_again():
    handed = Handed()
    handed.resume(TRADE, {("BINANCE", "BTCUSDT"): IdRanges([(1, 10), (15, 20)])})
    assert handed.admit(TRADE, "BINANCE", "BTCUSDT", 10) is Admission.IN_KAFKA  # held at start
    assert handed.admit(TRADE, "BINANCE", "BTCUSDT", 12) is Admission.PRODUCE  # a hole below the high: filled
    assert handed.admit(TRADE, "BINANCE", "BTCUSDT", 12) is Admission.IN_KAFKA  # and never twice
    assert handed.admit(TRADE, "BINANCE", "BTCUSDT", 21) is Admission.PRODUCE
    assert handed.admit(TRADE, "BINANCEUS", "BTCUSDT", 10) is Admission.PRODUCE  # another venue's ids
    assert handed.admit(AGG_TRADE, "BINANCE", "BTCUSDT", 10) is Admission.PRODUCE  # another stream's ids
    assert handed.positions() == {
        (TRADE, "BINANCE", "BTCUSDT"): StreamPosition(21, ((11, 11), (13, 14))),
        (TRADE, "BINANCEUS", "BTCUSDT"): StreamPosition(10),
        (AGG_TRADE, "BINANCE", "BTCUSDT"): StreamPosition(10),
    }


@pytest.mark.parametrize("stream", [TRADE, AGG_TRADE])
def test_a_trade_older_than_one_handed_is_still_produced(stream):
    handed = Handed()
    assert handed.admit(stream, "BINANCE", "ETHUSDT", 7000656) is Admission.PRODUCE
    assert handed.admit(stream, "BINANCE", "ETHUSDT", 7000655) is Admission.PRODUCE  # ids, not order, say what is there


def test_a_quote_older_than_one_handed_is_superseded_so_quotes_land_in_update_order():
    handed = Handed()
    assert handed.admit(BOOK_TICKER, "BINANCE", "ETHUSDT", 7000656) is Admission.PRODUCE
    assert handed.admit(BOOK_TICKER, "BINANCE", "ETHUSDT", 7000655) is Admission.SUPERSEDED  # its batch came late
    assert handed.admit(BOOK_TICKER, "BINANCE", "ETHUSDT", 7000656) is Admission.IN_KAFKA  # a resend
    assert handed.admit(BOOK_TICKER, "BINANCE", "BNBUSDT", 5) is Admission.PRODUCE  # symbols apart
    assert handed.admit(BOOK_TICKER, "BINANCE", "ETHUSDT", 7000700) is Admission.PRODUCE
    assert handed.positions()[(BOOK_TICKER, "BINANCE", "ETHUSDT")].high == 7000700


@given(st.lists(st.integers(0, 50), max_size=40))
def test_whatever_order_quotes_arrive_in_what_is_produced_only_moves_forward(arrivals):
    handed = Handed()
    produced = [u for u in arrivals if handed.admit(BOOK_TICKER, "BINANCE", "BTCUSDT", u) is Admission.PRODUCE]
    assert produced == sorted(set(produced))  # strictly increasing: no quote behind a newer one, none twice
    assert (produced[-1] if produced else None) == (max(arrivals) if arrivals else None)  # the newest always lands


def test_in_cluster_mode_each_shard_keeps_its_own_checkpoints_and_forgets_them_when_released():
    deliveries: Deliveries[str] = Deliveries()
    deliveries.resume_from("trade", {("BINANCE", "BTCUSDT"): IdRanges([(1, 5)])}, shard=1)
    pending = deliveries.expect(1, 3, "n")
    deliveries.acknowledged(pending, "trades", None, Landed("trade", ("BINANCE", "BTCUSDT"), 6, 2, 40, 1))
    deliveries.acknowledged(pending, "trades", None, Landed("trade", ("BINANCE", "ETHUSDT"), 9, 0, 7, 2))  # shard 2: not held
    deliveries.released(pending)  # its shard's transaction did not commit: not a failure of this instance
    report = deliveries.take()
    assert report.confirmations == [("n", [1])] and report.released == 1 and deliveries.failed == 0
    [(shard, checkpoint)] = deliveries.checkpoints()
    assert shard == 1 and checkpoint.ids[("BINANCE", "BTCUSDT")].ranges() == [(1, 6)] and checkpoint.offsets == {2: 41}
    deliveries.abandoned("trade", ("BINANCE", "ETHUSDT"), 10, 12, shard=2)  # a shard this instance does not hold
    deliveries.forget(1)
    deliveries.acknowledged(deliveries.expect(2, 1, "n"), "trades", None, Landed("trade", ("BINANCE", "BTCUSDT"), 7, 2, 41, 1))
    assert deliveries.checkpoints() == []  # a late acknowledgement of a released shard is its next owner's to read


def test_a_released_shards_ids_are_forgotten_so_its_next_acquisition_starts_from_kafka():
    handed = Handed()
    handed.resume(TRADE, {("BINANCE", "BTCUSDT"): IdRanges([(1, 10)]), ("BINANCE", "ETHUSDT"): IdRanges([(1, 3)])})
    handed.forget(frozenset({"BTCUSDT"}))
    assert set(handed.positions()) == {(TRADE, "BINANCE", "ETHUSDT")}
    assert handed.admit(TRADE, "BINANCE", "BTCUSDT", 5) is Admission.PRODUCE


def test_a_frame_kafka_holds_or_was_handed_is_never_produced_again_and_is_no_stream_to_track():
    handed = Handed()
    first, second = new_conn_id(), new_conn_id()
    handed.resume(RAW, {("BINANCE", first): IdRanges([(1, 10)])})
    assert handed.admit_frame("BINANCE", first, 10) is Admission.IN_KAFKA  # held at start
    assert handed.admit_frame("BINANCE", first, 11) is Admission.PRODUCE
    assert handed.admit_frame("BINANCE", first, 11) is Admission.IN_KAFKA  # a resend
    assert handed.admit_frame("BINANCE", second, 1) is Admission.PRODUCE  # another connection's numbers
    assert handed.positions() == {}  # nothing for the Normaliser to resume


def test_past_the_bound_the_oldest_connections_are_forgotten_first():
    handed = Handed()
    conn_ids = [new_conn_id() for _ in range(RAW_SOURCES_KEPT + RAW_SOURCES_KEPT // 10 + 1)]
    assert conn_ids == sorted(conn_ids)  # made in order, named in order
    for conn_id in conn_ids:
        assert handed.admit_frame("BINANCE", conn_id, 1) is Admission.PRODUCE
    assert handed.admit_frame("BINANCE", conn_ids[-1], 1) is Admission.IN_KAFKA  # the newest are kept
    assert handed.admit_frame("BINANCE", conn_ids[-RAW_SOURCES_KEPT], 1) is Admission.IN_KAFKA
    assert handed.admit_frame("BINANCE", conn_ids[0], 1) is Admission.PRODUCE  # the oldest long forgotten
