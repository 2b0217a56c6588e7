"""Cluster mode's fencing, on Tansu: two writers of one shard, as a paused former owner and
the instance that took its shard over. The one that takes the shard's transactional id last
is the only one whose records land, and it starts from what the first had committed."""

import threading

from confluent_kafka import KafkaError, Message
from confluent_kafka.admin import AdminClient, NewTopic

from k2actors.config import KafkaConfig
from k2actors.core.binance import TRADE, Trade
from k2actors.core.cluster import transactional_id
from k2actors.core.normalise import Delivery, normalise_trade
from k2actors.outlets import Outlet, Preparation, control_topic, producer_settings
from k2actors.readback import trade_ids
from k2actors.shard_writer import NOT_COMMITTED, Outgoing, ShardWriter
from tests.conftest import wait_until

GROUP = "fencing"


class Reports:
    """What Kafka answered for each trade id put to a writer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answers: dict[int, KafkaError | None] = {}

    def report_for(self, trade_id: int):
        def report(error: KafkaError | None, message: Message | None) -> None:
            with self._lock:
                self.answers[trade_id] = error
        return report


def prepare(broker, registry, topic) -> tuple[KafkaConfig, Outlet]:
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, schema_registry_url=registry.url, topic=topic)
    preparation = Preparation(kafka, (TRADE,), resume=False)
    preparation.run()  # topics created, schema registered
    assert preparation.failure is None, preparation.failure
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})  # kept until the topic exists
    admin.create_topics([NewTopic(control_topic(kafka, GROUP), 1)])[control_topic(kafka, GROUP)].result(timeout=10)
    return kafka, preparation.outlets[TRADE]


def writer(kafka: KafkaConfig) -> ShardWriter:
    shard_writer = ShardWriter(0, 1, frozenset({"BTCUSDT"}), kafka, (TRADE,), control_topic(kafka, GROUP),
                               transactional_id(GROUP, 0), producer_settings(kafka))
    shard_writer.start()
    wait_until(lambda: shard_writer.acquired.is_set() or shard_writer.ended.is_set(), 30, "the shard acquired")
    assert shard_writer.failure is None, shard_writer.failure
    return shard_writer


def put(shard_writer: ShardWriter, outlet: Outlet, trade_id: int, reports: Reports) -> None:
    trade = Trade("BTCUSDT", trade_id, "1.5", "2", 1_700_000_000_000, 1_700_000_000_000, True, True)
    record = normalise_trade(trade, Delivery("BINANCE", "ws://test", 1_700_000_000_000_000), {})
    value = outlet.write(record)
    shard_writer.put(Outgoing(outlet.topic, None, b"BTCUSDT", value, reports.report_for(trade_id)))


def test_the_writer_that_took_the_shard_last_is_the_only_one_whose_records_land(broker, registry, topic):
    kafka, outlet = prepare(broker, registry, topic)
    reports = Reports()
    former = writer(kafka)
    for trade_id in (1, 2, 3):
        put(former, outlet, trade_id, reports)
    wait_until(lambda: len(reports.answers) == 3, 30, "the former owner's first trades acknowledged")
    assert set(reports.answers.values()) == {None}

    successor = writer(kafka)  # takes the transactional id: the former owner is fenced from here on
    assert successor.held[TRADE][("BINANCE", "BTCUSDT")].ranges() == [(1, 3)]  # it starts from what was committed
    put(former, outlet, 4, reports)  # a paused owner waking up, still holding trade 4
    wait_until(lambda: former.ended.is_set(), 30, "the former owner's writer ending")
    assert former.failure is not None  # its transaction failed: the writer is gone, and the shard with it
    wait_until(lambda: 4 in reports.answers, 10, "trade 4 answered")
    assert reports.answers[4] is not None  # refused, or never committed: not in Kafka
    put(former, outlet, 5, reports)  # anything after the end is refused at once
    assert reports.answers[5] is NOT_COMMITTED

    for trade_id in (4, 5, 6):
        put(successor, outlet, trade_id, reports)
    wait_until(lambda: all(reports.answers.get(i, 1) is None for i in (4, 5, 6)), 30, "the successor's trades acknowledged")
    successor.retire()
    successor.join(timeout=10)
    assert not successor.is_alive() and successor.failure is None

    assert trade_ids(broker.bootstrap_servers, registry.url, topic) == {"BTCUSDT": [1, 2, 3, 4, 5, 6]}
