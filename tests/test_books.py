"""Order books end to end: the simulator's books, the service as its own process, Tansu. Every
book record published is the simulator's book at the update id it names, level for level,
through a dropped diff, a stale snapshot, a failover and a restart; each book is back in
sync after each; and the raw record derives every book record again."""

from __future__ import annotations

import re
from decimal import Decimal

from k2actors.readback import records
from tests.conftest import wait_until
from tests.test_raw_record import replay_verify

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


def books_in_sync(service) -> int:
    return int(service.metric("k2_book_in_sync"))


def resyncs(service, reason: str) -> float:
    return sum(value for name, value in service.metrics().items()
               if name.startswith("k2_book_resyncs_total{") and f'reason="{reason}"' in name)


def back_in_sync(service, what: str) -> None:
    wait_until(lambda: books_in_sync(service) == len(SYMBOLS), 30, f"every book in sync again after {what}")


def levels(snapshot_levels: tuple[tuple[int, int], ...]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(price).scaleb(-2), Decimal(units).scaleb(-8)) for price, units in snapshot_levels]


def assert_each_is_the_simulators_book(books: list[dict], simulator) -> None:
    """Every record the simulator's book at its update id, level for level, each update's once."""
    for book in books:
        at = simulator.market.books[book["symbol"]].at(book["source_sequence"])
        assert at is not None, f"{book['symbol']} {book['source_sequence']}: older than the simulator keeps"
        assert [(level["price"], level["quantity"]) for level in book["bids"]] == levels(at.bids), book["source_sequence"]
        assert [(level["price"], level["quantity"]) for level in book["asks"]] == levels(at.asks), book["source_sequence"]
        assert (book["depth"], book["bid_levels"], book["ask_levels"]) == (20, 20, 20)
    assert len({book["message_id"] for book in books}) == len(books)
    assert {book["symbol"] for book in books} == set(SYMBOLS)


def test_every_book_published_is_the_simulators_at_its_update_id_through_faults_and_a_restart(
        start_service, simulator, broker, registry, topic):
    books_topic = f"{topic}.books"
    settings = {"K2_BINANCE_STREAMS": "trade,book", "K2_KAFKA_BOOK_TOPIC": books_topic,
                "K2_BINANCE_STALE_TIMEOUT_SECONDS": "2"}
    service = start_service(**settings)
    service.wait_ready()
    back_in_sync(service, "the start")
    ready = service.wait_ready()
    assert ready["checks"]["books"]["ok"] and "3 books in sync" in ready["checks"]["books"]["detail"]

    simulator.endpoint(0).drop_diff("BTCUSDT")  # the streaming connection misses a diff
    wait_until(lambda: resyncs(service, "gap") >= 1, 30, "the gap noticed")
    back_in_sync(service, "a dropped diff")

    simulator.endpoint(0).stale_snapshots(1)  # the next rebuild's first snapshot is older than its diffs
    simulator.endpoint(0).stall()  # and the streaming endpoint goes silent: failover to the mirror
    wait_until(lambda: simulator.endpoint(1).client_count() >= 1, 30, "failover to the mirror")
    wait_until(lambda: resyncs(service, "gap") >= 2, 30, "the diffs the failover lost noticed")
    wait_until(lambda: resyncs(service, "stale_snapshot") >= 1, 30, "the stale snapshot refused")
    back_in_sync(service, "a failover and a stale snapshot")
    simulator.endpoint(0).stall(False)
    published = len(records(broker.bootstrap_servers, registry.url, books_topic))
    assert service.stop() == 0, service.log()

    restarted = start_service(**settings)
    restarted.wait_ready()
    back_in_sync(restarted, "a restart")
    wait_until(lambda: len(records(broker.bootstrap_servers, registry.url, books_topic)) >= published + 2 * len(SYMBOLS),
               30, "books published after the restart")
    assert restarted.stop() == 0, restarted.log()

    assert_each_is_the_simulators_book(records(broker.bootstrap_servers, registry.url, books_topic), simulator)

    log = service.log() + restarted.log()
    rebuilt = [float(seconds) for seconds in re.findall(r"in sync from snapshot \d+, at update \d+, ([0-9.]+) s after it stopped", log)]
    assert len(rebuilt) >= 2 * len(SYMBOLS) + 2, log  # at each start, after the gap, after the failover

    replayed = replay_verify(restarted.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr


def test_in_hot_standby_a_diff_one_connection_missed_comes_from_the_other_and_a_refused_snapshot_is_waited_out(
        start_service, simulator, broker, registry, topic):
    books_topic = f"{topic}.books"
    simulator.endpoint(0).refuse_snapshots(429, 1, retry_after=1.0)  # the first snapshot asked for: refused
    service = start_service(K2_BINANCE_STREAMS="trade,book", K2_KAFKA_BOOK_TOPIC=books_topic, K2_BINANCE_MODE="hot_standby")
    service.wait_ready()
    back_in_sync(service, "a snapshot refused with 429")
    assert "refused with HTTP 429: waiting 1 s as Retry-After says" in service.log()
    wait_until(lambda: simulator.endpoint(1).client_count() == 1, 20, "the standby connection")
    published = len(records(broker.bootstrap_servers, registry.url, books_topic))
    for symbol in SYMBOLS:
        simulator.endpoint(0).drop_diff(symbol)  # the primary misses a diff of each; the standby has them
    wait_until(lambda: len(records(broker.bootstrap_servers, registry.url, books_topic)) >= published + 3 * len(SYMBOLS),
               30, "books published past the dropped diffs")
    assert resyncs(service, "gap") == 0 and books_in_sync(service) == len(SYMBOLS)
    assert service.stop() == 0, service.log()
    assert_each_is_the_simulators_book(records(broker.bootstrap_servers, registry.url, books_topic), simulator)
