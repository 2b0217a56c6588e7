"""Coinbase's venue adapter (the contract is k2actors.core.adapter's): its Advanced Trade
frames read (k2actors.core.coinbase), its trades and quotes shaped into K2 v2 records, and
its REST trades read.

A record's `symbol` and `currency` come from Coinbase's own description of its products (the
status channel), never from the product id: `BTC-USD` is published as symbol `BTCUSD` in
currency `USD`, and Coinbase's spelling is kept in `vendor_data` as `venue_symbol`. A
product without a description is refused. No I/O and no state, as every adapter: live and
replay run the same one.
"""

from __future__ import annotations

from collections.abc import Mapping

from k2actors.core.adapter import Answer, Reading, items_reading
from k2actors.core.coinbase import (
    BOOK_STREAM,
    MARKET_TRADES,
    TICKER,
    TICKER_STREAM,
    TRADE_STREAM,
    BookEvent,
    CoinbaseQuote,
    CoinbaseTrade,
    HistoryPage,
    Product,
    Products,
    VenueError,
    historical_trades,
    read_frame,
)
from k2actors.core.coinbase_books import SequencedTop
from k2actors.core.frames import TIMESTAMP_OUT_OF_RANGE, UNSUBSCRIBED_SYMBOL, Rejected
from k2actors.core.link import Frame
from k2actors.core.normalise import MAX_CLOCK_DISTANCE_US, Delivery, timed_quote_record, venue_trade_record, windowed_book_record
from k2actors.core.payloads import Record

# Products: the descriptions the ledger builds the adapter with.
CoinbaseEvent = CoinbaseTrade | CoinbaseQuote | BookEvent | Products


class CoinbaseAdapter:
    def __init__(self, products: Mapping[str, Product], max_frame_bytes: int):
        """`products`: the subscribed products' descriptions, by product id."""
        self._products = products
        self._max_frame_bytes = max_frame_bytes

    def read(self, venue: str, endpoint: str, frame: Frame) -> Reading[CoinbaseEvent]:
        envelope, items = read_frame(frame[3], self._max_frame_bytes)
        # Coinbase sends a batch of trades newest first: taken oldest first, each product's ids
        # run on as they were made, rather than each batch opening a gap its own trades fill.
        items = tuple(sorted(items, key=lambda item: item.trade_id if isinstance(item, CoinbaseTrade) else -1))
        # An error names no request (an unknown channel, too many level2 products): it is the
        # connection's subscriptions that were refused, and it is said so, loudly.
        refusals = tuple(Answer(None, (0, item.message)) for item in items if isinstance(item, VenueError))
        return items_reading(venue, endpoint, frame, envelope.channel, items, (CoinbaseTrade, CoinbaseQuote, BookEvent, Products),
                             lambda event: None if isinstance(event, Products) else event.product_id, refusals,
                             envelope.sequence_num)

    def shape(self, event: CoinbaseTrade | CoinbaseQuote, delivery: Delivery, streamed: bool) -> tuple[str, Record] | Rejected:
        """(stream type, record), or why the event cannot be one. A streamed event is screened
        against its receive time; one from REST history is marked backfilled."""
        stream = TRADE_STREAM if isinstance(event, CoinbaseTrade) else TICKER_STREAM
        product = self._products.get(event.product_id)
        if product is None:
            return Rejected(UNSUBSCRIBED_SYMBOL, f"product {event.product_id[:40]!r} was not subscribed, or not yet described "
                                                 "by the status channel", stream)
        if streamed and abs(event.timestamp_us - delivery.received_us) > MAX_CLOCK_DISTANCE_US:
            return Rejected(TIMESTAMP_OUT_OF_RANGE, f"{stream} time {event.timestamp_us} µs is more than 24 h from its "
                                                    f"receipt at {delivery.received_us} µs", stream)
        venue_symbol = {"venue_symbol": event.product_id}
        record = (venue_trade_record(delivery, product.record_symbol, product.quote, event.trade_id, event.price,
                                     event.quantity, event.taker_side, event.timestamp_us, stream,
                                     {"stream": MARKET_TRADES, **venue_symbol})
                  if isinstance(event, CoinbaseTrade) else
                  timed_quote_record(delivery, product.record_symbol, product.quote, event.timestamp_us,
                                     (event.bid_price, event.bid_quantity, event.ask_price, event.ask_quantity), stream, TICKER,
                                     venue_symbol))
        if isinstance(record, Rejected):
            return record
        if not streamed:
            record["vendor_data"]["backfilled"] = "true"
        return stream, record

    def shape_book(self, top: SequencedTop, delivery: Delivery, depth: int) -> Record | Rejected:
        """The record of a book's best levels, named and numbered by its cadence window (Coinbase
        numbers no book update, only its connection's frames), so that the same frames derive
        it again with the same name."""
        product = self._products.get(top.symbol)
        if product is None:
            return Rejected(UNSUBSCRIBED_SYMBOL, f"product {top.symbol[:40]!r} was not subscribed", BOOK_STREAM)
        return windowed_book_record(delivery, product.record_symbol, product.quote, top.window_us, top.timestamp_us,
                                    (top.bids, top.asks), depth, BOOK_STREAM,
                                    {"venue_symbol": top.symbol, "sequence_num": str(top.sequence_num)})

    @staticmethod
    def history(body: bytes, product_id: str) -> HistoryPage | Rejected:
        """A page of REST trades of `product_id`."""
        return historical_trades(body, product_id)
