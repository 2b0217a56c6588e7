"""k2actors.core.ledger with Kraken beside Binance, directly: Kraken's frames read with its
adapter, its pairs described by its instrument channel before their data, its trades tracked by
their ids under the record's symbol, its frames kept in its own raw record. No processes, no broker.

The frames are written as Kraken writes them (the captured sessions in tests/data, and
docs.kraken.com/api/docs/websocket-v2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from k2actors.core.checksummed_book import ChecksummedBook
from k2actors.core.connection_books import BookSource, SymbolInSync, SymbolOutOfSync
from k2actors.core.frames import UNSUBSCRIBED_SYMBOL
from k2actors.core.kraken import Instrument, KrakenTrade, checksum, read_frame
from k2actors.core.kraken_books import ResubscribeWanted
from k2actors.core.ledger import (
    BOOKS_CHECK,
    DATA_CHECK,
    DeadLettered,
    Drained,
    GapDeclared,
    InstrumentsLearned,
    KrakenRules,
    Ledger,
    Publish,
    ReadyCheck,
    Rules,
)
from k2actors.core.payloads import BackfilledTrades, RawBatch
from k2actors.core.ranges import StreamPosition
from k2actors.core.replay import DIFFERS, MISSING, Replay, verify
from k2actors.core.replay import Rules as ReplayRules
from k2actors.core.telemetry import MetricBuffer
from tests.published import shaped

KRAKEN_URL = "wss://ws.kraken.com/v2"
BINANCE_URL = "wss://stream.binance.com:9443/stream"
RECEIVED_NS = 1_716_813_791_900_000_000  # 2024-05-27, when the trades below were made
BTC = {"symbol": "BTC/USD", "base": "BTC", "quote": "USD", "status": "online", "qty_precision": 8, "qty_increment": 1e-08,
       "price_precision": 1, "cost_precision": 5, "marginable": True, "has_index": True, "cost_min": 0.5, "margin_initial": 0.2,
       "position_limit_long": 250, "position_limit_short": 200, "tick_size": 0.1, "price_increment": 0.1,
       "qty_min": 0.0001}
ETH_EUR = {**BTC, "symbol": "ETH/EUR", "base": "ETH", "quote": "EUR", "price_precision": 2}
INSTRUMENTS = json.dumps({"channel": "instrument", "type": "snapshot", "data": {
    "assets": [{"id": "BTC", "status": "enabled", "precision": 10, "precision_display": 5, "borrowable": True,
                "collateral_value": 1.0, "margin_rate": 0.01}],
    "pairs": [BTC, ETH_EUR]}}).encode()


def trades_frame(*trade_ids: int, kind: str = "update") -> bytes:
    data = [{"symbol": "BTC/USD", "side": "buy", "price": 68500.1, "qty": 0.01044926, "ord_type": "limit", "trade_id": trade_id,
             "timestamp": "2024-05-27T12:43:11.798009Z"} for trade_id in trade_ids]
    return f'{{"channel":"trade","type":"{kind}","data":{json.dumps(data)}}}'.encode()


def ticker_frame(bid: str, timestamp: str) -> bytes:
    return (f'{{"channel":"ticker","type":"update","data":[{{"symbol":"BTC/USD","bid":{bid},"bid_qty":1.5,"ask":68500.2,'
            f'"ask_qty":0.5,"last":68500.1,"volume":1.0,"vwap":68000.0,"low":67000.0,"high":69000.0,"change":10.0,'
            f'"change_pct":0.01,"timestamp":"{timestamp}"}}]}}').encode()


def batch(seq: int, *frames: bytes, conn_id: str = "kraken-1", first: int = 1, received_ns: int = RECEIVED_NS) -> RawBatch:
    return RawBatch(KRAKEN_URL, "KRAKEN", seq, tuple((received_ns + first - 1 + index, conn_id, first + index, frame)
                                                     for index, frame in enumerate(frames)))


KRAKEN_RULES = KrakenRules(frozenset({"BTC/USD"}), 1 << 20, (), book_depth=10, book_cadence_ms=1000)


def ledger(instruments: tuple[Instrument, ...] = (), positions: dict | None = None) -> Ledger[str]:
    kraken = dataclasses.replace(KRAKEN_RULES, instruments=instruments)
    rules = Rules(2.0, frozenset({"BTCUSDT"}), {}, 100_000, 65536, 30.0, True, 5, 1000, kraken)
    return Ledger(rules, positions or {}, 0.0, MetricBuffer())


def records(events: list, stream: str) -> list[dict]:
    return [record for e in events if isinstance(e, Publish) for s, record, _ in shaped(e.batch.records) if s == stream]


def test_trades_are_shaped_with_the_pairs_kraken_described_on_the_connection_and_kept_in_its_own_raw_record():
    book = ledger()
    events = book.take_raw(batch(1, INSTRUMENTS, trades_frame(70635299, 70635300, kind="snapshot")), "kraken", 0.0)
    learned = [e for e in events if isinstance(e, InstrumentsLearned)]
    assert learned == [InstrumentsLearned((Instrument("BTC/USD", "BTC", "USD", 1, 8, "online"),))]  # ETH/EUR: not subscribed
    trades = records(events, "kraken.trade")
    assert [(t["symbol"], t["currency"], t["source_sequence"], t["exchange"]) for t in trades] == [
        ("BTCUSD", "USD", 70635299, "KRAKEN"), ("BTCUSD", "USD", 70635300, "KRAKEN")]
    assert [(r["exchange"], r["conn_id"], r["conn_msg_seq"]) for r in records(events, "kraken.raw")] == [
        ("KRAKEN", "kraken-1", 1), ("KRAKEN", "kraken-1", 2)]
    assert records(events, "raw") == []
    # the same description again is nothing new
    assert not [e for e in book.take_raw(batch(2, INSTRUMENTS, first=3), "kraken", 0.1) if isinstance(e, InstrumentsLearned)]


def test_a_trade_of_a_pair_not_yet_described_is_a_dead_letter_and_stays_in_the_raw_record():
    events = ledger().take_raw(batch(1, trades_frame(5)), "kraken", 0.0)
    [letter] = [e.letter for e in events if isinstance(e, DeadLettered)]
    assert (letter.reason, letter.stream) == (UNSUBSCRIBED_SYMBOL, "kraken.trade")
    assert records(events, "kraken.trade") == [] and len(records(events, "kraken.raw")) == 1


def test_a_normaliser_given_what_an_earlier_one_learned_shapes_trades_before_any_instrument_frame():
    book = ledger(instruments=(Instrument("BTC/USD", "BTC", "USD", 1, 8, "online"),))
    assert [t["source_sequence"] for t in records(book.take_raw(batch(1, trades_frame(7)), "kraken", 0.0), "kraken.trade")] == [7]


def test_missing_trade_ids_are_a_gap_of_kraken_trades_and_a_reconnects_snapshot_repeats_nothing():
    book = ledger()
    book.take_raw(batch(1, INSTRUMENTS, trades_frame(100, 101)), "kraken", 0.0)
    events = book.take_raw(batch(2, trades_frame(105), first=3), "kraken", 0.5)
    assert [t["source_sequence"] for t in records(events, "kraken.trade")] == [105]
    [gap] = [e for e in book.tick(3.0) if isinstance(e, GapDeclared)]
    assert (gap.stream, gap.gap.venue, gap.gap.symbol, gap.gap.first_id, gap.gap.last_id) == ("kraken.trade", "KRAKEN", "BTCUSD", 102, 104)
    assert gap.report().message == "gap in KRAKEN BTCUSD: 3 trades missing, ids 102 to 104"
    # a new connection's snapshot (its last 50 trades) brings what was missing, and nothing twice
    again = book.take_raw(batch(1, INSTRUMENTS, trades_frame(101, 102, 103, 104, 105, kind="snapshot"), conn_id="kraken-2"),
                          "kraken", 4.0)
    assert [t["source_sequence"] for t in records(again, "kraken.trade")] == [102, 103, 104]
    drained = [e for e in book.drain({KRAKEN_URL: 1}) if isinstance(e, Drained)]
    assert drained and drained[0].missing == 0


def test_tracking_resumes_from_what_kafka_holds_under_the_records_symbol():
    book = ledger(positions={("kraken.trade", "KRAKEN", "BTCUSD"): StreamPosition(200, ())})
    events = book.take_raw(batch(1, INSTRUMENTS, trades_frame(199, 200, 201)), "kraken", 0.0)
    assert [t["source_sequence"] for t in records(events, "kraken.trade")] == [201]


def test_quotes_are_numbered_by_their_time_and_an_older_one_is_superseded():
    book = ledger()
    events = book.take_raw(batch(1, INSTRUMENTS, ticker_frame("68500.0", "2024-05-27T12:43:11.798009Z"),
                                 ticker_frame("68499.9", "2024-05-27T12:43:11.698009Z")), "kraken", 0.0)
    quotes = records(events, "kraken.ticker")
    assert [(q["symbol"], q["source_sequence"], str(q["bid_price"])) for q in quotes] == [
        ("BTCUSD", 1716813791798009, "68500.00000000")]


def test_readiness_names_each_venue_that_sent_data():
    book = ledger()
    book.take_raw(batch(1, INSTRUMENTS), "kraken", 0.0)
    trade = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "1", "q": "1", "T": 1716813791798, "m": True, "M": True}
    frame = json.dumps({"stream": "btcusdt@trade", "data": trade}).encode()
    book.take_raw(RawBatch(BINANCE_URL, "BINANCE", 1, ((RECEIVED_NS, "b-1", 1, frame),)), "binance", 0.0)
    [check] = [e for e in book.tick(1.0) if isinstance(e, ReadyCheck) and e.name == DATA_CHECK]
    assert check.ok and check.detail == "data from BINANCE, KRAKEN within the stale timeout"


def test_a_gap_is_asked_of_kraken_from_the_time_of_the_trade_before_it_and_its_page_fills_it():
    book = ledger()
    book.take_raw(batch(1, INSTRUMENTS, trades_frame(100, 101)), "kraken", 0.0)
    book.take_raw(batch(2, trades_frame(105), first=3), "kraken", 0.5)
    [declared] = [e for e in book.tick(3.0) if isinstance(e, GapDeclared)]
    assert book.kraken_history(declared.gap) == ("BTC/USD", 1716813791798009)
    trades = tuple(KrakenTrade("BTC/USD", i, "68500.1", "0.5", "sell", "market", 1716813791798009, False) for i in (101, 102, 103, 104))
    page = BackfilledTrades("kraken.trade", "KRAKEN", "BTCUSD", "https://api.kraken.com", RECEIVED_NS // 1000 + 5_000_000, trades,
                            (), "/0/public/Trades?pair=BTC%2FUSD", "rest-1", b'{"error":[],"result":{}}')
    events = book.take_backfill(page, 4.0)
    filled = records(events, "kraken.trade")
    assert [(t["source_sequence"], t["vendor_data"]["backfilled"]) for t in filled] == [(102, "true"), (103, "true"), (104, "true")]
    [response] = records(events, "kraken.raw")
    assert (response["exchange"], response["symbol"]) == ("KRAKEN", "BTCUSD")
    drained = [e for e in book.drain({KRAKEN_URL: 2}) if isinstance(e, Drained)]
    assert drained and drained[0].missing == 0


def test_a_gap_that_began_before_this_normaliser_is_asked_without_a_time():
    book = ledger(positions={("kraken.trade", "KRAKEN", "BTCUSD"): StreamPosition(200, ())})
    book.take_raw(batch(1, INSTRUMENTS, trades_frame(210)), "kraken", 0.0)
    [declared] = [e for e in book.tick(3.0) if isinstance(e, GapDeclared)]
    assert (declared.gap.first_id, declared.gap.last_id) == (201, 209)
    assert book.kraken_history(declared.gap) == ("BTC/USD", None)


# python-kraken-sdk's recorded BTC/USD book session of 2023-07-30 (tests/data, see its README).
BOOK_SESSION = json.loads((Path(__file__).parent / "data" / "kraken_v2_btcusd_book_2023-07-30.json").read_text())
BOOK_FRAMES = [json.dumps(frame).encode() for frame in (BOOK_SESSION["init"], *BOOK_SESSION["updates"])]
BOOK_RECEIVED_NS = 1_690_730_997_000_000_000  # 2023-07-30T15:29:57Z, before the session's first update


def book_batch(seq: int, *frames: bytes, conn_id: str = "kraken-1", first: int = 1) -> RawBatch:
    return batch(seq, *frames, conn_id=conn_id, first=first, received_ns=BOOK_RECEIVED_NS)


def corrupted(frame: bytes) -> bytes:
    """The frame with its first level's quantity changed: the book after it is not Kraken's."""
    message = json.loads(frame)
    side = "asks" if message["data"][0]["asks"] else "bids"
    message["data"][0][side][0]["qty"] += 0.00000001
    return json.dumps(message).encode()


def snapshot_after(count: int) -> bytes:
    """A snapshot of the book as the session's first `count` frames left it: what a fresh
    subscription would have been sent then."""
    book = ChecksummedBook("BTC/USD", 10, 1, 8, 10, 1_000_000)
    for frame in BOOK_FRAMES[:count]:
        _, (message,) = read_frame(frame, 1 << 20)
        book.message(message, 0)
    top = book.top()
    assert top is not None
    def side(levels):
        return "[" + ",".join(f'{{"price":{price},"qty":{quantity}}}' for price, quantity in levels) + "]"
    last = json.loads(BOOK_FRAMES[count - 1])["data"][0]
    return (f'{{"channel":"book","type":"snapshot","data":[{{"symbol":"BTC/USD","bids":{side(top[0])},"asks":{side(top[1])},'
            f'"checksum":{last["checksum"]}}}]}}').encode()


def vouched(book_record: dict, price_precision: int = 1, qty_precision: int = 8) -> bool:
    """The record's levels reproduce the checksum it names (the recorded BTC/USD's precisions by default)."""
    def levels(side: str) -> list[tuple[str, str]]:
        return [(str(level["price"].normalize()), str(level["quantity"].normalize())) for level in book_record[side]]
    return checksum(levels("asks"), levels("bids"), price_precision, qty_precision) == int(book_record["vendor_data"]["checksum"])


def test_books_are_published_once_a_second_of_krakens_time_each_as_its_checksum_vouches():
    book = ledger()
    events = book.take_raw(book_batch(1, INSTRUMENTS, *BOOK_FRAMES), "kraken", 0.0)
    books = records(events, "kraken.book")
    windows = {json.loads(frame)["data"][0].get("timestamp", "")[:19] for frame in BOOK_FRAMES[1:]}
    assert len(books) == len(windows) + 1  # and the snapshot's, at its receive time
    assert all(vouched(record) for record in books)
    first = books[1]
    assert (first["symbol"], first["currency"], first["exchange"], first["depth"], first["bid_levels"], first["ask_levels"]) == (
        "BTCUSD", "USD", "KRAKEN", 10, 10, 10)
    assert first["vendor_data"]["venue_symbol"] == "BTC/USD" and first["bids"][0]["price"] > first["asks"][0]["price"] - 1000
    assert len(records(events, "kraken.raw")) == len(BOOK_FRAMES) + 1
    [check] = [e for e in book.tick(1.0) if isinstance(e, ReadyCheck) and e.name == BOOKS_CHECK]
    assert check.ok and check.detail == "1 books in sync"


def test_a_corrupted_update_is_never_published_and_the_connection_is_asked_for_a_fresh_snapshot():
    book = ledger()
    book.take_raw(book_batch(1, INSTRUMENTS, *BOOK_FRAMES[:40]), "kraken", 0.0)
    events = book.take_raw(book_batch(2, corrupted(BOOK_FRAMES[40]), *BOOK_FRAMES[41:300], first=41), "kraken", 2.0)
    assert records(events, "kraken.book") == []
    assert [e for e in events if isinstance(e, ResubscribeWanted)] == [
        ResubscribeWanted(BookSource("kraken", KRAKEN_URL, "kraken-1"), "BTC/USD")]
    assert [e for e in events if isinstance(e, SymbolOutOfSync)] == [SymbolOutOfSync("KRAKEN", "BTC/USD", "checksum")]
    [check] = [e for e in book.tick(3.0) if isinstance(e, ReadyCheck) and e.name == BOOKS_CHECK]
    assert check.detail == "0 of 1 books in sync; being rebuilt: KRAKEN BTC/USD for 1 s"
    # the fresh snapshot puts it back, published only from then
    events = book.take_raw(book_batch(3, snapshot_after(300), *BOOK_FRAMES[300:], first=300), "kraken", 4.5)
    assert [e for e in events if isinstance(e, SymbolInSync)] == [SymbolInSync("KRAKEN", "BTC/USD", 2.5)]
    again = records(events, "kraken.book")
    assert again and all(vouched(record) for record in again)


def test_two_connections_books_publish_each_window_once():
    book = ledger()
    first = records(book.take_raw(book_batch(1, INSTRUMENTS, *BOOK_FRAMES), "kraken", 0.0), "kraken.book")
    standby = book.take_raw(book_batch(1, INSTRUMENTS, *BOOK_FRAMES[1:], conn_id="kraken-2"), "kraken", 0.0)
    assert first and records(standby, "kraken.book") == []


def test_what_the_ledger_publishes_of_kraken_is_what_its_raw_record_derives_again():
    """Replay (k2actors.core.replay) holds every Kraken record against the frames and REST
    pages it came from: trades, quotes, books through a corrupted update and its resubscription,
    two connections, and a backfilled page."""
    book = ledger()
    events = book.take_raw(book_batch(1, INSTRUMENTS, *BOOK_FRAMES[:40]), "kraken", 0.0)
    events += book.take_raw(batch(2, trades_frame(100, 101), ticker_frame("68500.0", "2024-05-27T12:43:11.798009Z"), first=42),
                            "kraken", 0.5)
    events += book.take_raw(book_batch(3, corrupted(BOOK_FRAMES[40]), *BOOK_FRAMES[41:300], first=44), "kraken", 1.0)
    events += book.take_raw(batch(4, trades_frame(105), first=304), "kraken", 1.5)
    events += book.take_raw(book_batch(5, snapshot_after(300), *BOOK_FRAMES[300:], first=305), "kraken", 2.0)
    events += book.take_raw(book_batch(6, INSTRUMENTS, snapshot_after(400), *BOOK_FRAMES[400:], conn_id="kraken-2"), "kraken", 2.5)
    events += book.tick(5.0)
    history = [{"symbol": "BTC/USD", "side": "sell", "price": "68500.1", "qty": "0.5", "ord_type": "market", "trade_id": trade_id,
                "timestamp": "2024-05-27T12:43:11.798009Z"} for trade_id in (101, 102, 103, 104)]
    body = json.dumps({"error": [], "result": {"BTC/USD": [[t["price"], t["qty"], 1716813791.798009, "s", "m", "", t["trade_id"]]
                                                         for t in history], "last": "1716813791798009000"}}).encode()
    trades = tuple(KrakenTrade("BTC/USD", i, "68500.1", "0.5", "sell", "market", 1716813791798009, False) for i in (102, 103, 104))
    events += book.take_backfill(BackfilledTrades("kraken.trade", "KRAKEN", "BTCUSD", "https://api.kraken.com", RECEIVED_NS // 1000,
                                                  trades, (), "/0/public/Trades?pair=BTC%2FUSD&since=1&count=1000&assetVersion=1",
                                                  "rest-1", body), 6.0)
    published = [item for event in events if isinstance(event, Publish) for item in shaped(event.batch.records)]
    live = [(stream, record, dict(headers)) for stream, record, headers in published if stream != "kraken.raw"]
    assert {stream for stream, _, _ in live} == {"kraken.trade", "kraken.ticker", "kraken.book"}
    assert [r["source_sequence"] for s, r, _ in live if s == "kraken.trade"] == [100, 101, 105, 102, 103, 104]
    replay = Replay(ReplayRules(frozenset(), 65536, 86400.0, 5, 1000, KRAKEN_RULES))
    for stream, record, _ in published:
        if stream == "kraken.raw":
            replay.add(record)
    assert verify(replay.derive(), live) == []
    # and a record that differs from what its frame derives is named
    stream, record, headers = next(item for item in live if item[0] == "kraken.book")
    altered = [(stream, {**record, "bid_levels": 9}, headers)] + [item for item in live if item[1] is not record]
    assert [d.kind for d in verify(replay.derive(), altered)] == [DIFFERS]
    without_a_trade = [item for item in live if item[1]["source_sequence"] != 103]
    assert [d.kind for d in verify(replay.derive(), without_a_trade)] == [MISSING]


def test_metrics_name_the_exchange():
    book = ledger()
    book.take_raw(batch(1, INSTRUMENTS, trades_frame(100, 101)), "kraken", 0.0)
    book.take_raw(batch(2, trades_frame(105), first=3), "kraken", 0.5)
    book.tick(3.0)
    trade = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "1", "q": "1", "T": 1716813791798, "m": True, "M": True}
    frame = json.dumps({"stream": "btcusdt@trade", "data": trade}).encode()
    book.take_raw(RawBatch(BINANCE_URL, "BINANCE", 1, ((RECEIVED_NS + 7, "b-1", 1, frame),)), "binance", 4.0)
    taken = book.metrics.take()
    counters = {(name, labels): value for name, labels, value in taken.counters}
    assert counters[("k2_binance_messages_received_total", ("KRAKEN", "BTCUSD", "kraken.trade"))] == 3
    assert counters[("k2_binance_messages_received_total", ("BINANCE", "BTCUSDT", "trade"))] == 1
    assert counters[("k2_binance_missing_trades_total", ("KRAKEN", "BTCUSD", "kraken.trade"))] == 3
    gauges = {(name, labels): value for name, labels, value in taken.gauges}
    assert gauges[("k2_binance_last_message_timestamp_seconds", ("KRAKEN",))] == (RECEIVED_NS + 2) / 1e9
    assert gauges[("k2_binance_last_message_timestamp_seconds", ("BINANCE",))] == (RECEIVED_NS + 7) / 1e9


BOTH_VENUES = Rules(2.0, frozenset({"BTCUSDT"}), {}, 100_000, 65536, 30.0, True, 5, 1000, KRAKEN_RULES)


def test_in_cluster_mode_a_kraken_pair_is_published_only_by_the_instance_owning_its_shard():
    def stream(owned: frozenset[str]) -> list:
        book = Ledger(BOTH_VENUES, {}, 0.0, MetricBuffer(), owned=owned)
        return (book.take_raw(book_batch(1, INSTRUMENTS, *BOOK_FRAMES[:20]), "kraken", 0.0)
                + book.take_raw(batch(2, trades_frame(100), first=22), "kraken", 0.5))

    others = stream(frozenset({"BTCUSDT"}))
    assert records(others, "kraken.trade") == records(others, "kraken.book") == []
    assert len(records(others, "kraken.raw")) == 22  # its own connection's frames are archived all the same
    mine = stream(frozenset({"BTCUSD"}))
    assert [t["source_sequence"] for t in records(mine, "kraken.trade")] == [100] and records(mine, "kraken.book")


def test_a_kraken_pair_whose_shard_comes_back_is_published_again_only_from_a_fresh_snapshot():
    book = Ledger(BOTH_VENUES, {}, 0.0, MetricBuffer(), owned=frozenset({"BTCUSD"}))
    assert records(book.take_raw(book_batch(1, INSTRUMENTS, *BOOK_FRAMES[:200]), "kraken", 0.0), "kraken.book")
    book.own(frozenset({"BTCUSDT"}), {}, 1.0)
    book.own(frozenset({"BTCUSD"}), {}, 2.0)  # the book it had is of a stream it did not see meanwhile
    assert records(book.take_raw(book_batch(2, *BOOK_FRAMES[200:400], first=202), "kraken", 3.0), "kraken.book") == []
    resubscribed = book.take_raw(book_batch(3, snapshot_after(400), *BOOK_FRAMES[400:], first=402), "kraken", 4.0)
    assert records(resubscribed, "kraken.book")
