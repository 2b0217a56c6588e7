"""k2actors.core.ledger, directly: what the Normaliser receives, publishes, holds and declares
missing, under reordering, loss, overlap, resend and restart. No processes, no broker."""

from __future__ import annotations

import json
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from k2actors.core.binance import Trade
from k2actors.core.ledger import (
    BATCH_GRACE_SECONDS,
    DATA_CHECK,
    DEAD_LETTERS_LOGGED_PER_REASON,
    RESEND_BATCH_RECORDS,
    SUMMARY_EVERY_SECONDS,
    Answered,
    Backfilled,
    Backpressure,
    BatchesLost,
    Confirmed,
    DeadLettered,
    DeadLettersLost,
    DeadLettersThrottled,
    DeadLetterSummary,
    Drained,
    FrameFailed,
    GapDeclared,
    Ledger,
    NotOwnedDropped,
    Publish,
    ReadyCheck,
    Recovered,
    Release,
    Resent,
    Rules,
    ShutdownAnnounced,
    TradeSummary,
)
from k2actors.core.payloads import BackfilledTrades, PoisonedFrames, RawBatch
from k2actors.core.ranges import StreamPosition
from k2actors.core.raw import RAW
from k2actors.core.sequence import Gap
from k2actors.core.telemetry import MetricBuffer
from tests.published import shaped

PRIMARY, MIRROR = "ws://primary/stream", "ws://mirror/stream"
T0_MS = 1_700_000_000_000
GRACE = 2.0
STALE = 30.0
BOOK_DEPTH, BOOK_CADENCE_MS = 3, 1000


def trade_frame(trade_id: int, symbol: str = "BTCUSDT") -> bytes:
    data = {"e": "trade", "E": T0_MS + trade_id, "s": symbol, "t": trade_id, "p": "1.5", "q": "2", "T": T0_MS + trade_id,
            "m": True, "M": True}
    return json.dumps({"stream": f"{symbol.lower()}@trade", "data": data}).encode()


def raw(url: str, seq: int, *frames: bytes) -> RawBatch:
    """The batch `seq` of a connection to `url` whose batches hold up to 1000 frames each."""
    return RawBatch(url, "BINANCE", seq, tuple((T0_MS * 1_000_000 + index, f"conn-{url}", (seq - 1) * 1000 + index, frame)
                                               for index, frame in enumerate(frames, 1)))


def ledger(max_buffered: int = 100_000, positions: Mapping[tuple[str, str, str], StreamPosition] | None = None,
           quote_assets: Mapping[str, str] | None = None, keep_raw: bool = False) -> Ledger[str]:
    rules = Rules(GRACE, frozenset({"BTCUSDT", "ETHUSDT"}), {} if quote_assets is None else quote_assets, max_buffered, 65536,
                  STALE, keep_raw, BOOK_DEPTH, BOOK_CADENCE_MS)
    return Ledger(rules, positions or {}, 0.0, MetricBuffer())


def published(events: list) -> list[int]:
    return [record["source_sequence"] for e in of(Publish, events) for stream, record, _ in shaped(e.batch.records) if stream != RAW]


def of(kind: type, events: list) -> list:
    return [e for e in events if isinstance(e, kind)]


def counters(book: Ledger[str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, _, amount in book.metrics.take().counters:
        totals[name] = totals.get(name, 0) + amount
    return totals


def test_a_batch_of_trades_is_published_released_to_its_connection_and_confirmed_once_kafka_has_it():
    book = ledger()
    events = book.take_raw(raw(PRIMARY, 1, trade_frame(10), trade_frame(11)), "connection", 0.0)
    assert published(events) == [10, 11]
    assert of(Release, events) == [Release("connection", 1)] and of(Confirmed, events) == []
    [publish] = of(Publish, events)
    assert publish.batch.seq == 1 and book.held == 2
    assert book.delivered((1,)) == [Confirmed("connection", 1)] and book.held == 0


def test_a_batch_is_confirmed_only_once_every_batch_before_it_is_in_kafka_too():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(1)), "a", 0.0)
    book.take_raw(raw(MIRROR, 1, trade_frame(2)), "b", 0.0)
    nothing_new = book.take_raw(raw(MIRROR, 2, trade_frame(2)), "b", 0.0)  # a duplicate: no records of its own
    assert of(Publish, nothing_new) == [] and of(Confirmed, nothing_new) == []
    assert book.delivered((2,)) == []  # batch 1 is not in Kafka yet
    assert book.delivered((1,)) == [Confirmed("a", 1), Confirmed("b", 2)]  # one per connection, its last
    # with nothing waiting for Kafka, a batch that made no records is confirmed at once
    assert of(Confirmed, book.take_raw(raw(MIRROR, 3, trade_frame(2)), "b", 0.0)) == [Confirmed("b", 3)]


def test_what_a_replaced_producer_held_is_confirmed_when_the_new_one_has_it():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(1)), "a", 0.0)
    book.take_raw(raw(PRIMARY, 2, trade_frame(2)), "a", 0.0)
    [resent] = of(Publish, book.resend())
    assert book.delivered((1, 2)) == []  # the old numbers mean nothing now
    assert book.delivered((resent.batch.seq,)) == [Confirmed("a", 2)]


def test_the_same_trade_from_two_connections_is_published_once():
    book = ledger()
    first = book.take_raw(raw(PRIMARY, 1, trade_frame(10), trade_frame(11)), "a", 0.0)
    second = book.take_raw(raw(MIRROR, 1, trade_frame(11), trade_frame(12)), "b", 0.1)
    assert published(first) + published(second) == [10, 11, 12]
    assert counters(book)["k2_binance_duplicate_trades_total"] == 1


def test_a_gap_is_declared_after_the_grace_unless_filled_within_it():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(10), trade_frame(15)), "a", 0.0)
    book.take_raw(raw(MIRROR, 1, trade_frame(12)), "b", 1.0)  # a lagging mirror fills one id in time
    assert of(GapDeclared, book.tick(GRACE - 0.1)) == []
    events = book.tick(GRACE)
    assert of(GapDeclared, events) == [GapDeclared("trade", Gap("BINANCE", "BTCUSDT", 11, 11)),
                                       GapDeclared("trade", Gap("BINANCE", "BTCUSDT", 13, 14))]
    assert counters(book)["k2_binance_missing_trades_total"] == 3
    assert book.open_gaps("trade") == [Gap("BINANCE", "BTCUSDT", 11, 11), Gap("BINANCE", "BTCUSDT", 13, 14)]
    late = book.take_raw(raw(MIRROR, 2, trade_frame(13)), "b", 5.0)
    assert published(late) == [13] and of(Recovered, late) == [Recovered("trade", "BINANCE", "BTCUSDT", 13)]


def test_past_max_buffered_records_the_connections_are_held_back_until_kafka_catches_up():
    book = ledger(max_buffered=3)
    events = book.take_raw(raw(PRIMARY, 1, *map(trade_frame, (1, 2, 3))), "a", 0.0)
    assert of(Release, events) == [] and of(Backpressure, events) == [Backpressure(True, 3)]
    events = book.take_raw(raw(PRIMARY, 2, trade_frame(4)), "a", 0.1)
    assert of(Release, events) == [] and of(Backpressure, events) == []  # said once
    events = book.delivered((1,))
    assert events == [Confirmed("a", 1), Backpressure(False, 1), Release("a", 1), Release("a", 2)]


def test_a_new_producer_gets_everything_unacknowledged_merged_and_renumbered():
    book = ledger()
    for seq in range(1, 4):
        book.take_raw(raw(PRIMARY, seq, trade_frame(seq)), "a", 0.0)
    book.delivered((2,))
    events = book.resend()
    assert of(Resent, events) == [Resent(2)]
    [publish] = of(Publish, events)
    assert publish.batch.seq == 4 and published(events) == [1, 3] and book.held == 2
    assert counters(book)["k2_kafka_resent_records_total"] == 2
    book.delivered((1, 3))  # the old numbers mean nothing now
    assert book.held == 2
    book.delivered((4,))
    assert book.held == 0


def test_a_resend_larger_than_one_batch_is_split():
    book = ledger()
    frames = [trade_frame(i) for i in range(1, RESEND_BATCH_RECORDS + 2)]
    book.take_raw(raw(PRIMARY, 1, *frames), "a", 0.0)
    assert [len(e.batch.records) for e in of(Publish, book.resend())] == [RESEND_BATCH_RECORDS, 1]


def test_a_restarted_ledger_continues_from_what_the_producer_handed_to_kafka():
    book = ledger(positions={("trade", "BINANCE", "BTCUSDT"): StreamPosition(100)})
    events = book.take_raw(raw(PRIMARY, 1, *map(trade_frame, (99, 100, 101, 104))), "a", 0.0)
    assert published(events) == [101, 104]
    assert of(GapDeclared, book.tick(GRACE)) == [GapDeclared("trade", Gap("BINANCE", "BTCUSDT", 102, 103))]


def test_records_the_producer_failed_on_twice_become_dead_letters_once():
    book = ledger()
    [publish] = of(Publish, book.take_raw(raw(PRIMARY, 1, trade_frame(7)), "a", 0.0))
    events = book.poisoned(publish.batch, "ValueError: no")
    [letters] = of(Publish, events)
    assert of(Confirmed, events) == []  # the frame's batch waits for its dead letters
    [letter] = letters.batch.dead_letters
    [(_, record, _)] = shaped(publish.batch.records)
    assert (letter.reason, letter.endpoint, json.loads(letter.raw)["trade_id"]) == ("poison_message", PRIMARY, "BINANCE-7")
    assert json.loads(letter.raw) == json.loads(json.dumps(record, default=str))  # the whole record, read back from its body
    assert book.poisoned(publish.batch, "again") == []  # already given up: never sent round again
    assert book.poisoned(letters.batch, "dead letters too") == [DeadLettersLost(1), Confirmed("a", 1)]
    assert book.held == 0


POISONED = ((1, "c", 1, b"x"), (2, "c", 2, b"y"))


def test_frames_a_normaliser_failed_on_go_to_the_dlq_unparsed():
    book = ledger()
    [publish] = of(Publish, book.take_poisoned_frames(PoisonedFrames(PRIMARY, "BINANCE", POISONED, "KeyError")))
    assert [(letter.raw, letter.reason) for letter in publish.batch.dead_letters] == [(b"x", "poison_message"), (b"y", "poison_message")]


class _Exploding(dict[str, str]):
    def __contains__(self, key: object) -> bool:
        raise RuntimeError("a bug")


def test_a_frame_the_ledger_fails_on_costs_that_frame_and_nothing_else():
    book = ledger(quote_assets=_Exploding())
    events = book.take_raw(raw(PRIMARY, 1, trade_frame(1), b"not json"), "a", 0.0)
    [failed] = of(FrameFailed, events)
    assert "RuntimeError: a bug" in failed.trace
    [publish] = of(Publish, events)
    assert [letter.reason for letter in publish.batch.dead_letters] == ["internal_error", "not_json"]
    assert of(Release, events) == [Release("a", 1)]


def test_a_record_the_schema_refuses_is_a_dead_letter_and_the_rest_of_its_batch_is_published():
    book = ledger(quote_assets={"BTCUSDT": 5})  # a shaping bug: a currency that is no string
    events = book.take_raw(raw(PRIMARY, 1, trade_frame(1), trade_frame(2, "ETHUSDT")), "a", 0.0)
    [publish] = of(Publish, events)
    assert [(record.key, record.event_id) for record in publish.batch.records] == [("ETHUSDT", 2)]
    [letter] = publish.batch.dead_letters
    assert (letter.reason, json.loads(letter.raw)["trade_id"]) == ("serialization_failed", "BINANCE-1")
    assert "must be string on field currency" in letter.detail
    assert of(DeadLettered, events) == [DeadLettered(letter)] and of(Release, events) == [Release("a", 1)]


def test_dead_letters_are_said_one_by_one_up_to_a_bound_then_summarised():
    book = ledger()
    events = book.take_raw(raw(PRIMARY, 1, *[b"garbage"] * (DEAD_LETTERS_LOGGED_PER_REASON + 5)), "a", 0.0)
    assert len(of(DeadLettered, events)) == DEAD_LETTERS_LOGGED_PER_REASON
    assert of(DeadLettersThrottled, events) == [DeadLettersThrottled("not_json")]
    summary = book.tick(SUMMARY_EVERY_SECONDS)
    assert of(DeadLetterSummary, summary)[0].reasons == {"not_json": DEAD_LETTERS_LOGGED_PER_REASON + 5}
    assert of(TradeSummary, summary)[0].trades == {}
    assert len(of(DeadLettered, book.take_raw(raw(PRIMARY, 2, b"garbage"), "a", 61.0))) == 1  # a new interval


def test_a_server_shutdown_frame_is_announced():
    frame = json.dumps({"stream": "btcusdt@trade", "data": {"e": "serverShutdown", "E": T0_MS}}).encode()
    assert of(ShutdownAnnounced, ledger().take_raw(raw(PRIMARY, 1, frame), "a", 0.0)) == [ShutdownAnnounced(PRIMARY)]


def test_answers_to_requests_go_back_to_their_connection_and_a_refusal_is_no_dead_letter():
    book = ledger()
    frames = (b'{"result":null,"id":1}', b'{"code":2,"msg":"Invalid request: too many parameters","id":2}',
              b'{"error":{"code":2,"msg":"Invalid request: request ID must be an unsigned integer"}}', trade_frame(1))
    events = book.take_raw(raw(PRIMARY, 1, *frames), "connection", 0.0)
    assert of(Answered, events) == [
        Answered("connection", PRIMARY, 1, None),
        Answered("connection", PRIMARY, 2, (2, "Invalid request: too many parameters")),
        Answered("connection", PRIMARY, None, (2, "Invalid request: request ID must be an unsigned integer")),
    ]
    assert of(DeadLettered, events) == [] and published(events) == [1]
    assert all(not batch.dead_letters for batch in (e.batch for e in of(Publish, events)))
    totals = counters(book)
    assert totals["k2_binance_subscription_refusals_total"] == 2 and "k2_binance_message_errors_total" not in totals
    refusal = of(Answered, events)[1].report()
    assert refusal.fields["event"] == "subscription_refused" and "Invalid request: too many parameters" in refusal.message


def test_a_batch_that_never_arrives_is_reported_after_its_grace():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(1)), "a", 0.0)
    book.take_raw(raw(PRIMARY, 3, trade_frame(3)), "a", 0.0)
    assert of(BatchesLost, book.tick(BATCH_GRACE_SECONDS - 0.1)) == []
    assert of(BatchesLost, book.tick(BATCH_GRACE_SECONDS)) == [BatchesLost(PRIMARY, (2,))]


def test_a_drain_waits_for_every_batch_asked_for():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(1)), "a", 0.0)
    assert book.drain({PRIMARY: 2, MIRROR: 0}) == []
    events = book.take_raw(raw(PRIMARY, 2, trade_frame(2)), "a", 0.1)
    assert of(Drained, events) == [Drained(2, 0)]


def test_a_drain_is_not_held_up_forever_by_a_lost_batch():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(1)), "a", 0.0)
    book.take_raw(raw(PRIMARY, 3, trade_frame(3)), "a", 0.0)
    assert book.drain({PRIMARY: 3}) == []
    assert of(Drained, book.tick(BATCH_GRACE_SECONDS)) == [Drained(2, 1)]  # trade 2 came in the lost batch


def test_a_drain_declares_gaps_still_inside_their_grace_and_says_what_is_missing():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(10), trade_frame(14)), "a", 0.0)
    events = book.drain({PRIMARY: 1})  # at once: no grace waited for
    assert of(GapDeclared, events) == [GapDeclared("trade", Gap("BINANCE", "BTCUSDT", 11, 13))]
    assert of(Drained, events) == [Drained(1, 3)]


def history(*ids: int) -> BackfilledTrades:
    trades = tuple(Trade("BTCUSDT", i, "1.5", "2", T0_MS + i, T0_MS + i, True, True) for i in ids)
    body = json.dumps([{"id": i} for i in ids]).encode()  # what the ledger keeps; the trades are parsed already
    return BackfilledTrades("trade", "BINANCE", "BTCUSDT", "http://rest", T0_MS * 1000, trades, (),
                            "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=11&limit=1", "rest-1", body)


def test_backfilled_trades_fill_the_gap_in_id_order_and_are_marked():
    book = ledger()
    book.take_raw(raw(PRIMARY, 1, trade_frame(10), trade_frame(14)), "a", 0.0)
    book.tick(GRACE)
    events = book.take_backfill(history(13, 11, 12, 14), 3.0)  # 14 was streamed: a duplicate
    assert published(events) == [11, 12, 13]
    assert all(record["vendor_data"]["backfilled"] == "true" for e in of(Publish, events) for _, record, _ in shaped(e.batch.records))
    assert of(Backfilled, events) == [Backfilled("trade", "BINANCE", "BTCUSDT", 3, 11, 13)]
    assert of(Recovered, events) == []  # backfill is the plan, not a surprise
    assert book.open_gaps("trade") == []


def deliveries() -> st.SearchStrategy[list[tuple[str, list[int]]]]:
    """Two mirrors of one symbol's trades 1..60: each connection drops some ids and their
    batches interleave; a batch is a run of ids in order."""
    return st.lists(st.tuples(st.sampled_from([PRIMARY, MIRROR]), st.lists(st.integers(1, 60), max_size=8).map(sorted)),
                    max_size=30)


@settings(max_examples=200, deadline=None)
@given(deliveries(), st.integers(1, 4))
def test_every_id_is_published_once_or_declared_missing(batches, restart_after):
    """Whatever overlaps, losses and reorderings two mirrors produce, and with a restart from
    what was published: no id is published twice, and every id between the first and the
    highest is either published or declared missing."""
    book = ledger()
    seqs = {PRIMARY: 0, MIRROR: 0}
    out: list[int] = []
    declared: set[int] = set()

    def run(events: list) -> None:
        out.extend(published(events))
        for gap in of(GapDeclared, events):
            declared.update(range(gap.gap.first_id, gap.gap.last_id + 1))

    for index, (url, ids) in enumerate(batches):
        seqs[url] += 1
        run(book.take_raw(raw(url, seqs[url], *map(trade_frame, ids)), url, float(index)))
        if index == restart_after and out:  # a new Normaliser, resumed from what the producer handed on
            run(book.tick(index + GRACE))
            book = ledger(positions={("trade", "BINANCE", "BTCUSDT"): StreamPosition(max(out))})
    run(book.tick(len(batches) + GRACE))
    assert len(out) == len(set(out))
    if out:
        assert set(range(min(out), max(out) + 1)) <= set(out) | declared


def test_an_unsubscribed_symbol_is_a_dead_letter():
    [publish] = of(Publish, ledger().take_raw(raw(PRIMARY, 1, trade_frame(1, "XRPUSDT")), "a", 0.0))
    assert [letter.reason for letter in publish.batch.dead_letters] == ["unsubscribed_symbol"]


def test_ready_needs_data_from_every_venue_within_the_stale_timeout():
    book = ledger()
    assert of(ReadyCheck, book.tick(0.0)) == [ReadyCheck(DATA_CHECK, False, "no data from the exchange yet")]
    book.take_raw(raw(PRIMARY, 1, trade_frame(1)), "a", 1.0)
    assert of(ReadyCheck, book.tick(2.0)) == [ReadyCheck(DATA_CHECK, True, "data from BINANCE within the stale timeout")]
    assert of(ReadyCheck, book.tick(3.0)) == []  # said once while it holds
    assert of(ReadyCheck, book.tick(1.0 + STALE + 1)) == [ReadyCheck(DATA_CHECK, False, "no data for 31 s from BINANCE")]
    assert of(ReadyCheck, book.tick(1.0 + STALE + 2)) == [ReadyCheck(DATA_CHECK, False, "no data for 32 s from BINANCE")]


def test_cluster_mode_publishes_only_owned_symbols_and_resumes_a_newly_owned_one_from_kafka():
    rules = Rules(GRACE, frozenset({"BTCUSDT", "ETHUSDT"}), {}, 100_000, 65536, STALE, False, BOOK_DEPTH, BOOK_CADENCE_MS)
    book: Ledger[str] = Ledger(rules, {}, 0.0, MetricBuffer(), owned=frozenset())
    assert of(ReadyCheck, book.tick(0.5)) == [ReadyCheck(DATA_CHECK, True, "no symbols owned (cluster mode: a standby until the group "
                                                             "assigns this instance a shard)")]
    events = book.take_raw(raw(PRIMARY, 1, trade_frame(100), trade_frame(7, "ETHUSDT")), "c", 1.0)
    assert published(events) == [] and of(NotOwnedDropped, events) == [NotOwnedDropped(2)]
    assert counters(book)["k2_cluster_events_not_owned_total"] == 2

    # BTCUSDT's shard acquired: Kafka holds up to 104, so 101 to 104 are duplicates and 105 on is new
    book.own(frozenset({"BTCUSDT"}), {("trade", "BINANCE", "BTCUSDT"): StreamPosition(104)}, 2.0)
    events = book.take_raw(raw(PRIMARY, 2, *(trade_frame(i) for i in range(101, 107)), trade_frame(8, "ETHUSDT")), "c", 2.0)
    assert published(events) == [105, 106] and of(NotOwnedDropped, events) == [NotOwnedDropped(1)]

    # released, then owned again after another instance published up to 120: tracking restarts from Kafka
    book.own(frozenset(), {}, 3.0)
    assert published(book.take_raw(raw(PRIMARY, 3, trade_frame(107)), "c", 3.0)) == []
    book.own(frozenset({"BTCUSDT"}), {("trade", "BINANCE", "BTCUSDT"): StreamPosition(120)}, 4.0)
    events = book.take_raw(raw(PRIMARY, 4, trade_frame(119), trade_frame(125)), "c", 4.0)
    assert published(events) == [125]
    assert [gap.gap for gap in of(GapDeclared, book.tick(4.0 + GRACE))] == [Gap("BINANCE", "BTCUSDT", 121, 124)]


def test_a_symbol_outside_the_configuration_is_still_a_dead_letter_in_cluster_mode():
    rules = Rules(GRACE, frozenset({"BTCUSDT"}), {}, 100_000, 65536, STALE, False, BOOK_DEPTH, BOOK_CADENCE_MS)
    book: Ledger[str] = Ledger(rules, {}, 0.0, MetricBuffer(), owned=frozenset())
    events = book.take_raw(raw(PRIMARY, 1, trade_frame(1, "DOGEUSDT")), "c", 1.0)
    assert [letter.reason for e in events if isinstance(e, Publish) for letter in e.batch.dead_letters] == ["unsubscribed_symbol"]


# --- the raw record ---


def published_records(events: list) -> list[tuple[str, dict, tuple]]:
    return [item for e in of(Publish, events) for item in shaped(e.batch.records)]


def test_every_frame_is_archived_first_byte_for_byte_whatever_it_is_and_what_it_became_names_it():
    book = ledger(keep_raw=True)
    reply, garbage = b'{"result":null,"id":1}', b"\xff not json"
    refusal = b'{"code":2,"msg":"Invalid request: invalid stream","id":2}'
    frames = (reply, trade_frame(1), garbage, refusal, trade_frame(2, "ETHUSDT"), trade_frame(1))  # the last a duplicate
    events = book.take_raw(raw(PRIMARY, 1, *frames), "connection", 0.0)
    records = published_records(events)
    archived = [record for stream, record, _ in records if stream == RAW]
    assert [record["payload"] for record in archived] == list(frames)
    assert [record["conn_msg_seq"] for record in archived] == [1, 2, 3, 4, 5, 6]
    assert {(record["conn_id"], record["endpoint"], record["exchange"]) for record in archived} == {(f"conn-{PRIMARY}", PRIMARY, "BINANCE")}
    assert [record["recv_ts_ns"] for record in archived] == [T0_MS * 1_000_000 + i for i in range(1, 7)]
    assert [(record["stream"], record["symbol"]) for record in archived] == [
        (None, None), ("btcusdt@trade", "BTCUSDT"), (None, None), (None, None), ("ethusdt@trade", "ETHUSDT"),
        ("btcusdt@trade", "BTCUSDT")]
    # each frame's raw record comes before what was derived from it, and that names the frame
    assert [(stream, record.get("conn_msg_seq", record.get("source_sequence"))) for stream, record, _ in records] == [
        (RAW, 1), (RAW, 2), ("trade", 1), (RAW, 3), (RAW, 4), (RAW, 5), ("trade", 2), (RAW, 6)]
    lineage = [dict(headers) for stream, _, headers in records if stream == "trade"]
    assert lineage == [{"k2.conn_id": f"conn-{PRIMARY}".encode(), "k2.conn_msg_seq": str(seq).encode(),
                        "k2.recv_ts_ns": str(T0_MS * 1_000_000 + seq).encode()} for seq in (2, 5)]
    # the garbage is still a dead letter, the answers still answers
    assert [letter.raw for e in of(Publish, events) for letter in e.batch.dead_letters] == [garbage]
    assert len(of(Answered, events)) == 2


def test_without_the_raw_record_only_derived_records_are_published():
    events = ledger(keep_raw=False).take_raw(raw(PRIMARY, 1, trade_frame(1), b"garbage"), "c", 0.0)
    assert [stream for stream, _, _ in published_records(events)] == ["trade"]


def test_frames_a_normaliser_failed_on_are_archived_too():
    [publish] = of(Publish, ledger(keep_raw=True).take_poisoned_frames(PoisonedFrames(PRIMARY, "BINANCE", POISONED, "KeyError")))
    assert [(stream, record["payload"], record["conn_msg_seq"]) for stream, record, _ in shaped(publish.batch.records)] == [
        (RAW, b"x", 1), (RAW, b"y", 2)]


def test_a_rest_response_is_archived_and_what_came_of_it_names_it():
    book = ledger(keep_raw=True)
    book.take_raw(raw(PRIMARY, 1, trade_frame(10), trade_frame(12)), "a", 0.0)
    book.tick(GRACE)
    page = history(11)
    [(raw_stream, archived, _), (stream, record, headers)] = published_records(book.take_backfill(page, 3.0))
    assert (stream, record["source_sequence"]) == ("trade", 11)
    assert (raw_stream, archived["payload"], archived["conn_id"], archived["conn_msg_seq"]) == (RAW, page.body, "rest-1", 1)
    assert (archived["endpoint"], archived["stream"], archived["symbol"]) == ("http://rest", page.target, "BTCUSDT")
    assert dict(headers) == {"k2.conn_id": b"rest-1", "k2.conn_msg_seq": b"1", "k2.recv_ts_ns": str(T0_MS * 1_000_000).encode(),
                             "k2.source_url": b"http://rest/api/v3/historicalTrades?symbol=BTCUSDT&fromId=11&limit=1"}


def test_a_resend_to_a_new_producer_carries_the_raw_records_and_lineage_unchanged():
    book = ledger(keep_raw=True)
    first = published_records(book.take_raw(raw(PRIMARY, 1, trade_frame(1), b"garbage"), "a", 0.0))
    assert published_records(book.resend()) == first
