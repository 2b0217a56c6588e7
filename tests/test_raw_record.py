"""The raw record end to end (simulator, Tansu, the service as a process): every frame of
every connection is in the raw topic once, byte for byte, numbered without a break per
connection, whatever the frame was and whatever happened to the service meanwhile; and each
trade names the frame it came from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2actors import processes
from k2actors.core.avro import read_body
from k2actors.outlets import AvroWriter
from k2actors.readback import missing_and_duplicates, read_partitions, records
from k2actors.receipts import left_behind
from tests.conftest import REPO, every_frame_once, trade_ids, wait_until
from tests.test_resilience import settle, total, wait_for_new_pid, wait_for_trades

GARBAGE = b"\xff\xfe not a frame at all"
OVERSIZED = json.dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "pad": "x" * 100_000}}).encode()


def lineage_of_trades(broker, registry, topic: str) -> list[tuple[dict, dict[str, bytes]]]:
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    context = SerializationContext(topic, MessageField.VALUE)
    return [(deserialize(message.value(), context), dict(message.headers() or []))
            for message in read_partitions(broker.bootstrap_servers, topic)]


def test_every_frame_of_every_connection_is_archived_once_in_order_through_failover_kills_and_restart(
        start_service, simulator, broker, registry, topic):
    service = start_service(K2_BINANCE_MODE="hot_standby")
    service.wait_ready()
    wait_until(lambda: simulator.endpoint(1).client_count() == 1, 20, "the standby connection")
    wait_for_trades(service, 150)
    simulator.endpoint(0).send_raw([GARBAGE, OVERSIZED])
    wait_until(lambda: service.metric("k2_dlq_messages_total") >= 2, 20, "the garbage and the oversized frame dead-lettered")
    simulator.endpoint(0).drop()  # failover: the primary's connection ends, a new one is made
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    for role in ("producer", "normaliser"):
        pid = wait_until(lambda role=role: service.health().get("actors", {}).get(role), 20, f"the {role}'s pid")
        # frozen first, so that it dies with frames and records in flight to it, not between them
        os.kill(pid, signal.SIGSTOP)
        printed = sum(simulator.last_ids().values())
        wait_until(lambda printed=printed: sum(simulator.last_ids().values()) > printed + 100, 20, "trades printed meanwhile")
        os.kill(pid, signal.SIGKILL)
        wait_for_new_pid(service, role, pid)
        wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    settle(service)
    assert service.stop() == 0, service.log()
    restarted = start_service(K2_BINANCE_MODE="hot_standby")  # a deploy: SIGTERM, then a new process
    restarted.wait_ready()
    wait_for_trades(restarted, 150)
    samples = settle(restarted)
    assert restarted.stop() == 0, restarted.log()

    connections = every_frame_once(broker, registry, topic)
    # two connections at first (hot standby), the primary's again after the drop, two after the restart
    assert len(connections) >= 5, sorted(connections)
    payloads = [frame["payload"] for frames in connections.values() for frame in frames]
    assert payloads.count(GARBAGE) == 1 and payloads.count(OVERSIZED) == 1  # byte for byte, and once
    assert total(samples, "k2_actor_restarts_total") == 0  # (the new process's; the killed producer was the first's)

    # every trade names the frame (or REST response) it came from, and that holds it
    by_identity = {(conn_id, frame["conn_msg_seq"]): frame for conn_id, frames in connections.items() for frame in frames}
    traded = lineage_of_trades(broker, registry, topic)
    backfilled = 0
    for trade, headers in traded:
        frame = by_identity[(headers["k2.conn_id"].decode(), int(headers["k2.conn_msg_seq"]))]
        assert int(headers["k2.recv_ts_ns"]) == frame["recv_ts_ns"] and frame["symbol"] == trade["symbol"]
        if "k2.source_url" in headers:  # backfilled: the page's rows hold it
            backfilled += 1
            assert headers["k2.source_url"].decode() == frame["endpoint"] + frame["stream"]
            assert trade["source_sequence"] in {row["id"] for row in json.loads(frame["payload"])}
        else:
            data = json.loads(frame["payload"])["data"]
            assert (data["s"], data["t"]) == (trade["symbol"], trade["source_sequence"])
            assert frame["stream"] == f"{trade['symbol'].lower()}@trade"
    assert backfilled > 0  # what was printed while the service restarted

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)

    # replayed from the raw record, every live record comes out as it is in Kafka ...
    replayed = replay_verify(restarted.env)
    assert replayed.returncode == 0 and " 0 differences " in replayed.stdout, replayed.stdout + replayed.stderr
    # ... and a record altered on purpose is found, with the frame it came from
    headers = tamper(broker, topic)
    replayed = replay_verify(restarted.env)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "(missing 0, extra 0, duplicate 1, differs 1)" in replayed.stdout, replayed.stdout
    conn_id, seq = headers["k2.conn_id"].decode(), int(headers["k2.conn_msg_seq"])
    assert f"(conn_id {conn_id}, conn_msg_seq {seq}): price: live" in replayed.stdout, replayed.stdout


def replay_verify(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k2actors", "replay", "--verify"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def tamper(broker, topic: str) -> dict[str, bytes]:
    """A live trade's record written again with its price doubled, lineage and all; its headers."""
    message = read_partitions(broker.bootstrap_servers, topic)[0]
    headers = dict(message.headers() or [])
    value = message.value()
    record = read_body("trade", value[5:])
    record["price"] *= 2
    altered = AvroWriter(int.from_bytes(value[1:5], "big"), "trade")(record)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    producer.produce(topic, altered, message.key(), headers=list(headers.items()))
    assert producer.flush(10) == 0
    return headers


def test_frames_a_killed_service_took_with_it_are_counted_lost_from_its_receipt_and_their_trades_backfilled(
        start_service, simulator, broker, registry, topic, tmp_path):
    first = start_service()
    first.wait_ready()
    wait_for_trades(first, 150)
    actors = wait_until(lambda: first.health().get("actors"), 20, "the actors' pids")
    os.kill(actors["producer"], signal.SIGSTOP)  # frames keep coming, and none of them reaches Kafka
    printed = sum(simulator.last_ids().values())
    wait_until(lambda: sum(simulator.last_ids().values()) > printed + 100, 20, "trades printed meanwhile")
    first.process.kill()  # the whole service: its actors follow within a second, the frozen producer too
    first.process.wait()
    wait_until(lambda: not any(processes.exists(pid) for pid in actors.values()), 20, "every actor process gone")
    left = {receipt.conn_id: receipt.received for receipt in left_behind(str(tmp_path / "receipts"))}
    assert left, "the killed connection's receipt"

    second = start_service()
    second.wait_ready()
    in_kafka = {conn_id: len(frames) for conn_id, frames in every_frame_once(broker, registry, topic).items()}
    lost = sum(received - in_kafka.get(conn_id, 0) for conn_id, received in left.items())
    assert lost > 100
    wait_until(lambda: total(second.metrics(), "k2_raw_frames_lost_total") == lost, 40, f"{lost} frames counted lost")
    for conn_id, received in left.items():
        if received > in_kafka.get(conn_id, 0):
            assert (f"never reached Kafka: its process was killed first (conn_msg_seq {in_kafka.get(conn_id, 0) + 1}-{received} "
                    f"of {received})") in second.log()
            assert f"frames received on connection {conn_id} to {simulator.urls[0]}" in second.log()
    assert not list(left_behind(str(tmp_path / "receipts")))  # settled, and removed
    wait_until(lambda: total(second.metrics(), "k2_backfill_trades_total") > 0, 60, "the trades among them backfilled")
    settle(second)
    assert second.stop() == 0, second.log()
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert list((tmp_path / "receipts").iterdir()) == []  # every connection that ended cleanly took its receipt


def test_with_the_raw_record_off_no_frame_is_archived(start_service, broker, registry, topic):
    service = start_service(K2_RAW_ENABLED="false")
    service.wait_ready()
    wait_for_trades(service, 100)
    produced = {key for key in service.metrics() if key.startswith("k2_kafka_messages_produced_total")}
    assert service.stop() == 0, service.log()
    assert trade_ids(broker, registry, topic)
    assert produced == {f'k2_kafka_messages_produced_total{{topic="{topic}"}}'}


def test_replay_writes_the_records_again_to_a_topic_of_their_own(start_service, broker, registry, topic):
    service = start_service()
    service.wait_ready()
    wait_for_trades(service, 100)
    assert service.stop() == 0, service.log()
    replayed = subprocess.run([sys.executable, "-m", "k2actors", "replay", "--to-topic", f"{topic}.again"], env=service.env,
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    live = {record["message_id"]: record for record in records(broker.bootstrap_servers, registry.url, topic)}
    again = {record["message_id"]: record for record in records(broker.bootstrap_servers, registry.url, f"{topic}.again")}
    assert live and again == live
    assert f"{len(live)} records written to {topic}.again" in replayed.stdout
