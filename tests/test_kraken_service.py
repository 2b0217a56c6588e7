"""Kraken beside Binance in one service, end to end: the Kraken and Binance simulators, Tansu,
and the service as a user runs it (`python -m k2actors start`, configured by K2_* variables)."""

from __future__ import annotations

import json
import re

import pytest

from k2actors.core.cluster import shard_symbols
from k2actors.localstack.kraken import PRICE_PRECISION, QTY_PRECISION, KrakenSimulator
from k2actors.readback import missing_and_duplicates, records
from tests.conftest import trade_ids, wait_until
from tests.test_continuity import fail_primary
from tests.test_core_ledger_kraken import vouched
from tests.test_raw_record import replay_verify

PAIRS = ("BTC/USD", "ETH/USD")


@pytest.fixture
def kraken():
    # 20 trades a second a pair: a reconnect's snapshot (the last 50) covers more than two seconds
    with KrakenSimulator(PAIRS, rate=20) as running:
        yield running


def with_kraken(start_service, kraken, topic, **overrides):
    return start_service(**{
        "K2_KRAKEN_ENABLED": "true", "K2_KRAKEN_WEBSOCKET_URL": kraken.urls[0], "K2_KRAKEN_SYMBOLS": ",".join(PAIRS),
        "K2_KRAKEN_RECONNECT_DELAY_SECONDS": "0.2", "K2_KRAKEN_REST_URL": kraken.rest_url(),
        "K2_KAFKA_KRAKEN_TRADE_TOPIC": f"{topic}.kraken", "K2_KAFKA_KRAKEN_QUOTE_TOPIC": f"{topic}.kraken.quotes",
        "K2_KAFKA_KRAKEN_RAW_TOPIC": f"{topic}.kraken.raw", "K2_KAFKA_KRAKEN_BOOK_TOPIC": f"{topic}.kraken.books",
        **overrides})


@pytest.fixture
def mirrored_kraken():
    with KrakenSimulator(PAIRS, rate=20, endpoints=2) as running:
        yield running


def backfilled(service, symbols: set[str]) -> bool:
    """Each symbol had a gap, it was backfilled, and none is open: the log says so as it
    happens, metrics at their next flush (so a gap just declared can still read 0 open)."""
    log = service.log()
    return all(re.search(rf"gap in \w+ {symbol}:", log) and re.search(rf"backfilled \d+ trades of \w+ {symbol},", log)
               for symbol in symbols) and service.metric("k2_binance_gaps_pending") == service.metric("k2_backfill_gaps_open") == 0


def produced(service, topic: str) -> float:
    return service.metrics().get(f'k2_kafka_messages_produced_total{{topic="{topic}"}}', 0)


def test_both_venues_stream_to_their_own_topics_exactly_once_through_a_dropped_kraken_connection(
        start_service, kraken, simulator, broker, registry, topic):
    service = with_kraken(start_service, kraken, topic, K2_KRAKEN_STREAMS="trade,ticker")
    service.wait_ready()
    wait_until(lambda: min(produced(service, topic), produced(service, f"{topic}.kraken")) >= 100, 60, "trades of both venues")
    kraken.endpoint(0).drop()
    wait_until(lambda: service.log().count(f"connected to {kraken.urls[0]}") >= 2, 30, "the dropped Kraken connection replaced")
    before = produced(service, f"{topic}.kraken")
    wait_until(lambda: produced(service, f"{topic}.kraken") >= before + 100, 60, "Kraken trades after the drop")
    assert service.stop() == 0, service.log()

    kraken_ids = trade_ids(broker, registry, f"{topic}.kraken")
    assert set(kraken_ids) == {"BTCUSD", "ETHUSD"}
    assert missing_and_duplicates(kraken_ids) == (0, 0)
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    trades = records(broker.bootstrap_servers, registry.url, f"{topic}.kraken")
    assert {(t["exchange"], t["currency"], t["vendor_data"]["venue_symbol"]) for t in trades} == {
        ("KRAKEN", "USD", "BTC/USD"), ("KRAKEN", "USD", "ETH/USD")}
    quotes = records(broker.bootstrap_servers, registry.url, f"{topic}.kraken.quotes")
    for symbol in ("BTCUSD", "ETHUSD"):
        times = [q["source_sequence"] for q in quotes if q["symbol"] == symbol]
        assert times and times == sorted(set(times))  # once each, in order
    # Kraken's frames in Kraken's raw record, Binance's in Binance's
    raw = records(broker.bootstrap_servers, registry.url, f"{topic}.kraken.raw")
    assert raw and {r["exchange"] for r in raw} == {"KRAKEN"} and len({r["conn_id"] for r in raw}) >= 2
    assert {r["exchange"] for r in records(broker.bootstrap_servers, registry.url, f"{topic}.raw")} == {"BINANCE"}
    assert "gap in KRAKEN" not in service.log()


def test_binance_streams_on_while_kraken_refuses_every_connection(start_service, kraken, simulator, broker, registry, topic):
    kraken.endpoint(0).refuse(True)
    service = with_kraken(start_service, kraken, topic)
    wait_until(lambda: service.get("/health")[0] == 200, 30, "/health")
    wait_until(lambda: produced(service, topic) >= 300, 60, "Binance's trades")
    wait_until(lambda: "connection to " + kraken.urls[0] in service.log() and "circuit for " + kraken.urls[0] in service.log(),
               60, "Kraken's refusals and its circuit said")
    # /ready: Kraken's line fails, Binance's holds
    status, body = service.get("/ready")
    checks = json.loads(body)["checks"]
    assert status == 503 and checks["exchange BINANCE"]["ok"] and not checks["exchange KRAKEN"]["ok"], checks
    assert checks["exchange KRAKEN"]["detail"].startswith(f"no endpoint streaming; circuits: {kraken.urls[0]} ")
    kraken.endpoint(0).refuse(False)
    wait_until(lambda: produced(service, f"{topic}.kraken") >= 50, 60, "Kraken's trades once it takes connections again")
    assert service.wait_ready()["checks"]["exchange KRAKEN"]["detail"] == f"streaming from {kraken.urls[0]}"
    assert service.stop() == 0, service.log()
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert missing_and_duplicates(trade_ids(broker, registry, f"{topic}.kraken")) == (0, 0)


def test_kraken_trades_exactly_once_through_a_stall_a_crash_and_a_deploy_gaps_backfilled_from_its_rest_history(
        start_service, kraken, simulator, broker, registry, topic):
    settings = {"K2_KRAKEN_STALE_TIMEOUT_SECONDS": "1"}
    kraken_topic = f"{topic}.kraken"
    service = with_kraken(start_service, kraken, topic, **settings)
    service.wait_ready()
    wait_until(lambda: produced(service, kraken_topic) >= 100, 60, "Kraken's trades")

    # A stall longer than a reconnect's snapshot covers (its last 50 trades, 2.5 s here)
    kraken.endpoint(0).stall(True)
    stalled_at = kraken.last_ids()
    wait_until(lambda: min(kraken.last_ids()[pair] - stalled_at[pair] for pair in PAIRS) >= 100, 30, "100 trades a pair made meanwhile")
    kraken.endpoint(0).stall(False)
    wait_until(lambda: "gap in KRAKEN" in service.log() and service.metric("k2_backfill_gaps_filled_total") >= 1, 60,
               "the stall's gap declared and backfilled")

    # A crash: what it had not handed to Kafka, and what is traded until the next start, is a gap
    service.process.kill()
    service.process.wait()
    crashed_at = kraken.last_ids()
    wait_until(lambda: min(kraken.last_ids()[pair] - crashed_at[pair] for pair in PAIRS) >= 100, 30, "100 trades a pair made meanwhile")
    restarted = with_kraken(start_service, kraken, topic, **settings)
    restarted.wait_ready()
    wait_until(lambda: restarted.metric("k2_backfill_gaps_filled_total") >= 2 and restarted.metric("k2_backfill_gaps_open") == 0,
               90, "the gaps of the crash backfilled")

    # A deploy: SIGTERM delivers what was received; what is traded until the next start is a gap
    assert restarted.stop() == 0, restarted.log()
    assert "every trade received was delivered and no gap is open" in restarted.log()
    stopped_at = kraken.last_ids()
    wait_until(lambda: min(kraken.last_ids()[pair] - stopped_at[pair] for pair in PAIRS) >= 100, 30, "100 trades a pair made meanwhile")
    deployed = with_kraken(start_service, kraken, topic, **settings)
    deployed.wait_ready()
    wait_until(lambda: backfilled(deployed, {pair.replace("/", "") for pair in PAIRS}), 90, "the gaps of the stop backfilled")
    assert deployed.stop() == 0, deployed.log()

    ids = trade_ids(broker, registry, kraken_topic)
    assert missing_and_duplicates(ids) == (0, 0)
    assert all(ids[pair.replace("/", "")][-1] >= stopped_at[pair] for pair in PAIRS)
    from_history = [t for t in records(broker.bootstrap_servers, registry.url, kraken_topic) if t["vendor_data"].get("backfilled")]
    assert from_history and {t["symbol"] for t in from_history} == {"BTCUSD", "ETHUSD"}
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)  # Binance's, all the while
    # every record of both venues, streamed or backfilled, derived again from the raw records
    replayed = replay_verify(deployed.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr


def test_kraken_books_are_published_only_as_their_checksum_vouches_and_back_in_sync_after_a_corrupted_update(
        start_service, kraken, simulator, broker, registry, topic):
    book_topic = f"{topic}.kraken.books"
    service = with_kraken(start_service, kraken, topic, K2_KRAKEN_STREAMS="trade,book", K2_KRAKEN_BOOK_CADENCE_SECONDS="0.2")
    service.wait_ready()
    wait_until(lambda: produced(service, book_topic) >= 20, 60, "Kraken's books")
    kraken.endpoint(0).corrupt_book("BTC/USD")
    wait_until(lambda: "book of KRAKEN BTC/USD in sync" in service.log(), 30, "the corrupted book back in sync")
    before = produced(service, book_topic)
    wait_until(lambda: produced(service, book_topic) >= before + 20, 30, "books after the resync")
    assert service.stop() == 0, service.log()

    log = service.log()
    assert f"book of KRAKEN BTC/USD from {kraken.urls[0]} failed its checksum after an update" in log
    assert "book of KRAKEN ETH/USD" not in log  # the other pair's book was never in doubt
    [seconds] = [float(found) for found in re.findall(r"book of KRAKEN BTC/USD in sync, .*?, ([0-9.]+) s after", log)]
    print(f"BTC/USD back in sync {seconds:.3f} s after its checksum failed")
    books = records(broker.bootstrap_servers, registry.url, book_topic)
    assert {(b["symbol"], b["currency"], b["exchange"], b["vendor_data"]["venue_symbol"]) for b in books} == {
        ("BTCUSD", "USD", "KRAKEN", "BTC/USD"), ("ETHUSD", "USD", "KRAKEN", "ETH/USD")}
    # every book published is Kraken's: its levels give the checksum Kraken sent with it
    assert all(vouched(book, PRICE_PRECISION, QTY_PRECISION) for book in books)
    assert all(b["bid_levels"] == b["ask_levels"] == b["depth"] == 10 for b in books)
    for symbol in ("BTCUSD", "ETHUSD"):
        windows = [b["source_sequence"] for b in books if b["symbol"] == symbol]
        assert windows == sorted(set(windows))  # each window once, in order
    assert missing_and_duplicates(trade_ids(broker, registry, f"{topic}.kraken")) == (0, 0)
    replayed = replay_verify(service.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr


def test_cluster_mode_shares_the_symbols_of_both_venues_and_a_stopped_instances_are_taken_over(
        start_service, kraken, simulator, broker, registry, topic):
    # Binance's BNBUSDT and ETHUSDT, Kraken's BTC/USD and ETH/USD: four shards, BNBUSDT BTCUSD ETHUSD ETHUSDT
    # (sorted), which the group's round-robin assignment deals one of each venue to each of two instances.
    table = shard_symbols(("BNBUSDT", "ETHUSDT", "BTCUSD", "ETHUSD"))
    settings = {"K2_CLUSTER_ENABLED": "true", "K2_CLUSTER_GROUP_ID": topic, "K2_CLUSTER_SESSION_TIMEOUT_SECONDS": "30",
                "K2_BINANCE_SYMBOLS": "BNBUSDT,ETHUSDT"}

    def owned(service) -> frozenset[int]:
        if service.get("/metrics")[0] != 200:
            return frozenset()
        samples = service.metrics()
        return frozenset(shard for shard in range(len(table)) if samples.get(f'k2_cluster_shard_owned{{shard="{shard}"}}') == 1)

    def shared() -> tuple[frozenset[int], frozenset[int]] | None:
        held = owned(first), owned(second)
        return held if held[0] | held[1] == set(range(len(table))) and all(held) and not held[0] & held[1] else None

    first = with_kraken(start_service, kraken, topic, **settings)
    first.wait_ready(timeout=60)
    second = with_kraken(start_service, kraken, topic, **settings)
    _, held = wait_until(shared, 60, "the shards split between the two instances")
    handed_over = {symbol for shard in held for symbol in table[shard]}
    kraken_topic = f"{topic}.kraken"
    wait_until(lambda: produced(second, kraken_topic if handed_over & {"BTCUSD", "ETHUSD"} else topic) >= 50, 60,
               "trades from the second instance")
    # an instance connects to a venue only when it holds a shard of the venue's symbols
    assert (f"connecting to {kraken.urls[0]}" in second.log()) == bool(handed_over & {"BTCUSD", "ETHUSD"}), second.log()
    assert (f"connecting to {simulator.urls[0]}" in second.log()) == bool(handed_over & {"BNBUSDT", "ETHUSDT"}), second.log()
    assert second.stop() == 0, second.log()
    wait_until(lambda: owned(first) == set(range(len(table))), 29, "the first owning every shard")
    # the hand-over's gaps, in exactly the second's symbols: declared after the grace, then filled from
    # each venue's REST history
    wait_until(lambda: backfilled(first, handed_over), 60, f"the hand-over's gaps in {sorted(handed_over)} backfilled")
    kept = {symbol for symbols in table for symbol in symbols} - handed_over
    assert not any(re.search(rf"gap in \w+ {symbol}:", first.log()) for symbol in kept)
    before = produced(first, kraken_topic), produced(first, topic)
    wait_until(lambda: produced(first, kraken_topic) >= before[0] + 50 and produced(first, topic) >= before[1] + 50, 60,
               "both venues' trades from the survivor")
    assert first.stop() == 0, first.log()
    ids = trade_ids(broker, registry, kraken_topic)
    assert set(ids) == {"BTCUSD", "ETHUSD"} and missing_and_duplicates(ids) == (0, 0)
    ids = trade_ids(broker, registry, topic)
    assert set(ids) == {"BNBUSDT", "ETHUSDT"} and missing_and_duplicates(ids) == (0, 0)


@pytest.mark.parametrize("fault", ["refusing", "flapping", "stalled"])
def test_a_failing_kraken_primary_is_left_for_its_mirror_and_no_trade_is_lost(
        fault, start_service, mirrored_kraken, broker, registry, topic):
    kraken = mirrored_kraken
    service = with_kraken(start_service, kraken, topic, K2_KRAKEN_FAILOVER_URLS=kraken.urls[1],
                          K2_KRAKEN_STALE_TIMEOUT_SECONDS="1.5", K2_LOG_FORMAT="json")
    service.wait_ready()
    kraken_topic = f"{topic}.kraken"
    wait_until(lambda: produced(service, kraken_topic) >= 50, 30, "Kraken's trades")
    fail_primary(fault, kraken)

    def events(name: str) -> list[dict]:
        lines = (json.loads(line) for line in service.log().splitlines() if line.startswith("{"))
        return [line for line in lines if line.get("event") == name]

    resumed = wait_until(lambda: [e for e in events("streaming") if e["endpoint"] == kraken.urls[1]], 30, "the mirror streaming")
    print(f"\nKraken primary {fault}: streaming from the mirror after {resumed[-1]['seconds_without_data']:.3f} s without data")
    before = produced(service, kraken_topic)
    # Kafka itself, not the gap gauges: they lag a gap just declared, so the stop could fall
    # between a gap's declaration and its backfill (the service then says so, and a restart fills it)
    wait_until(lambda: produced(service, kraken_topic) >= before + 50
               and missing_and_duplicates(trade_ids(broker, registry, kraken_topic)) == (0, 0), 60,
               "trades from the mirror, and every gap filled")
    assert service.stop() == 0, service.log()
    assert any(e["from_endpoint"] == kraken.urls[0] for e in events("failover"))
    assert missing_and_duplicates(trade_ids(broker, registry, kraken_topic)) == (0, 0)
