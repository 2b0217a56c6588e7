"""The readback that proves "nothing lost, nothing duplicated" must never come back short
and pass for a loss: a read that stalls raises."""

import pytest
from confluent_kafka import Producer

from k2actors.readback import read_partitions


def test_a_read_that_stalls_raises_instead_of_coming_back_short(broker, topic):
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    producer.produce(topic, b"only record", key=b"k")
    assert producer.flush(10) == 0
    broker.freeze()  # the broker stops answering: nothing comes, not even where the topic's partitions are
    try:
        with pytest.raises(TimeoutError, match=f"reading {topic} back: no metadata within 2 s"):
            read_partitions(broker.bootstrap_servers, topic, timeout=2)
    finally:
        broker.thaw()


def test_a_read_past_transaction_markers_returns_every_record(broker, topic):
    # A transaction's commit marker takes an offset that no consumer ever receives: the end
    # offset promises one record more than can be read, so the end is the partition's EOF.
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "transactional.id": f"{topic}-readback"})
    producer.init_transactions(10)
    for value in (b"first", b"second"):
        producer.begin_transaction()
        producer.produce(topic, value, key=b"k")
        producer.commit_transaction(10)
    assert [message.value() for message in read_partitions(broker.bootstrap_servers, topic, timeout=2)] == [b"first", b"second"]


def test_a_complete_read_returns_every_record(broker, topic):
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    for index in range(5):
        producer.produce(topic, str(index).encode(), key=str(index).encode())
    assert producer.flush(10) == 0
    assert sorted(message.value() for message in read_partitions(broker.bootstrap_servers, topic, timeout=2)) == [
        b"0", b"1", b"2", b"3", b"4"]
