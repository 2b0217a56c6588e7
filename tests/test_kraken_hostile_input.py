"""Kraken's connection is untrusted input too. Property-based: whatever bytes or JSON arrive
(mostly Kraken's own frames with fields changed or removed), the adapter never raises; each
item becomes an event whose record the Avro schema accepts, a control event, or a refusal
with a documented reason; and a book fed any of them never raises either."""

from __future__ import annotations

import io
import json

import fastavro
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from k2actors.core.checksummed_book import ChecksummedBook
from k2actors.core.frames import EXCHANGE_REASONS, Rejected
from k2actors.core.kraken import BookMessage, HistoryPage, HistoryRefused, Instrument, KrakenQuote, KrakenTrade, historical_trades
from k2actors.core.kraken_adapter import KrakenAdapter
from k2actors.core.normalise import Delivery
from k2actors.outlets import schema_for
from tests.test_hostile_input import DECIMAL_TEXT, JSON

RECEIVED_US = 1_716_813_791_900_000  # 2024-05-27, when the frames below were sent
ADAPTER = KrakenAdapter({"BTC/USD": Instrument("BTC/USD", "BTC", "USD", 1, 8, "online")}, 4096)
DELIVERY = Delivery("KRAKEN", "wss://ws.kraken.com/v2", RECEIVED_US)
SCHEMAS = {stream: fastavro.parse_schema(json.loads(schema_for(stream))) for stream in ("kraken.trade", "kraken.ticker", "kraken.book")}

TRADE = {"symbol": "BTC/USD", "side": "buy", "price": 68500.0, "qty": 0.01044926, "ord_type": "limit", "trade_id": 70635299,
         "timestamp": "2024-05-27T12:43:11.798009Z"}
TICKER = {"symbol": "BTC/USD", "bid": 65843.7, "bid_qty": 12.31628629, "ask": 65843.8, "ask_qty": 0.31232, "last": 65843.7,
          "timestamp": "2024-05-27T12:43:11.798009Z"}
BOOK = {"symbol": "BTC/USD", "bids": [{"price": 66786.5, "qty": 0.0}, {"price": 66784.5, "qty": 0.01470022}],
        "asks": [{"price": 66787.7, "qty": 0.1244}], "checksum": 902440905, "timestamp": "2024-05-27T12:43:11.798009Z"}
# Values at the edges of what a field takes (ids and checksums outside a long or a CRC32),
# plausible text, or anything at all.
EDGES = st.sampled_from([0, -1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, True])
VALUES = (EDGES | DECIMAL_TEXT | st.integers(min_value=-10, max_value=2**64) | st.sampled_from(["buy", "sell", "BTC/USD", "XBT/USD"])
          | st.just("2024-05-27T12:43:11.798009Z") | JSON)


@st.composite
def mutated(draw, valid: dict) -> dict:
    """A valid item with a few fields changed (to something plausible, or anything) or removed."""
    data = dict(valid)
    for name in draw(st.lists(st.sampled_from(sorted(valid)), max_size=3, unique=True)):
        if draw(st.integers(0, 4)):
            data[name] = draw(VALUES)
        else:
            del data[name]
    return data


def data_frame(channel: str, kind: str, items: list) -> str:
    return json.dumps({"channel": channel, "type": kind, "data": items})


KINDS = st.sampled_from(["snapshot", "update"]) | JSON
FRAMES = st.one_of(
    st.binary(max_size=600),
    JSON.map(json.dumps),
    st.builds(data_frame, st.just("trade"), KINDS, st.lists(mutated(TRADE), max_size=3)),
    st.builds(data_frame, st.just("ticker"), KINDS, st.lists(mutated(TICKER), max_size=2)),
    st.builds(data_frame, st.just("book"), KINDS, st.lists(mutated(BOOK), max_size=2)),
    st.builds(lambda item: json.dumps({"method": "subscribe", "success": False, **item}), JSON.filter(lambda v: isinstance(v, dict))),
    st.builds(lambda data: json.dumps({"channel": "instrument", "type": "snapshot", "data": data}), JSON),
    st.builds(lambda data: json.dumps({"channel": "status", "type": "update", "data": data}), JSON),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAMES)
@example(data_frame("trade", "update", [{**TRADE, "trade_id": 2**63}]))  # past an Avro long
@example(data_frame("trade", "update", [{**TRADE, "trade_id": True}]))
@example(data_frame("trade", "update", [{**TRADE, "price": "1e5"}]))
@example(data_frame("book", "update", [{**BOOK, "checksum": 2**32}]))
@example(data_frame("ticker", "update", [{**TICKER, "bid": 70000.0}]))  # crossed
def test_any_frame_becomes_records_control_events_or_refusals_with_a_reason(frame):
    reading = ADAPTER.read("KRAKEN", DELIVERY.endpoint, (RECEIVED_US * 1000, "c1", 1, frame.encode() if isinstance(frame, str) else frame))
    assert all(rejected.reason in EXCHANGE_REASONS and rejected.detail for rejected in reading.rejected)
    book = ChecksummedBook("BTC/USD", 10, 1, 8, publish_depth=10, cadence_us=1_000_000)
    for event in reading.events:
        if isinstance(event, BookMessage):
            book.message(event, RECEIVED_US)  # never raises, whatever the levels
            continue
        assert isinstance(event, (KrakenTrade, KrakenQuote))
        shaped = ADAPTER.shape(event, DELIVERY, streamed=True)
        if isinstance(shaped, Rejected):
            assert shaped.reason in EXCHANGE_REASONS and shaped.detail
        else:
            stream, record = shaped
            fastavro.schemaless_writer(io.BytesIO(), SCHEMAS[stream], record)  # raises if the schema refuses it


ROW = ["30243.40000", "0.34507674", 1688669597.8277369, "b", "m", "", 61044952]
ROWS = st.lists(st.lists(VALUES, max_size=8) | st.builds(lambda row, index, value: [*row[:index], value, *row[index + 1:]],
                                                        st.just(ROW), st.integers(0, 6), VALUES), max_size=4)
PAGES = st.one_of(
    st.binary(max_size=300),
    JSON.map(json.dumps),
    st.builds(lambda rows, last: json.dumps({"error": [], "result": {"XXBTZUSD": rows, "last": last}}), ROWS, VALUES),
    st.builds(lambda errors: json.dumps({"error": errors}), st.lists(st.text(max_size=30), max_size=2)),
)


@settings(max_examples=1000, deadline=None)
@given(PAGES)
def test_any_rest_page_becomes_trades_refusals_or_kraken_errors(body):
    page = historical_trades(body.encode() if isinstance(body, str) else body, "BTC/USD")
    if isinstance(page, Rejected):
        assert page.reason in EXCHANGE_REASONS
    elif isinstance(page, HistoryPage):
        for trade in page.trades:
            if isinstance(trade, Rejected):
                assert trade.reason in EXCHANGE_REASONS
                continue
            shaped = ADAPTER.shape(trade, DELIVERY, streamed=False)
            if not isinstance(shaped, Rejected):
                fastavro.schemaless_writer(io.BytesIO(), SCHEMAS["kraken.trade"], shaped[1])
    else:
        assert isinstance(page, HistoryRefused)
