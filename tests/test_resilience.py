"""Faults, and what the service does about them: each test breaks one thing in the real
local stack while trades flow, then checks Kafka and the metrics for the truth."""

import os
import signal
import time

import pytest

from k2actors.localstack.registry import SchemaRegistryDouble
from k2actors.net import free_port
from k2actors.readback import missing_and_duplicates, read_partitions
from tests.conftest import every_frame_once, trade_ids, wait_until

# What a fault test compares with Kafka: settled once none of them moves between two scrapes.
SETTLING = ("k2_binance_missing_trades_total", "k2_binance_recovered_trades_total", "k2_backfill_trades_total",
            "k2_backfill_unfilled_trades_total", "k2_actor_restarts_total", "k2_kafka_resent_records_total")


def settle(service, timeout: float = 60) -> dict[str, float]:
    """The metrics once the service has settled: no id inside its gap grace, no backfill open,
    and the counters under test unchanged across two scrapes a Normaliser tick apart."""

    def settled() -> dict[str, float] | None:
        before = service.metrics()
        if total(before, "k2_binance_gaps_pending") or total(before, "k2_backfill_gaps_open"):
            return None
        time.sleep(1.0)  # two ticks of the Normaliser, which flushes its counters every tick
        after = service.metrics()
        moved = any(total(before, name) != total(after, name) for name in SETTLING)
        pending = total(after, "k2_binance_gaps_pending") or total(after, "k2_backfill_gaps_open")
        return None if moved or pending else after

    return wait_until(settled, timeout, "gaps, backfill and restarts to settle")


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def wait_for_trades(service, more_than: float, timeout: float = 60) -> None:
    try:
        wait_until(lambda: service.metric("k2_kafka_messages_produced_total") > more_than, timeout,
                   f"more than {more_than:.0f} trades in Kafka")
    except AssertionError as exc:  # what the service said meanwhile is what tells a stall's cause
        raise AssertionError(f"{exc}; the service's log ends:\n{service.log()[-6000:]}") from None


def wait_for_new_pid(service, role: str, old_pid: int, timeout: float = 30) -> int:
    return wait_until(
        lambda: (pid := service.health().get("actors", {}).get(role)) not in (None, old_pid) and pid,
        timeout, f"a new {role} actor",
    )


def test_every_actor_killed_in_turn_is_replaced_and_only_reported_gaps_are_lost(
    start_service, simulator, broker, registry, topic
):
    service = start_service()
    service.wait_ready()
    wait_for_trades(service, 100)
    connection = f"connection {simulator.urls[0]}"
    # The metrics actor first: its restart starts every counter afresh (the coordinator
    # still holds the count of that restart and reports it to the new one).
    for role in ("metrics", "producer", "normaliser", "backfill", connection):
        pid = wait_until(lambda role=role: service.health().get("actors", {}).get(role), 20, f"the {role} actor's pid")
        os.kill(pid, signal.SIGKILL)
        wait_for_new_pid(service, role, pid)
        wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 50)
    samples = settle(service)
    assert total(samples, "k2_actor_restarts_total") == 5
    actors = service.health()["actors"]
    assert service.stop() == 0, service.log()
    # Thespian's shutdown leaves idle processes behind after SIGKILLed children; the service ends them
    wait_until(lambda: not _descendants_alive(actors), 10, "every process of the actor system to exit")

    missing, duplicates = missing_and_duplicates(trade_ids(broker, registry, topic))
    assert missing == (total(samples, "k2_binance_missing_trades_total") - total(samples, "k2_binance_recovered_trades_total")
                       - total(samples, "k2_backfill_trades_total"))
    assert duplicates <= total(samples, "k2_kafka_resent_records_total")


def test_a_dead_coordinator_makes_the_service_exit_non_zero(start_service):
    service = start_service()
    service.wait_ready()
    actors = wait_until(lambda: len(a := service.health().get("actors", {})) >= 5 and a, 20, "every actor's pid")
    os.kill(actors["coordinator"], signal.SIGKILL)
    assert service.process.wait(60) == 1
    assert "the coordinator has been silent" in service.log()
    wait_until(lambda: not _descendants_alive(actors), 10, "every actor process to exit")


def _descendants_alive(actors: dict[str, int]) -> list[int]:
    """Every process of the service that is still running: its main process, Thespian's
    admin (the actor system, which detaches itself) and each actor."""
    return [pid for pid in actors.values() if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_hot_standby_losing_its_primary_loses_and_duplicates_nothing(start_service, simulator, broker, registry, topic):
    service = start_service(K2_BINANCE_MODE="hot_standby")
    service.wait_ready()
    wait_until(lambda: simulator.endpoint(1).client_count() == 1, 20, "the standby connection")
    wait_for_trades(service, 150)
    simulator.endpoint(0).drop()  # no close frame
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_binance_missing_trades_total") == 0
    assert total(samples, "k2_binance_duplicate_trades_total") > 0  # the mirrors really overlapped
    assert total(samples, "k2_binance_reconnects_total") >= 1


@pytest.mark.parametrize("fault", ["drop", "stall"])
def test_cold_failover_without_backfill_reports_its_gap_exactly(fault, start_service, simulator, broker, registry, topic):
    service = start_service(
        K2_BINANCE_STALE_TIMEOUT_SECONDS="1.5", K2_BINANCE_BACKFILL="false",
    )
    service.wait_ready()
    wait_for_trades(service, 150)
    primary = simulator.endpoint(0)
    primary.refuse()
    if fault == "drop":
        primary.drop()
    else:
        primary.stall()  # the socket stays open; only the connection watchdog can notice
    wait_until(
        lambda: service.metrics().get(f'k2_binance_connection_status{{url="{simulator.urls[1]}"}}') == 1,
        30, "the failover connection",
    )
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    missing, duplicates = missing_and_duplicates(trade_ids(broker, registry, topic))
    assert duplicates == 0
    assert missing > 0  # trades happened while nothing was connected
    assert missing == total(samples, "k2_binance_missing_trades_total")
    assert "gap in BINANCE" in service.log()
    reason = "connection_lost" if fault == "drop" else "stale"
    assert samples[f'k2_binance_reconnects_total{{reason="{reason}",url="{simulator.urls[0]}"}}'] == 1


@pytest.mark.parametrize("trigger", ["server_shutdown", "max_age"])
def test_rotation_makes_before_it_breaks(trigger, start_service, simulator, broker, registry, topic):
    overrides = {"K2_BINANCE_MAX_CONNECTION_AGE_SECONDS": "3"} if trigger == "max_age" else {}
    service = start_service(**overrides)
    service.wait_ready()
    wait_for_trades(service, 150)
    if trigger == "server_shutdown":
        simulator.endpoint(0).server_shutdown()
    rotations = f'k2_connection_rotations_total{{reason="{trigger}",url="{simulator.urls[0]}"}}'
    wait_until(lambda: service.metrics().get(rotations, 0) >= 1, 30, "a rotation")
    wait_until(lambda: simulator.endpoint(0).client_count() == 1, 10, "the old connection to close")
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_binance_missing_trades_total") == 0
    assert total(samples, "k2_binance_reconnects_total") == 0  # replaced, never lost
    assert len(every_frame_once(broker, registry, topic)) >= 2  # every connection of the rotations archived whole


def test_circuit_opens_half_opens_and_closes_again(start_service, simulator):
    for index in (0, 1):
        simulator.endpoint(index).refuse()
    service = start_service(
        K2_CIRCUIT_BREAKER_FAILURE_THRESHOLD="2",
        K2_CIRCUIT_BREAKER_RESET_TIMEOUT_SECONDS="2",
    )
    state = f'k2_circuit_breaker_state{{url="{simulator.urls[0]}"}}'
    wait_until(lambda: service.get("/metrics")[0] == 200 and service.metrics().get(state) == 2, 30, "the circuit to open")
    status, body = service.get("/ready")
    assert status == 503 and b"open" in body
    wait_until(lambda: "closed -> open" in service.log() and "open -> half_open" in service.log()
               and "half_open -> open" in service.log(), 30, "a failed trial")
    for index in (0, 1):
        simulator.endpoint(index).refuse(False)
    service.wait_ready()
    wait_until(lambda: "half_open -> closed" in service.log(), 10, "the circuit to close")
    wait_until(lambda: service.metrics()[state] == 0, 10, "the breaker gauge to say closed")
    assert service.stop() == 0, service.log()


def test_exits_non_zero_when_no_endpoint_streams_for_too_long(start_service, simulator):
    for index in (0, 1):
        simulator.endpoint(index).refuse()
    service = start_service(
        K2_CIRCUIT_BREAKER_FAILURE_THRESHOLD="2",
        K2_CIRCUIT_BREAKER_RESET_TIMEOUT_SECONDS="1", K2_CIRCUIT_BREAKER_EXIT_AFTER_OPEN_SECONDS="3",
    )
    assert service.process.wait(60) == 1
    assert "giving up: no endpoint has streamed" in service.log()


def test_a_frozen_broker_holds_trades_and_delivers_each_once_when_it_returns(
    start_service, simulator, broker, registry, topic
):
    service = start_service()
    service.wait_ready()
    wait_for_trades(service, 150)
    broker.freeze()
    try:
        status, body = wait_until(lambda: (s := service.get("/ready"))[0] == 503 and s, 20, "/ready to say degraded")
        assert b"no acknowledgement" in body
        time.sleep(20 - 5)
        held = service.metric("k2_connection_unconfirmed_frames")
        assert held > 1000  # everything received meanwhile, about 150 trades a second, kept by the connection
    finally:
        broker.thaw()
    service.wait_ready()
    wait_until(lambda: service.metric("k2_connection_unconfirmed_frames") < 200, 30, "the backlog to drain")
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_binance_missing_trades_total") == 0


def test_a_full_buffer_holds_the_exchange_back_and_loses_nothing(start_service, simulator, broker, registry, topic):
    service = start_service(K2_KAFKA_MAX_BUFFERED_RECORDS="1000")
    service.wait_ready()
    wait_for_trades(service, 150)
    broker.freeze()
    try:
        pauses = f'k2_binance_read_pauses_total{{url="{simulator.urls[0]}"}}'
        wait_until(lambda: service.metrics().get(pauses, 0) >= 1, 30, "reading to pause")
        held = service.metric("k2_buffered_records")
        time.sleep(5)
        assert service.metric("k2_buffered_records") <= max(held, 1000) + 5000  # bounded: a window of batches at most
    finally:
        broker.thaw()
    service.wait_ready()
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_binance_missing_trades_total") == 0
    assert "holding the connections back" in service.log() and "reading from" in service.log()


def test_a_killed_service_process_leaves_no_actor_behind(start_service):
    service = start_service()
    service.wait_ready()
    actors = wait_until(lambda: len(a := service.health().get("actors", {})) >= 5 and a, 20, "every actor's pid")
    service.process.kill()
    service.process.wait()
    wait_until(lambda: not _descendants_alive(actors), 20, "every actor process to exit")


def test_with_service_and_coordinator_killed_at_once_the_other_actors_end_the_actor_system(start_service):
    service = start_service()
    service.wait_ready()
    actors = wait_until(lambda: len(a := service.health().get("actors", {})) >= 5 and a, 20, "every actor's pid")
    os.kill(actors["coordinator"], signal.SIGKILL)  # the one that would otherwise clean up
    service.process.kill()
    service.process.wait()
    wait_until(lambda: not _descendants_alive(actors), 20, "every actor process to exit")


def test_registry_down_at_start_is_retried_and_nothing_is_produced_without_a_schema(
    start_service, simulator, broker, topic
):
    port = free_port()
    service = start_service(K2_KAFKA_SCHEMA_REGISTRY_URL=f"http://127.0.0.1:{port}")
    wait_until(lambda: (s := service.get("/ready"))[0] == 503 and b"setup failed" in s[1], 30, "/ready to say why")
    wait_until(lambda: "producer setup failed (attempt 2," in service.log(), 30, "a second attempt")
    assert read_partitions(broker.bootstrap_servers, topic) == []
    with SchemaRegistryDouble(port=port) as registry:
        service.wait_ready(60)
        wait_for_trades(service, 100)
        assert service.stop() == 0, service.log()
        ids = trade_ids(broker, registry, topic)
    assert missing_and_duplicates(ids) == (0, 0) and sum(map(len, ids.values())) >= 100
