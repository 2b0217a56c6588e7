"""Faults, and what the service does about them: each test breaks one thing in the real
local stack while trades flow, then checks Kafka and the metrics for the truth."""

import os
import signal
import time

import pytest

from tests.conftest import missing_and_duplicates, trade_ids, wait_until


def settle(service, seconds: float = 4.0) -> dict[str, float]:
    """Let gap grace periods pass and metrics arrive, then read them."""
    time.sleep(seconds)
    return service.metrics()


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def wait_for_trades(service, more_than: float, timeout: float = 60) -> None:
    wait_until(
        lambda: service.metric("k2_kafka_messages_produced_total") > more_than, timeout,
        f"more than {more_than:.0f} trades in Kafka",
    )


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
    for role in ("metrics", "producer", "normaliser", connection):
        pid = wait_until(lambda: service.health().get("actors", {}).get(role), 20, f"the {role} actor's pid")
        os.kill(pid, signal.SIGKILL)
        wait_for_new_pid(service, role, pid)
        wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 50)
    samples = settle(service)
    assert total(samples, "k2_actor_restarts_total") == 4
    assert service.stop() == 0, service.log()

    missing, duplicates = missing_and_duplicates(trade_ids(broker, registry, topic))
    assert missing == total(samples, "k2_binance_missing_trades_total") - total(samples, "k2_binance_recovered_trades_total")
    assert duplicates <= total(samples, "k2_kafka_resent_records_total")


def test_a_dead_coordinator_makes_the_service_exit_non_zero(start_service):
    service = start_service()
    service.wait_ready()
    actors = wait_until(lambda: len(a := service.health().get("actors", {})) >= 5 and a, 20, "every actor's pid")
    os.kill(actors["coordinator"], signal.SIGKILL)
    assert service.process.wait(60) == 1
    assert "the coordinator has been silent" in service.log()
    time.sleep(1)
    survivors = [role for role, pid in actors.items() if _alive(pid)]
    assert survivors == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"
