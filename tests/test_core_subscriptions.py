"""k2actors.core.subscriptions, directly: a refused SUBSCRIBE is asked again alone, on its own
connection, after a backoff that grows, never sooner than a second; it is reported until the
same request succeeds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.binance import connection_plans
from k2actors.core.subscriptions import RETRY_BASE_SECONDS, RETRY_CAP_SECONDS, Resend, Subscriptions

SYMBOLS = tuple(f"S{i:04d}USDT" for i in range(2100))  # three connections, two with SUBSCRIBE requests
PLANS = connection_plans("wss://x/stream", SYMBOLS)


def highest(_: object = None) -> float:
    return 1.0  # the jitter's top: the bound itself


def request(link: int, index: int = 0) -> tuple[int, str]:
    return PLANS[link].requests[index]


def test_nothing_refused_is_ready():
    subscriptions = Subscriptions(PLANS)
    assert subscriptions.status()[0] is True and subscriptions.due(1e9) == []


def test_a_refused_request_is_sent_again_alone_on_its_connection_after_its_backoff():
    subscriptions = Subscriptions(PLANS, draw=highest)
    request_id, message = request(1, 2)
    assert subscriptions.refused(request_id, 2, "Invalid request", now=100.0) == RETRY_BASE_SECONDS
    ok, detail = subscriptions.status()
    assert not ok and f"request {request_id}: code 2 'Invalid request' (1 refusals)" in detail
    assert subscriptions.due(100.0 + RETRY_BASE_SECONDS - 0.01) == []
    assert subscriptions.due(100.0 + RETRY_BASE_SECONDS) == [Resend(1, request_id, message)]
    assert subscriptions.due(1e9) == []  # sent once; due again only once refused again
    assert not subscriptions.status()[0]  # still refused until answered with success
    subscriptions.answered(request_id)
    assert subscriptions.status()[0]


def test_each_refusal_of_the_same_request_doubles_the_bound_up_to_the_cap():
    subscriptions = Subscriptions(PLANS, draw=highest)
    request_id, _ = request(0)
    delays = [subscriptions.refused(request_id, 2, "no", now=0.0) for _ in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert RETRY_CAP_SECONDS == 60.0


@given(st.floats(min_value=0.0, max_value=0.999), st.integers(min_value=1, max_value=20))
def test_the_jitter_never_asks_again_sooner_than_a_second_nor_later_than_the_cap(draw, refusals):
    subscriptions = Subscriptions(PLANS, draw=lambda: draw)
    request_id, _ = request(0)
    for _ in range(refusals):
        delay = subscriptions.refused(request_id, 2, "no", now=0.0)
        assert delay is not None and RETRY_BASE_SECONDS <= delay <= RETRY_CAP_SECONDS


def test_an_answer_to_a_request_never_sent_is_nothing_to_retry():
    subscriptions = Subscriptions(PLANS)
    assert subscriptions.refused(10_000, 2, "no", now=0.0) is None
    assert subscriptions.refused("1", 2, "no", now=0.0) is None
    assert subscriptions.status()[0] and subscriptions.due(1e9) == []


def test_a_refusal_naming_no_request_stands_unretried_until_the_endpoint_is_connected_afresh():
    subscriptions = Subscriptions(PLANS)
    assert subscriptions.refused(None, 0, "too many L2 streams requested in a single session", now=0.0) is None
    ok, detail = subscriptions.status()
    assert not ok and subscriptions.due(1e9) == []
    assert detail == ("refused, naming no request, until connected afresh: 1 refusals, "
                      "the last code 0 'too many L2 streams requested in a single session'")
    subscriptions.refused(request(0)[0], 2, "Invalid request", now=0.0)  # a named one beside it: both said
    assert subscriptions.status()[1].startswith("refused, asked again with backoff: request 1: code 2 'Invalid request'")
    assert Subscriptions(PLANS).status()[0]  # a new connection asks afresh


def test_connections_subscribed_in_the_url_have_no_request_to_retry():
    subscriptions = Subscriptions(connection_plans("wss://x/stream", ("BTCUSDT",)))
    assert subscriptions.refused(1, 0, "Unknown property", now=0.0) is None
