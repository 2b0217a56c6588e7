"""k2actors.core.kraken_books directly: Kraken's books per connection, verified by the checksum
on every message, resubscribed when it fails (at once, then backing off when it keeps failing),
and a pair in sync only while a live connection's book of it is.

The messages are python-kraken-sdk's recorded BTC/USD session of 2023-07-30 (tests/data,
see its README): one snapshot and 509 updates, as Kraken sent them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from k2actors.core.checksummed_book import CheckedTop
from k2actors.core.connection_books import BOOKS_PER_SYMBOL, PEER_SECONDS, BookSource, SymbolInSync, SymbolOutOfSync
from k2actors.core.kraken import BookMessage, Instrument, read_frame
from k2actors.core.kraken_books import ChecksumFailed, KrakenBooks, ResubscribeWanted

SESSION = json.loads((Path(__file__).parent / "data" / "kraken_v2_btcusd_book_2023-07-30.json").read_text())
BTC_USD = Instrument("BTC/USD", "BTC", "USD", 1, 8, "online")
PRIMARY = BookSource("connection-actor", "wss://ws.kraken.com/v2", "conn-1")
OUT_OF_SYNC = SymbolOutOfSync("KRAKEN", "BTC/USD", "checksum")
STANDBY = BookSource("standby-actor", "wss://ws-standby.kraken.test/v2", "conn-2")


def session() -> tuple[BookMessage, list[BookMessage]]:
    messages = []
    for frame in (SESSION["init"], *SESSION["updates"]):
        _, (message,) = read_frame(json.dumps(frame).encode(), 1 << 20)
        assert isinstance(message, BookMessage)
        messages.append(message)
    return messages[0], messages[1:]


def wrong(message: BookMessage) -> BookMessage:
    """The message with a checksum the book after it cannot have: as if a level had been lost."""
    return dataclasses.replace(message, checksum=message.checksum ^ 1)


def feed(books: KrakenBooks[str], messages: list[BookMessage], source: BookSource[str], now: float) -> list:
    return [output for message in messages for output in books.message(message, BTC_USD, source, 0, now)]


def of(kind: type, outputs: list) -> list:
    return [output for output in outputs if isinstance(output, kind)]


def test_a_recorded_session_publishes_one_verified_top_a_second_and_never_leaves_sync():
    books: KrakenBooks[str] = KrakenBooks(publish_depth=10, cadence_ms=1000)
    snapshot, updates = session()
    outputs = feed(books, [snapshot, *updates], PRIMARY, now=0.0)
    tops = of(CheckedTop, outputs)
    assert tops and [type(output) for output in outputs] == [CheckedTop] * len(tops)
    assert len({top.window_us for top in tops}) == len(tops)
    assert books.pairs() == {"BTC/USD"} and books.lost_since() == {}


def test_a_failed_checksum_is_resubscribed_at_once_and_nothing_published_until_a_fresh_snapshot():
    books: KrakenBooks[str] = KrakenBooks(publish_depth=10, cadence_ms=1000)
    snapshot, updates = session()
    feed(books, [snapshot, *updates[:10]], PRIMARY, now=0.0)
    failed = books.message(wrong(updates[10]), BTC_USD, PRIMARY, 0, 5.0)
    [failure] = of(ChecksumFailed, failed)
    assert (failure.endpoint, failure.conn_id, failure.retry_in) == (PRIMARY.endpoint, PRIMARY.conn_id, 0.0)
    assert failure.mismatch.expected == updates[10].checksum ^ 1
    assert of(ResubscribeWanted, failed) == [ResubscribeWanted(PRIMARY, "BTC/USD")]
    assert of(SymbolOutOfSync, failed) == [OUT_OF_SYNC] and books.lost_since() == {"BTC/USD": 5.0}
    assert "failed its checksum" in failure.report().message
    assert feed(books, updates[11:], PRIMARY, now=6.0) == []  # updates of the book given up: nothing to apply them to
    rebuilt = books.message(snapshot, BTC_USD, PRIMARY, 0, 7.5)
    assert of(SymbolInSync, rebuilt) == [SymbolInSync("KRAKEN", "BTC/USD", 2.5)] and books.lost_since() == {}


def test_a_book_that_keeps_failing_is_asked_again_after_a_growing_delay():
    books: KrakenBooks[str] = KrakenBooks(publish_depth=10, cadence_ms=1000)
    snapshot, _ = session()
    delays = []
    now = 0.0
    for _ in range(9):
        [failure] = of(ChecksumFailed, books.message(wrong(snapshot), BTC_USD, PRIMARY, 0, now))
        delays.append(failure.retry_in)
        if failure.retry_in:
            assert books.due(now + failure.retry_in - 0.01) == []
        assert books.due(now + failure.retry_in) == ([ResubscribeWanted(PRIMARY, "BTC/USD")] if failure.retry_in else [])
        now += failure.retry_in + 1.0
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    # a failure long after the last is a new one: asked at once
    [failure] = of(ChecksumFailed, books.message(wrong(snapshot), BTC_USD, PRIMARY, 0, now + 61.0))
    assert failure.retry_in == 0.0


def test_a_pair_stays_in_sync_while_another_live_connections_book_of_it_is_verified():
    books: KrakenBooks[str] = KrakenBooks(publish_depth=10, cadence_ms=1000)
    snapshot, updates = session()
    feed(books, [snapshot], PRIMARY, now=0.0)
    feed(books, [snapshot], STANDBY, now=0.0)
    outputs = books.message(wrong(updates[0]), BTC_USD, STANDBY, 0, 1.0)
    assert of(ChecksumFailed, outputs) and not of(SymbolOutOfSync, outputs)
    assert of(CheckedTop, feed(books, updates[:2], PRIMARY, now=1.5))  # the primary's book publishes on


def test_a_connection_gone_quiet_vouches_for_nothing():
    books: KrakenBooks[str] = KrakenBooks(publish_depth=10, cadence_ms=1000)
    snapshot, _ = session()
    feed(books, [snapshot], PRIMARY, now=0.0)
    # the primary's connection is gone; a new one's snapshot fails
    outputs = books.message(wrong(snapshot), BTC_USD, STANDBY, 0, PEER_SECONDS + 1.0)
    assert of(SymbolOutOfSync, outputs) == [OUT_OF_SYNC]


def test_only_the_most_recently_heard_books_of_a_pair_are_kept():
    books: KrakenBooks[str] = KrakenBooks(publish_depth=10, cadence_ms=1000)
    snapshot, _ = session()
    for index in range(BOOKS_PER_SYMBOL + 3):
        feed(books, [snapshot], BookSource("actor", PRIMARY.endpoint, f"conn-{index}"), now=float(index))
    # a book dropped is a new one should its connection speak again: it waits for a snapshot
    assert feed(books, [session()[1][0]], BookSource("actor", PRIMARY.endpoint, "conn-0"), now=10.0) == []
    newest = BookSource("actor", PRIMARY.endpoint, f"conn-{BOOKS_PER_SYMBOL + 2}")
    assert of(CheckedTop, feed(books, [session()[1][0]], newest, now=10.0))


def test_a_forgotten_pair_keeps_nothing_and_starts_again_from_a_snapshot():
    books: KrakenBooks[str] = KrakenBooks(publish_depth=10, cadence_ms=1000)
    snapshot, updates = session()
    feed(books, [snapshot, *updates[:10]], PRIMARY, now=0.0)
    books.message(wrong(updates[10]), BTC_USD, STANDBY, 0, 1.0)  # a standby's book of it out of sync, its resubscription due
    books.forget({"BTC/USD"})
    assert books.pairs() == set() and books.lost_since() == {} and books.due(2.0) == []
    assert feed(books, updates[11:20], PRIMARY, now=3.0) == [OUT_OF_SYNC]  # no snapshot to apply them to
    restarted = books.message(snapshot, BTC_USD, PRIMARY, 0, 4.0)
    assert of(CheckedTop, restarted) and of(SymbolInSync, restarted) == [SymbolInSync("KRAKEN", "BTC/USD", 1.0)]
