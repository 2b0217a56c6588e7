"""A message an actor fails on twice comes back as a PoisonMessage: its trades reach the DLQ,
and nothing is sent round again. Real actors in a real actor system; the producer is one
that fails on purpose."""

import json
import time

import pytest
from thespian.actors import ActorSystem

from k2actors.actors.normaliser import Normaliser
from k2actors.core.payloads import PoisonedFrames, RawBatch
from k2actors.messages import NormaliserSetup
from k2actors.net import free_port
from tests.actors import RecordRefusingProducer, Sink, StandInSetup

URL = "ws://exchange.example/stream"
TRADE = {"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 7, "p": "1.5", "q": "2",
                                             "T": 1_700_000_000_000, "m": True}}


@pytest.fixture
def actors():
    system = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()})
    try:
        producer = system.createActor(RecordRefusingProducer)
        system.tell(producer, StandInSetup())
        normaliser = system.createActor(Normaliser)
        setup = NormaliserSetup(producer, system.createActor(Sink), gap_grace_seconds=0.0, symbols=frozenset({"BTCUSDT"}),
                                backfill=None, fill_gaps=False, fill_kraken_gaps=False, fill_coinbase_gaps=False, quote_assets={},
                                exchange_info=(),
                                max_buffered_records=100_000, max_frame_bytes=65536, stale_timeout_seconds=30.0, owned=None,
                                raw=False, book_depth=20, book_cadence_ms=1000, kraken=None, coinbase=None)
        system.tell(normaliser, setup)
        yield system, normaliser, producer
    finally:
        system.shutdown()


def ask_dead_letters(system, producer) -> list:
    # The normaliser's heartbeats come here too (the test stands where the coordinator would).
    reply = system.ask(producer, "dead letters", 5)
    for _ in range(50):
        if isinstance(reply, list):
            return reply
        reply = system.listen(1)
    raise AssertionError("the producer never answered")


def dead_letters(system, producer, count: int) -> list:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        letters = ask_dead_letters(system, producer)
        if len(letters) >= count:
            return letters
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} dead letters after 20 s")


def test_records_the_producer_fails_on_twice_go_to_the_dlq_as_json(actors):
    system, normaliser, producer = actors
    system.tell(normaliser, RawBatch(URL, "BINANCE", 1, ((1_700_000_000_000_000_000, "conn", 1, json.dumps(TRADE).encode()),)))
    [(reason, raw)] = dead_letters(system, producer, 1)
    assert reason == "poison_message"
    record = json.loads(raw)
    assert (record["trade_id"], record["symbol"], record["vendor_data"]["endpoint"]) == ("BINANCE-7", "BTCUSDT", URL)
    time.sleep(1)
    assert len(ask_dead_letters(system, producer)) == 1  # never sent round again


def test_frames_the_normaliser_failed_on_go_to_the_dlq_unparsed(actors):
    system, normaliser, producer = actors
    frames = ((1, "conn", 1, b"first"), (2, "conn", 2, json.dumps(TRADE).encode()))
    system.tell(normaliser, PoisonedFrames(URL, "BINANCE", frames, "KeyError: 'x'"))
    assert dead_letters(system, producer, 2) == [("poison_message", b"first"), ("poison_message", json.dumps(TRADE).encode())]
