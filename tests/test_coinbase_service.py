"""Coinbase beside Binance in one service, end to end: the Coinbase and Binance simulators,
Tansu, and the service as a user runs it (`python -m k2actors start`, configured by K2_*
variables)."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from k2actors.localstack.coinbase import CoinbaseSimulator
from k2actors.localstack.kraken import KrakenSimulator
from k2actors.readback import missing_and_duplicates, records
from tests.conftest import trade_ids, wait_until
from tests.test_kraken_service import backfilled, produced, with_kraken
from tests.test_raw_record import lineage_of_trades, replay_verify

PRODUCTS = ("BTC-USD", "ETH-USD")


@pytest.fixture
def coinbase():
    # 20 trades a second a product: a resubscription's snapshot (the last 50) covers more than two seconds
    with CoinbaseSimulator(PRODUCTS, rate=20) as running:
        yield running


@pytest.fixture
def kraken():
    with KrakenSimulator(("BTC/USD",), rate=20) as running:
        yield running


def with_coinbase(start_service, coinbase, topic, **overrides):
    return start_service(**{
        "K2_COINBASE_ENABLED": "true", "K2_COINBASE_WEBSOCKET_URL": coinbase.urls[0],
        "K2_COINBASE_SYMBOLS": ",".join(PRODUCTS), "K2_COINBASE_RECONNECT_DELAY_SECONDS": "0.2",
        "K2_COINBASE_REST_URL": coinbase.rest_url(), "K2_COINBASE_STREAMS": "market_trades,ticker",
        "K2_KAFKA_COINBASE_TRADE_TOPIC": f"{topic}.coinbase", "K2_KAFKA_COINBASE_QUOTE_TOPIC": f"{topic}.coinbase.quotes",
        "K2_KAFKA_COINBASE_RAW_TOPIC": f"{topic}.coinbase.raw", "K2_KAFKA_COINBASE_BOOK_TOPIC": f"{topic}.coinbase.books",
        **overrides})


def made_since(coinbase, before: dict[str, int], count: int) -> bool:
    return min(coinbase.last_ids()[product] - before[product] for product in PRODUCTS) >= count


def test_coinbase_streams_to_its_own_topics_beside_binance_exactly_once_through_a_dropped_connection(
        start_service, coinbase, simulator, broker, registry, topic):
    coinbase_topic = f"{topic}.coinbase"
    service = with_coinbase(start_service, coinbase, topic)
    service.wait_ready()
    wait_until(lambda: min(produced(service, topic), produced(service, coinbase_topic)) >= 100, 60, "trades of both venues")
    coinbase.endpoint(0).drop()
    wait_until(lambda: service.log().count(f"connected to {coinbase.urls[0]}") >= 2, 30, "the dropped connection replaced")
    before = produced(service, coinbase_topic)
    wait_until(lambda: produced(service, coinbase_topic) >= before + 100, 60, "Coinbase's trades after the drop")
    assert service.stop() == 0, service.log()

    ids = trade_ids(broker, registry, coinbase_topic)
    assert set(ids) == {"BTCUSD", "ETHUSD"}
    assert missing_and_duplicates(ids) == (0, 0)
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    trades = records(broker.bootstrap_servers, registry.url, coinbase_topic)
    assert {(t["exchange"], t["currency"], t["vendor_data"]["venue_symbol"]) for t in trades} == {
        ("COINBASE", "USD", "BTC-USD"), ("COINBASE", "USD", "ETH-USD")}
    assert {t["side"] for t in trades} == {"BUY", "SELL"}
    quotes = records(broker.bootstrap_servers, registry.url, f"{topic}.coinbase.quotes")
    for symbol in ("BTCUSD", "ETHUSD"):
        times = [q["source_sequence"] for q in quotes if q["symbol"] == symbol]
        assert times and times == sorted(set(times))  # once each, in order
    # Coinbase's frames in Coinbase's raw record, Binance's in Binance's
    raw = records(broker.bootstrap_servers, registry.url, f"{topic}.coinbase.raw")
    assert raw and {r["exchange"] for r in raw} == {"COINBASE"} and len({r["conn_id"] for r in raw}) >= 2
    assert {"status", "market_trades", "ticker", "heartbeats", "subscriptions"} <= {r["stream"] for r in raw}
    assert {r["exchange"] for r in records(broker.bootstrap_servers, registry.url, f"{topic}.raw")} == {"BINANCE"}
    assert "gap in COINBASE" not in service.log()  # the new connection's snapshot of recent trades covered the drop
    replayed = replay_verify(service.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr


def test_coinbase_trades_exactly_once_through_a_stall_a_crash_and_a_deploy_gaps_backfilled_from_its_rest_history(
        start_service, coinbase, simulator, broker, registry, topic):
    settings = {"K2_COINBASE_STALE_TIMEOUT_SECONDS": "2"}
    coinbase_topic = f"{topic}.coinbase"
    symbols = {product.replace("-", "") for product in PRODUCTS}
    service = with_coinbase(start_service, coinbase, topic, **settings)
    service.wait_ready()
    wait_until(lambda: produced(service, coinbase_topic) >= 100, 60, "Coinbase's trades")

    # A stall longer than a resubscription's snapshot covers (its last 50 trades, 2.5 s here)
    coinbase.endpoint(0).stall(True)
    stalled_at = coinbase.last_ids()
    wait_until(lambda: made_since(coinbase, stalled_at, 100), 30, "100 trades a product made meanwhile")
    coinbase.endpoint(0).stall(False)
    wait_until(lambda: backfilled(service, symbols), 60, "the stall's gaps declared and backfilled")

    # A crash: what it had not handed to Kafka, and what is traded until the next start, is a gap
    service.process.kill()
    service.process.wait()
    crashed_at = coinbase.last_ids()
    wait_until(lambda: made_since(coinbase, crashed_at, 100), 30, "100 trades a product made meanwhile")
    restarted = with_coinbase(start_service, coinbase, topic, **settings)
    restarted.wait_ready()
    wait_until(lambda: backfilled(restarted, symbols), 90, "the gaps of the crash backfilled")

    # A deploy: SIGTERM delivers what was received; what is traded until the next start is a gap
    assert restarted.stop() == 0, restarted.log()
    assert "every trade received was delivered and no gap is open" in restarted.log()
    stopped_at = coinbase.last_ids()
    wait_until(lambda: made_since(coinbase, stopped_at, 100), 30, "100 trades a product made meanwhile")
    deployed = with_coinbase(start_service, coinbase, topic, **settings)
    deployed.wait_ready()
    wait_until(lambda: backfilled(deployed, symbols), 90, "the gaps of the stop backfilled")
    assert deployed.stop() == 0, deployed.log()

    ids = trade_ids(broker, registry, coinbase_topic)
    assert missing_and_duplicates(ids) == (0, 0)
    assert all(ids[product.replace("-", "")][-1] >= stopped_at[product] for product in PRODUCTS)
    from_history = [t for t in records(broker.bootstrap_servers, registry.url, coinbase_topic) if t["vendor_data"].get("backfilled")]
    assert from_history and {t["symbol"] for t in from_history} == symbols
    assert len(coinbase.endpoint(0).history_request_times()) >= 3  # (each gap asked for from Coinbase's history)
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)  # Binance's, all the while
    # every record of both venues, streamed or backfilled, derived again from the raw records
    replayed = replay_verify(deployed.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr


def test_coinbase_books_are_published_only_while_their_connection_loses_no_frame_and_rebuilt_after_a_lost_one(
        start_service, coinbase, simulator, broker, registry, topic):
    book_topic = f"{topic}.coinbase.books"
    service = with_coinbase(start_service, coinbase, topic, K2_COINBASE_STREAMS="market_trades,level2",
                            K2_COINBASE_BOOK_CADENCE_SECONDS="0.2", K2_COINBASE_BOOK_DEPTH="5")
    service.wait_ready()
    wait_until(lambda: produced(service, book_topic) >= 20, 60, "Coinbase's books")
    coinbase.endpoint(0).skip_sequence()  # the next frame is lost: what it carried, and its number
    wait_until(lambda: "book of COINBASE BTC-USD in sync" in service.log() and "book of COINBASE ETH-USD in sync" in service.log(),
               30, "the books back in sync")
    before = produced(service, book_topic)
    wait_until(lambda: produced(service, book_topic) >= before + 20, 30, "books after the resync")
    assert service.stop() == 0, service.log()

    log = service.log()
    assert re.search(rf"frames (\d+) to \1 of connection \S+ from {re.escape(coinbase.urls[0])} were lost: its books", log), log
    for product in PRODUCTS:
        [seconds] = [float(found) for found in re.findall(rf"book of COINBASE {product} in sync, .*?, ([0-9.]+) s after", log)]
        print(f"{product} back in sync {seconds:.3f} s after its connection lost a frame")
    # Every book published is the one Coinbase sent its connection, up to the frame it came
    # with: rebuilt here, independently, from the raw record, and never past a lost frame.
    raw = records(broker.bootstrap_servers, registry.url, f"{topic}.coinbase.raw")
    tops = sent_tops(raw, depth=5)
    books = lineage_of_trades(broker, registry, book_topic)
    assert {(b["symbol"], b["currency"], b["exchange"], b["vendor_data"]["venue_symbol"]) for b, _ in books} == {
        ("BTCUSD", "USD", "COINBASE", "BTC-USD"), ("ETHUSD", "USD", "COINBASE", "ETH-USD")}
    for book, headers in books:
        source = (headers["k2.conn_id"].decode(), int(headers["k2.conn_msg_seq"]), book["vendor_data"]["venue_symbol"])
        assert source in tops, f"a book from {source}, which came after its connection lost a frame"
        assert (levels(book["bids"]), levels(book["asks"])) == tops[source]
    for symbol in ("BTCUSD", "ETHUSD"):
        windows = [b["source_sequence"] for b, _ in books if b["symbol"] == symbol]
        assert windows == sorted(set(windows))  # each window once, in order
    assert len({headers["k2.conn_id"] for _, headers in books}) >= 2  # the lost frame's connection was replaced
    assert missing_and_duplicates(trade_ids(broker, registry, f"{topic}.coinbase")) == (0, 0)
    replayed = replay_verify(service.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr


def sent_tops(raw: list[dict], depth: int) -> dict[tuple[str, int, str], tuple[list, list]]:
    """Per (connection, frame, product): the best `depth` levels a side of the book that
    connection was sent, right after each l2_data frame, until the connection's first lost frame."""
    tops = {}
    for conn_id in {r["conn_id"] for r in raw}:
        books: dict[str, dict[str, dict[Decimal, Decimal]]] = {}
        expected = 0
        for frame in sorted((r for r in raw if r["conn_id"] == conn_id), key=lambda r: r["conn_msg_seq"]):
            message = json.loads(frame["payload"])
            if "sequence_num" not in message:
                continue
            if message["sequence_num"] != expected:
                break  # a frame lost: nothing after it is Coinbase's book
            expected += 1
            for event in message["events"] if message["channel"] == "l2_data" else ():
                if event["type"] == "snapshot":
                    books[event["product_id"]] = {"bid": {}, "offer": {}}
                for update in event["updates"]:
                    side = books[event["product_id"]][update["side"]]
                    price, quantity = Decimal(update["price_level"]), Decimal(update["new_quantity"])
                    if quantity:
                        side[price] = quantity
                    else:
                        side.pop(price, None)
                book = books[event["product_id"]]
                tops[(conn_id, frame["conn_msg_seq"], event["product_id"])] = (
                    sorted(book["bid"].items(), reverse=True)[:depth], sorted(book["offer"].items())[:depth])
    return tops


def levels(side: list[dict]) -> list[tuple[Decimal, Decimal]]:
    return [(level["price"], level["quantity"]) for level in side]


def test_three_venues_in_one_service_binance_and_kraken_stream_on_while_coinbase_refuses_every_connection(
        start_service, coinbase, kraken, simulator, broker, registry, topic):
    coinbase.endpoint(0).refuse(True)
    service = with_kraken(lambda **env: with_coinbase(start_service, coinbase, topic, **env), kraken, topic,
                          K2_KRAKEN_SYMBOLS="BTC/USD")
    wait_until(lambda: service.get("/health")[0] == 200, 30, "/health")
    wait_until(lambda: produced(service, topic) >= 300 and produced(service, f"{topic}.kraken") >= 50, 60,
               "Binance's and Kraken's trades")
    wait_until(lambda: "circuit for " + coinbase.urls[0] in service.log(), 60, "Coinbase's refusals and its circuit said")
    status, body = service.get("/ready")
    checks = json.loads(body)["checks"]
    assert status == 503 and not checks["exchange COINBASE"]["ok"], checks
    assert checks["exchange BINANCE"]["ok"] and checks["exchange KRAKEN"]["ok"], checks
    assert checks["exchange COINBASE"]["detail"].startswith(f"no endpoint streaming; circuits: {coinbase.urls[0]} ")
    coinbase.endpoint(0).refuse(False)
    wait_until(lambda: produced(service, f"{topic}.coinbase") >= 50, 60, "Coinbase's trades once it takes connections again")
    assert service.wait_ready()["checks"]["exchange COINBASE"]["detail"] == f"streaming from {coinbase.urls[0]}"
    assert service.stop() == 0, service.log()
    for venue_topic in (topic, f"{topic}.kraken", f"{topic}.coinbase"):
        assert missing_and_duplicates(trade_ids(broker, registry, venue_topic)) == (0, 0), venue_topic


def test_a_level2_snapshot_of_several_megabytes_is_kept_whole_in_the_raw_record_and_its_book_published(
        start_service, simulator, broker, registry, topic):
    with CoinbaseSimulator(("BTC-USD",), rate=20, snapshot_padding=40_000) as deep:  # a snapshot of about 8 MB
        service = with_coinbase(start_service, deep, topic, K2_COINBASE_SYMBOLS="BTC-USD",
                                K2_COINBASE_STREAMS="market_trades,level2")
        service.wait_ready()
        wait_until(lambda: produced(service, f"{topic}.coinbase.books") >= 5, 60, "books of the deep product")
        assert service.metric("k2_dlq_messages_total") == 0
        assert service.stop() == 0, service.log()
    raw = records(broker.bootstrap_servers, registry.url, f"{topic}.coinbase.raw")
    [snapshot] = [r for r in raw if r["stream"] == "l2_data" and json.loads(r["payload"])["events"][0]["type"] == "snapshot"]
    assert len(snapshot["payload"]) > 4 * 2**20 and len(json.loads(snapshot["payload"])["events"][0]["updates"]) > 80_000
    books = records(broker.bootstrap_servers, registry.url, f"{topic}.coinbase.books")
    assert books and all(b["bid_levels"] == b["ask_levels"] == 20 for b in books)
