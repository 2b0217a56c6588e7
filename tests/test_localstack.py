import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from itertools import pairwise

import pytest
import websocket
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from k2actors.core.binance import depth_snapshot, depth_update
from k2actors.core.book import BookSync, BookTop, DepthDiff, DepthSnapshot, FetchSnapshot, InSync, OutOfSync, SyncState
from k2actors.localstack.orderbook import DEPTH, MAX_TICKS_FROM_TOUCH, SimBook, cents_text, snapshot_body, units_text
from k2actors.localstack.simulator import ExchangeSimulator
from k2actors.net import free_port
from k2actors.outlets import schema_for
from tests.conftest import REPO, http_get, wait_until


def test_broker_round_trip_through_a_consumer_group(broker, topic):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 3)])[topic].result(10)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True, "compression.type": "lz4"})
    for i in range(50):
        producer.produce(topic, key=f"k{i % 3}".encode(), value=f"v{i}".encode())
    assert producer.flush(10) == 0
    # Tansu assigns a new group after about half the session timeout: keep it short.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": topic,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    values = set()
    deadline = time.monotonic() + 30
    while len(values) < 50 and time.monotonic() < deadline:
        values |= {m.value() for m in consumer.consume(100, 0.5) if m.error() is None}
    consumer.close()
    assert values == {f"v{i}".encode() for i in range(50)}


def receive(ws, seconds):
    """Data frames and ping payloads received for `seconds`."""
    frames, pings = [], []
    ws.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            opcode, frame = ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            continue
        if opcode == websocket.ABNF.OPCODE_PING:
            pings.append(frame.data)
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            frames.append(json.loads(frame.data))
    return frames, pings


def test_simulator_streams_consecutive_ids_and_pings():
    with ExchangeSimulator(symbols=("BTCUSDT", "ETHUSDT"), rate=100, ping_interval=0.3) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade/ethusdt@trade")
        frames, pings = receive(ws, 1.5)
        ws.close()
    by_symbol = {}
    for frame in frames:
        assert frame["stream"] == frame["data"]["s"].lower() + "@trade"
        by_symbol.setdefault(frame["data"]["s"], []).append(frame["data"]["t"])
    assert set(by_symbol) == {"BTCUSDT", "ETHUSDT"}
    for ids in by_symbol.values():
        assert len(ids) > 50 and ids == list(range(ids[0], ids[0] + len(ids)))
    assert len(pings) >= 3  # websocket-client echoed each one, or the server would have dropped us


def test_mirrors_share_one_market_and_a_disconnected_client_misses_trades():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=200) as sim:
        first = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        a, _ = receive(first, 0.5)
        first.close()
        time.sleep(0.5)
        second = websocket.create_connection(sim.urls[1] + "?streams=btcusdt@trade")
        b, _ = receive(second, 0.5)
        second.close()
    assert b[0]["data"]["t"] > a[-1]["data"]["t"] + 20


def test_the_rate_is_changed_over_http_while_the_market_runs():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=20) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        status, body = http_get(f"{sim.rest_url()}/control/rate?per_symbol=2000")
        assert (status, json.loads(body)) == (200, {"per_symbol": 2000.0})
        frames, _ = receive(ws, 1.0)
        ws.close()
        for bad in ("per_symbol=-1", "per_symbol=nan", "per_symbol=fast", "rate=5"):
            assert http_get(f"{sim.rest_url()}/control/rate?{bad}")[0] == 400
        assert sim.market.rate == 2000
    assert len(frames) > 500  # 20 a second would have sent about 20


def test_raw_stream_path_sends_bare_payloads():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=100) as sim:
        ws = websocket.create_connection(sim.urls[0].replace("/stream", "/ws/btcusdt@trade"))
        frames, _ = receive(ws, 0.5)
        ws.close()
    assert frames and all(f["e"] == "trade" and "stream" not in f for f in frames)


def test_client_that_does_not_pong_is_dropped():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=10, ping_interval=0.2, pong_timeout=0.5) as sim:
        sock = websocket.WebSocket()
        sock.connect(sim.urls[0] + "?streams=btcusdt@trade")
        assert wait_until(lambda: sim.endpoint(0).client_count() == 1, 5, "the client to register")
        # Read raw frames without answering pings.
        sock.settimeout(0.2)
        deadline = time.monotonic() + 5
        dropped = False
        while time.monotonic() < deadline and not dropped:
            try:
                sock.recv_frame()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, OSError):
                dropped = True
        assert dropped


def test_subscription_methods():
    with ExchangeSimulator(symbols=("BTCUSDT", "ETHUSDT"), rate=50) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@trade"], "id": 1}))
        ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 2}))
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        frames, _ = receive(ws, 1.0)
        ws.close()
    replies = [f for f in frames if "id" in f]
    assert replies == [{"result": None, "id": 1}, {"result": None, "id": 2}, {"result": ["ethusdt@trade"], "id": 3}]
    trades_after = [f["data"]["s"] for f in frames[frames.index(replies[-1]) + 1 :] if "data" in f]
    assert trades_after and set(trades_after) == {"ETHUSDT"}


def close_code_after(ws) -> int:
    ws.settimeout(2)
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big")


def test_more_than_five_messages_a_second_is_closed_with_1008():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=0) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        for i in range(6):
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        assert close_code_after(ws) == 1008


def test_more_than_1024_streams_is_closed_with_1008():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=0) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": [f"s{i}usdt@trade" for i in range(1024)], "id": 1}))
        assert close_code_after(ws) == 1008
        too_many = "/".join(f"s{i}usdt@trade" for i in range(1025))
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(sim.urls[0] + "?streams=" + too_many)


def test_faults_drop_stall_shutdown_refuse_and_malformed():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=100) as sim:
        control = sim.endpoint(0)
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        wait_until(lambda: control.client_count() == 1, 5, "the client")
        control.send_raw(["{broken", b"\x00\x01"])
        control.server_shutdown()
        frames = []
        ws.settimeout(1)
        while len(frames) < 200:
            opcode, frame = ws.recv_data_frame(True)
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                frames.append(frame.data)
        assert b"{broken" in frames and b"\x00\x01" in frames
        assert any(b'"serverShutdown"' in f for f in frames)

        control.stall()
        time.sleep(0.3)
        ws.settimeout(0.2)
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:
                ws.recv_data_frame(True)  # drain what was queued before the stall
        control.stall(False)
        ws.settimeout(2)
        assert ws.recv_data_frame(True)[0] == websocket.ABNF.OPCODE_TEXT

        control.drop()
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while True:
                ws.recv_data_frame(True)

        control.refuse()
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        assert refused.value.status_code == 503
        websocket.create_connection(sim.urls[1] + "?streams=btcusdt@trade").close()  # the mirror still serves


def test_tape_replay(tmp_path):
    tape = tmp_path / "tape.jsonl"
    tape.write_text('{"e": "trade", "t": 1}\nnot json\n{"result": null, "id": 1}\n')
    with ExchangeSimulator(symbols=("BTCUSDT",), tape=tape) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        received = [ws.recv() for _ in range(3)]
        ws.close()
    assert received == tape.read_text().splitlines()


def test_tape_lines_of_a_stream_go_to_its_subscribers_from_when_they_subscribe(tmp_path):
    def line(stream: str, n: int) -> str:
        return json.dumps({"stream": stream, "data": {"n": n}}, separators=(",", ":"))

    tape = tmp_path / "tape.jsonl"
    lines = [line(("a@trade", "b@trade", "c@trade")[n % 3], n) for n in range(30)]
    lines.insert(7, "not json")
    tape.write_text("\n".join(lines) + "\n")

    def of(stream: str) -> list[str]:
        return [x for x in lines if x.startswith(f'{{"stream":"{stream}"')]

    with ExchangeSimulator(symbols=("BTCUSDT",), tape=tape) as sim:
        by_url = websocket.create_connection(sim.urls[0] + "?streams=a@trade")
        later = websocket.create_connection(sim.urls[0])
        assert later.recv() == "not json"  # lines of no stream reach every connection as it opens
        later.send(json.dumps({"method": "SUBSCRIBE", "params": ["b@trade"], "id": 1}))
        from_url = [by_url.recv() for _ in range(len(of("a@trade")) + 1)]
        subscribed = [later.recv() for _ in range(len(of("b@trade")) + 1)]
        later.settimeout(0.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            later.recv()
        by_url.close()
        later.close()
    assert from_url == [x for x in lines if x == "not json" or x in of("a@trade")]
    assert [x for x in subscribed if '"result"' not in x] == of("b@trade")


def test_rest_history_matches_the_stream():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=100) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@trade")
        frames, _ = receive(ws, 0.5)
        ws.close()
        first = frames[0]["data"]
        status, body = http_get(f"{sim.rest_url()}/api/v3/historicalTrades?symbol=BTCUSDT&fromId={first['t']}&limit=5")
        assert status == 200
        rows = json.loads(body)
        assert [r["id"] for r in rows] == list(range(first["t"], first["t"] + 5))
        assert (rows[0]["price"], rows[0]["qty"], rows[0]["time"], rows[0]["isBuyerMaker"]) == (
            first["p"], first["q"], first["T"], first["m"])
        status, body = http_get(f"{sim.rest_url()}/api/v3/historicalTrades?symbol=BTCUSDT&limit=5000")
        assert status == 200 and len(json.loads(body)) <= 1000
        assert http_get(f"{sim.rest_url()}/api/v3/historicalTrades?symbol=NOPE")[0] == 400
        status, body = http_get(f"{sim.rest_url()}/api/v3/exchangeInfo?symbol=BTCUSDT")
        assert json.loads(body)["symbols"][0]["quoteAsset"] == "USDT"


def test_registry_double_through_confluent_client(registry):
    client = SchemaRegistryClient({"url": registry.url})
    schema = Schema(schema_for("trade"), "AVRO")
    schema_id = client.register_schema("test-registry-value", schema)
    assert client.register_schema("test-registry-value", schema) == schema_id
    fetched = client.get_schema(schema_id)
    assert json.loads(fetched.schema_str) == json.loads(schema_for("trade"))
    latest = client.get_latest_version("test-registry-value")
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert client.lookup_schema("test-registry-value", schema).schema_id == schema_id
    assert "test-registry-value" in client.get_subjects()
    assert client.get_compatibility() == "BACKWARD"
    evolved = json.loads(schema_for("trade"))
    evolved["fields"].append({"name": "extra", "type": "string"})
    assert client.test_compatibility("test-registry-value", Schema(json.dumps(evolved), "AVRO")) is False
    evolved["fields"][-1]["default"] = ""
    assert client.test_compatibility("test-registry-value", Schema(json.dumps(evolved), "AVRO")) is True
    with pytest.raises(SchemaRegistryError):
        client.get_schema(9999)


def test_stand_ins_run_as_foreground_processes_on_fixed_ports_until_sigterm():
    """How the compose check runs them in containers: `python -m k2actors.localstack ...`."""
    first = free_port()
    while not _port_free(first + 1):
        first = free_port()
    registry_port, kraken_port, coinbase_port = free_port(), free_port(), free_port()
    processes = [
        subprocess.Popen([sys.executable, "-m", "k2actors.localstack", "--host", "127.0.0.1", "exchange",
                          "--port", str(first), "--endpoints", "2", "--symbols", "BTCUSDT,ETHUSDT", "--rate", "50"],
                         cwd=REPO, stdout=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-m", "k2actors.localstack", "--host", "127.0.0.1", "registry",
                          "--port", str(registry_port)], cwd=REPO, stdout=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-m", "k2actors.localstack", "--host", "127.0.0.1", "kraken",
                          "--port", str(kraken_port), "--symbols", "BTC/USD"], cwd=REPO, stdout=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-m", "k2actors.localstack", "--host", "127.0.0.1", "coinbase",
                          "--port", str(coinbase_port), "--symbols", "BTC-USD"], cwd=REPO, stdout=subprocess.PIPE, text=True),
    ]
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{registry_port}/subjects") == (200, b"[]"), 15, "the registry")
        wait_until(lambda: http_get(f"http://127.0.0.1:{first}/api/v3/exchangeInfo")[0] == 200, 15, "the exchange")
        info = json.loads(http_get(f"http://127.0.0.1:{first + 1}/api/v3/exchangeInfo")[1])
        assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
        ws = websocket.create_connection(f"ws://127.0.0.1:{first + 1}/stream?streams=ethusdt@trade", timeout=5)
        assert json.loads(ws.recv())["data"]["s"] == "ETHUSDT"
        ws.close()
        wait_until(lambda: http_get(f"http://127.0.0.1:{kraken_port}/0/public/Trades?pair=BTC/USD")[0] == 200, 15, "kraken")
        ws = websocket.create_connection(f"ws://127.0.0.1:{kraken_port}/v2", timeout=5)
        assert json.loads(ws.recv())["channel"] == "status"
        ws.close()
        wait_until(lambda: http_get(f"http://127.0.0.1:{coinbase_port}/products/BTC-USD/trades")[0] == 200, 15, "coinbase")
        ws = websocket.create_connection(f"ws://127.0.0.1:{coinbase_port}/", timeout=5)
        ws.send('{"type":"subscribe","channel":"heartbeats","product_ids":["BTC-USD"]}')
        assert json.loads(ws.recv())["channel"] == "subscriptions"
        ws.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=10)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0, 0]
    assert f"exchange listening on 127.0.0.1:{first}" in outputs[0]
    assert f"registry listening on 127.0.0.1:{registry_port}" in outputs[1]
    assert f"kraken listening on 127.0.0.1:{kraken_port}" in outputs[2]
    assert f"coinbase listening on 127.0.0.1:{coinbase_port}" in outputs[3]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def depth_diffs(frames: list[dict]) -> list[DepthDiff]:
    diffs = [depth_update(frame["data"], 0) for frame in frames]
    assert all(isinstance(diff, DepthDiff) for diff in diffs), diffs
    return diffs


def rest_depth(sim: ExchangeSimulator, limit: int, index: int = 0) -> tuple[int, dict[str, str], DepthSnapshot | bytes]:
    try:
        with urllib.request.urlopen(f"{sim.rest_url(index)}/api/v3/depth?symbol=BTCUSDT&limit={limit}", timeout=10) as response:
            body = response.read()
            snapshot = depth_snapshot(body, "BTCUSDT", limit)
            assert isinstance(snapshot, DepthSnapshot), snapshot
            return response.status, dict(response.headers), snapshot
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def test_the_depth_stream_and_snapshot_keep_a_book_equal_to_the_simulators_level_for_level():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=200) as sim:
        ws = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@depth@100ms")
        sync = BookSync("BTCUSDT", gap_grace_seconds=0.0, max_waiting_diffs=1000, depth=20, cadence_ms=1000)
        assert sync.start() == [FetchSnapshot("BTCUSDT")]
        buffered, _ = receive(ws, 0.5)
        status, headers, snapshot = rest_depth(sim, 5000)
        assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "250"  # Binance's weight of a 5000-level snapshot
        diffs = depth_diffs(buffered + receive(ws, 0.5)[0])
        assert all(later.first_update_id == earlier.final_update_id + 1 for earlier, later in pairwise(diffs))
        assert all(frame["stream"] == "btcusdt@depth@100ms" for frame in buffered)
        for diff in diffs[: len(buffered)]:
            sync.diff(diff, 0.0)
        last_buffered = diffs[len(buffered) - 1].final_update_id
        outputs = sync.snapshot(snapshot)
        assert outputs[0] == InSync("BTCUSDT", snapshot.last_update_id, max(snapshot.last_update_id, last_buffered))
        for diff in diffs[len(buffered):]:
            outputs += sync.diff(diff, 0.0)
        tops = [output for output in outputs if isinstance(output, BookTop)]
        assert len(tops) >= 1 and len(outputs) == len(tops) + 1
        for top in tops:  # each the simulator's book at its update id, level for level
            kept = sim.market.books["BTCUSDT"].at(top.diff.final_update_id)
            assert kept is not None and top.bids == tuple((cents_text(p), units_text(q)) for p, q in kept.bids)
            assert top.asks == tuple((cents_text(p), units_text(q)) for p, q in kept.asks)
        sim.set_rate(0)  # the book stands still: its last diff goes out, and a snapshot shows the same book
        deadline, asked = time.monotonic() + 10, 1
        while True:
            for diff in depth_diffs(receive(ws, 0.2)[0]):
                assert all(isinstance(output, BookTop) for output in sync.diff(diff, 0.0))
            status, headers, still = rest_depth(sim, 5000)
            asked += 1
            if still.last_update_id == sync.last_update_id or time.monotonic() > deadline:
                break
        ws.close()
    assert headers["X-MBX-USED-WEIGHT-1M"] == str(250 * asked)  # the minute's weight so far
    assert still.last_update_id == sync.last_update_id and sync.state is SyncState.IN_SYNC
    assert dict(still.bids) == sync.book.bids and dict(still.asks) == sync.book.asks
    bids, asks = sync.top(20) or ((), ())
    assert bids == still.bids[:20] and asks == still.asks[:20]  # best first, as Binance orders them
    assert max(sync.book.bids, key=float) < min(sync.book.asks, key=float)  # never crossed


def test_depth_faults_a_diff_dropped_on_one_endpoint_a_stale_a_late_and_a_refused_snapshot():
    with ExchangeSimulator(symbols=("BTCUSDT",), rate=200) as sim:
        primary = websocket.create_connection(sim.urls[0] + "?streams=btcusdt@depth@100ms")
        mirror = websocket.create_connection(sim.urls[1] + "?streams=btcusdt@depth@100ms")
        before, _ = receive(primary, 0.3)
        sim.endpoint(0).drop_diff("BTCUSDT")
        dropped, kept = depth_diffs(before + receive(primary, 0.5)[0]), depth_diffs(receive(mirror, 0.8)[0])
        gaps = [(a.final_update_id, b.first_update_id) for a, b in pairwise(dropped) if b.first_update_id != a.final_update_id + 1]
        assert len(gaps) == 1 and all(b.first_update_id == a.final_update_id + 1 for a, b in pairwise(kept))
        primary.close()

        sync = BookSync("BTCUSDT", gap_grace_seconds=0.0, max_waiting_diffs=1000, depth=20, cadence_ms=1000)
        sync.start()
        for diff in depth_diffs(receive(mirror, 0.3)[0]):
            sync.diff(diff, 0.0)
        sim.endpoint(0).stale_snapshots(1)
        stale = rest_depth(sim, 100)[2]
        assert isinstance(stale, DepthSnapshot)
        assert [type(output) for output in sync.snapshot(stale)] == [OutOfSync, FetchSnapshot]  # older than the buffer

        sim.endpoint(0).delay_snapshots(0.5, 1)
        asked = time.monotonic()
        late = rest_depth(sim, 100)[2]
        assert time.monotonic() - asked >= 0.5 and isinstance(late, DepthSnapshot)
        for diff in depth_diffs(receive(mirror, 0.2)[0]):
            sync.diff(diff, 0.0)
        assert [type(output) for output in sync.snapshot(late)][:1] == [InSync]  # taken when asked: the diffs continue it

        sim.endpoint(0).refuse_snapshots(429, 1, retry_after=2)
        status, headers, _ = rest_depth(sim, 100)
        assert status == 429 and headers["Retry-After"] == "2"
        assert rest_depth(sim, 100)[0] == 200
        mirror.close()


def test_the_simulators_book_stays_bounded_and_uncrossed_and_its_diffs_rebuild_it_from_any_snapshot():
    rnd = random.Random(3)
    book = SimBook(4_300_000, 100, random.Random(4))
    start = snapshot_body(book.snapshot())
    price, diffs = 4_300_000, []
    for step in range(20_000):
        price += rnd.randint(-3, 4)  # a walk up, far past the first book
        book.trade(price)
        if step % 7 == 0:
            diffs.append(depth_update(json.loads(book.diff_payload("BTCUSDT", step) or "{}"), 0))
        (bid, _), (ask, _) = book.best()
        assert bid < price < ask
    assert DEPTH <= len(book.bids) <= MAX_TICKS_FROM_TOUCH + 1 and DEPTH <= len(book.asks) <= MAX_TICKS_FROM_TOUCH + 1
    sync = BookSync("BTCUSDT", gap_grace_seconds=0.0, max_waiting_diffs=10**6, depth=20, cadence_ms=1000)
    sync.start()
    snapshot = depth_snapshot(json.dumps(start).encode(), "BTCUSDT", 1000)
    assert isinstance(snapshot, DepthSnapshot)
    for diff in diffs:
        assert isinstance(diff, DepthDiff)
        sync.diff(diff, 0.0)
    assert sync.snapshot(snapshot)[0] == InSync("BTCUSDT", 100, diffs[-1].final_update_id)
    assert (sync.book.bids, sync.book.asks) == ({cents_text(p): units_text(q) for p, q in book.bids.items()},
                                                {cents_text(p): units_text(q) for p, q in book.asks.items()})
    # and what it was after each of the last diffs, for the clients' books to be held against
    kept = book.at(diffs[-1].final_update_id)
    assert kept is not None and (kept.bids, kept.asks) == (book.snapshot(20).bids, book.snapshot(20).asks)
    assert book.at(diffs[0].final_update_id) is None  # long gone
