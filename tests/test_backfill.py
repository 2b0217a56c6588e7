"""Gap-free history: a gap the stream left is filled from the venue's REST trade history
(the simulator answers from the same history as its streams), within Binance's request
limits, and what cannot be filled stays counted and logged with its range."""

import os
import signal

from k2actors.readback import missing_and_duplicates, records
from tests.conftest import trade_ids, wait_until
from tests.test_resilience import settle, total, wait_for_new_pid, wait_for_trades


def backfilled_ids(broker, registry, topic: str) -> dict[str, list[int]]:
    """Per symbol, the ids of records marked backfilled, in offset order."""
    ids: dict[str, list[int]] = {}
    for record in records(broker.bootstrap_servers, registry.url, topic):
        if record["vendor_data"].get("backfilled") == "true":
            assert record["vendor_data"]["endpoint"].startswith("http://")
            ids.setdefault(record["symbol"], []).append(record["source_sequence"])
    return ids


# The cold failover below refuses every endpoint for a moment: the circuit must not open
# for its reset timeout meanwhile.
NO_CIRCUIT = {"K2_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "1000"}


def cold_failover(service, simulator) -> None:
    """Cut the primary while trades flow, the mirror refusing for a moment too (a failover to
    a healthy mirror takes milliseconds): the failover connection leaves a gap per symbol."""
    service.wait_ready()
    wait_for_trades(service, 150)
    for index in (0, 1):
        simulator.endpoint(index).refuse()
    simulator.endpoint(0).drop()
    wait_until(lambda: service.metric("k2_binance_reconnects_total") >= 2, 30, "the mirror refusing too")
    simulator.endpoint(1).refuse(False)
    wait_until(lambda: service.metrics().get(f'k2_binance_connection_status{{url="{simulator.urls[1]}"}}') == 1,
               30, "the failover connection")
    wait_until(lambda: service.metric("k2_binance_missing_trades_total") > 0, 30, "the gap declared")
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)


def assert_every_gap_filled(service, samples, broker, registry, topic) -> None:
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    declared = total(samples, "k2_binance_missing_trades_total")
    assert declared > 0  # trades really went missing from the stream
    assert total(samples, "k2_backfill_trades_total") + total(samples, "k2_binance_recovered_trades_total") == declared
    backfilled = backfilled_ids(broker, registry, topic)
    assert sum(map(len, backfilled.values())) == total(samples, "k2_backfill_trades_total")
    assert all(ids == sorted(ids) for ids in backfilled.values())  # published in id order
    assert total(samples, "k2_backfill_gaps_filled_total") == total(samples, "k2_binance_trade_gaps_total")
    assert total(samples, "k2_backfill_unfilled_trades_total") == 0
    assert samples["k2_backfill_gaps_open"] == 0 and samples["k2_backfill_latency_seconds_count"] > 0
    assert "backfilled BINANCE" in service.log()


def test_a_cold_failover_ends_with_no_trade_missing(start_service, simulator, broker, registry, topic):
    service = start_service(**NO_CIRCUIT)
    cold_failover(service, simulator)
    samples = settle(service)
    assert service.stop() == 0, service.log()
    assert_every_gap_filled(service, samples, broker, registry, topic)


def test_a_killed_connection_actor_ends_with_no_trade_missing(start_service, simulator, broker, registry, topic):
    service = start_service()
    service.wait_ready()
    wait_for_trades(service, 150)
    role = f"connection {simulator.urls[0]}"
    pid = wait_until(lambda: service.health().get("actors", {}).get(role), 20, "the connection actor's pid")
    os.kill(pid, signal.SIGKILL)
    wait_for_new_pid(service, role, pid)
    wait_until(lambda: service.metric("k2_binance_missing_trades_total") > 0, 30, "the gap declared")
    wait_for_trades(service, service.metric("k2_kafka_messages_produced_total") + 150)
    samples = settle(service)
    assert service.stop() == 0, service.log()
    assert_every_gap_filled(service, samples, broker, registry, topic)


def test_rate_limited_history_is_retried_after_the_time_it_names(start_service, simulator, broker, registry, topic):
    simulator.endpoint(0).refuse_history(429, 2, retry_after=1.5)
    service = start_service(**NO_CIRCUIT)
    cold_failover(service, simulator)
    wait_until(lambda: service.metric("k2_backfill_gaps_open") == 0 and service.metric("k2_backfill_gaps_filled_total") > 0,
               60, "every gap backfilled")
    samples = settle(service)
    assert service.stop() == 0, service.log()
    assert samples['k2_backfill_requests_total{status="429"}'] == 2
    times = simulator.endpoint(0).history_request_times()
    assert times[1] - times[0] >= 1.5 and times[2] - times[1] >= 1.5  # Retry-After honoured
    assert "refused with HTTP 429" in service.log()
    assert_every_gap_filled(service, samples, broker, registry, topic)


def test_an_ip_ban_stops_backfill_and_leaves_the_gaps_reported(start_service, simulator, broker, registry, topic):
    simulator.endpoint(0).refuse_history(418, 1, retry_after=600)
    service = start_service(**NO_CIRCUIT)
    cold_failover(service, simulator)
    samples = settle(service)
    assert service.stop() == 0, service.log()
    assert len(simulator.endpoint(0).history_request_times()) == 1  # nothing asked after the ban
    declared = total(samples, "k2_binance_missing_trades_total")
    assert total(samples, "k2_backfill_unfilled_trades_total") == declared
    assert missing_and_duplicates(trade_ids(broker, registry, topic))[0] == declared
    assert "refused with HTTP 418" in service.log() and "(banned): they stay missing" in service.log()


def test_history_that_stays_down_is_given_up_with_its_range_logged(start_service, simulator, broker, registry, topic):
    simulator.endpoint(0).refuse_history(503, 1000)
    service = start_service(**NO_CIRCUIT)
    cold_failover(service, simulator)
    wait_until(lambda: service.metric("k2_backfill_gaps_open") == 0, 90, "every gap given up")
    samples = settle(service)
    assert service.stop() == 0, service.log()
    declared = total(samples, "k2_binance_missing_trades_total")
    unfilled = {k: v for k, v in samples.items() if k.startswith("k2_backfill_unfilled_trades_total{")}
    assert sum(unfilled.values()) == declared and all('reason="rest_unavailable"' in k for k in unfilled)
    assert missing_and_duplicates(trade_ids(broker, registry, topic))[0] == declared
    assert "(rest_unavailable): they stay missing" in service.log()
