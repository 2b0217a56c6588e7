"""Coinbase's adapter: real frames (tests/data/README.md) into K2 v2 records, every field exact.

The products' descriptions are the documentation's example of the status channel (no real
capture of it was found): BTC-USD, base BTC, quote USD."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from importlib import resources

import fastavro

from k2actors.core.coinbase import Product, Products, read_frame
from k2actors.core.coinbase_adapter import CoinbaseAdapter
from k2actors.core.frames import DECIMAL_OUT_OF_RANGE, TIMESTAMP_OUT_OF_RANGE, UNSUBSCRIBED_SYMBOL, Rejected
from k2actors.core.normalise import Delivery, message_id
from tests.test_core_coinbase import FRAMES, altered, us

ENDPOINT = "wss://advanced-trade-ws.coinbase.com"
# docs.cdp.coinbase.com, Advanced Trade WebSocket channels, "Status Channel"
STATUS = (b'{"channel":"status","client_id":"","timestamp":"2023-02-09T20:29:49.753424311Z","sequence_num":0,"events":'
          b'[{"type":"snapshot","products":[{"product_type":"SPOT","id":"BTC-USD","base_currency":"BTC","quote_currency":"USD",'
          b'"base_increment":"0.00000001","quote_increment":"0.01","display_name":"BTC/USD","status":"online",'
          b'"status_message":"","min_market_funds":"1"}]}]}')
BTC_USD = Product("BTC-USD", "BTC", "USD", "online")
ADAPTER = CoinbaseAdapter({"BTC-USD": BTC_USD}, 1 << 20)
TRADES = FRAMES["ccxt#27606 market_trades_update_1851"]
TICKER = FRAMES["reference-2026-06-14 ticker_update"]
TRADES_RECEIVED_US = us("2025-12-31T06:00:12.530000Z")
TICKER_RECEIVED_US = us("2026-06-14T05:35:45.450000Z")


def test_the_status_channel_describes_the_products():
    assert read_frame(STATUS, 1 << 20)[1] == (Products((BTC_USD,)),)
    assert BTC_USD.record_symbol == "BTCUSD"


def test_a_frame_of_trades_is_read_into_its_raw_record_and_its_trades():
    reading = ADAPTER.read("COINBASE", ENDPOINT, (TRADES_RECEIVED_US * 1000, "c1", 1852, TRADES))
    assert reading.raw == {"exchange": "COINBASE", "endpoint": ENDPOINT, "conn_id": "c1", "conn_msg_seq": 1852,
                           "recv_ts_ns": TRADES_RECEIVED_US * 1000, "stream": "market_trades", "symbol": "BTC-USD",
                           "payload": TRADES}
    assert [trade.trade_id for trade in reading.events] == [929248657] and reading.rejected == reading.actions == ()


def test_a_trade_is_a_trade_record_with_the_takers_side():
    (trade,) = ADAPTER.read("COINBASE", ENDPOINT, (TRADES_RECEIVED_US * 1000, "c1", 1852, TRADES)).events
    stream, record = ADAPTER.shape(trade, Delivery("COINBASE", ENDPOINT, TRADES_RECEIVED_US), streamed=True)
    assert stream == "coinbase.trade"
    assert record == {
        "message_id": message_id("COINBASE", "BTCUSD", 929248657),
        "trade_id": "COINBASE-929248657",
        "symbol": "BTCUSD",
        "exchange": "COINBASE",
        "asset_class": "crypto",
        "timestamp": us("2025-12-31T06:00:12.44524Z"),
        "price": Decimal("88355.59"),
        "quantity": Decimal("0.00136573"),
        "currency": "USD",
        "side": "BUY",  # Coinbase's SELL: the maker sold, the taker bought
        "trade_conditions": [],
        "source_sequence": 929248657,
        "platform_sequence": None,
        "ingestion_timestamp": TRADES_RECEIVED_US,
        "vendor_data": {"stream": "market_trades", "venue_symbol": "BTC-USD", "endpoint": ENDPOINT},
    }


def test_a_ticker_is_a_quote_record_named_by_its_time():
    (quote,) = ADAPTER.read("COINBASE", ENDPOINT, (TICKER_RECEIVED_US * 1000, "c1", 17, TICKER)).events
    stream, record = ADAPTER.shape(quote, Delivery("COINBASE", ENDPOINT, TICKER_RECEIVED_US), streamed=True)
    moment = us("2026-06-14T05:35:45.435813Z")
    assert stream == "coinbase.ticker"
    assert record == {
        "message_id": message_id("COINBASE", "BTCUSD", moment, "ticker"),
        "quote_id": f"COINBASE-BTCUSD-{moment}",
        "symbol": "BTCUSD",
        "exchange": "COINBASE",
        "asset_class": "crypto",
        "timestamp": moment,
        "bid_price": Decimal("64281.7"),
        "bid_quantity": Decimal("0.21558849"),
        "ask_price": Decimal("64281.71"),
        "ask_quantity": Decimal("0.02287045"),
        "currency": "USD",
        "source_sequence": moment,
        "platform_sequence": None,
        "ingestion_timestamp": TICKER_RECEIVED_US,
        "vendor_data": {"stream": "ticker", "endpoint": ENDPOINT, "venue_symbol": "BTC-USD"},
    }


def test_what_cannot_be_a_record_is_refused_with_its_reason():
    (trade,) = ADAPTER.read("COINBASE", ENDPOINT, (TRADES_RECEIVED_US * 1000, "c1", 1852, TRADES)).events
    undescribed = CoinbaseAdapter({}, 1 << 20).shape(trade, Delivery("COINBASE", ENDPOINT, TRADES_RECEIVED_US), True)
    assert isinstance(undescribed, Rejected) and undescribed.reason == UNSUBSCRIBED_SYMBOL
    two_days_later = Delivery("COINBASE", ENDPOINT, TRADES_RECEIVED_US + 2 * 86_400_000_000)
    late = ADAPTER.shape(trade, two_days_later, streamed=True)
    assert isinstance(late, Rejected) and late.reason == TIMESTAMP_OUT_OF_RANGE and late.stream == "coinbase.trade"
    # the same trade from REST history is as old as it is: it is marked backfilled instead
    _, backfilled = ADAPTER.shape(trade, two_days_later, streamed=False)
    assert backfilled["vendor_data"]["backfilled"] == "true"
    # a price that fits no decimal(38,18): refused, with the stream it was on
    huge = altered("ccxt#27606 market_trades_update_1851", lambda m: m["events"][0]["trades"][0].update(price="1" * 40))
    (too_big,) = ADAPTER.read("COINBASE", ENDPOINT, (TRADES_RECEIVED_US * 1000, "c1", 1, huge)).events
    refused = ADAPTER.shape(too_big, Delivery("COINBASE", ENDPOINT, TRADES_RECEIVED_US), True)
    assert isinstance(refused, Rejected) and (refused.reason, refused.stream) == (DECIMAL_OUT_OF_RANGE, "coinbase.trade")


def test_every_record_is_written_by_its_avro_schema():
    delivery = Delivery("COINBASE", ENDPOINT, TRADES_RECEIVED_US)
    (trade,) = ADAPTER.read("COINBASE", ENDPOINT, (TRADES_RECEIVED_US * 1000, "c1", 1852, TRADES)).events
    (quote,) = ADAPTER.read("COINBASE", ENDPOINT, (TICKER_RECEIVED_US * 1000, "c1", 17, TICKER)).events
    for schema, record in (("trade_v2", ADAPTER.shape(trade, delivery, streamed=True)[1]),
                           ("quote_v2", ADAPTER.shape(quote, Delivery("COINBASE", ENDPOINT, TICKER_RECEIVED_US), True)[1])):
        parsed = fastavro.parse_schema(json.loads(resources.files("k2actors").joinpath(f"schemas/{schema}.avsc").read_text()))
        fastavro.schemaless_writer(io.BytesIO(), parsed, record)  # raises if the schema refuses it


def test_a_product_described_wrongly_is_refused_alone():
    def add_a_bad_one(message):
        products = message["events"][0]["products"]
        products.append({**products[0], "id": "ETH-USD", "base_currency": None})
    _, (products, refused) = read_frame(altered_status(add_a_bad_one), 1 << 20)
    assert products == Products((BTC_USD,)) and isinstance(refused, Rejected) and refused.stream == "status"


def altered_status(change) -> bytes:
    message = json.loads(STATUS)
    change(message)
    return json.dumps(message).encode()
