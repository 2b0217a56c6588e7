
import pytest

from k2actors.core.backoff import backoff_delay
from k2actors.core.breaker import BreakerState, CircuitBreaker
from k2actors.core.failover import Attempt, AttemptBudget, DarkDeadline, FailoverPolicy
from k2actors.core.ranges import StreamPosition
from k2actors.core.reasons import EndReason
from k2actors.core.sequence import DEDUP_WINDOW_IDS, BatchSequence, Gap, LatestUpdate, SequenceTracker, StreamSequences, Verdict
from k2actors.core.telemetry import CATALOGUE, LATENCY_BUCKETS, MetricBuffer, MetricDeltas

KEY = ("BINANCE", "BTCUSDT")


def test_first_id_then_consecutive_ids_are_new():
    tracker = SequenceTracker()
    assert [tracker.observe(KEY, i, 0) for i in (10, 11, 12)] == [Verdict.NEW] * 3
    assert tracker.declare_due(0) == []
    assert tracker.last_id(KEY) == 12


def test_repeats_and_old_ids_are_duplicates():
    tracker = SequenceTracker()
    for i in (1, 2, 3):
        tracker.observe(KEY, i, 0)
    assert tracker.observe(KEY, 3, 0) is Verdict.DUPLICATE
    assert tracker.observe(KEY, 1, 0) is Verdict.DUPLICATE


def test_ids_further_back_than_the_dedup_window_are_regressions_not_duplicates():
    tracker = SequenceTracker()
    tracker.observe(KEY, 500_000, 0.0)
    assert tracker.observe(KEY, 500_000 - DEDUP_WINDOW_IDS, 0.0) is Verdict.DUPLICATE
    assert tracker.observe(KEY, 500_000 - DEDUP_WINDOW_IDS - 1, 0.0) is Verdict.REGRESSED
    assert tracker.last_id(KEY) == 500_000


def test_a_declared_gap_far_behind_is_still_recovered_not_regressed():
    tracker = SequenceTracker()
    tracker.observe(KEY, 1, 0.0)
    tracker.observe(KEY, 10, 0.0)
    tracker.declare_due(0.0)
    tracker.observe(KEY, 10 + 2 * DEDUP_WINDOW_IDS, 0.0)
    assert tracker.observe(KEY, 5, 0.0) is Verdict.RECOVERED


def test_symbols_and_venues_are_tracked_apart():
    tracker = SequenceTracker()
    tracker.observe(KEY, 100, 0)
    assert tracker.observe(("BINANCE", "ETHUSDT"), 5, 0) is Verdict.NEW
    assert tracker.observe(("BINANCEUS", "BTCUSDT"), 5, 0) is Verdict.NEW
    assert tracker.observe(KEY, 101, 0) is Verdict.NEW


def test_gap_is_declared_at_once_without_grace():
    tracker = SequenceTracker(grace_seconds=0)
    tracker.observe(KEY, 1, 0)
    tracker.observe(KEY, 5, 0)
    assert tracker.declare_due(0) == [Gap("BINANCE", "BTCUSDT", 2, 4)]
    assert tracker.declare_due(0) == []  # declared once


def test_ids_inside_the_grace_period_fill_the_gap():
    tracker = SequenceTracker(grace_seconds=2)
    tracker.observe(KEY, 1, 0)
    tracker.observe(KEY, 6, 0)
    assert tracker.observe(KEY, 3, 1) is Verdict.FILLED
    assert tracker.observe(KEY, 3, 1) is Verdict.DUPLICATE
    assert tracker.declare_due(1.5) == []
    assert tracker.declare_due(2) == [Gap("BINANCE", "BTCUSDT", 2, 2), Gap("BINANCE", "BTCUSDT", 4, 5)]


def test_a_gap_filled_completely_is_never_declared():
    tracker = SequenceTracker(grace_seconds=1)
    tracker.observe(KEY, 1, 0)
    tracker.observe(KEY, 4, 0)
    assert [tracker.observe(KEY, i, 0.5) for i in (2, 3)] == [Verdict.FILLED, Verdict.FILLED]
    assert tracker.declare_due(5) == []


def test_late_arrival_after_declaration_is_recovered():
    tracker = SequenceTracker(grace_seconds=0)
    tracker.observe(KEY, 1, 0)
    tracker.observe(KEY, 4, 0)
    assert tracker.declare_due(0) == [Gap("BINANCE", "BTCUSDT", 2, 3)]
    assert tracker.observe(KEY, 2, 1) is Verdict.RECOVERED
    assert tracker.observe(KEY, 2, 1) is Verdict.DUPLICATE


def test_resume_continues_from_published_ids():
    tracker = SequenceTracker(grace_seconds=0)
    tracker.resume({KEY: StreamPosition(10)}, 0)
    assert tracker.observe(KEY, 9, 0) is Verdict.DUPLICATE
    assert tracker.observe(KEY, 11, 0) is Verdict.NEW
    assert tracker.observe(KEY, 14, 0) is Verdict.NEW
    assert tracker.declare_due(0) == [Gap("BINANCE", "BTCUSDT", 12, 13)]


def test_resume_never_rewinds_a_symbol_already_seen():
    tracker = SequenceTracker()
    tracker.observe(KEY, 20, 0)
    tracker.resume({KEY: StreamPosition(10), ("BINANCE", "ETHUSDT"): StreamPosition(5)}, 0)
    assert tracker.last_id(KEY) == 20
    assert tracker.observe(("BINANCE", "ETHUSDT"), 6, 0) is Verdict.NEW


def test_resume_declares_the_holes_kafka_holds_after_the_grace_and_fills_them():
    tracker = SequenceTracker(grace_seconds=2)
    tracker.resume({KEY: StreamPosition(20, ((5, 6), (10, 12)))}, now=100)
    assert tracker.pending() == 5
    assert tracker.observe(KEY, 11, 101) is Verdict.FILLED
    assert tracker.observe(KEY, 7, 101) is Verdict.DUPLICATE
    assert tracker.declare_due(102) == [Gap("BINANCE", "BTCUSDT", 5, 6), Gap("BINANCE", "BTCUSDT", 10, 10),
                                        Gap("BINANCE", "BTCUSDT", 12, 12)]
    assert tracker.pending() == 0 and tracker.observe(KEY, 21, 103) is Verdict.NEW


def test_gap_size():
    assert Gap("BINANCE", "BTCUSDT", 2, 4).size == 3


def test_backoff_is_full_jitter_doubling_to_the_cap():
    assert [backoff_delay(n, 5, 60, lambda: 1.0) for n in (1, 2, 3, 4, 5, 6)] == [5, 10, 20, 40, 60, 60]
    assert backoff_delay(3, 5, 60, lambda: 0.0) == 0
    assert backoff_delay(2, 5, 60, lambda: 0.5) == 5


def test_breaker_opens_at_threshold_and_half_opens_after_reset():
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=30)
    breaker.record_failure(0)
    breaker.record_failure(1)
    assert breaker.state(1) is BreakerState.CLOSED
    breaker.record_failure(2)
    assert breaker.state(2) is BreakerState.OPEN and breaker.reopens_at() == 32
    assert breaker.state(31.9) is BreakerState.OPEN
    assert breaker.state(32) is BreakerState.HALF_OPEN


def test_failed_trial_reopens_and_success_closes():
    breaker = CircuitBreaker(1, 10)
    breaker.record_failure(0)
    breaker.record_failure(10)  # the half-open trial failed
    assert breaker.state(15) is BreakerState.OPEN
    assert breaker.state(20) is BreakerState.HALF_OPEN
    breaker.record_success()
    assert breaker.state(20) is BreakerState.CLOSED and breaker.reopens_at() is None


REFUSED, LOST, STALE = EndReason.CONNECT_FAILED, EndReason.CONNECTION_LOST, EndReason.STALE


def policy(urls=("a", "b", "c"), threshold=3, reset=30, budget=None):
    return FailoverPolicy(urls, 1.0, 8.0, CircuitBreaker(threshold, reset), budget or AttemptBudget(), draw=lambda: 1.0)


def test_a_failing_endpoint_is_left_at_once_and_a_failed_round_waits():
    p = policy()
    assert p.first(0) == Attempt("a", 0)
    assert p.ended(0, REFUSED, "connect failed: refused", streamed=False) == Attempt("b", 0)
    assert p.ended(1, LOST, "lost", streamed=False) == Attempt("c", 0)  # opened and dropped without data: a failure
    assert p.ended(2, STALE, "stale", streamed=True) == Attempt("a", 1.0)  # stale counts even after data; the round waits
    assert p.left == {"a": "connect failed: refused", "b": "lost", "c": "stale"}


def test_the_round_wait_grows_with_the_outage_up_to_the_cap():
    p = policy(urls=("only",), threshold=100)
    p.first(0)
    waits = [p.ended(now, REFUSED, "refused", streamed=False).delay for now in (0, 4, 10, 30)]
    assert waits == [1.0, 2.0, 5.0, 8.0]  # half the time without data, at least the base, at most the cap


def test_a_streaming_connection_that_drops_reconnects_at_once_to_the_same_endpoint():
    p = policy()
    p.first(0)
    p.ended(0, REFUSED, "refused", streamed=False)
    assert p.streaming(3) == 3  # data flowing from b, three seconds after the start
    assert p.ended(10, LOST, "lost", streamed=True) == Attempt("b", 0)
    assert p.ended(10.1, REFUSED, "refused", streamed=False) == Attempt("a", 0)  # then round robin from there
    assert p.streaming(11) == pytest.approx(1.0) and p.left == {"b": "refused"}


def test_circuit_opens_after_failed_rounds_then_trials_the_first():
    p = policy(threshold=2)
    p.first(0)
    for now in range(1, 6):
        p.ended(now, REFUSED, "refused", streamed=False)
    assert p.circuit(5) is BreakerState.CLOSED
    attempt = p.ended(5, REFUSED, "refused", streamed=False)  # the second round failed
    assert p.circuit(5) is BreakerState.OPEN and attempt == Attempt("a", 30)
    assert p.breaker_states(6) == {"a": BreakerState.OPEN, "b": BreakerState.OPEN, "c": BreakerState.OPEN}
    assert p.breaker_states(35)["a"] is BreakerState.HALF_OPEN
    assert p.ended(35, REFUSED, "refused", streamed=False) == Attempt("a", 30)  # the trial failed: open again
    assert p.circuit(36) is BreakerState.OPEN
    p.streaming(70)
    assert p.circuit(70) is BreakerState.CLOSED


def test_a_handshake_alone_never_closes_a_circuit_flapping_is_failure():
    p = policy(urls=("only",), threshold=1, reset=10)
    p.first(0)
    assert p.ended(1, LOST, "accepted, then dropped", streamed=False) == Attempt("only", 10)
    assert p.circuit(1) is BreakerState.OPEN


def test_a_blip_shorter_than_the_base_delay_never_opens_the_circuit():
    p = policy(urls=("only",), threshold=1, reset=10)
    p.first(0)
    p.streaming(0)
    for now in (0.1, 0.3, 0.6, 0.9):  # failed rounds, but dark (since 0.1) for less than the 1 s base
        assert p.ended(now, REFUSED, "refused", streamed=False).url == "only"
    assert p.circuit(0.9) is BreakerState.CLOSED
    p.ended(1.1, REFUSED, "refused", streamed=False)
    assert p.circuit(1.1) is BreakerState.OPEN


def test_attempts_stay_within_the_per_ip_limit():
    budget = AttemptBudget(limit=3, window=300)
    p = policy(urls=("a", "b"), threshold=1000, budget=budget)
    delays = [p.first(0).delay] + [p.ended(0, REFUSED, "refused", streamed=False).delay for _ in range(4)]
    assert delays[:3] == [0, 0, 1.0]
    assert delays[3] >= 300 and delays[4] >= 300  # the fourth attempt waits for the window


def test_dark_deadline_counts_from_the_first_open_circuit_without_streaming():
    deadline = DarkDeadline(60)
    assert not deadline.expired(0, streaming=False, circuit_open=False)  # still retrying: no clock yet
    assert not deadline.expired(10, streaming=False, circuit_open=True)
    assert not deadline.expired(40, streaming=False, circuit_open=False)  # half-open trial: still dark
    assert deadline.expired(70, streaming=False, circuit_open=True)


def test_dark_deadline_resets_once_anything_streams():
    deadline = DarkDeadline(60)
    deadline.expired(0, streaming=False, circuit_open=True)
    assert not deadline.expired(50, streaming=True, circuit_open=False)
    assert not deadline.expired(100, streaming=False, circuit_open=True)
    assert not deadline.expired(159, streaming=False, circuit_open=True)
    assert deadline.expired(160, streaming=False, circuit_open=True)


def test_metric_buffer_accumulates_and_empties():
    buffer = MetricBuffer()
    buffer.inc("k2_dlq_messages_total", "not_json")
    buffer.inc("k2_dlq_messages_total", "not_json", amount=2)
    buffer.set("k2_binance_connection_status", 1, "ws://x")
    buffer.observe("k2_trade_receive_to_ack_seconds", [0.1, 0.2])
    deltas = buffer.take()
    assert deltas.counters == (("k2_dlq_messages_total", ("not_json",), 3),)
    assert deltas.gauges == (("k2_binance_connection_status", ("ws://x",), 1),)
    [(name, observed)] = deltas.observations
    assert name == "k2_trade_receive_to_ack_seconds" and observed.total == pytest.approx(0.3)
    assert observed.counts == tuple(1 if bound in (0.1, 0.25) else 0 for bound in (*LATENCY_BUCKETS, float("inf")))
    assert not buffer.take() and not MetricDeltas()


def test_catalogue_names_follow_prometheus_conventions():
    for spec in CATALOGUE.values():
        assert spec.name.startswith("k2_") and spec.help
        assert spec.name.endswith("_total") == (spec.kind == "counter")


def test_batches_out_of_order_are_not_lost():
    batches = BatchSequence(grace_seconds=2)
    for seq in (1, 2, 4, 3, 5):
        batches.observe(seq, 0)
    assert batches.lost(10) == []
    assert batches.complete_through(5)


def test_a_batch_still_missing_after_the_grace_is_lost_once():
    batches = BatchSequence(grace_seconds=2)
    batches.observe(1, 0)
    batches.observe(4, 0)
    assert not batches.complete_through(4)
    assert batches.lost(1) == []
    batches.observe(2, 1.5)
    assert batches.lost(2) == [3]
    assert batches.lost(3) == []
    assert batches.complete_through(4) and not batches.complete_through(5)


def test_a_new_receiver_starts_from_the_first_batch_it_sees():
    batches = BatchSequence(grace_seconds=2)
    batches.observe(500, 0)
    assert batches.complete_through(500) and batches.lost(10) == []
    assert BatchSequence(2).complete_through(0)


def test_quotes_only_move_forward():
    quotes = LatestUpdate()
    assert [quotes.observe(KEY, u) for u in (10, 15, 15, 12, 40)] == [
        Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.NEW]


def test_each_stream_type_is_tracked_apart_and_resumed_from_the_producer():
    sequences = StreamSequences(0.0)
    sequences.resume({("trade", "BINANCE", "BTCUSDT"): StreamPosition(100), ("aggTrade", "BINANCE", "BTCUSDT"): StreamPosition(50),
                      ("bookTicker", "BINANCE", "BTCUSDT"): StreamPosition(900)}, 0.0)
    assert sequences.observe("trade", KEY, 101, 0.0) is Verdict.NEW
    assert sequences.observe("aggTrade", KEY, 51, 0.0) is Verdict.NEW
    assert sequences.observe("bookTicker", KEY, 900, 0.0) is Verdict.DUPLICATE
    assert sequences.observe("bookTicker", KEY, 950, 0.0) is Verdict.NEW  # a jump is no gap
    sequences.observe("aggTrade", KEY, 55, 0.0)
    assert sequences.declare_due(0.0) == [("aggTrade", Gap("BINANCE", "BTCUSDT", 52, 54))]
    assert sequences.open_gaps("aggTrade") == [Gap("BINANCE", "BTCUSDT", 52, 54)] and sequences.open_gaps("trade") == []
    assert (sequences.last_id("trade", KEY), sequences.last_id("aggTrade", KEY)) == (101, 55)


def test_time_without_data_counts_from_the_last_frame_of_a_connection_that_went_stale():
    p = policy()
    p.first(0)
    p.streaming(1)
    p.ended(40, STALE, "stale: no frame for 30.0 s", streamed=True, last_frame_at=10)
    assert p.streaming(41) == 31
