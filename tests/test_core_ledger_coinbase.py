"""k2actors.core.ledger with Coinbase beside Binance, directly: Coinbase's Advanced Trade frames
read with its adapter, its products described by its status channel before their data, its
batches of trades (sent newest first) taken oldest first and tracked by their ids under the
record's symbol, its tickers numbered by their frame's time, its error frames said as
refusals, its frames kept in its own raw record, its gaps filled from Coinbase Exchange's REST
history, and all of it derived again from that raw record by replay. No processes, no broker.

The frames are real ones where they fit (tests/data/coinbase_advanced_trade_frames.txt, each
named there by its source, see tests/data/README.md): the BTC-USD trades of ccxt issue #27606's
raw feed (ids 929248657 to 929248659, 2025-12-31), a ticker update of 2026-06-14, a level2
snapshot, heartbeats, a subscriptions answer and two error frames captured live. Others are
written in Coinbase's exact format around them: the envelope `{channel, client_id, timestamp,
sequence_num, events}`, the trades renumbered copies of the real ones, the status channel the
example of Coinbase's documentation (docs.cdp.coinbase.com, Advanced Trade WebSocket channels)
for each product, and the REST pages shaped as Coinbase Exchange's recorded answer."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

from k2actors.core.coinbase import HistoryPage, Product, historical_trades
from k2actors.core.coinbase_backfill import CoinbaseGapFill
from k2actors.core.frames import NOT_JSON, UNSUBSCRIBED_SYMBOL
from k2actors.core.ledger import (
    DATA_CHECK,
    Answered,
    Backfilled,
    CoinbaseRules,
    Drained,
    GapDeclared,
    Ledger,
    NotOwnedDropped,
    ProductsLearned,
    Publish,
    ReadyCheck,
    Recovered,
    Rules,
)
from k2actors.core.normalise import message_id
from k2actors.core.payloads import BackfilledTrades, RawBatch
from k2actors.core.ranges import StreamPosition
from k2actors.core.raw import frame_lineage
from k2actors.core.replay import DIFFERS, MISSING, Replay, verify
from k2actors.core.replay import Rules as ReplayRules
from k2actors.core.sequence import Gap
from k2actors.core.telemetry import MetricBuffer
from tests.published import shaped
from tests.test_core_coinbase import FRAMES, altered, us
from tests.test_core_coinbase_adapter import STATUS
from tests.test_core_ledger_kraken import records

ENDPOINT = "wss://advanced-trade-ws.coinbase.com"
REST_URL = "https://api.exchange.coinbase.com"
SENDER = "coinbase"  # the connection actor's address, opaque to the ledger
RECEIVED_NS = us("2025-12-31T06:00:13.600000Z") * 1000  # just after the last of the real trades below
T = 929248657  # the first of ccxt#27606's BTC-USD trades; the two after it are T + 1 and T + 2
ETH = 600000000  # ETH-USD's trade ids (written in Coinbase's format; no capture of them)

REAL_TRADES = [json.loads(FRAMES[f"ccxt#27606 market_trades_update_{n}"])["events"][0]["trades"][0] for n in (1851, 1852, 1853)]
REAL_TICKER = json.loads(FRAMES["reference-2026-06-14 ticker_update"])["events"][0]["tickers"][0]
DOCUMENTED_PRODUCT = json.loads(STATUS)["events"][0]["products"][0]
BTC_USD = Product("BTC-USD", "BTC", "USD", "online")
ETH_USD = Product("ETH-USD", "ETH", "USD", "online")


def message(channel: str, events: list[dict], timestamp: str = "2025-12-31T06:00:13.517299727Z") -> dict:
    """A data frame of Coinbase's, but for its `sequence_num`, which `batch` numbers."""
    return {"channel": channel, "client_id": "", "timestamp": timestamp, "events": events}


def trades(*trade_ids: int, product: str = "BTC-USD") -> list[dict]:
    """Trades as Coinbase writes them: the real ones of ccxt#27606 (their price, size, time
    and maker's side), renumbered; ids T to T + 2 are those trades as they were."""
    return [{**REAL_TRADES[(trade_id - T) % 3], "product_id": product, "trade_id": str(trade_id)} for trade_id in trade_ids]


def market_trades(*items: dict, kind: str = "update") -> dict:
    """A market_trades frame: its batch newest first, as Coinbase sends it."""
    return message("market_trades", [{"type": kind, "trades": sorted(items, key=lambda t: int(t["trade_id"]), reverse=True)}])


def status(*product_ids: str, kind: str = "snapshot", state: str = "online") -> dict:
    """The status channel describing each product as the documentation's example does BTC-USD."""
    described = [{**DOCUMENTED_PRODUCT, "id": product, "base_currency": product.split("-")[0],
                  "quote_currency": product.split("-")[1], "display_name": product.replace("-", "/"), "status": state}
                 for product in product_ids]
    return message("status", [{"type": kind, "products": described}])


def ticker(timestamp: str, best_bid: str = "88355.58", product: str = "BTC-USD") -> dict:
    """A ticker update: the real one of 2026-06-14 at the day's prices of the trades."""
    item = {**REAL_TICKER, "product_id": product, "price": "88355.59", "best_bid": best_bid, "best_ask": "88355.59"}
    return message("ticker", [{"type": "update", "tickers": [item]}], timestamp)


def wire(frame: dict | bytes, sequence_num: int) -> bytes:
    if isinstance(frame, bytes):  # a captured frame, or garbage: as it is
        return frame
    return json.dumps({"channel": frame["channel"], "client_id": frame["client_id"], "timestamp": frame["timestamp"],
                       "sequence_num": sequence_num, "events": frame["events"]}, separators=(",", ":")).encode()


def batch(seq: int, *frames: dict | bytes, conn_id: str, first: int, lost: int, received_ns: int) -> RawBatch:
    """The frames as connection `conn_id` received them, its `first`-th on: Coinbase numbers
    its frames from 0 (`lost` of them never came), the connection those received from 1."""
    return RawBatch(ENDPOINT, "COINBASE", seq, tuple((received_ns + number, conn_id, number, wire(frame, number - 1 + lost))
                                                     for number, frame in enumerate(frames, first)))


def take(book: Ledger[str], seq: int, *frames: dict | bytes, at: float, conn_id: str = "coinbase-1", first: int = 1,
         lost: int = 0, received_ns: int | None = None) -> list:
    """The ledger takes a batch `at` seconds in (received that long after RECEIVED_NS, unless said)."""
    received = RECEIVED_NS + round(at * 1e9) if received_ns is None else received_ns
    return book.take_raw(batch(seq, *frames, conn_id=conn_id, first=first, lost=lost, received_ns=received), SENDER, at)


COINBASE_RULES = CoinbaseRules(frozenset({"BTC-USD", "ETH-USD"}), 1 << 20, (), books=False, book_depth=10, book_cadence_ms=1000)
RULES = Rules(2.0, frozenset({"BTCUSDT"}), {}, 100_000, 65536, 30.0, True, 5, 1000, coinbase=COINBASE_RULES)


def ledger(described: tuple[Product, ...] = (), positions: dict | None = None, owned: frozenset[str] | None = None) -> Ledger[str]:
    rules = dataclasses.replace(RULES, coinbase=dataclasses.replace(COINBASE_RULES, described=described))
    return Ledger(rules, positions or {}, 0.0, MetricBuffer(), owned=owned)


def learned(events: list) -> list[ProductsLearned]:
    return [e for e in events if isinstance(e, ProductsLearned)]


def letters(events: list) -> list:
    return [letter for e in events if isinstance(e, Publish) for letter in e.batch.dead_letters]


def ids(events: list) -> list[int]:
    return [t["source_sequence"] for t in records(events, "coinbase.trade")]


def counters(book: Ledger[str]) -> dict:
    return {(name, labels): value for name, labels, value in book.metrics.take().counters}


def test_the_subscribed_products_are_learned_from_the_status_channel_and_said_when_they_change():
    book = ledger()
    events = take(book, 1, status("BTC-USD", "ETH-USD", "ETH-EUR"), at=0.0)
    assert learned(events) == [ProductsLearned((BTC_USD, ETH_USD))]  # ETH-EUR: not subscribed
    assert records(events, "coinbase.trade") == letters(events) == [] and len(records(events, "coinbase.raw")) == 1
    # another connection's description, the same: nothing new
    assert learned(take(book, 2, status("ETH-USD", "BTC-USD"), conn_id="coinbase-2", at=0.1)) == []
    # a product not subscribed: nothing learned
    assert learned(take(book, 3, status("SOL-USD", kind="update"), first=2, at=0.2)) == []
    # a change is: every subscribed product as now described
    events = take(book, 4, status("ETH-USD", kind="update", state="offline"), first=3, at=0.3)
    assert learned(events) == [ProductsLearned((BTC_USD, Product("ETH-USD", "ETH", "USD", "offline")))]


def test_a_normaliser_given_what_an_earlier_one_learned_shapes_trades_before_any_status_frame():
    book = ledger(described=(BTC_USD,))
    assert ids(take(book, 1, market_trades(*trades(T)), at=0.0)) == [T]
    assert learned(take(book, 2, status("BTC-USD"), first=2, at=0.1)) == []  # as it was described already


def test_a_batch_sent_newest_first_is_published_oldest_first_with_every_field_exact():
    """ccxt#27606's three BTC-USD trades, as one batch the way Coinbase sends it."""
    book = ledger()
    frame = market_trades(*trades(T, T + 1, T + 2))
    assert [t["trade_id"] for t in frame["events"][0]["trades"]] == [str(T + 2), str(T + 1), str(T)]  # newest first
    events = take(book, 1, status("BTC-USD"), frame, at=0.0)
    received_ns = RECEIVED_NS + 2  # the batch's second frame

    def trade(trade_id: int, time: str, price: str, size: str, side: str) -> dict:
        return {"message_id": message_id("COINBASE", "BTCUSD", trade_id), "trade_id": f"COINBASE-{trade_id}", "symbol": "BTCUSD",
                "exchange": "COINBASE", "asset_class": "crypto", "timestamp": us(time), "price": Decimal(price),
                "quantity": Decimal(size), "currency": "USD", "side": side, "trade_conditions": [], "source_sequence": trade_id,
                "platform_sequence": None, "ingestion_timestamp": received_ns // 1000,
                "vendor_data": {"stream": "market_trades", "venue_symbol": "BTC-USD", "endpoint": ENDPOINT}}

    # Coinbase's side is the maker's: a maker's SELL was a taker's BUY
    assert records(events, "coinbase.trade") == [
        trade(T, "2025-12-31T06:00:12.445240Z", "88355.59", "0.00136573", "BUY"),
        trade(T + 1, "2025-12-31T06:00:12.605867Z", "88355.59", "0.00022409", "BUY"),
        trade(T + 2, "2025-12-31T06:00:13.456090Z", "88355.58", "0.00006677", "SELL"),
    ]
    lineages = [dict(record.headers) for e in events if isinstance(e, Publish)
                for record in e.batch.records if record.stream == "coinbase.trade"]
    assert lineages == [dict(frame_lineage("coinbase-1", 2, received_ns))] * 3
    assert counters(book)[("k2_binance_messages_received_total", ("COINBASE", "BTCUSD", "coinbase.trade"))] == 3
    [check] = [e for e in book.tick(1.0) if isinstance(e, ReadyCheck) and e.name == DATA_CHECK]
    assert check.ok and check.detail == "data from COINBASE within the stale timeout"


def test_a_resubscriptions_snapshot_of_recent_trades_is_counted_as_duplicates_and_publishes_only_what_is_new():
    book = ledger()
    assert ids(take(book, 1, status("BTC-USD"), market_trades(*trades(T, T + 1, T + 2)), at=0.0)) == [T, T + 1, T + 2]
    counters(book)  # taken: what follows is counted afresh
    # a new connection (after a drop): its snapshot holds the last trades, some had already
    again = take(book, 2, status("BTC-USD"), market_trades(*trades(*range(T - 2, T + 5)), kind="snapshot"), conn_id="coinbase-2",
                 at=1.0)
    assert ids(again) == [T + 3, T + 4] and letters(again) == []
    assert counters(book)[("k2_binance_duplicate_trades_total", ("COINBASE", "BTCUSD", "coinbase.trade"))] == 5
    assert ids(take(book, 3, market_trades(*trades(T + 4, T + 5)), conn_id="coinbase-2", first=3, at=1.5)) == [T + 5]
    assert not [e for e in book.tick(5.0) if isinstance(e, GapDeclared)]


def test_missing_trade_ids_are_a_gap_declared_after_the_grace_and_asked_of_their_product():
    book = ledger()
    take(book, 1, status("BTC-USD", "ETH-USD"), market_trades(*trades(T, T + 1)), at=0.0)
    # the frame with T + 2 to T + 4 was lost (its sequence_num is skipped too)
    assert ids(take(book, 2, market_trades(*trades(T + 5)), first=3, lost=1, at=0.5)) == [T + 5]
    assert not [e for e in book.tick(2.4) if isinstance(e, GapDeclared)]  # within the grace
    [declared] = [e for e in book.tick(2.5) if isinstance(e, GapDeclared)]
    assert declared == GapDeclared("coinbase.trade", Gap("COINBASE", "BTCUSD", T + 2, T + 4))
    assert declared.report().message == f"gap in COINBASE BTCUSD: 3 trades missing, ids {T + 2} to {T + 4}"
    assert book.open_gaps("coinbase.trade") == [declared.gap]
    assert book.coinbase_history(declared.gap) == "BTC-USD"
    assert book.coinbase_history(Gap("COINBASE", "ETHUSD", 5, 6)) == "ETH-USD"
    assert book.coinbase_history(Gap("COINBASE", "SOLUSD", 5, 6)) is None  # no subscribed product makes SOLUSD
    assert counters(book)[("k2_binance_missing_trades_total", ("COINBASE", "BTCUSD", "coinbase.trade"))] == 3
    # one of them late on the stream after all: published, and said to have come back
    late = take(book, 3, market_trades(*trades(T + 3)), first=4, lost=1, at=3.0)
    assert ids(late) == [T + 3] and [e for e in late if isinstance(e, Recovered)] == [
        Recovered("coinbase.trade", "COINBASE", "BTCUSD", T + 3)]
    assert book.open_gaps("coinbase.trade") == [Gap("COINBASE", "BTCUSD", T + 2, T + 2), Gap("COINBASE", "BTCUSD", T + 4, T + 4)]


def test_a_ticker_is_a_quote_numbered_by_its_frames_time_and_an_older_one_is_superseded():
    """The real ticker update of 2026-06-14, then the same frame later and earlier."""
    book = ledger()
    frame = FRAMES["reference-2026-06-14 ticker_update"]
    received_ns = us("2026-06-14T05:35:45.450000Z") * 1000
    events = take(book, 1, status("BTC-USD"), frame, at=0.0, received_ns=received_ns)
    [quote] = records(events, "coinbase.ticker")
    moment = us("2026-06-14T05:35:45.435813Z")  # the frame's time (it has nine digits), to the microsecond
    assert (quote["symbol"], quote["currency"], quote["exchange"], quote["source_sequence"], quote["timestamp"]) == (
        "BTCUSD", "USD", "COINBASE", moment, moment)
    assert (quote["bid_price"], quote["bid_quantity"], quote["ask_price"], quote["ask_quantity"]) == (
        Decimal("64281.7"), Decimal("0.21558849"), Decimal("64281.71"), Decimal("0.02287045"))
    assert quote["vendor_data"] == {"stream": "ticker", "endpoint": ENDPOINT, "venue_symbol": "BTC-USD"}

    def at(timestamp: str, best_bid: str) -> bytes:
        def change(message: dict) -> None:
            message.update(timestamp=timestamp)
            message["events"][0]["tickers"][0]["best_bid"] = best_bid
        return altered("reference-2026-06-14 ticker_update", change)

    later = take(book, 2, at("2026-06-14T05:35:45.535813Z", "64281.6"), frame, at("2026-06-14T05:35:45.335813Z", "64281.5"),
                 first=3, at=0.1, received_ns=received_ns + 100_000_000)
    assert [q["source_sequence"] for q in records(later, "coinbase.ticker")] == [moment + 100_000]  # the others: not newer
    assert counters(book)[("k2_binance_duplicate_trades_total", ("COINBASE", "BTCUSD", "coinbase.ticker"))] == 2


def test_a_ticker_that_leaves_the_touch_as_last_published_is_no_new_quote():
    """Hot standby: the same ticker on two connections, each frame stamped with its own time;
    and a match that moved no best price or quantity."""
    book = ledger()
    frame = FRAMES["reference-2026-06-14 ticker_update"]
    received_ns = us("2026-06-14T05:35:45.450000Z") * 1000
    take(book, 1, status("BTC-USD"), frame, at=0.0, received_ns=received_ns)
    standby = altered("reference-2026-06-14 ticker_update", lambda m: m.update(timestamp="2026-06-14T05:35:45.436225Z"))
    again = take(book, 2, standby, at=0.1, received_ns=received_ns + 1_000_000)
    assert records(again, "coinbase.ticker") == []
    assert counters(book)[("k2_binance_duplicate_trades_total", ("COINBASE", "BTCUSD", "coinbase.ticker"))] == 1
    moved = altered("reference-2026-06-14 ticker_update", lambda m: (m.update(timestamp="2026-06-14T05:35:45.536225Z"),
                                                                      m["events"][0]["tickers"][0].update(best_ask_quantity="0.5")))
    [quote] = records(take(book, 3, moved, at=0.2, received_ns=received_ns + 100_000_000), "coinbase.ticker")
    assert quote["ask_quantity"] == Decimal("0.5")


def test_a_trade_before_its_products_description_or_of_a_product_not_subscribed_is_a_dead_letter():
    book = ledger()
    events = take(book, 1, market_trades(*trades(T)), at=0.0)
    [letter] = letters(events)
    assert (letter.reason, letter.stream, letter.endpoint) == (UNSUBSCRIBED_SYMBOL, "coinbase.trade", ENDPOINT)
    assert letter.raw == wire(market_trades(*trades(T)), 0) and "BTC-USD" in letter.detail
    assert records(events, "coinbase.trade") == [] and len(records(events, "coinbase.raw")) == 1
    # described now: its next trade is the first tracked (the refused one claimed no id, so opened no gap)
    events = take(book, 2, status("BTC-USD"), market_trades(*trades(T + 1), *trades(ETH, product="ETH-EUR")), first=2, at=0.5)
    assert ids(events) == [T + 1]
    [letter] = letters(events)
    assert (letter.reason, letter.stream) == (UNSUBSCRIBED_SYMBOL, "coinbase.trade") and "ETH-EUR" in letter.detail
    assert not [e for e in book.tick(5.0) if isinstance(e, GapDeclared)]


def test_a_level2_frame_is_a_dead_letter_while_books_are_not_streamed():
    book = ledger()
    level2 = altered("capture-2026-09-07 l2_data_snapshot", lambda m: m["events"][0].update(product_id="BTC-USD"))
    events = take(book, 1, status("BTC-USD"), level2, at=0.0)
    [letter] = letters(events)
    assert (letter.reason, letter.stream, letter.raw) == (UNSUBSCRIBED_SYMBOL, "coinbase.book", level2)
    assert records(events, "coinbase.book") == []
    assert [(r["stream"], r["symbol"]) for r in records(events, "coinbase.raw")] == [("status", None), ("l2_data", "BTC-USD")]


def test_an_error_frame_is_a_refusal_said_to_its_connection_never_a_dead_letter():
    book = ledger()
    refused = FRAMES["capture-2026-09-07 error_authentication_failure"]
    too_many = FRAMES["Coinbase.Net#19 error_too_many_l2_streams"]
    events = take(book, 1, status("BTC-USD"), refused, too_many, at=0.0)
    answers = [e for e in events if isinstance(e, Answered)]
    assert answers == [Answered(SENDER, ENDPOINT, None, (0, "authentication failure")),
                       Answered(SENDER, ENDPOINT, None, (0, "too many L2 streams requested in a single session"))]
    report = answers[0].report()
    assert report.fields["event"] == "subscription_refused" and report.fields["venue_message"] == "authentication failure"
    assert letters(events) == []
    assert [(r["stream"], r["payload"]) for r in records(events, "coinbase.raw")][1:] == [("error", refused), ("error", too_many)]
    assert counters(book)[("k2_binance_subscription_refusals_total", (ENDPOINT,))] == 2


def test_every_frame_is_kept_in_coinbases_raw_record_as_received_the_garbage_included():
    book = ledger()
    garbage = wire(market_trades(*trades(T)), 0)[:60]  # a frame cut short
    sent = [wire(status("BTC-USD"), 0), FRAMES["capture-2026-09-05 subscriptions_ticker"], wire(market_trades(*trades(T, T + 1)), 2),
            wire(ticker("2025-12-31T06:00:13.52Z"), 3), FRAMES["capture-2026-09-07 heartbeats"], garbage,
            FRAMES["capture-2026-09-07 error_authentication_failure"]]
    events = take(book, 1, *sent, at=0.0)
    raw = records(events, "coinbase.raw")
    assert [(r["exchange"], r["endpoint"], r["conn_id"], r["conn_msg_seq"], r["recv_ts_ns"]) for r in raw] == [
        ("COINBASE", ENDPOINT, "coinbase-1", n, RECEIVED_NS + n) for n in range(1, 8)]
    assert [r["payload"] for r in raw] == sent
    assert [(r["stream"], r["symbol"]) for r in raw] == [("status", None), ("subscriptions", None), ("market_trades", "BTC-USD"),
                                                        ("ticker", "BTC-USD"), ("heartbeats", None), ("unknown", None),
                                                        ("error", None)]
    assert records(events, "raw") == records(events, "kraken.raw") == []  # Binance's and Kraken's raw records: not theirs
    [letter] = letters(events)
    assert (letter.reason, letter.raw) == (NOT_JSON, garbage)
    # each frame's raw record first, then the records it derives
    assert [s for e in events if isinstance(e, Publish) for s, _, _ in shaped(e.batch.records)] == [
        "coinbase.raw", "coinbase.raw", "coinbase.raw", "coinbase.trade", "coinbase.trade", "coinbase.raw", "coinbase.ticker",
        "coinbase.raw", "coinbase.raw", "coinbase.raw"]


def rest_body(*trade_ids: int) -> bytes:
    """A page of Coinbase Exchange's `GET /products/<id>/trades`, newest first, shaped as its
    recorded answer (tests/data/coinbase_exchange_trades_btcusdt_2024-03-13.json): the
    maker's side in lower case, the id a number."""
    return json.dumps([{"time": "2025-12-31T06:00:14.1Z", "trade_id": i, "price": "88355.6", "size": "0.01", "side": "sell"}
                       for i in sorted(trade_ids, reverse=True)]).encode()


def backfilled_page(book: Ledger[str], gap: Gap, body: bytes, received_us: int, conn_id: str = "rest-1") -> BackfilledTrades:
    """What the backfill actor hands the ledger for the gap's first page (k2actors.core.coinbase_backfill)."""
    product = book.coinbase_history(gap)
    assert product is not None
    fill = CoinbaseGapFill(gap.symbol, product, gap.first_id, gap.last_id)
    target = fill.target()
    parsed = historical_trades(body, product)
    assert isinstance(parsed, HistoryPage)
    page = fill.take(parsed)
    return BackfilledTrades("coinbase.trade", "COINBASE", gap.symbol, REST_URL, received_us, tuple(page.trades), (), target,
                            conn_id, body)


def test_a_declared_gap_is_filled_from_coinbase_exchanges_history_in_id_order_marked_backfilled():
    book = ledger()
    take(book, 1, status("BTC-USD"), market_trades(*trades(T, T + 1)), at=0.0)
    take(book, 2, market_trades(*trades(T + 5)), first=3, lost=1, at=0.5)
    [declared] = [e for e in book.tick(3.0) if isinstance(e, GapDeclared)]
    received_us = RECEIVED_NS // 1000 + 5_000_000
    body = rest_body(T + 4, T + 3, T + 2, T + 1)  # the trades below `after`, newest first
    page = backfilled_page(book, declared.gap, body, received_us)
    assert page.target == f"/products/BTC-USD/trades?after={T + 5}&limit=1000"
    # handed newest first (as Coinbase pages them), with an id published meanwhile
    page = dataclasses.replace(page, trades=(*reversed(page.trades), *historical_trades(rest_body(T + 1), "BTC-USD").trades))
    events = book.take_backfill(page, 4.0)
    filled = records(events, "coinbase.trade")
    assert [(t["source_sequence"], t["side"], t["ingestion_timestamp"], t["vendor_data"]) for t in filled] == [
        (i, "BUY", received_us, {"stream": "market_trades", "venue_symbol": "BTC-USD", "endpoint": REST_URL, "backfilled": "true"})
        for i in (T + 2, T + 3, T + 4)]  # the maker sold: the taker bought
    assert [e for e in events if isinstance(e, Backfilled)] == [Backfilled("coinbase.trade", "COINBASE", "BTCUSD", 3, T + 2, T + 4)]
    assert not [e for e in events if isinstance(e, Recovered)]  # filled, not come back
    [response] = records(events, "coinbase.raw")
    assert (response["exchange"], response["endpoint"], response["stream"], response["symbol"], response["conn_id"],
            response["payload"]) == ("COINBASE", REST_URL, page.target, "BTCUSD", "rest-1", body)
    assert book.open_gaps("coinbase.trade") == []
    drained = [e for e in book.drain({ENDPOINT: 2}) if isinstance(e, Drained)]
    assert drained and drained[0].missing == 0


def test_in_cluster_mode_a_coinbase_product_is_published_only_by_the_instance_owning_its_shard():
    book = ledger(owned=frozenset({"BTCUSD", "BTCUSDT"}))
    events = take(book, 1, status("BTC-USD", "ETH-USD"), market_trades(*trades(T, T + 1), *trades(ETH, ETH + 1, product="ETH-USD")),
                  ticker("2025-12-31T06:00:13.52Z", product="ETH-USD"), at=0.0)
    assert ids(events) == [T, T + 1] and records(events, "coinbase.ticker") == []
    assert [e for e in events if isinstance(e, NotOwnedDropped)] == [NotOwnedDropped(3)]
    assert len(records(events, "coinbase.raw")) == 3  # its connections' frames are archived all the same
    # ETH-USD's shard comes to this instance, BTC-USD's goes: ETH-USD resumes from what Kafka holds
    book.own(frozenset({"ETHUSD"}), {("coinbase.trade", "COINBASE", "ETHUSD"): StreamPosition(ETH + 1, ())}, 1.0)
    events = take(book, 2, market_trades(*trades(T + 2), *trades(ETH + 1, ETH + 2, product="ETH-USD")), first=4, at=1.5)
    assert [(t["symbol"], t["source_sequence"]) for t in records(events, "coinbase.trade")] == [("ETHUSD", ETH + 2)]
    assert [e for e in events if isinstance(e, NotOwnedDropped)] == [NotOwnedDropped(1)]
    # a page of BTC-USD's history, asked for before the shard went: its owner fills the gap
    trade = historical_trades(rest_body(T + 2), "BTC-USD").trades
    page = BackfilledTrades("coinbase.trade", "COINBASE", "BTCUSD", REST_URL, RECEIVED_NS // 1000, trade, (),
                            f"/products/BTC-USD/trades?after={T + 3}&limit=1000", "rest-1", rest_body(T + 2))
    events = book.take_backfill(page, 2.0)
    assert records(events, "coinbase.trade") == [] and [e for e in events if isinstance(e, NotOwnedDropped)] == [NotOwnedDropped(1)]


def test_what_the_ledger_publishes_of_coinbase_is_what_its_raw_record_derives_again():
    """Replay (k2actors.core.replay) holds every Coinbase record against the frames and REST
    pages it came from: the status channel, batches of two products newest first, tickers (one
    superseded), a lost frame, a reconnection's snapshot, what is no record (level2, an error,
    garbage), and a backfilled page."""
    book = ledger()
    events = take(book, 1, status("BTC-USD", "ETH-USD", "ETH-EUR"), FRAMES["capture-2026-09-05 subscriptions_ticker"],
                  market_trades(*trades(T, T + 1, T + 2), *trades(ETH, product="ETH-USD")), ticker("2025-12-31T06:00:13.52Z"),
                  FRAMES["capture-2026-09-07 heartbeats"], at=0.0)
    level2 = altered("capture-2026-09-07 l2_data_snapshot", lambda m: m["events"][0].update(product_id="BTC-USD"))
    events += take(book, 2, market_trades(*trades(T + 6), *trades(ETH + 1, product="ETH-USD")),
                   ticker("2025-12-31T06:00:13.51Z", best_bid="88355.5"), ticker("2025-12-31T06:00:14.01Z", best_bid="88355.4"),
                   level2, b"garbage", FRAMES["capture-2026-09-07 error_authentication_failure"], first=6, lost=1, at=0.5)
    events += book.tick(3.0)
    # the connection replaced: the new one's snapshot has the last trades, T + 5 among them
    events += take(book, 3, status("BTC-USD", "ETH-USD"), market_trades(*trades(T + 5, T + 6, T + 7), kind="snapshot"),
                   conn_id="coinbase-2", at=4.0)
    [declared] = [e for e in events if isinstance(e, GapDeclared)]
    assert (declared.gap.first_id, declared.gap.last_id) == (T + 3, T + 5)
    body = rest_body(T + 5, T + 4, T + 3, T + 2)  # T + 5 came back meanwhile
    events += book.take_backfill(backfilled_page(book, declared.gap, body, RECEIVED_NS // 1000 + 5_000_000), 5.0)
    published = [item for event in events if isinstance(event, Publish) for item in shaped(event.batch.records)]
    live = [(stream, record, dict(headers)) for stream, record, headers in published if stream != "coinbase.raw"]
    assert {stream for stream, _, _ in live} == {"coinbase.trade", "coinbase.ticker"}
    assert [(r["symbol"], r["source_sequence"]) for s, r, _ in live if s == "coinbase.trade"] == [
        ("ETHUSD", ETH), ("BTCUSD", T), ("BTCUSD", T + 1), ("BTCUSD", T + 2), ("ETHUSD", ETH + 1), ("BTCUSD", T + 6),
        ("BTCUSD", T + 5), ("BTCUSD", T + 7), ("BTCUSD", T + 3), ("BTCUSD", T + 4)]
    assert len([r for s, r, _ in live if s == "coinbase.ticker"]) == 2
    replay = Replay(ReplayRules(frozenset(), 65536, 86400.0, 5, 1000, coinbase=COINBASE_RULES))
    for stream, record, _ in published:
        if stream == "coinbase.raw":
            replay.add(record)
    assert len(replay) == 14  # every frame (13, of two connections) and the REST page
    assert verify(replay.derive(), live) == []
    # and a record that differs from what its frame derives is named, as is one missing
    stream, record, headers = next(item for item in live if item[1]["source_sequence"] == T + 1)
    altered_live = [(stream, {**record, "side": "SELL"}, headers)] + [item for item in live if item[1] is not record]
    assert [d.kind for d in verify(replay.derive(), altered_live)] == [DIFFERS]
    without_a_trade = [item for item in live if item[1]["source_sequence"] != T + 3]
    assert [(d.kind, d.source) for d in verify(replay.derive(), without_a_trade)] == [(MISSING, ("rest-1", 1))]
