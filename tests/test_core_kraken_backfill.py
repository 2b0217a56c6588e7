"""Filling a gap of Kraken trade ids from REST pages served by time."""

from __future__ import annotations

import urllib.parse

from k2actors.core.kraken import HistoryPage, KrakenTrade
from k2actors.core.kraken_backfill import KrakenGapFill


def trade(trade_id: int, time_us: int) -> KrakenTrade:
    return KrakenTrade("BTC/USD", trade_id, "100.0", "1.0", "buy", "limit", time_us, False)


def page(*trades: KrakenTrade) -> HistoryPage:
    """As Kraken answers: `last` is the time of the last row, in ns (the `since` it was asked with when empty)."""
    return HistoryPage(trades, trades[-1].timestamp_us * 1000 if trades else 0)


def test_the_first_page_is_asked_from_just_before_the_trade_before_the_gap():
    fill = KrakenGapFill("BTC/USD", 101, 105, after_us=5_000_000)
    assert urllib.parse.parse_qs(fill.target().partition("?")[2]) == {
        "pair": ["BTC/USD"], "since": ["4999999000"], "count": ["1000"], "assetVersion": ["1"]}


def test_a_gap_inside_one_page_is_filled_and_the_trades_around_it_are_left():
    fill = KrakenGapFill("BTC/USD", 101, 103, after_us=1000)
    got = fill.take(page(*(trade(i, 1000 + i) for i in range(100, 110))))
    assert [t.trade_id for t in got.trades] == [101, 102, 103] and got.unserved == [] and fill.done


def test_a_gap_longer_than_a_page_is_paged_from_each_pages_last_time():
    fill = KrakenGapFill("BTC/USD", 101, 2500, after_us=1000)
    first = fill.take(page(*(trade(i, 1000 + i) for i in range(100, 1100))))
    assert len(first.trades) == 999 and not fill.done
    assert fill.since_ns == (1000 + 1099) * 1000 - 1  # the last row again: same-time trades beyond the page are not skipped
    second = fill.take(page(*(trade(i, 1000 + i) for i in range(1099, 2099))))
    third = fill.take(page(*(trade(i, 1000 + i) for i in range(2098, 3098))))
    ids = [t.trade_id for got in (first, second, third) for t in got.trades]
    assert ids == list(range(101, 2501)) and fill.done and not first.unserved + second.unserved + third.unserved


def test_ids_the_history_does_not_have_are_unserved():
    fill = KrakenGapFill("BTC/USD", 101, 110, after_us=1000)
    got = fill.take(page(trade(100, 1100), trade(103, 1103), trade(104, 1104), trade(111, 1111)))
    assert [t.trade_id for t in got.trades] == [103, 104]
    assert got.unserved == [(101, 102), (105, 110)] and fill.done


def test_a_history_that_ends_inside_the_gap_leaves_its_rest_unserved():
    fill = KrakenGapFill("BTC/USD", 101, 110, after_us=1000)
    got = fill.take(page(trade(100, 1100), trade(101, 1101)))
    assert [t.trade_id for t in got.trades] == [101] and not fill.done
    empty = HistoryPage((), fill.since_ns)  # nothing after it: Kraken answers `last` = `since`
    assert fill.take(empty).unserved == [(102, 110)] and fill.done


def test_a_history_with_nothing_after_the_trade_before_the_gap_leaves_it_all_unserved():
    fill = KrakenGapFill("BTC/USD", 101, 102, after_us=1000)
    got = fill.take(page(trade(100, 1000)))  # the trade before the gap, again
    assert (got.trades, got.unserved, fill.done) == ([], [], False)
    got = fill.take(HistoryPage((), fill.since_ns))
    assert (got.trades, got.unserved, fill.done) == ([], [(101, 102)], True)
