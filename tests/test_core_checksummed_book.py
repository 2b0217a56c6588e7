"""Kraken's checksummed book: in sync through a real recorded session, out of sync on any
message it cannot reproduce, and never publishing a book that differs from the venue's."""

from __future__ import annotations

import json
import zlib
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from k2actors.core.checksummed_book import (
    CheckedState,
    CheckedTop,
    ChecksumInSync,
    ChecksummedBook,
    ChecksumMismatch,
    Resubscribe,
)
from k2actors.core.kraken import BookMessage, checksum, read_frame

SESSION = json.loads((Path(__file__).parent / "data" / "kraken_v2_btcusd_book_2023-07-30.json").read_text())
SECOND_US = 1_000_000


def session_messages() -> list[BookMessage]:
    """The recorded BTC/USD session, each message read as the adapter reads a frame."""
    messages = []
    for frame in (SESSION["init"], *SESSION["updates"]):
        _, (message,) = read_frame(json.dumps(frame).encode(), 1 << 20)
        assert isinstance(message, BookMessage)
        messages.append(message)
    return messages


def btc_usd_book(cadence_us: int = SECOND_US) -> ChecksummedBook:
    return ChecksummedBook("BTC/USD", depth=10, price_precision=1, qty_precision=8, publish_depth=10, cadence_us=cadence_us)


def test_a_recorded_session_stays_in_sync_through_every_update():
    book = btc_usd_book()
    snapshot, *updates = session_messages()
    assert book.message(snapshot, received_us=0)[0] == ChecksumInSync("BTC/USD", snapshot.checksum)
    outputs = [output for update in updates for output in book.message(update, received_us=0)]
    assert not [output for output in outputs if isinstance(output, ChecksumMismatch)]
    assert book.state is CheckedState.IN_SYNC
    tops = [output for output in outputs if isinstance(output, CheckedTop)]
    assert tops and all(len(top.bids) == len(top.asks) == 10 for top in tops)
    # one top a second of Kraken's time: the session's updates span that many distinct seconds
    assert len(tops) == len({update.timestamp_us // SECOND_US for update in updates if update.timestamp_us is not None})


def test_a_book_that_differs_from_the_venues_is_never_published_and_is_rebuilt_from_a_fresh_snapshot():
    book = btc_usd_book()
    snapshot, first, *rest = session_messages()
    book.message(snapshot, received_us=0)
    price, quantity = first.asks[-1] if first.asks else first.bids[-1]
    altered = BookMessage(first.symbol, False, first.bids, ((price, str(Decimal(quantity) + Decimal("0.00000001"))),)
                          if first.asks else (), first.checksum, first.timestamp_us)
    outputs = book.message(altered, received_us=0)
    assert [type(output) for output in outputs] == [ChecksumMismatch, Resubscribe]
    assert outputs[0].expected == first.checksum and outputs[0].computed != first.checksum
    assert book.top() is None
    assert all(book.message(update, received_us=0) == [] for update in rest)  # nothing to apply them to
    again = book.message(snapshot, received_us=0)
    assert again[0] == ChecksumInSync("BTC/USD", snapshot.checksum) and book.top() is not None


def test_a_snapshot_whose_checksum_fails_is_asked_for_again():
    book = btc_usd_book()
    snapshot = session_messages()[0]
    wrong = BookMessage(snapshot.symbol, True, snapshot.bids[1:], snapshot.asks, snapshot.checksum, None)
    outputs = book.message(wrong, received_us=0)
    assert [type(output) for output in outputs] == [ChecksumMismatch, Resubscribe] and outputs[0].in_snapshot
    assert book.state is CheckedState.SYNCING


def test_tops_follow_the_venues_time_and_a_snapshot_without_one_its_receive_time():
    book = btc_usd_book(cadence_us=SECOND_US)
    snapshot, *updates = session_messages()
    assert snapshot.timestamp_us is None
    tops = [output for output in book.message(snapshot, received_us=7 * SECOND_US) if isinstance(output, CheckedTop)]
    assert [top.timestamp_us for top in tops] == [7 * SECOND_US]


# --- against a plain model of the venue ---

DEPTH = 12
PRICES = st.integers(min_value=1, max_value=60)
QUANTITIES = st.sampled_from(["0", "0.5", "1.25", "3", "0.00000001"])
LEVEL_CHANGES = st.lists(st.tuples(st.booleans(), PRICES, QUANTITIES), max_size=6)  # (is bid, price in tenths, quantity)


class Venue:
    """Kraken's side: the book, cut to the depth after every message, and the checksum of it."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, str] = {}
        self.asks: dict[Decimal, str] = {}

    def apply(self, changes: list[tuple[bool, int, str]]) -> tuple[tuple, tuple]:
        bids, asks = [], []
        for is_bid, tenths, quantity in changes:
            # bids below 3.0, asks above: the book never crosses
            price = Decimal(tenths) / 10 if is_bid else Decimal(tenths) / 10 + 3
            side, sent = (self.bids, bids) if is_bid else (self.asks, asks)
            if Decimal(quantity):
                side[price] = quantity
            else:
                side.pop(price, None)
            sent.append((f"{price:.1f}", quantity))
        for side, descending in ((self.bids, True), (self.asks, False)):
            for price in sorted(side, reverse=descending)[DEPTH:]:
                del side[price]
        return tuple(bids), tuple(asks)

    def top(self) -> tuple[list, list]:
        bids = [(f"{p:.1f}", self.bids[p]) for p in sorted(self.bids, reverse=True)]
        asks = [(f"{p:.1f}", self.asks[p]) for p in sorted(self.asks)]
        return bids, asks

    def checksum(self) -> int:
        bids, asks = self.top()
        return checksum(asks, bids, 1, 8)


def same_levels(published: tuple, venue: list) -> bool:
    return [(Decimal(p), Decimal(q)) for p, q in published] == [(Decimal(p), Decimal(q)) for p, q in venue]


@settings(max_examples=300, deadline=None)
@given(initial=LEVEL_CHANGES, updates=st.lists(LEVEL_CHANGES, max_size=25), dropped=st.sets(st.integers(0, 24), max_size=3))
def test_the_book_never_publishes_levels_that_differ_from_the_venues(initial, updates, dropped):
    venue = Venue()
    venue.apply(initial)
    bids, asks = venue.top()
    book = ChecksummedBook("X/Y", depth=DEPTH, price_precision=1, qty_precision=8, publish_depth=DEPTH, cadence_us=1)
    book.message(BookMessage("X/Y", True, tuple(bids), tuple(asks), venue.checksum(), 0), received_us=0)
    assert book.state is CheckedState.IN_SYNC
    for index, changes in enumerate(updates):
        sent_bids, sent_asks = venue.apply(changes)
        if index in dropped:
            continue  # lost on the way: the next checksum the book cannot reproduce tells
        for output in book.message(BookMessage("X/Y", False, sent_bids, sent_asks, venue.checksum(), index + 1), index + 1):
            if isinstance(output, CheckedTop):
                bids, asks = venue.top()
                # the checksum covers the best 10 levels a side; the published ones are the venue's there
                assert same_levels(output.bids[:10], bids[:10]) and same_levels(output.asks[:10], asks[:10])
        if not dropped:
            assert book.state is CheckedState.IN_SYNC


def test_a_snapshot_while_in_sync_replaces_the_book_whole():
    book = btc_usd_book()
    snapshot, *_ = session_messages()
    book.message(snapshot, received_us=0)
    fewer = BookMessage("BTC/USD", True, snapshot.bids[:3], snapshot.asks[:2],
                        checksum(snapshot.asks[:2], snapshot.bids[:3], 1, 8), None)
    assert book.message(fewer, received_us=0)[0] == ChecksumInSync("BTC/USD", fewer.checksum)
    assert book.top() == (fewer.bids, fewer.asks)


def test_a_window_is_published_once_even_across_a_resync():
    book = btc_usd_book(cadence_us=SECOND_US)
    snapshot = session_messages()[0]
    first = book.message(snapshot, received_us=5 * SECOND_US)
    again = book.message(snapshot, received_us=5 * SECOND_US + 10)  # rebuilt within the same second
    later = book.message(snapshot, received_us=6 * SECOND_US)
    assert [top.window_us for top in first + again + later if isinstance(top, CheckedTop)] == [5 * SECOND_US, 6 * SECOND_US]


def test_the_checksum_strips_leading_zeros_and_never_rounds():
    assert checksum([("0.05000", "0.00100000")], [], 5, 8) == zlib.crc32(b"5000" + b"100000")
    # a digit beyond the instrument's precision is kept: the checksum then fails, rather than vouch for a rounded book
    assert checksum([("1.234", "1")], [], 2, 8) == zlib.crc32(b"1234" + b"100000000")
