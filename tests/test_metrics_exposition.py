"""Histograms are counted into buckets where they are observed (MetricBuffer) and added up
in the MetricsActor: /metrics shows exactly what prometheus_client's own Histogram shows for
the same observations, however they were split between sends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from k2actors.actors.metrics import _Registry
from k2actors.core.telemetry import CATALOGUE, LATENCY_BUCKETS, MetricBuffer

NAME = "k2_trade_receive_to_ack_seconds"
latencies = st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(min_value=0, max_value=60, allow_nan=False))


def exposed(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if line.startswith(NAME) and "_created" not in line]


@given(st.lists(st.lists(latencies, max_size=50), max_size=5))
def test_bucketed_observations_are_exposed_as_prometheus_client_exposes_them(sends):
    ours = _Registry()
    reference_registry = CollectorRegistry()
    reference = Histogram(NAME, CATALOGUE[NAME].help, buckets=LATENCY_BUCKETS, registry=reference_registry)
    for values in sends:
        buffer = MetricBuffer()
        buffer.observe(NAME, values)
        ours.apply(buffer.take())
        for value in values:
            reference.observe(value)
    ours_lines, reference_lines = exposed(ours.registry), exposed(reference_registry)
    assert [line.rsplit(" ", 1)[0] for line in ours_lines] == [line.rsplit(" ", 1)[0] for line in reference_lines]
    for mine, theirs in zip(ours_lines, reference_lines, strict=True):
        assert float(mine.rsplit(" ", 1)[1]) == pytest.approx(float(theirs.rsplit(" ", 1)[1]))
