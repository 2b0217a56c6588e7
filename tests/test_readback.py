"""The readback that proves "nothing lost, nothing duplicated" must never come back short
and pass for a loss: a read that stalls raises."""

import threading

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


def test_a_read_while_another_transaction_is_open_returns_every_committed_record(broker, topic):
    # As in cluster mode, where some shard writer has a transaction open nearly always: the
    # read-committed end of every partition then reads as 0 (Tansu), which is no end at all.
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "transactional.id": f"{topic}-committed"})
    producer.init_transactions(10)
    producer.begin_transaction()
    for index in range(5):
        producer.produce(topic, str(index).encode(), key=str(index).encode())
    producer.commit_transaction(10)
    still_open = Producer({"bootstrap.servers": broker.bootstrap_servers, "transactional.id": f"{topic}-open"})
    still_open.init_transactions(10)
    still_open.begin_transaction()
    still_open.produce(topic, b"uncommitted", key=b"another")
    assert still_open.flush(10) == 0
    try:
        read = {message.value() for message in read_partitions(broker.bootstrap_servers, topic, timeout=2)}
    finally:
        still_open.abort_transaction(10)
    assert {b"0", b"1", b"2", b"3", b"4"} <= read


def test_a_complete_read_returns_every_record(broker, topic):
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    for index in range(5):
        producer.produce(topic, str(index).encode(), key=str(index).encode())
    assert producer.flush(10) == 0
    assert sorted(message.value() for message in read_partitions(broker.bootstrap_servers, topic, timeout=2)) == [
        b"0", b"1", b"2", b"3", b"4"]


def test_a_last_batch_is_read_whole_though_the_end_offset_names_its_first_record(broker, topic):
    # Tansu reports a partition's end as the start of its last batch plus one. One batch of
    # more records than one consume call returns must still come back whole.
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 1000, "batch.num.messages": 100_000})
    count = 12_000
    for index in range(count):
        producer.produce(topic, str(index).encode(), key=b"one partition")
    assert producer.flush(10) == 0
    assert [int(message.value()) for message in read_partitions(broker.bootstrap_servers, topic, timeout=5)] == list(range(count))


def test_a_read_while_a_producer_keeps_writing_ends_with_everything_written_before_it(broker, topic):
    # The read must end while the writer still writes (it stops only after far more than a
    # read takes), and hold everything written before it began.
    before, most = 1000, 2_000_000
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 5})
    for index in range(before):
        producer.produce(topic, str(index).encode(), key=str(index % 3).encode())
    assert producer.flush(10) == 0
    stop = threading.Event()
    written = [before]

    def keep_writing() -> None:
        while not stop.is_set() and written[0] < most:
            try:
                producer.produce(topic, str(written[0]).encode(), key=str(written[0] % 3).encode())
                written[0] += 1
            except BufferError:
                producer.poll(0.01)
            producer.poll(0)
        producer.flush(10)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        read = {int(message.value()) for message in read_partitions(broker.bootstrap_servers, topic, timeout=5)}
    finally:
        stop.set()
        writer.join()
    assert set(range(before)) <= read
    assert len(read) < most  # it ended before the writer did
