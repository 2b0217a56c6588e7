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
from k2actors.core.binance import AggTrade, BookTicker, Rejected, Trade
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
    assert (reading.rejected, reading.actions) == (None, ())


@pytest.mark.parametrize("frame, actions", [
    (b'{"result":null,"id":1}', (Answer(1, None),)),
    (b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":3}', (Answer(3, (2, "Invalid request: invalid stream")),)),
    (b'{"stream":"btcusdt@trade","data":{"e":"serverShutdown","E":1700000000000}}', (Replace(),)),
])
def test_a_control_frame_is_an_action_kept_in_the_raw_record_and_never_a_dead_letter(frame, actions):
    reading = read(frame)
    assert (reading.events, reading.rejected, reading.actions) == ((), None, actions)
    assert reading.raw["payload"] == frame and reading.raw["symbol"] is None


@pytest.mark.parametrize("frame, reason", [
    (b"\xff\xfe not a frame", "not_json"),
    (b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1}}', "unknown_event"),
    (b'{"stream":"btcusdt@trade","data":{"e":"trade","pad":"' + b"x" * 70_000 + b'"}}', "frame_too_large"),
])
def test_a_frame_not_understood_is_a_dead_letter_and_its_raw_record_keeps_it_whole(frame, reason):
    reading = read(frame)
    assert reading.events == () and reading.actions == ()
    assert isinstance(reading.rejected, Rejected) and reading.rejected.reason == reason
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
            assert reading.rejected is None and reading.raw["stream"] == stream
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
