"""The raw record replayed: what the live path publishes is exactly what its archived frames
derive again, however the frames were cut into batches and however connections interleaved;
and every way the live topic can stray from that is reported, with the frame it concerns."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from k2actors.core.binance import Trade
from k2actors.core.ledger import Ledger, Publish, Rules
from k2actors.core.payloads import BackfilledTrades, RawBatch
from k2actors.core.raw import RAW, RestResponse
from k2actors.core.replay import DIFFERS, DUPLICATE, EXTRA, MISSING, Replay, verify, wanted
from k2actors.core.replay import Rules as ReplayRules
from k2actors.core.telemetry import MetricBuffer
from tests.published import shaped

T0_MS = 1_700_000_000_000
SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT", "ETHABC"})
PRIMARY, MIRROR = "ws://primary/stream", "ws://mirror/stream"
REPLAY_RULES = ReplayRules(SYMBOLS, 65536, 86400.0, 5, 1000)


def trade_frame(trade_id: int, symbol: str = "BTCUSDT", price: str = "1.5") -> bytes:
    data = {"e": "trade", "E": T0_MS + trade_id, "s": symbol, "t": trade_id, "p": price, "q": "2", "T": T0_MS + trade_id,
            "m": trade_id % 2 == 0, "M": True}
    return json.dumps({"stream": f"{symbol.lower()}@trade", "data": data}).encode()


# The exchangeInfo the live service read at start: ETHABC's quote asset is no suffix the table knows.
INFO = RestResponse("BINANCE", "http://rest", "/api/v3/exchangeInfo", "info-1", T0_MS * 1_000_000 - 1,
                    json.dumps({"symbols": [{"symbol": "ETHABC", "quoteAsset": "ABC"}]}).encode())


def live_ledger() -> Ledger[str]:
    return Ledger(Rules(2.0, SYMBOLS, {"ETHABC": "ABC"}, 1_000_000, 65536, 30.0, True, 5, 1000), {}, 0.0, MetricBuffer())


def run_live(connections: dict[str, list[bytes]], cuts: list[int], order: list[str]) -> tuple[list[dict], list]:
    """Each connection's frames through a ledger, cut into batches at `cuts`, the connections'
    batches interleaved as `order` says: (the raw records, the derived records with headers)."""
    book = live_ledger()
    batches: dict[str, list[RawBatch]] = {}
    for url, frames in connections.items():
        numbered = [(T0_MS * 1_000_000 + index * 1000 + len(url), f"conn-{url}", index, frame) for index, frame in enumerate(frames, 1)]
        edges = sorted({0, len(numbered), *(cut % (len(numbered) + 1) for cut in cuts)})
        batches[url] = [RawBatch(url, "BINANCE", seq, tuple(numbered[start:end]))
                        for seq, (start, end) in enumerate(zip(edges, edges[1:], strict=False), 1)]
    events = book.archive((INFO,))
    for url in order:
        if batches.get(url):
            events += book.take_raw(batches[url].pop(0), url, 1.0)
    for url, left in batches.items():
        for batch in left:
            events += book.take_raw(batch, url, 1.0)
    published = [item for event in events if isinstance(event, Publish) for item in shaped(event.batch.records)]
    raw = [record for stream, record, _ in published if stream == RAW]
    derived = [(stream, record, dict(headers)) for stream, record, headers in published if stream != RAW]
    return raw, derived


def replayed(raw: list[dict]) -> Replay:
    replay = Replay(REPLAY_RULES)
    for record in raw:
        replay.add(record)
    return replay


FRAMES = st.lists(st.one_of(st.integers(1, 40).map(trade_frame), st.integers(1, 40).map(lambda i: trade_frame(i, "ETHABC")),
                            st.sampled_from([b"garbage", b'{"result":null,"id":1}', trade_frame(5, "DOGEUSDT")])),
                  max_size=40)


@settings(max_examples=150, deadline=None)
@given(FRAMES, FRAMES, st.lists(st.integers(0, 50), max_size=6), st.lists(st.sampled_from([PRIMARY, MIRROR]), max_size=20))
def test_what_the_live_path_publishes_is_what_its_archived_frames_derive(primary, mirror, cuts, order):
    raw, derived = run_live({PRIMARY: primary, MIRROR: mirror}, cuts, order)
    assert [r["payload"] for r in raw if r["endpoint"] == PRIMARY] == primary  # every frame archived, in order
    assert [r["payload"] for r in raw if r["endpoint"] == MIRROR] == mirror
    replay = replayed(raw)
    assert verify(replay.derive(), derived) == []
    # (a trade before the first one of its symbol the live path saw was never its to publish: replay derives it all the same)
    assert {record["message_id"] for _, record, _ in derived} <= {d.record["message_id"] for d in replay.records()}


@settings(max_examples=100, deadline=None)
@given(FRAMES, st.lists(st.integers(0, 50), max_size=6), st.lists(st.integers(0, 50), max_size=6), st.randoms())
def test_the_same_frames_give_the_same_records_whatever_the_cut_and_the_order_they_are_read_in(frames, cuts, other_cuts, rnd):
    raw, derived = run_live({PRIMARY: frames}, cuts, [])
    raw_again, derived_again = run_live({PRIMARY: frames}, other_cuts, [])
    assert derived == derived_again
    shuffled = list(raw)
    rnd.shuffle(shuffled)
    assert replayed(shuffled).records() == replayed(raw).records()


def test_every_way_the_live_topic_can_stray_is_reported_with_its_frame():
    raw, derived = run_live({PRIMARY: [trade_frame(1), trade_frame(2), trade_frame(3)]}, [], [])
    derive = replayed(raw).derive()
    assert verify(derive, derived) == []
    first, second, third = derived
    altered = (first[0], {**first[1], "price": first[1]["price"] * 2}, first[2])
    no_lineage = (third[0], third[1], {})
    elsewhere = (third[0], third[1], {**third[2], "k2.conn_msg_seq": b"99"})
    found = verify(derive, [altered, second, second, no_lineage, first])
    assert [(d.kind, d.message_id, d.source) for d in found] == [
        (DIFFERS, first[1]["message_id"], (f"conn-{PRIMARY}", 1)),
        (DUPLICATE, second[1]["message_id"], (f"conn-{PRIMARY}", 2)),
        (EXTRA, third[1]["message_id"], None),
        (DUPLICATE, first[1]["message_id"], (f"conn-{PRIMARY}", 1)),  # the true copy, after the altered one
    ]
    assert "price: live Decimal('3.00000000'), derived Decimal('1.50000000')" in found[0].detail
    assert "conn_msg_seq 1" in str(found[0])
    [missing] = verify(derive, [first, second])
    assert (missing.kind, missing.message_id, missing.source) == (MISSING, third[1]["message_id"], (f"conn-{PRIMARY}", 3))
    [extra] = verify(derive, [first, second, elsewhere])[:1]
    assert (extra.kind, extra.detail) == (EXTRA, "its source is not in the raw record")


def test_rest_history_and_exchange_info_are_derived_as_the_live_path_shaped_them():
    book = live_ledger()
    book.take_raw(RawBatch(PRIMARY, "BINANCE", 1, ((T0_MS * 1_000_000, "c", 1, trade_frame(10)),
                                                  (T0_MS * 1_000_000 + 1, "c", 2, trade_frame(13)))), "a", 0.0)
    book.tick(2.0)
    rows = [{"id": i, "price": "1.5", "qty": "2", "quoteQty": "3", "time": T0_MS + i, "isBuyerMaker": True, "isBestMatch": True}
            for i in (11, 12)]
    trades = tuple(Trade("BTCUSDT", i, "1.5", "2", T0_MS + i, T0_MS + i, True, True) for i in (11, 12))
    page = BackfilledTrades("trade", "BINANCE", "BTCUSDT", "http://rest", T0_MS * 1000 + 5000, trades, (),
                            "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=11&limit=2", "rest-1", json.dumps(rows).encode())
    events = book.take_backfill(page, 3.0)
    published = [item for event in events if isinstance(event, Publish) for item in shaped(event.batch.records)]
    [response] = [record for stream, record, _ in published if stream == RAW]
    derived = [(stream, record, dict(headers)) for stream, record, headers in published if stream != RAW]
    assert [record["source_sequence"] for _, record, _ in derived] == [11, 12]
    assert all(record["vendor_data"]["backfilled"] == "true" for _, record, _ in derived)
    assert verify({**replayed([response]).derive()}, derived) == []

    # the currency comes from the exchangeInfo archived before the frames, as it did live
    raw, derived = run_live({PRIMARY: [trade_frame(7, "ETHABC")]}, [], [])
    [(_, record, _)] = derived
    assert record["currency"] == "ABC" and INFO.raw_record() in raw
    assert verify(replayed(raw).derive(), derived) == []
    without = [frame for frame in raw if frame["conn_id"] != INFO.conn_id]
    [(kind, detail)] = [(d.kind, d.detail) for d in verify(replayed(without).derive(), derived)]  # the suffix table instead
    assert kind == DIFFERS and detail == "currency: live 'ABC', derived 'UNKNOWN'"


def test_a_rest_row_older_than_the_backfill_window_is_not_derived_as_it_was_not_published():
    rows = [{"id": 1, "price": "1.5", "qty": "2", "quoteQty": "3", "time": T0_MS, "isBuyerMaker": True, "isBestMatch": True}]
    old = RestResponse("BINANCE", "http://rest", "/api/v3/historicalTrades?symbol=BTCUSDT", "rest-2",
                       (T0_MS + 86_400_001) * 1_000_000, json.dumps(rows).encode(), "BTCUSDT")
    assert replayed([old.raw_record()]).records() == []
    recent = dataclasses.replace(old, recv_ts_ns=(T0_MS + 1000) * 1_000_000)
    [derived] = replayed([recent.raw_record()]).records()
    assert derived.record["source_sequence"] == 1 and dict(derived.lineage)["k2.source_url"] == (
        b"http://rest/api/v3/historicalTrades?symbol=BTCUSDT")


def test_a_range_replays_what_was_received_in_it_and_every_description_of_the_symbols_whenever_received():
    def raw(stream: str, received_ns: int) -> dict:
        return {"stream": stream, "recv_ts_ns": received_ns}

    assert [wanted(raw("btcusdt@trade", at), 100, 200) for at in (99, 100, 199, 200)] == [False, True, True, False]
    assert wanted(raw("btcusdt@trade", 5), None, None) and wanted(raw("btcusdt@trade", 500), 100, None)
    # what the records in range are shaped with, received before it: Binance's, Kraken's, Coinbase's
    for stream in ("/api/v3/exchangeInfo?symbols=%5B%22BTCUSDT%22%5D", "instrument", "status"):
        assert wanted(raw(stream, 5), 100, 200), stream
    assert not wanted(raw("heartbeats", 5), 100, 200) and not wanted({"stream": None, "recv_ts_ns": 5}, 100, 200)
