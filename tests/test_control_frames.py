"""Answers to the service's own requests, end to end (simulator, Tansu, the service as a
process): a SUBSCRIBE the exchange refuses is reported with the venue's words, counted, shown
in /ready and asked again until its symbols stream; it is never a dead letter."""

from __future__ import annotations

import json

import pytest

from k2actors.readback import missing_and_duplicates, records
from tests.conftest import trade_ids, wait_until
from tests.test_resilience import settle, total

# Enough symbols that their streams no longer fit a URL: the connection asks for them with SUBSCRIBE.
SYMBOLS = tuple(f"S{i:03d}USDT" for i in range(150))
REFUSALS = 3


@pytest.mark.parametrize("simulator", [{"symbols": SYMBOLS, "rate": 1}], indirect=True)
def test_a_refused_subscribe_is_reported_and_asked_again_until_its_symbols_stream(start_service, simulator, broker,
                                                                                    registry, topic):
    for endpoint in range(len(simulator.urls)):
        simulator.endpoint(endpoint).refuse_subscriptions(REFUSALS)
    service = start_service(K2_BINANCE_SYMBOLS=",".join(SYMBOLS), K2_LOG_FORMAT="json")

    def refused_in_ready() -> dict | None:
        status, body = service.get("/ready")
        checks = json.loads(body or b"{}").get("checks", {})
        refused = [check for name, check in checks.items() if name.startswith("subscriptions ") and not check["ok"]]
        return refused[0] if status == 503 and refused else None

    refused = wait_until(refused_in_ready, 30, "/ready naming the refused subscription")
    assert "code 2 'Invalid request: invalid stream'" in refused["detail"]
    service.wait_ready(timeout=90)  # asked again until the exchange took it
    wait_until(lambda: len(trade_ids(broker, registry, topic)) == len(SYMBOLS), 60, "trades of every symbol in Kafka")
    samples = settle(service)
    assert service.stop() == 0, service.log()

    assert total(samples, "k2_binance_subscription_refusals_total") == REFUSALS
    assert total(samples, "k2_dlq_messages_total") == 0 and total(samples, "k2_binance_message_errors_total") == 0
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    refusals = [line for line in lines if line.get("event") == "subscription_refused"]
    assert len(refusals) == REFUSALS and all(line["venue_message"] == "Invalid request: invalid stream" for line in refusals)
    assert len([line for line in lines if line.get("event") == "subscription_resent"]) >= 1
    assert missing_and_duplicates(trade_ids(broker, registry, topic)) == (0, 0)
    # the venue's refusals are kept as it sent them, each on its connection, in the raw record
    archived = records(broker.bootstrap_servers, registry.url, f"{topic}.raw")
    refusals_kept = [frame for frame in archived if b"Invalid request: invalid stream" in frame["payload"]]
    assert len(refusals_kept) == REFUSALS
    assert all(json.loads(frame["payload"])["error"]["code"] == 2 and frame["stream"] is None for frame in refusals_kept)
