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

    books = records(broker.bootstrap_servers, registry.url, books_topic)
    for book in books:
        at = simulator.market.books[book["symbol"]].at(book["source_sequence"])
        assert at is not None, f"{book['symbol']} {book['source_sequence']}: older than the simulator keeps"
        assert [(level["price"], level["quantity"]) for level in book["bids"]] == levels(at.bids), book["source_sequence"]
        assert [(level["price"], level["quantity"]) for level in book["asks"]] == levels(at.asks), book["source_sequence"]
        assert (book["depth"], book["bid_levels"], book["ask_levels"]) == (20, 20, 20)
    assert len({book["message_id"] for book in books}) == len(books)  # each update's book once
    assert {book["symbol"] for book in books} == set(SYMBOLS)

    log = service.log() + restarted.log()
    rebuilt = [float(seconds) for seconds in re.findall(r"in sync from snapshot \d+, at update \d+, ([0-9.]+) s after it stopped", log)]
    assert len(rebuilt) >= 2 * len(SYMBOLS) + 2, log  # at each start, after the gap, after the failover

    replayed = replay_verify(restarted.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr
