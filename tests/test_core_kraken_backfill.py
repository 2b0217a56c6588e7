"""Filling a gap of Kraken trade ids from REST pages served by time."""

from __future__ import annotations

import json
import urllib.parse

from k2actors.core.backfill import GapFilled, GapStarted, PageFetched, RestReply, Unfilled
from k2actors.core.kraken import HistoryPage, KrakenTrade
from k2actors.core.kraken_backfill import KrakenBackfill, KrakenGapFill
from k2actors.core.paged_backfill import Throttled, TradesRequest
from k2actors.core.telemetry import MetricBuffer


def trade(trade_id: int, time_us: int) -> KrakenTrade:
    return KrakenTrade("BTC/USD", trade_id, "100.0", "1.0", "buy", "limit", time_us, False)


def page(*trades: KrakenTrade) -> HistoryPage:
    """As Kraken answers: `last` is the time of the last row, in ns (the `since` it was asked with when empty)."""
    return HistoryPage(trades, trades[-1].timestamp_us * 1000 if trades else 0)


def test_the_first_page_is_asked_from_just_before_the_trade_before_the_gap():
    fill = KrakenGapFill("BTCUSD", "BTC/USD", 101, 105, after_us=5_000_000)
    assert urllib.parse.parse_qs(fill.target().partition("?")[2]) == {
        "pair": ["BTC/USD"], "since": ["4999999000"], "count": ["1000"], "assetVersion": ["1"]}


def test_a_gap_inside_one_page_is_filled_and_the_trades_around_it_are_left():
    fill = KrakenGapFill("BTCUSD", "BTC/USD", 101, 103, after_us=1000)
    got = fill.take(page(*(trade(i, 1000 + i) for i in range(100, 110))))
    assert [t.trade_id for t in got.trades] == [101, 102, 103] and got.unserved == [] and fill.done


def test_a_gap_longer_than_a_page_is_paged_from_each_pages_last_time():
    fill = KrakenGapFill("BTCUSD", "BTC/USD", 101, 2500, after_us=1000)
    first = fill.take(page(*(trade(i, 1000 + i) for i in range(100, 1100))))
    assert len(first.trades) == 999 and not fill.done
    assert fill.since_ns == (1000 + 1099) * 1000 - 1  # the last row again: same-time trades beyond the page are not skipped
    second = fill.take(page(*(trade(i, 1000 + i) for i in range(1099, 2099))))
    third = fill.take(page(*(trade(i, 1000 + i) for i in range(2098, 3098))))
    ids = [t.trade_id for got in (first, second, third) for t in got.trades]
    assert ids == list(range(101, 2501)) and fill.done and not first.unserved + second.unserved + third.unserved


def test_ids_the_history_does_not_have_are_unserved():
    fill = KrakenGapFill("BTCUSD", "BTC/USD", 101, 110, after_us=1000)
    got = fill.take(page(trade(100, 1100), trade(103, 1103), trade(104, 1104), trade(111, 1111)))
    assert [t.trade_id for t in got.trades] == [103, 104]
    assert got.unserved == [(101, 102), (105, 110)] and fill.done


def test_a_history_that_ends_inside_the_gap_leaves_its_rest_unserved():
    fill = KrakenGapFill("BTCUSD", "BTC/USD", 101, 110, after_us=1000)
    got = fill.take(page(trade(100, 1100), trade(101, 1101)))
    assert [t.trade_id for t in got.trades] == [101] and not fill.done
    empty = HistoryPage((), fill.since_ns)  # nothing after it: Kraken answers `last` = `since`
    assert fill.take(empty).unserved == [(102, 110)] and fill.done


def test_a_history_with_nothing_after_the_trade_before_the_gap_leaves_it_all_unserved():
    fill = KrakenGapFill("BTCUSD", "BTC/USD", 101, 102, after_us=1000)
    got = fill.take(page(trade(100, 1000)))  # the trade before the gap, again
    assert (got.trades, got.unserved, fill.done) == ([], [], False)
    got = fill.take(HistoryPage((), fill.since_ns))
    assert (got.trades, got.unserved, fill.done) == ([], [(101, 102)], True)


# --- KrakenBackfill: the requests of every gap, within Kraken's budget ---

NOW_US = 1_700_000_000_000_000
MAX_AGE_SECONDS = 86400.0


def backfill() -> KrakenBackfill:
    return KrakenBackfill("https://api.kraken.test", MetricBuffer(), MAX_AGE_SECONDS, draw=lambda: 1.0)


def rows_body(*trade_ids: int, at_us: int = NOW_US - 10_000_000) -> bytes:
    rows = [["100.0", "1.0", (at_us + i) / 1e6, "b", "l", "", i] for i in trade_ids]
    last = (at_us + trade_ids[-1]) * 1000 if trade_ids else 0
    return json.dumps({"error": [], "result": {"BTC/USD": rows, "last": str(last)}}).encode()


def reply(request: TradesRequest, body: bytes, status: int = 200) -> RestReply:
    return RestReply(status, body, {}, NOW_US, request.target(), "rest-1")


def since(request: TradesRequest) -> int:
    return int(urllib.parse.parse_qs(request.target().partition("?")[2])["since"][0])


def test_a_gap_is_filled_from_pages_asked_a_second_apart_and_said_filled():
    fills = backfill()
    [started] = fills.add("BTCUSD", "BTC/USD", 101, 103, NOW_US - 10_000_000, 0.0, NOW_US)
    assert isinstance(started, GapStarted) and str(started.gap) == "KRAKEN BTCUSD ids 101 to 103"
    request = fills.next_request(0.0)
    assert request is not None and request.base_url == "https://api.kraken.test"
    assert fills.next_request(0.0) is None  # one in flight
    [fetched] = fills.answer(reply(request, rows_body(100, 101, 102)), 0.2)  # the page ends inside the gap
    assert isinstance(fetched, PageFetched) and [t.trade_id for t in fetched.page.trades] == [101, 102]
    assert (fetched.page.stream, fetched.page.venue, fetched.page.symbol) == ("kraken.trade", "KRAKEN", "BTCUSD")
    assert fills.next_request(0.5) is None and fills.waiting  # a second after the last request
    second = fills.next_request(1.0)
    assert second is not None
    events = fills.answer(reply(second, rows_body(102, 103, 104)), 1.1)
    assert [type(e) for e in events] == [PageFetched, GapFilled] and fills.open_gaps == 0


def test_a_gap_whose_start_is_unknown_is_asked_from_the_backfill_windows_start():
    fills = backfill()
    fills.add("BTCUSD", "BTC/USD", 5, 6, None, 0.0, NOW_US)
    request = fills.next_request(0.0)
    assert request is not None and since(request) == (NOW_US - int(MAX_AGE_SECONDS * 1e6) - 1) * 1000


def test_throttled_requests_wait_a_growing_backoff_and_ask_the_same_page_again():
    fills = backfill()
    fills.add("BTCUSD", "BTC/USD", 101, 101, NOW_US - 10_000_000, 0.0, NOW_US)
    request = fills.next_request(0.0)
    assert request is not None
    throttled = json.dumps({"error": ["EAPI:Rate limit exceeded"]}).encode()
    [first] = fills.answer(reply(request, throttled), 0.1)
    assert isinstance(first, Throttled) and first.wait >= 5.0 and "Rate limit" in first.report().message
    assert fills.next_request(0.1 + first.wait - 0.01) is None
    again = fills.next_request(0.1 + first.wait)
    assert again == request
    [second] = fills.answer(reply(again, throttled), 20.0)
    assert isinstance(second, Throttled) and second.wait > first.wait


def test_a_history_that_keeps_failing_gives_the_gap_up_with_its_range():
    fills = backfill()
    fills.add("BTCUSD", "BTC/USD", 101, 110, NOW_US - 10_000_000, 0.0, NOW_US)
    now, events = 0.0, []
    while fills.open_gaps:
        request = fills.next_request(now)
        if request is not None:
            events = fills.answer(reply(request, b"bad gateway", 502), now)
        now += 0.5
    [unfilled] = events
    assert isinstance(unfilled, Unfilled) and (unfilled.reason, unfilled.first_id, unfilled.last_id) == ("rest_unavailable", 101, 110)
    assert unfilled.report().message.startswith("cannot backfill KRAKEN BTCUSD ids 101 to 110 (rest_unavailable)")


def test_an_answer_that_is_no_page_gives_the_gap_up_at_once():
    fills = backfill()
    fills.add("BTCUSD", "BTC/USD", 101, 110, NOW_US - 10_000_000, 0.0, NOW_US)
    request = fills.next_request(0.0)
    assert request is not None
    [unfilled] = fills.answer(reply(request, json.dumps({"error": ["EQuery:Unknown asset pair"]}).encode()), 0.1)
    assert isinstance(unfilled, Unfilled) and unfilled.reason == "rest_unusable" and "Unknown asset pair" in unfilled.detail
    assert fills.open_gaps == 0
