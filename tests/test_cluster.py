"""Cluster mode against Tansu and the simulator: instances share the shards through a Kafka
consumer group, take them over from each other, and fence a paused one. Every test reads the
topic back: every trade id from each symbol's first to its last is there, exactly once."""

import json
import os
import re
import signal
import time

from confluent_kafka.admin import AdminClient, NewTopic

from k2actors import processes
from k2actors.config import KafkaConfig
from k2actors.outlets import control_topic
from k2actors.readback import missing_and_duplicates
from tests.conftest import every_frame_once, trade_ids, wait_until
from tests.test_resilience import settle, total, wait_for_trades

SHARDS = 3  # the simulator's and the service's three symbols: a shard each


def cluster(topic: str, session_timeout: float) -> dict[str, str]:
    return {"K2_CLUSTER_ENABLED": "true", "K2_CLUSTER_GROUP_ID": topic,
            "K2_CLUSTER_SESSION_TIMEOUT_SECONDS": str(session_timeout), "K2_LOG_FORMAT": "json"}


def owned(service) -> set[int]:
    if service.get("/metrics")[0] != 200:  # still starting
        return set()
    samples = service.metrics()
    return {shard for shard in range(SHARDS) if samples.get(f'k2_cluster_shard_owned{{shard="{shard}"}}') == 1}


def split(services, timeout: float = 60) -> list[set[int]]:
    """Wait until every shard is owned by exactly one of `services`, and each owns one."""

    def shared() -> list[set[int]] | None:
        shards = [owned(service) for service in services]
        mine = [shard for owned_by_one in shards for shard in owned_by_one]
        return shards if sorted(mine) == list(range(SHARDS)) and all(shards) else None

    return wait_until(shared, timeout, f"the {SHARDS} shards split among {len(services)} instances")


def received(service) -> dict[str, float]:
    samples = service.metrics()
    return {symbol: total(samples, f'k2_binance_messages_received_total{{exchange="BINANCE",stream="trade",symbol="{symbol}"}}')
            for symbol in ("BTCUSDT", "ETHUSDT", "BNBUSDT")}


def streamed_by(services) -> dict[str, list[int]]:
    """For each symbol, which of `services` received its trades over two seconds."""
    before = [received(service) for service in services]
    time.sleep(2.0)
    after = [received(service) for service in services]
    return {symbol: [index for index in range(len(services)) if after[index][symbol] > before[index][symbol]]
            for symbol in before[0]}


def each_symbol_streamed_by_one(services) -> None:
    """Once a rebalance has settled (a new owner connects, an old one lets go)."""
    wait_until(lambda: all(len(streamers) == 1 for streamers in streamed_by(services).values()), 30,
               "each symbol streamed by exactly one instance")


def whole_service(service) -> set[int]:
    """Every process of the service: a lost or paused machine takes them all at once."""
    roots = (service.process.pid, service.health()["actors"]["actor_system"])
    return processes.trees(roots, processes.process_table())


def signal_all(pids: set[int], number: int) -> None:
    for pid in pids:
        os.kill(pid, number)


def finish(services, broker, registry, topic) -> None:
    """More trades from each instance, then settled and stopped cleanly: the topic read back
    holds every trade id from each symbol's first to its last, once."""
    for service in services:
        wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 100)
    for service in services:
        settle(service)
    assert [service.stop() for service in services] == [0] * len(services)
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    # every instance archived its own connections' frames, each once, through every hand-over
    assert len(every_frame_once(broker, registry, topic)) >= len(services)


def test_instances_share_the_shards_and_one_stopped_hands_its_over_at_once(start_service, broker, registry, topic):
    # The hand-over is awaited for less than the session timeout: seen, it was the stopped
    # instance leaving the group, not the group timing it out. (Tansu completes a rebalance
    # in about half the session timeout.)
    settings = cluster(topic, session_timeout=30)
    first = start_service(**settings)
    first.wait_ready(timeout=60)
    second = start_service(**settings)
    split([first, second])
    each_symbol_streamed_by_one([first, second])

    third = start_service(**settings)  # joins: takes a shard from whoever had two
    assert [len(shards) for shards in split([first, second, third])] == [1, 1, 1]
    each_symbol_streamed_by_one([first, second, third])
    cluster_check = json.loads(third.get("/ready")[1])["checks"]["cluster"]  # which shards, the generation, rebalances
    assert cluster_check["ok"] and re.fullmatch(rf"group {topic}, generation \d+, [1-9]\d* rebalances seen: owns shards "
                                                rf"\[{owned(third).pop()}\] of {SHARDS}", cluster_check["detail"]), cluster_check
    wait_for_trades(third, 100)

    assert third.stop() == 0, third.log()
    split([first, second], timeout=29)
    finish([first, second], broker, registry, topic)
    assert '"event": "shards_assigned"' in first.log()


def test_a_killed_instance_is_taken_over_and_a_paused_one_is_fenced_then_rejoins(start_service, broker, registry, topic,
                                                                                 simulator):
    settings = cluster(topic, session_timeout=6)
    first = start_service(**settings)
    first.wait_ready(timeout=60)
    second = start_service(**settings)
    first_shards, second_shards = split([first, second])
    wait_for_trades(second, 100)

    # A lost machine: every process of the second instance at once, mid-stream.
    signal_all(whole_service(second), signal.SIGKILL)
    second.process.wait()
    wait_until(lambda: owned(first) == set(range(SHARDS)), 30, "the survivor owning every shard")
    # what was printed while nobody streamed the second's shards is backfilled
    wait_until(lambda: total(first.metrics(), "k2_backfill_trades_total") > 0, 60, "the take-over's gap backfilled")

    # A paused machine: the third instance is frozen past its session timeout, so the first
    # takes its shards; woken up, it must not publish what it held, and it joins again.
    third = start_service(**settings)
    split([first, third])
    wait_for_trades(third, 100)
    paused = whole_service(third)
    signal_all(paused, signal.SIGSTOP)
    try:
        wait_until(lambda: owned(first) == set(range(SHARDS)), 40, "the first taking the paused instance's shards")
    finally:
        signal_all(paused, signal.SIGCONT)
    split([first, third], timeout=60)
    finish([first, third], broker, registry, topic)
    released = third.log().count('"event": "shard_released"')
    assert released >= 1, third.log()  # woken up, it let its shards go (lost, or fenced) before it rejoined


def test_an_instance_whose_symbols_make_other_shards_than_its_group_has_exits_saying_so(start_service, broker, topic):
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=topic)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})  # kept until the topic exists
    admin.create_topics([NewTopic(control_topic(kafka, topic), SHARDS)])[control_topic(kafka, topic)].result(timeout=10)
    service = start_service(**cluster(topic, session_timeout=6), K2_BINANCE_SYMBOLS="BTCUSDT,ETHUSDT")
    assert service.process.wait(60) == 1
    assert f"has {SHARDS} partitions, but the enabled venues' symbols make 2 shards" in service.log()
