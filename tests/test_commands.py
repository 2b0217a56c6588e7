"""`demo` and `tail` as a new user would run them."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

from confluent_kafka.admin import AdminClient, NewTopic

from k2actors.localstack.broker import TansuBroker
from k2actors.net import free_port
from k2actors.readback import read_partitions
from tests.conftest import REPO, wait_until


def test_demo_runs_offline_and_stops_cleanly():
    result = subprocess.run(
        [sys.executable, "-m", "k2actors", "demo", "--duration", "8", "--rate", "30"],
        capture_output=True, text=True, timeout=90, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) >= 4
    # the three venues, each symbol as its records name it
    venues = {"BINANCE": ("BNBUSDT", "BTCUSDT", "ETHUSDT"), "KRAKEN": ("BTCUSD", "ETHUSD", "SOLUSD"),
              "COINBASE": ("BTCUSD", "ETHUSD", "SOLUSD")}
    rates = dict(re.findall(r"(\w+@\w+) +(\d+)/s", lines[-1]))
    assert set(rates) == {f"{symbol}@{venue}" for venue, symbols in venues.items() for symbol in symbols}, lines[-1]
    assert sum(map(int, rates.values())) > 0 and re.search(r"delivered \d+ +dlq 0$", lines[-1]), lines[-1]
    delivered = [int(re.search(r"delivered (\d+)", line).group(1)) for line in lines]
    assert delivered[-1] > delivered[0] and delivered[-1] > 0
    assert "every trade received was delivered" in result.stderr
    assert "exchangeInfo from BINANCE: quote assets of 3 symbols" in result.stderr  # from the simulator, offline


def test_the_demo_says_how_to_tail_its_trades_and_that_works():
    demo = subprocess.Popen(
        [sys.executable, "-m", "k2actors", "demo", "--duration", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
    )
    try:
        hint = next(line for line in demo.stdout if "python -m k2actors tail" in line)
        command = hint.split(": ", 1)[1].split()
        env = dict(assignment.split("=", 1) for assignment in command if "=" in assignment)
        assert command[len(env):] == ["python", "-m", "k2actors", "tail"]
        tail = subprocess.run(
            [sys.executable, "-m", "k2actors", "tail", "--from-beginning", "--max", "3"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **env},
        )
        assert tail.returncode == 0, tail.stderr[-2000:]
        assert len(re.findall(r"USDT +(BUY|SELL) ", tail.stdout)) == 3
    finally:
        demo.terminate()
        demo.wait(30)


def test_tail_prints_trades_from_the_topic(start_service, broker, topic):
    service = start_service()
    service.wait_ready()
    wait_until(lambda: service.metric("k2_kafka_messages_produced_total") >= 20, 60, "20 trades")
    assert service.stop() == 0
    in_kafka = len(read_partitions(broker.bootstrap_servers, topic))

    def tail(*args):
        return subprocess.run(
            [sys.executable, "-m", "k2actors", "tail", "--from-beginning", *args],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=service.env,
        )

    as_json = tail("--max", "10", "--json")
    assert as_json.returncode == 0, as_json.stderr
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(records) == 10
    for record in records:
        assert record["trade_id"] == f"BINANCE-{record['source_sequence']}" and record["symbol"] in ("BTCUSDT", "ETHUSDT", "BNBUSDT")
        assert float(record["price"]) > 0 and record["side"] in ("BUY", "SELL")

    readable = tail("--max", str(in_kafka))
    lines = readable.stdout.splitlines()
    assert len(lines) == in_kafka
    assert re.fullmatch(r"\S+ BINANCE +[A-Z]+ +(BUY|SELL) +[\d.]+ @ [\d.]+ USDT  BINANCE-\d+", lines[0])

    missing = tail("--topic", "no.such.topic", "--max", "1")
    assert missing.returncode == 1 and "no.such.topic" in missing.stderr


def test_tail_without_a_broker_says_so_plainly():
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "k2actors", "tail", "--max", "1"], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "K2_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
    )
    assert result.returncode == 1
    # One line, with librdkafka's reason in it, not a screenful of its retries.
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert f"k2actors tail: cannot reach Kafka at 127.0.0.1:{port}" in result.stderr
    assert "Connection refused" in result.stderr


def test_tail_says_when_the_broker_goes_away_while_it_reads():
    with TansuBroker() as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        admin.create_topics([NewTopic("quiet", 1)])["quiet"].result(10)
        tail = subprocess.Popen(
            [sys.executable, "-m", "k2actors", "tail", "--topic", "quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin", "K2_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers},
        )
        stderr: list[str] = []
        threading.Thread(target=lambda: stderr.extend(tail.stderr), daemon=True).start()
        try:
            wait_until(lambda: any("reading quiet (1 partition) from the newest record" in line for line in stderr), 30, "tail reading")
            assert len(stderr) == 1
            broker.stop()
            wait_until(lambda: any("Connection refused" in line for line in stderr), 30, "the lost broker reported")
            time.sleep(3)  # librdkafka retries about twenty times a second meanwhile
        finally:
            tail.terminate()
            assert tail.wait(30) == 0
    assert tail.stdout.read() == ""
    reports = stderr[1:]
    assert reports and all(line.startswith("k2actors tail: kafka: ") for line in reports)
    assert len(reports) < 10, reports  # the retries are said once, not twenty times a second


def _start(env: dict[str, str], seconds: float | None = None) -> subprocess.CompletedProcess:
    """`start` as a user runs it; stopped with SIGINT after `seconds` when given."""
    process = subprocess.Popen([sys.executable, "-m", "k2actors", "start"], env={**os.environ, **env}, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if seconds is not None:
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(2)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_metrics_port_in_use_is_one_clear_line_and_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _start({"K2_BINANCE_ENABLED": "false", "K2_METRICS_BIND_ADDRESS": "127.0.0.1", "K2_METRICS_PORT": str(port),
                         "K2_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1
    assert f"cannot start: metrics: cannot listen on 127.0.0.1 port {port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_receipts_directory_it_cannot_write_is_one_clear_line_and_exit_2(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = _start({"K2_RAW_RECEIPTS_DIR": str(tmp_path / "a-file" / "receipts"), "K2_METRICS_PORT": str(free_port())})
    assert result.returncode == 2
    assert "cannot start: invalid config: raw.receipts_dir" in result.stderr
    assert "expected a directory this user can create and write (Not a directory)" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_kafka_is_one_line_per_attempt_naming_it_not_a_flood():
    port = free_port()
    result = _start({"K2_BINANCE_ENABLED": "false", "K2_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                     "K2_KAFKA_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1", "K2_METRICS_PORT": str(port)}, seconds=15)
    lines = result.stderr.splitlines()
    attempts = [line for line in lines if "producer setup failed" in line]
    assert attempts and all("Kafka at 127.0.0.1:1" in line and "Connection refused" in line for line in attempts)
    assert not [line for line in lines if "k2actors.librdkafka" in line]  # librdkafka's retries stay out of the log
    assert len(lines) < 20 and result.returncode == 0, result.stderr  # a stop before Kafka answered is clean
