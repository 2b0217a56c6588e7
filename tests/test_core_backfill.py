import json

import pytest

from k2actors.core import binance
from k2actors.core.backfill import PAGE_LIMIT, GapFill, RequestBudget
from k2actors.core.binance import Rejected, Trade, historical_trades
from k2actors.core.sequence import SequenceTracker


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
    [({k: v for k, v in ROW.items() if k != "id"}, binance.MISSING_FIELD), ({**ROW, "id": "42"}, binance.WRONG_TYPE),
     ({**ROW, "qty": 1.5}, binance.WRONG_TYPE), ({**ROW, "isBuyerMaker": 1}, binance.WRONG_TYPE),
     ({**ROW, "id": -1}, binance.ID_OUT_OF_RANGE), ([1, 2], binance.UNEXPECTED_SHAPE)],
)
def test_history_rows_that_are_not_trades_are_rejected_one_by_one(row, reason):
    [(_, good), (_, bad)] = historical_trades(json.dumps([ROW, row]).encode(), "BTCUSDT")
    assert isinstance(good, Trade) and isinstance(bad, Rejected) and bad.reason == reason


@pytest.mark.parametrize("body, reason", [(b"<html>", binance.NOT_JSON), (b'{"code": -1121}', binance.UNEXPECTED_SHAPE)])
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
