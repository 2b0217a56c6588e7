"""k2actors.core.coinbase_books directly: Coinbase's level2 books per connection, trusted only
while the connection has lost no frame (its `sequence_num` runs on) and the book is not
crossed; a connection that lost a frame is replaced for fresh snapshots, at once, then
backing off; a product in sync while a live connection's book of it is.

The snapshot is a real one (tests/data/README.md: `capture-2026-09-07 l2_data_snapshot`,
BTC-PERP-INTX cut to 4 levels by whoever recorded it); the updates are written here."""

from __future__ import annotations

from k2actors.core.coinbase import BookEvent, SequenceGap, read_frame
from k2actors.core.coinbase_books import BooksLost, CoinbaseBooks, ReconnectWanted, SequencedTop
from k2actors.core.connection_books import BookSource, SymbolInSync, SymbolOutOfSync
from tests.test_core_coinbase import FRAMES, us

_, (SNAPSHOT,) = read_frame(FRAMES["capture-2026-09-07 l2_data_snapshot"], 1 << 20)
PRODUCT = "BTC-PERP-INTX"
T0 = us("2026-09-07T01:57:58.894355Z")
PRIMARY = BookSource("connection-actor", "wss://advanced-trade-ws.coinbase.com", "conn-1")
STANDBY = BookSource("standby-actor", "wss://advanced-trade-ws.coinbase.com", "conn-2")
OUT_OF_SYNC = SymbolOutOfSync("COINBASE", PRODUCT, "sequence")


def update(seconds: float, bids=(), asks=()) -> BookEvent:
    return BookEvent(PRODUCT, False, tuple(bids), tuple(asks), T0 + int(seconds * 1_000_000))


def fed(books: CoinbaseBooks[str], source: BookSource[str], sequence_num: int, event: BookEvent | None, now: float) -> list:
    outputs = books.frame(source, sequence_num, now)
    return outputs + (books.event(event, sequence_num, source, now) if event is not None else [])


def of(kind: type, outputs: list) -> list:
    return [output for output in outputs if isinstance(output, kind)]


def started(books: CoinbaseBooks[str], source: BookSource[str] = PRIMARY, now: float = 0.0) -> list:
    assert BookEvent(PRODUCT, True, (("79943.9", "3.0105"), ("79943.8", "0.5")),
                                 (("79944.1", "1.2"), ("79944", "0.048")), T0) == SNAPSHOT
    return fed(books, source, 0, SNAPSHOT, now)


def test_a_snapshot_then_updates_publish_the_best_levels_once_a_window():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    assert started(books) == [SequencedTop(PRODUCT, (("79943.9", "3.0105"), ("79943.8", "0.5")),
                                           (("79944", "0.048"), ("79944.1", "1.2")), T0, T0 // 1_000_000 * 1_000_000, 0)]
    # within the same second of Coinbase's time: applied, not published
    assert fed(books, PRIMARY, 1, update(0.05, bids=[("79943.9", "0")], asks=[("79944", "0.5")]), 0.1) == []
    [top] = fed(books, PRIMARY, 2, update(1.0, bids=[("79943.7", "2")]), 1.0)
    assert (top.bids, top.asks, top.sequence_num) == ((("79943.8", "0.5"), ("79943.7", "2")), (("79944", "0.5"), ("79944.1", "1.2")), 2)
    assert books.products() == {PRODUCT} and books.lost_since() == {}


def test_a_lost_frame_puts_the_connections_books_out_of_sync_until_its_successors_snapshot():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    started(books)
    fed(books, PRIMARY, 1, None, 0.5)  # a heartbeat, say: numbered like every frame
    lost = fed(books, PRIMARY, 4, update(2.0, asks=[("79944", "0")]), 2.0)
    [books_lost] = of(BooksLost, lost)
    assert books_lost == BooksLost(PRIMARY.endpoint, PRIMARY.conn_id, "sequence", SequenceGap(2, 3), (PRODUCT,), 0.0)
    assert "frames 2 to 3 of connection conn-1" in books_lost.report().message
    assert of(ReconnectWanted, lost) == [ReconnectWanted(PRIMARY)] and of(SymbolOutOfSync, lost) == [OUT_OF_SYNC]
    assert not of(SequencedTop, lost) and books.lost_since() == {PRODUCT: 2.0}
    assert fed(books, PRIMARY, 5, update(3.0, bids=[("79943", "1")]), 3.0) == []  # the book given up
    successor = BookSource("connection-actor", PRIMARY.endpoint, "conn-3")
    back = fed(books, successor, 0, SNAPSHOT, 3.5)
    assert of(SequencedTop, back) and of(SymbolInSync, back) == [SymbolInSync("COINBASE", PRODUCT, 1.5)]


def test_a_product_stays_in_sync_while_another_live_connections_book_of_it_is():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    started(books, PRIMARY)
    started(books, STANDBY)
    lost = fed(books, STANDBY, 3, None, 1.0)
    assert of(BooksLost, lost) and of(ReconnectWanted, lost) == [ReconnectWanted(STANDBY)]
    assert not of(SymbolOutOfSync, lost) and books.lost_since() == {}
    assert of(SequencedTop, fed(books, PRIMARY, 1, update(1.5, bids=[("79943.9", "1")]), 1.5))


def test_a_crossed_book_is_not_published_and_its_connection_replaced():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    started(books)
    crossed = fed(books, PRIMARY, 1, update(1.0, bids=[("79944.5", "1")]), 1.0)  # a bid above the best offer
    [books_lost] = of(BooksLost, crossed)
    assert books_lost.gap is None and "is crossed" in books_lost.report().message
    assert of(SymbolOutOfSync, crossed) == [SymbolOutOfSync("COINBASE", PRODUCT, "crossed")] and not of(SequencedTop, crossed)


def test_an_endpoint_whose_connections_keep_losing_frames_is_reconnected_after_a_growing_delay():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    started(books)
    assert of(ReconnectWanted, fed(books, PRIMARY, 2, None, 1.0))
    successor = BookSource(PRIMARY.connection, PRIMARY.endpoint, "conn-3")
    started(books, successor, 1.5)
    again = fed(books, successor, 2, None, 2.0)  # the successor too, within a minute of the last replacement
    assert of(BooksLost, again)[0].retry_in == 1.0 and not of(ReconnectWanted, again)
    assert books.due(2.5) == [] and books.due(3.0) == [ReconnectWanted(successor)]
    assert of(BooksLost, fed(books, successor, 4, None, 4.0))[0].retry_in == 2.0
    assert of(BooksLost, fed(books, successor, 6, None, 70.0))[0].retry_in == 0.0  # a minute later: at once again
    # another endpoint's connections are tried on their own account
    mirror = BookSource("mirror-actor", "wss://mirror.example/ws", "conn-4")
    started(books, mirror, 71.0)
    assert of(ReconnectWanted, fed(books, mirror, 3, None, 71.5)) == [ReconnectWanted(mirror)]


def test_a_forgotten_product_keeps_nothing():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    started(books)
    books.forget({PRODUCT})
    assert books.products() == set() and books.lost_since() == {}
    assert of(SequencedTop, fed(books, PRIMARY, 1, SNAPSHOT, 1.0))


def test_a_crossed_snapshot_is_never_published_and_its_connection_replaced():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    crossed = BookEvent(PRODUCT, True, (("79945", "1"),), (("79944.1", "1.2"),), T0)
    outputs = fed(books, PRIMARY, 0, crossed, 0.0)
    [books_lost] = of(BooksLost, outputs)
    assert books_lost.reason == "crossed" and of(ReconnectWanted, outputs) == [ReconnectWanted(PRIMARY)]
    assert not of(SequencedTop, outputs) and books.lost_since() == {PRODUCT: 0.0}


def test_an_update_that_could_not_be_read_puts_its_connections_books_out_of_sync():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    started(books)
    outputs = books.unreadable(PRIMARY, 1.0)
    [books_lost] = of(BooksLost, outputs)
    assert books_lost.reason == "unreadable" and "could not be read" in books_lost.report().message
    assert of(ReconnectWanted, outputs) == [ReconnectWanted(PRIMARY)] and of(SymbolOutOfSync, outputs)
    assert fed(books, PRIMARY, 1, update(1.5, bids=[("79943", "1")]), 1.5) == []  # nothing published of it since


def test_a_connection_first_heard_after_frame_0_is_replaced_for_books_never_seen():
    """A Normaliser that replaced one hears the connections from the middle: their books'
    snapshots went to its predecessor."""
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    outputs = fed(books, PRIMARY, 120, update(1.0, bids=[("79943", "1")]), 1.0)
    [books_lost] = of(BooksLost, outputs)
    assert books_lost.reason == "joined" and books_lost.gap == SequenceGap(0, 119)
    assert "was first heard at frame 120, after this Normaliser started" in books_lost.report().message
    assert of(ReconnectWanted, outputs) == [ReconnectWanted(PRIMARY)] and not of(SequencedTop, outputs)


def test_connections_of_one_endpoint_that_lose_frames_together_are_each_replaced_one_after_another():
    books: CoinbaseBooks[str] = CoinbaseBooks(publish_depth=2, cadence_ms=1000)
    sources = [BookSource(PRIMARY.connection, PRIMARY.endpoint, f"conn-{i}") for i in range(3)]
    for source in sources:
        started(books, source)
    delays = [of(BooksLost, fed(books, source, 2, None, 1.0))[0].retry_in for source in sources]
    assert delays == [0.0, 1.0, 2.0]
    assert books.due(1.0) == [] and books.due(2.0) == [ReconnectWanted(sources[1])]
    assert books.due(3.0) == [ReconnectWanted(sources[2])] and books.due(100.0) == []
