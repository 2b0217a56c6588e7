"""The exchange connection is untrusted input. Property-based: whatever bytes or JSON arrive,
the parser and the normaliser never raise, and each input becomes either a record the Avro
schema accepts or a dead letter with a documented reason."""

import io
import json
import random
import time

import fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k2actors.core.binance import SUBSCRIBABLE, AggTrade, BookTicker, ServerShutdown, SubscriptionReply, Trade, parse_frame
from k2actors.core.frames import EXCHANGE_REASONS, Rejected
from k2actors.core.ledger import DEAD_LETTERS_LOGGED_PER_REASON
from k2actors.core.normalise import Delivery, shape_event
from k2actors.core.sequence import SequenceTracker, Verdict
from k2actors.outlets import schema_for
from k2actors.readback import missing_and_duplicates, read_partitions
from tests.conftest import trade_ids, wait_until

LIMIT = 4096
RECEIVED_US = 1_700_000_000_000_000
SUBSCRIBED = frozenset({"BTCUSDT", "ETHUSDT"})
DELIVERY = Delivery("BINANCE", "wss://stream.binance.com:9443/stream", RECEIVED_US)
SCHEMAS = {stream: fastavro.parse_schema(json.loads(schema_for(stream))) for stream in SUBSCRIBABLE}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=30,
)
DECIMAL_TEXT = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{1,10})?", fullmatch=True),
    st.text(max_size=12),
)
# A valid trade with a few fields replaced by something plausible or by anything at all, or
# removed: examples get past the first checks and exercise the later ones.
VALID_TRADE = {"e": "trade", "E": RECEIVED_US // 1000, "s": "BTCUSDT", "t": 42, "p": "43210.12", "q": "0.0015",
               "T": RECEIVED_US // 1000, "m": True, "M": True}
TRADE_FIELDS = {
    "e": st.sampled_from(["trade", "serverShutdown", "kline"]) | JSON,
    "s": st.sampled_from(sorted(SUBSCRIBED) + ["DOGEUSDT", ""]) | st.text(max_size=25),
    "t": st.integers(min_value=-10, max_value=2**64) | JSON,
    "p": DECIMAL_TEXT | JSON,
    "q": DECIMAL_TEXT | JSON,
    "T": st.integers(min_value=0, max_value=2**64) | st.just(RECEIVED_US // 1000) | JSON,
    "E": st.integers(min_value=-(2**70), max_value=2**70) | JSON,
    "m": st.booleans() | JSON,
    "M": st.booleans() | JSON,
}


@st.composite
def trade_like(draw) -> dict:
    data = dict(VALID_TRADE)
    for name in draw(st.lists(st.sampled_from(sorted(TRADE_FIELDS)), max_size=3, unique=True)):
        if draw(st.integers(0, 4)):
            data[name] = draw(TRADE_FIELDS[name])
        else:
            del data[name]
    return data


TRADE_LIKE = trade_like()

# The same for the other stream types: a valid event with a few fields changed or removed.
VALID_AGG = {"e": "aggTrade", "E": RECEIVED_US // 1000, "s": "ETHUSDT", "a": 7, "p": "2300.5", "q": "1.25",
             "f": 100, "l": 104, "T": RECEIVED_US // 1000, "m": False, "M": True}
VALID_BOOK = {"u": 9000, "s": "BTCUSDT", "b": "43000.10", "B": "0.5", "a": "43000.20", "A": "1.5"}
OTHER_FIELDS = {
    "a": st.integers(min_value=-10, max_value=2**64) | DECIMAL_TEXT | JSON,
    "f": st.integers(min_value=-10, max_value=200) | JSON,
    "l": st.integers(min_value=-10, max_value=200) | JSON,
    "u": st.integers(min_value=-10, max_value=2**64) | JSON,
    "b": DECIMAL_TEXT | JSON,
    "B": DECIMAL_TEXT | JSON,
    "A": DECIMAL_TEXT | JSON,
    **{name: TRADE_FIELDS[name] for name in ("s", "p", "q", "T", "E", "m", "M")},
}


@st.composite
def mutated(draw, valid: dict) -> dict:
    data = dict(valid)
    for name in draw(st.lists(st.sampled_from(sorted(valid)), max_size=3, unique=True)):
        if draw(st.integers(0, 4)) and name in OTHER_FIELDS:
            data[name] = draw(OTHER_FIELDS[name])
        else:
            del data[name]
    return data
FRAMES = st.one_of(
    st.binary(max_size=600),
    JSON.map(json.dumps),
    TRADE_LIKE.map(lambda data: json.dumps({"stream": "btcusdt@trade", "data": data})),
    TRADE_LIKE.map(json.dumps),
    mutated(VALID_AGG).map(lambda data: json.dumps({"stream": "ethusdt@aggTrade", "data": data})),
    mutated(VALID_BOOK).map(lambda data: json.dumps({"stream": "btcusdt@bookTicker", "data": data})),
    mutated(VALID_BOOK).map(json.dumps),
)


def outcome(raw: bytes | str):
    """What the service makes of one frame: a record, a control event, or a dead letter."""
    event = parse_frame(raw, LIMIT)
    if not isinstance(event, (Trade, AggTrade, BookTicker)):
        return event
    return shape_event(event, DELIVERY, {}, SUBSCRIBED)


def assert_record_or_dead_letter(result) -> None:
    if isinstance(result, Rejected):
        assert result.reason in EXCHANGE_REASONS and result.detail
    elif isinstance(result, tuple):
        stream, record = result
        fastavro.schemaless_writer(io.BytesIO(), SCHEMAS[stream], record)  # raises if the schema refuses it
        if stream == "bookTicker":
            assert 0 < record["bid_price"] <= record["ask_price"] and record["bid_quantity"] > 0 < record["ask_quantity"]
        else:
            assert record["price"] > 0 and record["quantity"] > 0
    else:
        assert isinstance(result, (ServerShutdown, SubscriptionReply))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAMES)
def test_any_frame_becomes_a_valid_record_or_a_dead_letter_with_a_reason(raw):
    assert_record_or_dead_letter(outcome(raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=100))
def test_any_frame_over_the_limit_is_a_dead_letter(tail):
    assert outcome(b"{" * LIMIT + tail).reason == "frame_too_large"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.sampled_from("[{"))
def test_any_nesting_depth_is_handled(depth, opener):
    closer = {"[": "]", "{": "}"}[opener]
    body = ('{"a":' * depth + "1" + "}" * depth) if opener == "{" else (opener * depth + closer * depth)
    assert_record_or_dead_letter(outcome(body))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300_000), max_size=200), st.floats(min_value=0, max_value=5))
def test_the_tracker_publishes_no_id_twice_whatever_the_order(ids, grace):
    tracker = SequenceTracker(grace)
    published = []
    for step, trade_id in enumerate(ids):
        verdict = tracker.observe(("BINANCE", "BTCUSDT"), trade_id, step * 0.1)
        tracker.declare_due(step * 0.1)
        if verdict in (Verdict.NEW, Verdict.FILLED, Verdict.RECOVERED):
            published.append(trade_id)
    assert len(published) == len(set(published))
    assert set(published) <= set(ids) and (not ids or ids[0] in published)


def garbage(count: int, seed: int = 1) -> list[bytes]:
    """Frames no trade can come of, of many kinds."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)

    def trade(**fields) -> bytes:
        data = {**VALID_TRADE, "E": now_ms, "T": now_ms, **fields}
        return json.dumps({"stream": "btcusdt@trade", "data": data}).encode()

    kinds = [
        lambda: rng.randbytes(rng.randint(1, 300)),
        lambda: b"[" * rng.randint(10, 5000),
        lambda: trade(s="DOGEUSDT"),
        lambda: trade(p="NaN"),
        lambda: trade(q="-1"),
        lambda: json.dumps([rng.random() for _ in range(rng.randint(0, 50))]).encode(),
    ]
    return [rng.choice(kinds)() for _ in range(count)]


GARBAGE_FRAMES = 30_000


def test_a_flood_of_garbage_leaves_the_service_up_bounded_and_streaming(start_service, simulator, broker, registry, topic):
    service = start_service()
    service.wait_ready()
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 100, 60, "trades flowing")
    memory_before = service.metric("k2_service_memory_bytes")
    frames = garbage(GARBAGE_FRAMES)
    peak_memory = memory_before
    for start in range(0, GARBAGE_FRAMES, 5000):
        simulator.endpoint(0).send_raw(frames[start : start + 5000])
        assert service.get("/health")[0] == 200
        peak_memory = max(peak_memory, service.metric("k2_service_memory_bytes"))
        time.sleep(0.5)
    wait_until(lambda: service.metric("k2_dlq_messages_total") >= GARBAGE_FRAMES, 120, "every garbage frame dead-lettered")
    produced = service.metric("k2_kafka_messages_produced_total")
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") > produced + 100, 30, "trades after the flood")
    peak_memory = max(peak_memory, service.metric("k2_service_memory_bytes"))
    assert service.metric("k2_actor_restarts_total") == 0
    assert service.get("/ready")[0] == 200
    assert service.stop() == 0

    # The frames themselves are about 20 MB; a leak of them, or a log of each, would show.
    assert peak_memory - memory_before < 150 * 2**20
    assert len(read_partitions(broker.bootstrap_servers, f"{topic}.dlq")) == GARBAGE_FRAMES
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    logged = service.log().count("dead letter from")
    assert logged <= DEAD_LETTERS_LOGGED_PER_REASON * len(EXCHANGE_REASONS)
    assert "more dead letters for not_json: counted" in service.log()

