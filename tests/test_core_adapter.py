"""The venue adapter contract, tested directly: a frame in; its raw record, its events, why it
has none, and what the shell is to do out. Whatever the frame, its raw record keeps it byte
for byte; the same frame always reads the same, whatever came before it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2actors.core.adapter import Answer, BinanceAdapter, Reading, Replace
from k2actors.core.binance import AggTrade, BookTicker, Trade
from k2actors.core.frames import Rejected
from k2actors.core.normalise import Delivery
from k2actors.localstack.simulator import Market

T0_MS = 1_700_000_000_000
URL = "wss://stream.binance.com:9443/stream"
ADAPTER = BinanceAdapter(frozenset({"BTCUSDT", "BNBBTC"}), {"BNBBTC": "BTC"}, 65536)
CORE = Path(__file__).resolve().parent.parent / "k2actors" / "core"


def read(payload: bytes, seq: int = 1) -> Reading:
    return ADAPTER.read("BINANCE", URL, (T0_MS * 1_000_000 + seq, "c1", seq, payload))


def test_a_trade_frame_reads_as_its_raw_record_and_its_trade():
    frame = (b'{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001",'
             b'"q":"100","T":1672515782136,"m":true,"M":true}}')  # Binance's documented trade payload, in its envelope
    reading = read(frame, 7)
    assert reading.raw == {"exchange": "BINANCE", "endpoint": URL, "conn_id": "c1", "conn_msg_seq": 7,
                           "recv_ts_ns": T0_MS * 1_000_000 + 7, "stream": "bnbbtc@trade", "symbol": "BNBBTC", "payload": frame}
    assert reading.events == (Trade("BNBBTC", 12345, "0.001", "100", 1672515782136, 1672515782136, True, True),)
    assert (reading.rejected, reading.actions) == ((), ())


# Frames Binance's spot servers sent, captured by others, byte for byte:
# - DanielLasota/Binance-Data-Processor, binance_archiver/tests/trade_queue_tests.py (commits da84865c and fb9aa046):
#   two overlapping listeners' dump, September 2024 (trades without the b and a fields Binance dropped in 2023);
# - siutin/binance-api-ruby, README.md (commit 70d6c0cb): a console session on stream.binance.com:9443, March 2018;
# - bmoscon/cryptofeed, sample_data/BINANCE.ws.1.0 (commit b90fa9b8): a recorded session, October 2021;
# - eduDorus/arkin, arkin-ingestor/message_samples/binance_spot_aggregate_trades.json (commit b1c484dc), October 2025.
REAL_FRAMES = [
    (b'{"stream":"ethusdt@trade","data":{"e":"trade","E":1726426389417,"s":"ETHUSDT","t":1573606312,"p":"2373.76000000",'
     b'"q":"0.00230000","T":1726426389417,"m":false,"M":true}}',
     Trade("ETHUSDT", 1573606312, "2373.76000000", "0.00230000", 1726426389417, 1726426389417, False, True)),
    (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1726426389463,"s":"BTCUSDT","t":3821156500,"p":"59867.99000000",'
     b'"q":"0.00934000","T":1726426389462,"m":true,"M":true}}',
     Trade("BTCUSDT", 3821156500, "59867.99000000", "0.00934000", 1726426389462, 1726426389463, True, True)),
    (b'{"stream":"dotusdt@trade","data":{"e":"trade","E":1726688097115,"s":"DOTUSDT","t":366582613,"p":"4.06700000",'
     b'"q":"106.82000000","T":1726688097112,"m":true,"M":true}}',
     Trade("DOTUSDT", 366582613, "4.06700000", "106.82000000", 1726688097112, 1726688097115, True, True)),
    (b'{"stream":"bnbbtc@trade","data":{"e":"trade","E":1522436817257,"s":"BNBBTC","t":13627823,"p":"0.00147820",'
     b'"q":"0.15000000","b":35456123,"a":35456121,"T":1522436817255,"m":false,"M":true}}',
     Trade("BNBBTC", 13627823, "0.00147820", "0.15000000", 1522436817255, 1522436817257, False, True)),
    (b'{"stream":"nknusdt@aggTrade","data":{"e":"aggTrade","E":1633998523963,"s":"NKNUSDT","a":15683430,"p":"0.35280000",'
     b'"q":"58.00000000","f":19862790,"l":19862790,"T":1633998523963,"m":false,"M":true}}',
     AggTrade("NKNUSDT", 15683430, "0.35280000", "58.00000000", 19862790, 19862790, 1633998523963, 1633998523963, False, True)),
    (b'{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":1522436823612,"s":"BNBBTC","a":11744568,"p":"0.00147660",'
     b'"q":"24.88000000","f":13627825,"l":13627826,"T":1523436823609,"m":true,"M":true}}',
     AggTrade("BNBBTC", 11744568, "0.00147660", "24.88000000", 13627825, 13627826, 1523436823609, 1522436823612, True, True)),
    (b'{"e":"aggTrade","E":1761583455600,"s":"BTCUSDT","a":3719778074,"p":"115467.01000000","q":"0.01564000","f":5394404911,'
     b'"l":5394404933,"T":1761583455599,"m":false,"M":true}',
     AggTrade("BTCUSDT", 3719778074, "115467.01000000", "0.01564000", 5394404911, 5394404933, 1761583455599, 1761583455600,
              False, True)),
    (b'{"stream":"nknusdt@bookTicker","data":{"u":499869769,"s":"NKNUSDT","b":"0.35210000","B":"672.00000000",'
     b'"a":"0.35250000","A":"1123.00000000"}}',
     BookTicker("NKNUSDT", 499869769, "0.35210000", "672.00000000", "0.35250000", "1123.00000000")),
]


@pytest.mark.parametrize("frame, event", REAL_FRAMES)
def test_real_frames_read_with_every_field_exact_and_shape_into_records(frame, event):
    reading = read(frame)
    assert reading.events == (event,) and reading.rejected == () and reading.actions == ()
    assert reading.raw["payload"] == frame and reading.raw["symbol"] == event.symbol
    assert reading.raw["stream"] == (json.loads(frame).get("stream"))
    adapter = BinanceAdapter(frozenset({event.symbol}), {}, 65536)
    time_ms = getattr(event, "trade_time_ms", 1_700_000_000_000)
    shaped = adapter.shape(event, Delivery("BINANCE", URL, (time_ms + 5) * 1000), streamed=True)
    assert not isinstance(shaped, Rejected), shaped
    stream, record = shaped
    price = record["price"] if "price" in record else record["bid_price"]
    assert str(price) == (event.price if not isinstance(event, BookTicker) else event.bid_price)
    assert record["source_sequence"] == (event.update_id if isinstance(event, BookTicker) else
                                         event.agg_id if isinstance(event, AggTrade) else event.trade_id)


@pytest.mark.parametrize("frame, actions", [
    (b'{"result":null,"id":1}', (Answer(1, None),)),
    (b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":3}', (Answer(3, (2, "Invalid request: invalid stream")),)),
    (b'{"stream":"btcusdt@trade","data":{"e":"serverShutdown","E":1700000000000}}', (Replace(),)),
])
def test_a_control_frame_is_an_action_kept_in_the_raw_record_and_never_a_dead_letter(frame, actions):
    reading = read(frame)
    assert (reading.events, reading.rejected, reading.actions) == ((), (), actions)
    assert reading.raw["payload"] == frame and reading.raw["symbol"] is None


@pytest.mark.parametrize("frame, reason", [
    (b"\xff\xfe not a frame", "not_json"),
    (b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1}}', "unknown_event"),
    (b'{"stream":"btcusdt@trade","data":{"e":"trade","pad":"' + b"x" * 70_000 + b'"}}', "frame_too_large"),
])
def test_a_frame_not_understood_is_a_dead_letter_and_its_raw_record_keeps_it_whole(frame, reason):
    reading = read(frame)
    assert reading.events == () and reading.actions == ()
    assert [rejected.reason for rejected in reading.rejected] == [reason]
    assert reading.raw["payload"] == frame  # byte for byte, however large


def test_the_simulators_frames_read_as_the_market_printed_them():
    market = Market(("BTCUSDT",), 7.0, seed=3)
    market.tick(0.0)
    trades = market.tick(1.0)
    frames = market.frames(trades, T0_MS)
    assert len(frames) == 3 and len(trades) == 7  # a second of trades: trade, aggTrade and bookTicker frames
    for stream, payloads in frames.items():
        for payload in payloads:
            reading = read(f'{{"stream":"{stream}","data":{payload}}}'.encode())  # as the simulator's combined stream sends it
            assert reading.rejected == () and reading.raw["stream"] == stream
            for event in reading.events:
                assert isinstance(event, (Trade, AggTrade, BookTicker)) and event.symbol == "BTCUSDT"


@given(st.lists(st.binary(max_size=200), max_size=20), st.binary(max_size=300))
def test_a_frame_reads_the_same_whatever_was_read_before_it(before, frame):
    first = read(frame)
    for other in before:
        read(other)
    assert read(frame) == first
    assert first.raw["payload"] == frame


def test_shaping_marks_what_came_from_rest_history_and_screens_only_what_was_streamed():
    trade = Trade("DOGEUSDT", 5, "0.1", "10", T0_MS, T0_MS, False, True)  # a symbol not subscribed
    delivery = Delivery("BINANCE", URL, T0_MS * 1000)
    streamed = ADAPTER.shape(trade, delivery, streamed=True)
    assert isinstance(streamed, Rejected) and streamed.reason == "unsubscribed_symbol"
    stream, record = ADAPTER.shape(trade, delivery, streamed=False)  # type: ignore[misc]
    assert stream == "trade" and record["vendor_data"]["backfilled"] == "true"
    history = json.dumps([{"id": 5, "price": "0.1", "qty": "10", "quoteQty": "1", "time": T0_MS, "isBuyerMaker": False,
                           "isBestMatch": True}]).encode()
    assert ADAPTER.history("/api/v3/historicalTrades?symbol=DOGEUSDT&fromId=5", "DOGEUSDT", history) == [trade]
    assert ADAPTER.history("/api/v3/exchangeInfo", "DOGEUSDT", history) == []  # no history


def test_the_core_imports_nothing_of_the_actors_thespian_or_any_io_client():
    shells = ("k2actors.messages", "k2actors.actors", "k2actors.channel", "k2actors.outlets", "k2actors.service",
              "thespian", "confluent_kafka", "websocket", "urllib.request", "socket")
    for module in sorted(CORE.glob("*.py")):
        tree = ast.parse(module.read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if name.startswith(shells)], module.name
