"""The service as a user runs it (`python -m k2actors start`), against the real local stack."""

import io
import json
import struct
import time
from decimal import Decimal

import avro.io
import avro.schema
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2actors.core.normalise import message_id
from k2actors.core.telemetry import CATALOGUE
from k2actors.readback import missing_and_duplicates, read_partitions, records
from tests.conftest import http_get, trade_ids, wait_until

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


def decode_with_avro_library(value: bytes, registry_url: str) -> dict:
    """Confluent wire format read with the avro library, independent of confluent-kafka."""
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert magic == 0
    status, body = http_get(f"{registry_url}/schemas/ids/{schema_id}")
    assert status == 200
    reader = avro.io.DatumReader(avro.schema.parse(json.loads(body)["schema"]))
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(value[5:])))


def rest_history(simulator, symbol: str, from_id: int, count: int) -> dict[int, dict]:
    rows = {}
    while len(rows) < count:
        status, body = http_get(
            f"{simulator.rest_url()}/api/v3/historicalTrades?symbol={symbol}&fromId={from_id + len(rows)}&limit=1000"
        )
        assert status == 200
        page = json.loads(body)
        assert page, "history ran out"
        rows.update({row["id"]: row for row in page})
    return rows


def test_trades_arrive_exactly_once_field_for_field(start_service, simulator, broker, registry, topic):
    service = start_service()
    service.wait_ready()
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 300, 60, "300 trades in Kafka")
    received_before_stop = service.metric("k2_binance_messages_received_total")
    assert service.stop() == 0, service.log()
    assert service.stop_seconds < 15
    assert "every trade received was delivered" in service.log()

    messages = read_partitions(broker.bootstrap_servers, topic)
    assert len(messages) >= max(received_before_stop, 300)
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    context = SerializationContext(topic, MessageField.VALUE)
    ids: dict[str, list[int]] = {}
    decoded = []
    for message in messages:
        record = deserialize(message.value(), context)
        assert record == decode_with_avro_library(message.value(), registry.url) | {
            "timestamp": record["timestamp"], "ingestion_timestamp": record["ingestion_timestamp"]}
        assert message.key() == record["symbol"].encode()
        ids.setdefault(record["symbol"], []).append(record["source_sequence"])
        decoded.append(record)

    assert set(ids) == set(SYMBOLS)
    for symbol, seen in ids.items():
        seen.sort()
        assert seen == list(range(seen[0], seen[0] + len(seen))), f"{symbol}: gap or duplicate"

    for symbol in SYMBOLS:
        mine = {r["source_sequence"]: r for r in decoded if r["symbol"] == symbol}
        history = rest_history(simulator, symbol, min(mine), len(mine))
        for trade_id, record in mine.items():
            row = history[trade_id]
            assert record["trade_id"] == f"BINANCE-{trade_id}"
            assert record["message_id"] == message_id("BINANCE", symbol, trade_id)
            assert (record["exchange"], record["asset_class"], record["currency"]) == ("BINANCE", "crypto", "USDT")
            assert record["price"] == Decimal(row["price"]) and record["quantity"] == Decimal(row["qty"])
            assert record["side"] == ("SELL" if row["isBuyerMaker"] else "BUY")
            assert record["timestamp"].timestamp() * 1000 == row["time"]
            assert record["trade_conditions"] == [] and record["platform_sequence"] is None
            assert record["ingestion_timestamp"] >= record["timestamp"]
            assert record["vendor_data"]["endpoint"] == simulator.urls[0]
            assert record["vendor_data"]["is_buyer_maker"] == str(row["isBuyerMaker"]).lower()


def malformed_frames() -> dict[str, str]:
    """One frame per DLQ reason for a frame from the exchange (frame_too_large aside)."""
    now_ms = int(time.time() * 1000)

    def trade(**fields) -> str:
        data = {"e": "trade", "E": now_ms, "s": "BTCUSDT", "t": 1, "p": "1.0", "q": "1.0", "T": now_ms, "m": True}
        return json.dumps({"stream": "btcusdt@trade", "data": {**data, **fields}})

    return {
        "not_json": "{not json",
        "unexpected_shape": "[1, 2, 3]",
        "missing_field": json.dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "t": 1}}),
        "wrong_type": trade(t="1"),
        "invalid_decimal": trade(p="one"),
        "decimal_out_of_range": trade(q="0.000000001"),
        "unknown_event": json.dumps({"stream": "btcusdt@kline", "data": {"e": "kline"}}),
        "too_deeply_nested": "[" * 100 + "]" * 100,
        "id_out_of_range": trade(t=2**63),
        "non_finite_number": trade(p="NaN"),
        "non_positive_price": trade(p="-1.0"),
        "non_positive_quantity": trade(q="0"),
        "unsubscribed_symbol": trade(s="DOGEUSDT"),
        "timestamp_out_of_range": trade(T=1),
        "id_regressed": trade(t=1),  # the simulator's ids start at 1,000,000
    }


def test_malformed_frames_go_to_the_dlq_while_trades_keep_flowing(start_service, simulator, broker, topic):
    service = start_service()
    service.wait_ready()
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 50, 60, "trades flowing")
    oversized = json.dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "padding": "x" * 100_000}})
    malformed = malformed_frames()
    simulator.endpoint(0).send_raw(list(malformed.values()) + [b"\x80binary\xff", oversized])
    wait_until(lambda: service.metric("k2_dlq_messages_total") >= len(malformed) + 2, 30, "dead letters counted")
    trades = f'k2_kafka_messages_produced_total{{topic="{topic}"}}'
    produced = service.metrics()[trades]
    wait_until(lambda: service.metrics()[trades] > produced + 50, 30, "trades after the bad frames")
    samples = service.metrics()
    for reason in malformed:
        assert sum(v for k, v in samples.items() if k.startswith(f'k2_dlq_messages_total{{reason="{reason}",')) >= 1
        assert sum(v for k, v in samples.items() if k.startswith(f'k2_binance_message_errors_total{{error_type="{reason}",')) >= 1
    assert service.stop() == 0

    letters = read_partitions(broker.bootstrap_servers, f"{topic}.dlq")
    by_reason = {}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers()}
        assert headers["endpoint"] == simulator.urls[0] and int(headers["received_at_us"]) > 0 and headers["detail"]
        by_reason.setdefault(headers["reason"], []).append(letter.value())
    expected = {reason: [raw.encode()] for reason, raw in malformed.items()}
    expected["not_json"].append(b"\x80binary\xff")
    expected["frame_too_large"] = [oversized.encode()[:65536]]
    # Dead letters have no key, so they spread over partitions: their order is not kept.
    assert {reason: sorted(raws) for reason, raws in by_reason.items()} == {
        reason: sorted(raws) for reason, raws in expected.items()}
    assert len(read_partitions(broker.bootstrap_servers, topic)) >= produced + 50


def test_health_ready_and_metrics_endpoints(start_service):
    service = start_service()
    body = service.wait_ready()
    assert body["ready"] is True and all(body["checks"][name]["ok"] for name in ("exchange BINANCE", "data", "kafka"))
    status, health = service.get("/health")
    assert status == 200 and json.loads(health)["healthy"] is True
    wait_until(lambda: service.metric("k2_trade_receive_to_ack_seconds_count") > 0, 30, "latency observed")
    # A record is handed to the Kafka client before Kafka acknowledges it, and one actor counts both
    # (one scrape: each read sees a flush of both, or of neither).
    counts = service.metrics()
    assert counts["k2_trade_receive_to_produce_seconds_count"] >= counts["k2_trade_receive_to_ack_seconds_count"] > 0
    exposed = service.get("/metrics")[1].decode()
    for name, spec in CATALOGUE.items():
        assert f"# HELP {name.removesuffix('_total') if spec.kind == 'counter' else name}" in exposed
    samples = service.metrics()
    assert samples["k2_binance_connection_status{{url=\"{}\"}}".format(service.env["K2_BINANCE_WEBSOCKET_URL"])] == 1
    # Actors send metrics every half second or so: wait for the gauge rather than assume it.
    wait_until(lambda: service.metric("k2_binance_last_message_timestamp_seconds") > 1.7e9, 10, "last message time")
    assert service.get("/nope")[0] == 404
    assert service.stop() == 0
    assert service.get("/health")[0] == 0  # nothing listens once stopped


def test_not_ready_while_no_data_arrives_for_longer_than_the_stale_timeout(start_service, simulator):
    service = start_service(K2_BINANCE_STALE_TIMEOUT_SECONDS="1.5")
    service.wait_ready()
    for index in (0, 1):
        simulator.endpoint(index).stall()  # sockets open, handshakes answered, nothing sent
    status, body = wait_until(lambda: (r := service.get("/ready"))[0] == 503 and not json.loads(r[1])["checks"]["data"]["ok"]
                              and r, 30, "/ready 503 for want of data")
    data = json.loads(body)["checks"]["data"]
    assert data["detail"].startswith("no data for ") and data["detail"].endswith("s from BINANCE")
    for index in (0, 1):
        simulator.endpoint(index).stall(False)
    service.wait_ready(timeout=60)
    assert service.stop() == 0, service.log()


def test_not_ready_while_no_endpoint_streams(start_service, simulator):
    for index in (0, 1):
        simulator.endpoint(index).refuse()
    # Rounds of attempts come quickly, and the open breaker lets one through 2 s after the last.
    service = start_service(K2_BINANCE_RECONNECT_DELAY_SECONDS="0.5", K2_CIRCUIT_BREAKER_RESET_TIMEOUT_SECONDS="2")
    wait_until(lambda: service.get("/health")[0] == 200, 30, "/health")
    status, body = wait_until(lambda: (r := service.get("/ready"))[0] == 503 and r, 30, "/ready 503")
    checks = json.loads(body)["checks"]
    exchange = checks["exchange BINANCE"]
    assert exchange["ok"] is False and "no endpoint streaming" in exchange["detail"]
    wait_until(lambda: service.metric("k2_binance_reconnects_total") >= 2, 30, "reconnect attempts counted")
    simulator.endpoint(0).refuse(False)
    simulator.endpoint(1).refuse(False)
    service.wait_ready(timeout=60)
    assert service.stop() == 0


@pytest.mark.parametrize("simulator", [{"symbols": ("BTCEURI", "BTCUSDT")}], indirect=True)
def test_currency_is_the_quote_asset_from_exchange_info(start_service, simulator, broker, registry, topic):
    # EURI is in no suffix table: only exchangeInfo can name it.
    service = start_service(K2_BINANCE_SYMBOLS="BTCEURI,BTCUSDT")
    service.wait_ready()
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 20, 60, "20 trades in Kafka")
    assert service.stop() == 0, service.log()
    currencies = {(record["symbol"], record["currency"]) for record in records(broker.bootstrap_servers, registry.url, topic)}
    assert currencies == {("BTCEURI", "EURI"), ("BTCUSDT", "USDT")}
    assert "exchangeInfo from BINANCE: quote assets of 2 symbols" in service.log()


def test_without_exchange_info_the_suffix_table_names_the_currency(start_service, broker, registry, topic):
    service = start_service(K2_BINANCE_REST_URLS="BINANCE=http://127.0.0.1:1")
    service.wait_ready()
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 20, 60, "20 trades in Kafka")
    assert service.stop() == 0, service.log()
    assert "exchangeInfo from BINANCE unavailable" in service.log()
    for record in records(broker.bootstrap_servers, registry.url, topic):
        assert record["currency"] == "USDT"


@pytest.mark.parametrize("simulator", [{"rate": 2000}], indirect=True)
def test_control_messages_are_answered_under_full_load(start_service, simulator, broker, registry, topic):
    """Heartbeats go through every actor's mailbox each second, so no restart and a healthy
    /health under load mean every actor kept answering; the stop is the last control message."""
    service = start_service()
    service.wait_ready()
    start = service.metric("k2_kafka_messages_produced_total")
    for _ in range(10):
        time.sleep(1)
        assert service.get("/health")[0] == 200
    samples = service.metrics()
    assert samples.get(f'k2_kafka_messages_produced_total{{topic="{topic}"}}', 0) - start > 10_000  # really loaded
    assert not [k for k in samples if k.startswith("k2_actor_restarts_total{")]
    assert service.stop() == 0, service.log()
    assert service.stop_seconds < 15
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)


MANY_SYMBOLS = tuple(f"S{i:04d}USDT" for i in range(1100))


@pytest.mark.parametrize("simulator", [{"symbols": MANY_SYMBOLS, "rate": 0.5}], indirect=True)
def test_more_symbols_than_one_connection_carries_take_more_connections(start_service, simulator, broker, registry, topic):
    service = start_service(K2_BINANCE_SYMBOLS=",".join(MANY_SYMBOLS))
    service.wait_ready()
    wait_until(lambda: simulator.endpoint(0).client_count() == 2, 10, "two connections to the endpoint")
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 1500, 60, "1500 trades in Kafka")
    assert service.stop() == 0, service.log()
    assert "1100 symbols, 2 connections" in service.log()
    assert "exchangeInfo from BINANCE: quote assets of 1100 symbols" in service.log()
    ids = trade_ids(broker, registry, topic)
    assert {s for s in ids if s > "S1023USDT"}, "no trade from the second connection's symbols"
    assert missing_and_duplicates(ids) == (0, 0)
    assert "ended" not in service.log().split("stopping:")[0]  # past 1024 streams the simulator closes with 1008


def test_json_logs_name_each_event_with_its_fields(start_service, simulator):
    service = start_service(K2_LOG_FORMAT="json")
    service.wait_ready()
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 300, 60, "trades flowing")
    primary = simulator.endpoint(0)
    primary.send_raw(["{not json"])
    primary.refuse()  # the reconnect fails once, so trades are missed for certain
    primary.drop()
    wait_until(lambda: service.metric("k2_binance_reconnects_total") >= 2, 30, "a refused reconnect")
    primary.refuse(False)
    wait_until(lambda: service.metric("k2_binance_trade_gaps_total") >= 1, 30, "the gap the drop left declared")
    assert service.stop() == 0
    lines = [json.loads(line) for line in service.log().splitlines()]
    assert all({"time", "level", "logger", "actor", "event", "message"} <= set(line) for line in lines)
    events = {}
    for line in lines:
        events.setdefault(line["event"], []).append(line)
    url = simulator.urls[0]
    assert events["connection_opened"][0]["endpoint"] == url and events["connection_opened"][0]["actor"] == "connection"
    ended = events["connection_ended"][0]
    assert (ended["endpoint"], ended["reason"], ended["level"]) == (url, "connection_lost", "WARNING")
    assert events["reconnect_scheduled"][0]["endpoint"] == url
    letter = events["dead_letter"][0]
    assert (letter["reason"], letter["endpoint"]) == ("not_json", url)
    gap = events["gap_declared"][0]
    assert gap["symbol"] in ("BTCUSDT", "ETHUSDT", "BNBUSDT") and gap["last_id"] - gap["first_id"] + 1 == gap["missing"] > 0
    assert events["service_stopped"][-1]["undelivered"] == 0
    assert len(lines) < 100  # more than 300 trades: never logged one by one
