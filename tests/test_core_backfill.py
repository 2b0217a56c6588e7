import json

import pytest

from k2actors.core import binance, frames
from k2actors.core.backfill import (
    MAX_ATTEMPTS,
    PAGE_LIMIT,
    Backfill,
    GapFill,
    GapFilled,
    GapStarted,
    PageFetched,
    RateLimited,
    RequestBudget,
    RestReply,
    RestRequest,
    SnapshotFailed,
    SnapshotTaken,
    Unfilled,
)
from k2actors.core.binance import Trade, historical_trades
from k2actors.core.frames import Rejected
from k2actors.core.sequence import SequenceTracker
from k2actors.core.telemetry import MetricBuffer


def trades(*ids: int) -> list[Trade]:
    return [Trade("BTCUSDT", i, "1.0", "1.0", 1_700_000_000_000 + i, 1_700_000_000_000 + i, True, True) for i in ids]


def test_a_gap_is_asked_for_page_by_page_until_its_last_id():
    gap = GapFill("BINANCE", "BTCUSDT", 10, 2500)
    pages = []
    while not gap.done:
        from_id, limit = gap.request()
        pages.append((from_id, limit))
        page = gap.take(trades(*range(from_id, from_id + PAGE_LIMIT)))  # the venue always answers a full page
        assert page.unserved == []
        assert [t.trade_id for t in page.trades] == list(range(from_id, min(from_id + limit, 2501)))
    assert pages == [(10, 1000), (1010, 1000), (2010, 491)]


@pytest.mark.parametrize(
    "answer, filled, unserved",
    [
        (range(15, 21), range(15, 21), [(10, 14)]),  # the venue's history starts after the gap does
        ((), (), [(10, 20)]),  # nothing at all from there on
        (range(10, 1010), range(10, 21), []),  # more than the gap: the rest is not ours
        ((10, 11, 13, 14, 15, 16, 17, 18, 19, 20), (10, 11, 13, 14, 15, 16, 17, 18, 19, 20), [(12, 12)]),
        ((10, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 20), range(10, 21), []),  # repeated rows count once
        ((3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), range(10, 21), []),  # rows before fromId ignored
    ],
)
def test_an_answer_fills_what_it_can_and_names_what_the_venue_no_longer_serves(answer, filled, unserved):
    gap = GapFill("BINANCE", "BTCUSDT", 10, 20)
    page = gap.take(trades(*answer))
    assert [t.trade_id for t in page.trades] == list(filled)
    assert page.unserved == unserved
    assert gap.done


def test_a_short_page_continues_after_its_last_row():
    gap = GapFill("BINANCE", "BTCUSDT", 10, 3000)
    gap.take(trades(*range(10, 510)))
    assert gap.request() == (510, 1000) and not gap.done


def test_giving_up_returns_what_is_left():
    gap = GapFill("BINANCE", "BTCUSDT", 10, 3000)
    gap.take(trades(*range(10, 1010)))
    assert gap.give_up() == (1010, 3000) and gap.done


def test_the_budget_spends_up_to_the_limit_per_minute():
    budget = RequestBudget(100)
    for second in range(4):
        assert budget.delay(float(second), 25) == 0
        budget.spend(float(second), 25)
    assert budget.delay(10.0, 25) == pytest.approx(50.0)  # the first spend expires at 60
    assert budget.delay(60.0, 25) == 0
    assert budget.delay(61.5, 50) == 0  # two have expired by then


def test_the_exchange_count_includes_others_on_the_same_ip():
    budget = RequestBudget(100)
    budget.spend(0.0, 25)
    budget.observe_used(1.0, 90)  # someone else spent 65
    assert budget.delay(2.0, 25) == pytest.approx(58.0)
    budget.observe_used(3.0, 10)  # below our own count: nothing to add
    assert budget.delay(61.5, 25) == 0


def test_retry_after_blocks_everything_until_then():
    budget = RequestBudget(1000)
    budget.block(5.0, 30.0)
    assert budget.delay(6.0, 25) == pytest.approx(29.0)
    budget.block(6.0, 1.0)  # a shorter wait never shortens a longer one
    assert budget.delay(20.0, 25) == pytest.approx(15.0)
    assert budget.delay(35.0, 25) == 0


ROW = {"id": 42, "price": "43210.12", "qty": "0.0015", "time": 1_700_000_000_120, "isBuyerMaker": True, "isBestMatch": True}


def test_history_rows_become_trades_like_streamed_ones():
    [(row, trade)] = historical_trades(json.dumps([ROW]).encode(), "BTCUSDT")
    assert row == ROW
    assert trade == Trade("BTCUSDT", 42, "43210.12", "0.0015", 1_700_000_000_120, 1_700_000_000_120, True, True)


@pytest.mark.parametrize(
    "row, reason",
    [({k: v for k, v in ROW.items() if k != "id"}, frames.MISSING_FIELD), ({**ROW, "id": "42"}, frames.WRONG_TYPE),
     ({**ROW, "qty": 1.5}, frames.WRONG_TYPE), ({**ROW, "isBuyerMaker": 1}, frames.WRONG_TYPE),
     ({**ROW, "id": -1}, frames.ID_OUT_OF_RANGE), ([1, 2], frames.UNEXPECTED_SHAPE)],
)
def test_history_rows_that_are_not_trades_are_rejected_one_by_one(row, reason):
    [(_, good), (_, bad)] = historical_trades(json.dumps([ROW, row]).encode(), "BTCUSDT")
    assert isinstance(good, Trade) and isinstance(bad, Rejected) and bad.reason == reason


@pytest.mark.parametrize("body, reason", [(b"<html>", frames.NOT_JSON), (b'{"code": -1121}', frames.UNEXPECTED_SHAPE)])
def test_an_answer_that_is_not_a_list_of_rows_is_rejected_whole(body, reason):
    assert historical_trades(body, "BTCUSDT").reason == reason


def test_open_gaps_are_the_declared_ranges_still_missing():
    tracker = SequenceTracker(grace_seconds=1.0)
    tracker.observe(("BINANCE", "BTCUSDT"), 1, 0.0)
    tracker.observe(("BINANCE", "BTCUSDT"), 10, 0.0)
    assert tracker.open_gaps() == []  # noticed, not yet declared
    tracker.declare_due(1.0)
    tracker.observe(("BINANCE", "BTCUSDT"), 5, 1.5)
    assert [(g.first_id, g.last_id) for g in tracker.open_gaps()] == [(2, 4), (6, 9)]


# --- Backfill: the whole policy, fed answers and the time ---


REST = "http://rest.example"


def rows(*ids: int) -> bytes:
    return json.dumps([{"id": i, "price": "1.5", "qty": "2", "quoteQty": "3", "time": 1_700_000_000_000 + i,
                        "isBuyerMaker": True, "isBestMatch": True} for i in ids]).encode()


T0_US = 1_700_000_000_000 * 1000  # the rows' trade times are T0 and a few ms on: answered at T0 they are recent


def answer(status: int | None, body: bytes = b"[]", received_us: int = T0_US, **headers: str) -> RestReply:
    return RestReply(status, body, {name.replace("_", "-"): value for name, value in headers.items()}, received_us,
                           "/api/v3/historicalTrades?symbol=BTCUSDT", "rest")


WINDOW_SECONDS = 3600.0


def backfill() -> Backfill:
    return Backfill({"BINANCE": REST}, MetricBuffer(), WINDOW_SECONDS, 1000, draw=lambda: 1.0)


def test_a_gap_is_fetched_page_by_page_and_reported_filled():
    fill = backfill()
    assert [type(e) for e in fill.add("trade", "BINANCE", "BTCUSDT", 10, 1509, 0.0)] == [GapStarted]
    assert fill.add("trade", "BINANCE", "BTCUSDT", 10, 1509, 0.0) == []  # asked twice: one gap
    request, _ = fill.next_request(0.0)
    assert request == RestRequest(REST, "/api/v3/historicalTrades", "BTCUSDT", 10, 1000)
    assert fill.next_request(0.0) == (None, [])  # one request in flight at a time
    [page] = fill.answer(answer(200, rows(*range(10, 1010))), 0.5)
    assert isinstance(page, PageFetched) and len(page.page.trades) == 1000 and page.page.url == REST
    request, _ = fill.next_request(0.5)
    assert request == RestRequest(REST, "/api/v3/historicalTrades", "BTCUSDT", 1010, 500)
    events = fill.answer(answer(200, rows(*range(1010, 1510))), 1.5)
    assert [type(e) for e in events] == [PageFetched, GapFilled] and fill.open_gaps == 0
    deltas = fill.metrics.take()
    assert ("k2_backfill_gaps_filled_total", ("BTCUSDT",), 1) in deltas.counters
    [(name, observed)] = deltas.observations
    assert (name, observed.total, sum(observed.counts)) == ("k2_backfill_latency_seconds", 1.5, 1)
    assert ("k2_backfill_requests_total", ("200",), 2) in deltas.counters


def test_ids_the_venue_no_longer_serves_are_reported_unfilled():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 0.0)
    fill.next_request(0.0)
    events = fill.answer(answer(200, rows(*range(15, 21))), 0.1)
    assert [type(e) for e in events] == [PageFetched, Unfilled]
    assert (events[1].first_id, events[1].last_id, events[1].reason) == (10, 14, "not_served")
    assert fill.open_gaps == 0
    assert ("k2_backfill_gaps_filled_total", ("BTCUSDT",), 1) not in fill.metrics.take().counters  # partly unfilled


def test_429_waits_as_long_as_retry_after_says():
    fill = backfill()
    assert not fill.waiting
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 0.0)
    assert fill.waiting
    fill.next_request(0.0)
    assert not fill.waiting  # in flight: its answer wakes the actor
    assert fill.answer(answer(429, retry_after="1.5"), 0.0) == [RateLimited("BINANCE", 429, 1.5)]
    assert fill.next_request(1.4)[0] is None and fill.waiting  # the actor looks again until its time comes
    assert fill.next_request(1.5)[0] == RestRequest(REST, "/api/v3/historicalTrades", "BTCUSDT", 10, 11)


def test_a_ban_gives_up_every_gap_until_it_ends():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 0.0)
    fill.add("trade", "BINANCE", "ETHUSDT", 5, 6, 0.0)
    fill.next_request(0.0)
    assert fill.answer(answer(418, retry_after="600"), 0.0) == [RateLimited("BINANCE", 418, 600.0)]
    request, events = fill.next_request(1.0)
    assert request is None
    assert [(e.gap.symbol, e.first_id, e.last_id, e.reason) for e in events] == [
        ("BTCUSDT", 10, 20, "banned"), ("ETHUSDT", 5, 6, "banned")]
    fill.add("trade", "BINANCE", "BTCUSDT", 30, 31, 599.0)
    assert [e.reason for e in fill.next_request(599.0)[1]] == ["banned"]
    fill.add("trade", "BINANCE", "BTCUSDT", 40, 41, 600.0)
    assert fill.next_request(600.0)[0] == RestRequest(REST, "/api/v3/historicalTrades", "BTCUSDT", 40, 2)


def test_a_page_that_keeps_failing_is_retried_with_backoff_then_given_up():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 0.0)
    now, events = 0.0, []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        request, _ = fill.next_request(now)
        assert request is not None, attempt
        events = fill.answer(answer(None, b"connection refused"), now)
        if attempt < MAX_ATTEMPTS:
            assert events == [] and fill.next_request(now)[0] is None  # backing off
            now += 10.0
    [unfilled] = events
    assert (unfilled.reason, unfilled.first_id, unfilled.last_id) == ("rest_unavailable", 10, 20)
    assert "connection refused" in unfilled.detail and fill.open_gaps == 0


def test_an_answer_that_is_not_a_list_makes_the_gap_unfillable():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 0.0)
    fill.next_request(0.0)
    [unfilled] = fill.answer(answer(200, b'{"code": -1121}'), 0.1)
    assert isinstance(unfilled, Unfilled) and unfilled.reason == "rest_unusable"


def test_the_weight_the_venue_reports_is_spent_too():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 5000, 0.0)
    fill.next_request(0.0)
    fill.answer(answer(200, rows(*range(10, 1010)), **{"x-mbx-used-weight-1m": "1000"}), 0.0)
    assert fill.next_request(1.0)[0] is None  # someone else on this IP spent our minute
    assert fill.next_request(60.0)[0] is not None


def test_log_lines_say_what_happened():
    fill = backfill()
    [started] = fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 0.0)
    assert started.report().message == "backfilling BINANCE BTCUSDT ids 10 to 20"
    fill.next_request(0.0)
    [limited] = fill.answer(answer(418, retry_after="60"), 0.0)
    assert limited.report().message.startswith("REST requests to BINANCE refused with HTTP 418")
    [unfilled] = fill.next_request(1.0)[1]
    assert "(banned): they stay missing" in unfilled.report().message


def agg_rows(*ids: int) -> bytes:
    return json.dumps([{"a": i, "p": "1.5", "q": "2", "f": 10 * i, "l": 10 * i + 2, "T": 1_700_000_000_000 + i,
                        "m": False, "M": True} for i in ids]).encode()


def test_an_aggregate_trade_gap_is_filled_from_agg_trades_at_its_own_weight():
    fill = backfill()
    fill.add("aggTrade", "BINANCE", "BTCUSDT", 50, 52, 0.0)
    request, _ = fill.next_request(0.0)
    assert request == RestRequest(REST, "/api/v3/aggTrades", "BTCUSDT", 50, 3)
    [page, filled] = fill.answer(answer(200, agg_rows(50, 51, 52)), 0.2)
    assert isinstance(page, PageFetched) and page.page.stream == "aggTrade"
    assert [t.agg_id for t in page.page.trades] == [50, 51, 52] and page.page.trades[0].first_trade_id == 500
    assert isinstance(filled, GapFilled)


def test_agg_trades_weigh_less_so_more_of_them_fit_a_minute():
    fill = Backfill({"BINANCE": REST}, MetricBuffer(), WINDOW_SECONDS, 1000, budget=RequestBudget(weight_per_minute=100),
                    draw=lambda: 1.0)
    for first in range(0, 30_000, 1000):
        fill.add("aggTrade", "BINANCE", "BTCUSDT", first, first + 999, 0.0)
    made = 0
    while (request := fill.next_request(0.0)[0]) is not None:
        made += 1
        fill.answer(answer(200, agg_rows(*range(request.from_id, request.from_id + request.limit))), 0.0)
    assert made == 100 // 4  # historicalTrades would have had 100 // 25


def test_an_agg_trades_row_that_is_not_an_aggregate_trade_is_rejected_alone():
    rows = json.loads(agg_rows(1, 2))
    rows[1]["f"] = "x"
    [(_, first), (_, second)] = binance.historical_agg_trades(json.dumps(rows).encode(), "BTCUSDT")
    assert first.agg_id == 1 and first.event_time_ms == first.trade_time_ms
    assert isinstance(second, Rejected) and second.reason == "wrong_type" and second.stream == "aggTrade"


LATER_US = T0_US + int(WINDOW_SECONDS * 1e6) + 500_000  # rows up to T0 + 500 ms are now older than the window


def test_ids_older_than_the_window_in_a_page_are_reported_too_old_and_the_rest_published():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 0, 999, 0.0)
    fill.next_request(0.0)
    events = fill.answer(answer(200, rows(*range(0, 1000)), received_us=LATER_US), 0.1)  # row i was at T0 + i ms
    [page] = [e for e in events if isinstance(e, PageFetched)]
    assert [t.trade_id for t in page.page.trades] == list(range(500, 1000))
    [too_old] = [e for e in events if isinstance(e, Unfilled)]
    assert (too_old.first_id, too_old.last_id, too_old.reason) == (0, 499, "too_old")
    assert "backfill_max_age_seconds" in too_old.detail


def test_a_gap_that_starts_long_before_the_window_jumps_to_where_the_window_starts():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 0, 99_999, 0.0)
    fill.next_request(0.0)
    [too_old] = fill.answer(answer(200, rows(*range(0, 1000)), received_us=LATER_US + 10_000_000), 0.1)  # all old
    assert (too_old.first_id, too_old.last_id) == (0, 999)
    request, _ = fill.next_request(0.2)
    assert request == RestRequest(REST, "/api/v3/aggTrades", "BTCUSDT", None, 1, (LATER_US + 10_000_000) // 1000 - 3_600_000)
    assert request.query() == {"symbol": "BTCUSDT", "startTime": request.start_time_ms, "limit": 1}
    [jumped] = fill.answer(answer(200, agg_rows(7000)), 0.3)  # its first trade is 70,000
    assert (jumped.first_id, jumped.last_id, jumped.reason) == (1000, 69_999, "too_old")
    assert fill.next_request(0.4)[0] == RestRequest(REST, "/api/v3/historicalTrades", "BTCUSDT", 70_000, 1000)


def test_when_nothing_at_all_is_recent_enough_the_whole_rest_is_too_old():
    fill = backfill()
    fill.add("aggTrade", "BINANCE", "BTCUSDT", 0, 5000, 0.0)
    fill.next_request(0.0)
    fill.answer(answer(200, agg_rows(*range(0, 1000)), received_us=LATER_US + 10_000_000), 0.1)
    fill.next_request(0.2)
    [unfilled] = fill.answer(answer(200, b"[]"), 0.3)
    assert (unfilled.first_id, unfilled.last_id, unfilled.reason) == (1000, 5000, "too_old") and fill.open_gaps == 0


def snapshot_reply(status: int | None, body: bytes = b'{"lastUpdateId":5,"bids":[],"asks":[]}', **headers: str) -> RestReply:
    return RestReply(status, body, {name.replace("_", "-"): value for name, value in headers.items()}, T0_US,
                     "/api/v3/depth?symbol=ETHUSDT&limit=1000", "snap")


def test_a_book_snapshot_goes_before_the_gaps_and_is_asked_again_until_it_comes():
    fill = backfill()
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 0.0)
    fill.ask_snapshot("BINANCE", "ETHUSDT")
    fill.ask_snapshot("BINANCE", "ETHUSDT")  # asked twice: one snapshot
    request, _ = fill.next_request(0.0)
    assert request == RestRequest(REST, "/api/v3/depth", "ETHUSDT", None, 1000)
    assert request.target() == "/api/v3/depth?symbol=ETHUSDT&limit=1000"
    assert fill.answer(snapshot_reply(503, b"busy"), 0.1) == [SnapshotFailed("BINANCE", "ETHUSDT", 1, "503: b'busy'")]
    assert fill.next_request(0.2)[0] is None and fill.waiting  # its backoff: nothing else overtakes it
    request, _ = fill.next_request(1.0)
    assert request is not None and request.path == "/api/v3/depth"
    [taken] = fill.answer(snapshot_reply(200), 1.1)
    assert isinstance(taken, SnapshotTaken)
    assert (taken.snapshot.symbol, taken.snapshot.target, taken.snapshot.url) == ("ETHUSDT", request.target(), REST)
    request, _ = fill.next_request(1.1)
    assert request is not None and request.path == "/api/v3/historicalTrades"  # then the gap
    assert ("k2_book_snapshots_total", ("ETHUSDT",), 1) in fill.metrics.take().counters


def test_a_snapshot_costs_its_weight_and_waits_out_a_ban_that_gives_the_gaps_up():
    fill = Backfill({"BINANCE": REST}, MetricBuffer(), WINDOW_SECONDS, 1000, budget=RequestBudget(weight_per_minute=120),
                    draw=lambda: 1.0)
    fill.ask_snapshot("BINANCE", "ETHUSDT")
    fill.next_request(0.0)
    fill.answer(snapshot_reply(200), 0.1)
    fill.ask_snapshot("BINANCE", "ETHUSDT")
    fill.next_request(0.2)
    fill.answer(snapshot_reply(200), 0.3)  # 2 x 50 of 120 spent
    fill.ask_snapshot("BINANCE", "ETHUSDT")
    assert fill.next_request(1.0)[0] is None  # a third would pass the budget: it waits for the minute
    assert fill.next_request(60.0)[0] is not None
    assert fill.answer(snapshot_reply(418, retry_after="300"), 60.1) == [RateLimited("BINANCE", 418, 300.0)]
    fill.add("trade", "BINANCE", "BTCUSDT", 10, 20, 61.0)
    request, events = fill.next_request(61.0)
    assert request is None and [type(event) for event in events] == [Unfilled]  # the gap is given up ...
    assert fill.waiting  # ... the snapshot waits
    assert fill.next_request(360.2)[0] == RestRequest(REST, "/api/v3/depth", "ETHUSDT", None, 1000)
