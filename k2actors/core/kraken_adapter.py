"""Kraken's venue adapter (the contract is k2actors.core.adapter's): its WebSocket v2 frames
read (k2actors.core.kraken), its trades, quotes and checked books (k2actors.core.checksummed_book)
shaped into K2 v2 records, and its REST trades read.

A record's `symbol` and `currency` come from Kraken's instrument information, never from
the pair's name: `BTC/USD` is published as symbol `BTCUSD` (base and quote, as Binance's
symbols are written) in currency `USD`, and Kraken's own spelling is kept in `vendor_data`
as `venue_symbol`. A pair without instrument information is refused. No I/O and no state,
as every adapter: live and replay run the same one.
"""

from __future__ import annotations

from collections.abc import Mapping

from k2actors.core.adapter import Answer, Reading, items_reading
from k2actors.core.checksummed_book import CheckedTop
from k2actors.core.frames import TIMESTAMP_OUT_OF_RANGE, UNSUBSCRIBED_SYMBOL, Rejected
from k2actors.core.kraken import (
    BOOK_STREAM,
    TICKER,
    TICKER_STREAM,
    TRADE_STREAM,
    BookMessage,
    HistoryPage,
    HistoryRefused,
    Instrument,
    Instruments,
    KrakenQuote,
    KrakenTrade,
    RequestAnswered,
    RequestRefused,
    historical_trades,
    read_frame,
)
from k2actors.core.link import Frame
from k2actors.core.normalise import MAX_CLOCK_DISTANCE_US, Delivery, timed_quote_record, venue_trade_record, windowed_book_record
from k2actors.core.payloads import Record

# Instruments: the pairs' base, quote and precisions, for the ledger to build the adapter with.
KrakenEvent = KrakenTrade | KrakenQuote | BookMessage | Instruments


class KrakenAdapter:
    def __init__(self, instruments: Mapping[str, Instrument], max_frame_bytes: int):
        """`instruments`: the subscribed pairs' (by Kraken's spelling), from its instrument channel."""
        self._instruments = instruments
        self._max_frame_bytes = max_frame_bytes

    def read(self, venue: str, endpoint: str, frame: Frame) -> Reading[KrakenEvent]:
        channel, items = read_frame(frame[3], self._max_frame_bytes)
        # Subscriptions' answers (a pong answers no subscription: the connection's liveness is its frames)
        actions = tuple(Answer(item.request_id, None if isinstance(item, RequestAnswered) else (0, item.message))
                        for item in items if isinstance(item, (RequestAnswered, RequestRefused)) and item.method != "pong")
        return items_reading(venue, endpoint, frame, channel, items, (KrakenTrade, KrakenQuote, BookMessage, Instruments),
                             lambda event: None if isinstance(event, Instruments) else event.symbol, actions)

    def shape(self, event: KrakenTrade | KrakenQuote, delivery: Delivery, streamed: bool) -> tuple[str, Record] | Rejected:
        """(stream type, record), or why the event cannot be one. A streamed event is screened
        against its receive time; one from REST history is marked backfilled."""
        stream = TRADE_STREAM if isinstance(event, KrakenTrade) else TICKER_STREAM
        instrument = self._instruments.get(event.symbol)
        if instrument is None:
            return Rejected(UNSUBSCRIBED_SYMBOL, f"pair {event.symbol[:40]!r} was not subscribed", stream)
        moment = event.timestamp_us if event.timestamp_us is not None else delivery.received_us
        if streamed and abs(moment - delivery.received_us) > MAX_CLOCK_DISTANCE_US:
            return Rejected(TIMESTAMP_OUT_OF_RANGE, f"{stream} time {moment} µs is more than 24 h from its receipt "
                                                    f"at {delivery.received_us} µs", stream)
        record = (_trade_record(event, instrument, delivery) if isinstance(event, KrakenTrade)
                  else _quote_record(event, instrument, delivery, moment))
        if isinstance(record, Rejected):
            return record
        if not streamed:
            record["vendor_data"]["backfilled"] = "true"
        return stream, record

    def shape_book(self, top: CheckedTop, delivery: Delivery, depth: int) -> Record | Rejected:
        """The record of a checked book's best levels, named by its cadence window: derived
        again, from the same messages, with the same name, and numbered by the window's start."""
        instrument = self._instruments.get(top.symbol)
        if instrument is None:
            return Rejected(UNSUBSCRIBED_SYMBOL, f"pair {top.symbol[:40]!r} was not subscribed", BOOK_STREAM)
        # Kraken numbers no book update (the checksum vouches for it): numbered by its window.
        return windowed_book_record(delivery, instrument.record_symbol, instrument.quote, top.window_us, top.timestamp_us,
                                    (top.bids, top.asks), depth, BOOK_STREAM,
                                    {"venue_symbol": top.symbol, "checksum": str(top.checksum)})

    @staticmethod
    def history(body: bytes, symbol: str) -> HistoryPage | HistoryRefused | Rejected:
        """A page of REST trades of `symbol` (Kraken's WebSocket spelling)."""
        return historical_trades(body, symbol)


def _trade_record(trade: KrakenTrade, instrument: Instrument, delivery: Delivery) -> Record | Rejected:
    return venue_trade_record(delivery, instrument.record_symbol, instrument.quote, trade.trade_id, trade.price, trade.quantity,
                              trade.taker_side, trade.timestamp_us, TRADE_STREAM,
                              {"order_type": trade.order_type, "venue_symbol": trade.symbol})


def _quote_record(quote: KrakenQuote, instrument: Instrument, delivery: Delivery, moment: int) -> Record | Rejected:
    """Kraken's ticker numbers no update: a quote is named and numbered by its time (the
    venue's, or its receipt's when the frame has none)."""
    return timed_quote_record(delivery, instrument.record_symbol, instrument.quote, moment,
                              (quote.bid_price, quote.bid_quantity, quote.ask_price, quote.ask_quantity), TICKER_STREAM, TICKER,
                              {"venue_symbol": quote.symbol})
