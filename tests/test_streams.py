"""The aggTrade and bookTicker streams beside trades: each to its own topic under its own
subject, deduplicated across mirrors, and their bad frames to the DLQ under their own
reasons. Against the simulator, which serves all three from one market."""

import json
import re
import subprocess
import sys
import time

from k2actors.readback import missing_and_duplicates, read_partitions, records
from tests.conftest import REPO, trade_ids, wait_until


def test_every_stream_type_reaches_its_own_topic_once(start_service, simulator, broker, registry, topic):
    agg_topic, quote_topic = f"{topic}.agg", f"{topic}.quotes"
    service = start_service(
        K2_BINANCE_STREAMS="trade,aggTrade,bookTicker", K2_BINANCE_MODE="hot_standby",
        K2_KAFKA_AGGTRADE_TOPIC=agg_topic, K2_KAFKA_QUOTE_TOPIC=quote_topic,
    )
    service.wait_ready()
    produced = lambda name: service.metrics().get(f'k2_kafka_messages_produced_total{{topic="{name}"}}', 0)  # noqa: E731
    wait_until(lambda: min(produced(topic), produced(agg_topic), produced(quote_topic)) >= 100, 60, "all three streams")
    now_ms = int(time.time() * 1000)
    bad_agg = {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": now_ms, "s": "BTCUSDT", "a": 1, "p": "1.0",
                                                       "q": "1.0", "f": 9, "l": 3, "T": now_ms, "m": True}}
    crossed = {"stream": "btcusdt@bookTicker", "data": {"u": 1, "s": "BTCUSDT", "b": "2.0", "B": "1.0", "a": "1.0", "A": "1.0"}}
    simulator.endpoint(0).send_raw([json.dumps(bad_agg), json.dumps(crossed)])
    wait_until(lambda: service.metric("k2_dlq_messages_total") >= 2, 30, "two dead letters")
    samples = service.metrics()
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert missing_and_duplicates(trade_ids(broker, registry, agg_topic)) == (0, 0)  # aggregate ids consecutive, once
    aggs = records(broker.bootstrap_servers, registry.url, agg_topic)
    for symbol in ("BTCUSDT", "ETHUSDT", "BNBUSDT"):
        ranges = sorted((int(r["vendor_data"]["first_trade_id"]), int(r["vendor_data"]["last_trade_id"]))
                        for r in aggs if r["symbol"] == symbol)
        assert all(first <= last for first, last in ranges)
        assert all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(len(ranges) - 1))  # every trade in one aggregate
    assert all(r["trade_id"].startswith("BINANCE-AGG-") and r["vendor_data"]["stream"] == "aggTrade" for r in aggs)

    quotes = records(broker.bootstrap_servers, registry.url, quote_topic)
    for symbol in ("BTCUSDT", "ETHUSDT", "BNBUSDT"):
        updates = [q["source_sequence"] for q in quotes if q["symbol"] == symbol]
        assert updates and updates == sorted(set(updates))  # once each, in order
    assert all(q["bid_price"] < q["ask_price"] and q["quote_id"] == f"BINANCE-{q['source_sequence']}" for q in quotes)
    duplicates = {k: v for k, v in samples.items() if k.startswith("k2_binance_duplicate_trades_total{")}
    assert all(any(f'stream="{stream}"' in k and v > 0 for k, v in duplicates.items())
               for stream in ("trade", "aggTrade", "bookTicker"))  # the mirrors overlapped on every stream

    assert {f"{topic}-value", f"{agg_topic}-value", f"{quote_topic}-value"} <= set(registry.store.subjects())
    letters = {(h["stream"], h["reason"]) for h in (
        {k: v.decode() for k, v in m.headers()} for m in read_partitions(broker.bootstrap_servers, f"{topic}.dlq"))}
    assert letters == {("aggTrade", "invalid_trade_range"), ("bookTicker", "crossed_quote")}
    assert samples['k2_dlq_messages_total{reason="crossed_quote",stream="bookTicker"}'] == 1

    tail = subprocess.run(
        [sys.executable, "-m", "k2actors", "tail", "--topic", quote_topic, "--from-beginning", "--max", "3"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=service.env,
    )
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 3
    assert all(re.fullmatch(r"\S+ BINANCE +[A-Z]+ +QUOTE [\d.]+ @ [\d.]+ / [\d.]+ @ [\d.]+ USDT  BINANCE-\d+", line) for line in lines)


def test_each_stream_type_is_written_in_confluents_wire_format(registry):
    """The producer's own writer gives byte for byte what confluent-kafka's AvroSerializer
    gives, and Confluent's deserializer reads it back."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from k2actors.core.binance import parse_frame
    from k2actors.core.normalise import Delivery, normalise_agg_trade, normalise_quote, normalise_trade
    from k2actors.outlets import register, schema_for

    delivery = Delivery("BINANCE", "wss://stream.binance.com:9443/stream", 1_700_000_000_125_000)
    frames = {
        "trade": (normalise_trade, {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 42, "p": "43210.12", "q": "0.0015",
                                    "T": 1_700_000_000_120, "m": True, "M": True}),
        "aggTrade": (normalise_agg_trade, {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 7, "p": "1.5", "q": "2",
                                           "f": 1, "l": 3, "T": 1_700_000_000_120, "m": False}),
        "bookTicker": (normalise_quote, {"u": 9, "s": "BTCUSDT", "b": "1.25", "B": "3", "a": "1.5", "A": "4"}),
    }
    client = SchemaRegistryClient({"url": registry.url})
    for stream, (shape, data) in frames.items():
        topic = f"wire-format-{stream}"
        record = shape(parse_frame(json.dumps({"stream": f"btcusdt@{stream}", "data": data}), 65536), delivery, {})
        context = SerializationContext(topic, MessageField.VALUE)
        written = register(client, topic, stream)(record)
        assert written == AvroSerializer(client, schema_for(stream))(record, context)
        decoded = AvroDeserializer(client)(written, context)  # timestamps come back as datetimes
        assert (decoded["message_id"], decoded["source_sequence"]) == (record["message_id"], record["source_sequence"])
