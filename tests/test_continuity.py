"""Continuity across a failing primary: mirrors are mirrors. Each test breaks the primary the
way an operator meets it, with a healthy mirror and REST history, and reads the topic back:
every trade the simulator printed between the first and the last one in Kafka is there,
exactly once, the ones missed during the failover backfilled."""

import json

import pytest

from k2actors.readback import missing_and_duplicates
from tests.conftest import trade_ids, wait_until
from tests.test_resilience import settle, total, wait_for_trades


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
