"""k2actors.core.coinbase_backfill directly: a gap of a product's trade ids asked for from
its end by Coinbase Exchange's `after` cursor, page by page, newest first; what a page spans
and does not hold, and what is left when the history ends, reported unserved; the requests
within Coinbase's budget; HTTP 429 waited out. The answers are shaped as the recorded one in
tests/data (coinbase_exchange_trades_btcusdt_2024-03-13.json)."""

from __future__ import annotations

import json
import urllib.parse

from k2actors.core.backfill import GapFilled, GapStarted, PageFetched, RestReply, Unfilled
from k2actors.core.coinbase import HistoryPage, historical_trades
from k2actors.core.coinbase_backfill import CoinbaseBackfill, CoinbaseGapFill
from k2actors.core.paged_backfill import Throttled, TradesRequest
from k2actors.core.telemetry import MetricBuffer


def body(*trade_ids: int) -> bytes:
    """A page as Coinbase Exchange answers it: newest first, the maker's side in lower case."""
    return json.dumps([{"trade_id": i, "side": "sell", "size": "0.5", "price": "100.25", "time": "2024-03-13T11:00:17.710679Z"}
                       for i in sorted(trade_ids, reverse=True)]).encode()


def page(*trade_ids: int) -> HistoryPage:
    parsed = historical_trades(body(*trade_ids), "BTC-USD")
    assert isinstance(parsed, HistoryPage)
    return parsed


def after(request: TradesRequest | str) -> int:
    target = request if isinstance(request, str) else request.target()
    return int(urllib.parse.parse_qs(target.partition("?")[2])["after"][0])


def test_a_gap_is_asked_from_its_end_and_paged_back_to_its_start():
    fill = CoinbaseGapFill("BTCUSD", "BTC-USD", 101, 105)
    assert fill.target() == "/products/BTC-USD/trades?after=106&limit=1000"
    got = fill.take(page(105, 104, 103))  # a page that ends inside the gap
    assert ([t.trade_id for t in got.trades], got.unserved, fill.done) == ([103, 104, 105], [], False)
    assert after(fill.target()) == 103
    got = fill.take(page(102, 101, 100, 99))  # and one past its start
    assert ([t.trade_id for t in got.trades], got.unserved, fill.done) == ([101, 102], [], True)
    assert all(t.taker_side == "buy" for t in got.trades)  # the maker sold


def test_ids_a_page_spans_and_does_not_hold_are_unserved():
    fill = CoinbaseGapFill("BTCUSD", "BTC-USD", 101, 110)
    got = fill.take(page(110, 107, 103))
    assert ([t.trade_id for t in got.trades], got.unserved) == ([103, 107, 110], [(104, 106), (108, 109)])
    got = fill.take(page())  # the history ends: the rest of the gap is not served
    assert (got.trades, got.unserved, fill.done) == ([], [(101, 102)], True)


def test_a_page_that_does_not_move_on_ends_the_history():
    fill = CoinbaseGapFill("BTCUSD", "BTC-USD", 101, 103)
    got = fill.take(page(104, 105))  # nothing below `after`
    assert (got.trades, got.unserved, fill.done) == ([], [(101, 103)], True)


def backfill() -> CoinbaseBackfill:
    return CoinbaseBackfill("https://api.exchange.coinbase.test", MetricBuffer(), draw=lambda: 1.0)


def reply(request: TradesRequest, answer: bytes, status: int = 200) -> RestReply:
    return RestReply(status, answer, {}, 1_700_000_000_000_000, request.target(), "rest-1")


def test_a_gap_is_filled_from_pages_asked_within_the_budget_and_said_filled():
    fills = backfill()
    [started] = fills.add("BTCUSD", "BTC-USD", 101, 103, 0.0)
    assert isinstance(started, GapStarted) and str(started.gap) == "COINBASE BTCUSD ids 101 to 103"
    request = fills.next_request(0.0)
    assert request is not None and request.base_url == "https://api.exchange.coinbase.test" and after(request) == 104
    assert fills.next_request(0.1) is None  # one in flight
    [fetched] = fills.answer(reply(request, body(103, 102)), 0.1)
    assert isinstance(fetched, PageFetched) and [t.trade_id for t in fetched.page.trades] == [102, 103]
    assert (fetched.page.stream, fetched.page.venue, fetched.page.symbol) == ("coinbase.trade", "COINBASE", "BTCUSD")
    assert fills.next_request(0.2) is None and fills.next_request(0.25) is not None  # four a second at most


def test_the_last_page_closes_the_gap():
    fills = backfill()
    fills.add("BTCUSD", "BTC-USD", 101, 102, 0.0)
    request = fills.next_request(0.0)
    assert request is not None
    events = fills.answer(reply(request, body(102, 101, 100)), 0.1)
    assert [type(e) for e in events] == [PageFetched, GapFilled] and fills.open_gaps == 0


def test_too_many_requests_waits_a_growing_backoff_and_asks_the_same_page_again():
    fills = backfill()
    fills.add("BTCUSD", "BTC-USD", 101, 101, 0.0)
    request = fills.next_request(0.0)
    assert request is not None
    [first] = fills.answer(reply(request, b'{"message":"Public rate limit exceeded"}', 429), 0.0)
    assert isinstance(first, Throttled) and first.wait >= 5.0 and "429" in first.report().message
    assert fills.next_request(first.wait - 0.1) is None
    again = fills.next_request(first.wait)
    assert again is not None and again.target() == request.target()


def test_an_answer_that_is_no_page_gives_the_gap_up_with_its_range():
    fills = backfill()
    fills.add("BTCUSD", "BTC-USD", 101, 105, 0.0)
    request = fills.next_request(0.0)
    assert request is not None
    [unfilled] = fills.answer(reply(request, b'{"message":"NotFound"}'), 0.1)
    assert isinstance(unfilled, Unfilled) and (unfilled.first_id, unfilled.last_id, unfilled.reason) == (101, 105, "rest_unusable")
    assert fills.open_gaps == 0
