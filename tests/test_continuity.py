"""Continuity across a failing primary: mirrors are mirrors. Each test breaks the primary the
way an operator meets it, with a healthy mirror and REST history, and reads the topic back:
every trade the simulator printed between the first and the last one in Kafka is there,
exactly once, the ones missed during the failover backfilled."""

import contextlib
import json
import os
import signal

import pytest

from k2actors.readback import missing_and_duplicates
from tests.conftest import trade_ids, wait_until
from tests.test_resilience import settle, total, wait_for_new_pid, wait_for_trades


def fail_primary(fault: str, simulator) -> None:
    primary = simulator.endpoint(0)
    if fault == "refusing":
        primary.refuse()  # TCP and HTTP answer, the websocket upgrade is refused
    elif fault == "flapping":
        primary.flap()  # handshake accepted, then dropped at once, again and again
    else:
        primary.stall()  # the socket stays open; nothing comes, pings included
    if fault != "stalled":
        primary.drop()


@pytest.mark.parametrize("fault", ["refusing", "flapping", "stalled"])
def test_a_failing_primary_is_left_for_the_mirror_and_nothing_is_lost(fault, start_service, simulator, broker, registry, topic):
    service = start_service(K2_BINANCE_STALE_TIMEOUT_SECONDS="1.5", K2_LOG_FORMAT="json")
    service.wait_ready()
    wait_for_trades(service, 150)
    fail_primary(fault, simulator)
    mirror = f'k2_binance_connection_status{{url="{simulator.urls[1]}"}}'
    wait_until(lambda: service.metrics().get(mirror) == 1, 30, "the mirror streaming")
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_backfill_unfilled_trades_total") == 0
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    resumed = [line for line in lines if line.get("event") == "streaming"]
    assert resumed and resumed[-1]["endpoint"] == simulator.urls[1] and resumed[-1]["seconds_without_data"] > 0
    assert any(line.get("event") == "failover" and line["from_endpoint"] == simulator.urls[0] for line in lines)
    # the primary was left, not retried forever: a flapping one counts its handshakes as failures
    attempts_on_primary = [line for line in lines if line.get("event") == "connection_connecting"
                           and line["endpoint"] == simulator.urls[0]]
    assert len(attempts_on_primary) <= 3


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_restart_resumes_from_kafka_and_backfills_what_was_printed_while_down(how, start_service, simulator, broker,
                                                                                registry, topic):
    first = start_service()
    first.wait_ready()
    wait_for_trades(first, 150)
    if how == "SIGTERM":
        assert first.stop() == 0, first.log()
    else:
        first.process.kill()  # the whole service at once: no drain, no flush, no last checkpoint
        first.process.wait()
    before = simulator.last_ids()
    # 5 s down: 250 trades per symbol at the simulator's 50 a second
    wait_until(lambda: all(simulator.last_ids()[s] >= before[s] + 250 for s in before), 30, "trades printed while down")
    second = start_service()
    second.wait_ready()
    wait_until(lambda: total(second.metrics(), "k2_backfill_trades_total") > 0, 60, "the downtime backfilled")
    wait_for_trades(second, second.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(second)
    assert second.stop() == 0, second.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_backfill_unfilled_trades_total") == 0
    declared = total(samples, "k2_binance_missing_trades_total")  # the downtime, declared as gaps
    assert declared > 0 and total(samples, "k2_backfill_trades_total") + total(samples, "k2_binance_recovered_trades_total") == declared
    assert "resuming id tracking of 3 streams from what Kafka holds" in second.log()


@pytest.mark.parametrize("role", ["producer", "normaliser", "connection"])
def test_a_killed_actor_is_replaced_and_nothing_is_lost_or_duplicated(role, start_service, simulator, broker, registry, topic):
    service = start_service()
    service.wait_ready()
    wait_for_trades(service, 150)
    name = f"connection {simulator.urls[0]}" if role == "connection" else role
    pid = wait_until(lambda: service.health().get("actors", {}).get(name), 20, f"the {role} actor's pid")
    os.kill(pid, signal.SIGKILL)
    wait_for_new_pid(service, name, pid)
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert total(samples, "k2_actor_restarts_total") == 1
    assert total(samples, "k2_backfill_unfilled_trades_total") == 0


def test_a_producer_frozen_past_the_heartbeat_timeout_is_replaced_without_duplicates(start_service, broker, registry, topic):
    service = start_service()
    service.wait_ready()
    wait_for_trades(service, 150)
    pid = wait_until(lambda: service.health().get("actors", {}).get("producer"), 20, "the producer's pid")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for_new_pid(service, "producer", pid, timeout=40)  # replaced after the heartbeat timeout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # the supervisor killed it; were it alive it would wake up fenced out
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert samples['k2_actor_restarts_total{actor="producer",reason="silent"}'] == 1


def test_aggregate_trades_missed_in_a_failover_are_backfilled_too(start_service, simulator, broker, registry, topic):
    agg_topic = f"{topic}.agg"
    # The circuit stays closed: this test wants the venue back as soon as the mirror answers.
    service = start_service(K2_BINANCE_STREAMS="trade,aggTrade", K2_KAFKA_AGGTRADE_TOPIC=agg_topic,
                            K2_CIRCUIT_BREAKER_FAILURE_THRESHOLD="1000")
    service.wait_ready()
    wait_for_trades(service, 300)
    mirror = simulator.endpoint(1)
    mirror.refuse()  # for a moment nothing answers, so aggregate trades are missed for certain
    fail_primary("refusing", simulator)
    wait_until(lambda: service.metric("k2_binance_reconnects_total") >= 2, 30, "the mirror refusing too")
    mirror.refuse(False)
    aggregate_gaps = lambda: sum(v for k, v in service.metrics().items()  # noqa: E731
                                 if k.startswith("k2_binance_missing_trades_total{") and 'stream="aggTrade"' in k)
    wait_until(aggregate_gaps, 30, "an aggregate trade gap declared")
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 300)
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert missing_and_duplicates(trade_ids(broker, registry, agg_topic)) == (0, 0)
    assert total(samples, "k2_backfill_unfilled_trades_total") == 0
    assert "backfilled" in service.log() and "aggregate trades of BINANCE" in service.log()


@pytest.mark.parametrize("simulator", [{"rate": 2000}], indirect=True)  # 6,000 trades/s offered
def test_held_to_half_a_cpu_it_falls_behind_holds_the_exchange_back_and_duplicates_nothing(
    start_service, simulator, broker, registry, topic
):
    service = start_service(cpus=0.5, K2_KAFKA_MAX_BUFFERED_RECORDS="5000")
    service.wait_ready(60)
    pauses = f'k2_binance_read_pauses_total{{url="{simulator.urls[0]}"}}'
    wait_until(lambda: service.metrics().get(pauses, 0) >= 1, 60, "reading to pause: the service is behind")
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 20_000, timeout=120)
    simulator.set_rate(20)  # the burst is over: the service catches up and fills what it missed
    printed = simulator.last_ids()

    def caught_up() -> bool:
        ids = trade_ids(broker, registry, topic)
        return all(symbol in ids and max(ids[symbol]) >= last for symbol, last in printed.items())

    wait_until(caught_up, 180, "every trade printed during the burst in Kafka")
    samples = settle(service, timeout=180)
    assert service.stop() == 0, service.log()

    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    assert service.cpu_limit is not None and service.cpu_limit.throttled_seconds() > 0  # the limit was in force
    assert total(samples, "k2_actor_restarts_total") == 0  # slow is not dead: nothing was replaced
    assert total(samples, "k2_backfill_unfilled_trades_total") == 0


def test_what_is_older_than_the_backfill_window_is_reported_with_its_ids_and_the_rest_filled(
    start_service, simulator, broker, registry, topic
):
    first = start_service()
    first.wait_ready()
    wait_for_trades(first, 150)
    assert first.stop() == 0, first.log()
    before = simulator.last_ids()
    wait_until(lambda: all(simulator.last_ids()[s] >= before[s] + 250 for s in before), 30, "5 s of trades printed while down")
    second = start_service(K2_BINANCE_BACKFILL_MAX_AGE_SECONDS="6")  # the downtime and start-up span about 7 s
    second.wait_ready()
    wait_for_trades(second, second.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(second)
    assert second.stop() == 0, second.log()

    too_old = {k: v for k, v in samples.items() if k.startswith("k2_backfill_unfilled_trades_total{")}
    assert too_old and all('reason="too_old"' in k for k in too_old)
    missing, duplicates = missing_and_duplicates(trade_ids(broker, registry, topic))
    assert duplicates == 0 and missing == sum(too_old.values())  # exactly what was reported, nothing more
    assert total(samples, "k2_backfill_trades_total") > 0  # the part inside the window was filled
    assert "(too_old): they stay missing" in second.log()

    third = start_service(K2_BINANCE_BACKFILL_MAX_AGE_SECONDS="6")  # reported once: the next start settles them
    third.wait_ready()
    wait_until(lambda: "resuming id tracking" in third.log(), 30, "the resume")
    assert "0 ids below the highest are missing" in third.log()
    assert third.stop() == 0, third.log()
