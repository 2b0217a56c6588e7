"""The benchmark runs and proves itself: figures for every phase, and no trade lost or
duplicated. Speed is never judged here; the numbers belong in the README's table."""

import json
import subprocess
import sys

import pytest

from k2actors.bench import _slope, flat_samples, histogram, percentile
from tests.conftest import REPO


def test_a_short_benchmark_reports_every_figure_and_loses_nothing(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--symbols", "2", "--rates", "300", "--duration", "4",
         "--limited-rates", "300,8000", "--connections", "1", "--soak", "0.35", "--soak-rate", "300", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(output.read_text())
    ceilings = figures["ceilings"]
    assert ceilings["websocket_receive_rate"] > 0 and ceilings["producer_delivery_rate"] > 0 and ceilings["simulator_sending_rate"] > 0
    bare = ceilings["bare_loop"]
    assert bare["rate"] > 0 and bare["cpu_microseconds_per_trade"] > 0
    assert (bare["missing"], bare["duplicates"], bare["records"]) == (0, 0, bare["trades"])
    assert figures["thespian_message_cpu_microseconds"] > 0
    assert figures["idle"]["memory_bytes"] > 0 and (figures["idle"]["missing"], figures["idle"]["duplicates"]) == (0, 0)
    for load, raw in ((figures["max_load"], True), (figures["max_load_raw_off"], False)):
        assert load["rate"] > 0 and load["cpu_microseconds_per_trade"] > 0 and load["memory_end_bytes"] > 0
        assert (load["missing"], load["duplicates"], load["records"], load["raw"]) == (0, 0, load["trades"], raw)
    # every fixed rate with trades bunched and spread out, the raw record on and off
    assert [(phase["arrival"], phase["offered_rate"], phase["raw"]) for phase in figures["fixed_rates"]] == [
        ("bunched", 300, True), ("bunched", 300, False), ("spread", 300, True), ("spread", 300, False)]
    for phase in figures["fixed_rates"]:
        assert phase["records"] > 0 and (phase["missing"], phase["duplicates"]) == (0, 0)
        assert phase["receive_to_ack_p50_ms"] <= phase["receive_to_ack_p99_ms"] <= phase["receive_to_ack_p99_9_ms"]
        assert phase["receive_to_produce_p99_ms"] > 0 and phase["cpu_microseconds_per_trade"] > 0 and phase["memory_bytes"] > 0
    # Held to 0.5 CPU: 300/s is carried, 8,000/s cannot be (about 4,000/s is), and the ladder stops there.
    for limited, arrival in zip(figures["cpu_limited"], ("bunched", "spread"), strict=True):
        assert [(step["offered_rate"], step["holds"]) for step in limited["steps"]] == [(300, True), (8_000, False)]
        assert (limited["arrival"], limited["highest_rate_held"], limited["cpus"]) == (arrival, 300, 0.5)
    soak = figures["soak"]
    assert (soak["missing"], soak["duplicates"]) == (0, 0) and soak["records"] > 0
    assert len(soak["memory_samples"]) >= 2 and soak["memory_end_bytes"] == soak["memory_samples"][-1][1] > 0
    assert {"memory_slope_bytes_per_minute", "memory_slope_second_half_bytes_per_minute"} <= soak.keys()
    # order books, 3 and 100 symbols, trades alone and with books: every book in sync, records published
    assert [(phase["symbols"], phase["books"]) for phase in figures["books"]] == [(3, False), (3, True), (100, False), (100, True)]
    for phase in figures["books"]:
        assert phase["records"] > 0 and (phase["missing"], phase["duplicates"]) == (0, 0) and phase["memory_bytes"] > 0
        assert (phase["book_records_rate"] > 0) == phase["books"]
    # a full connection's worth of symbols (test_pipeline spreads more than one carries over connections)
    assert [(p["connections"], p["symbols"]) for p in figures["scaling"]] == [(1, 1024)]
    for phase in figures["scaling"]:
        assert (phase["missing"], phase["duplicates"], phase["records"]) == (0, 0, phase["trades"])
        assert phase["rate"] > 0 and 0 < phase["machine_cpu_busy"] <= 1
    for row in ("| pipeline sustained rate", "| bare loop, one process", "| held to 0.5 CPU", "| soak at 300/s",
                "| ... with the raw record off", "| at 300/s spread, raw record off: CPU per trade", "| order books, 100 symbols",
                "| idle (1 trade a second per symbol): cores", "trades missing / duplicated (all phases) | 0 / 0 |",
                # the cost targets, drawn against this run's figures
                "| idle <= 0.01 core |", "| memory (PSS) at maximum load <= 200 MiB |", "| maximum load <= 43 µs a trade",
                "| held to 0.5 CPU, trades spread: >= 5,000/s carried | 300/s | not met |"):
        assert row in result.stdout


def test_the_memory_slope_is_the_least_squares_slope():
    assert _slope([(0, 10), (1, 12), (2, 14), (3, 16)]) == 2
    assert _slope([(0, 5), (1, 7), (2, 5), (3, 7)]) == 0.4  # noisy but level-ish: small, not zero
    assert _slope([(0, 9), (10, 9), (20, 9)]) == 0
    assert _slope([(0, 9)]) == 0  # one sample: no trend to speak of


def test_a_histogram_is_read_with_every_exchanges_series_added_up():
    page = """# HELP k2_lag_seconds lag
# TYPE k2_lag_seconds histogram
k2_lag_seconds_bucket{exchange="BINANCE",le="0.1"} 90.0
k2_lag_seconds_bucket{exchange="BINANCE",le="1.0"} 100.0
k2_lag_seconds_bucket{exchange="BINANCE",le="+Inf"} 100.0
k2_lag_seconds_count{exchange="BINANCE"} 100.0
k2_lag_seconds_sum{exchange="BINANCE"} 5.0
k2_lag_seconds_bucket{exchange="KRAKEN",le="0.1"} 0.0
k2_lag_seconds_bucket{exchange="KRAKEN",le="1.0"} 100.0
k2_lag_seconds_bucket{exchange="KRAKEN",le="+Inf"} 100.0
k2_lag_seconds_count{exchange="KRAKEN"} 100.0
k2_lag_seconds_sum{exchange="KRAKEN"} 50.0
"""
    buckets = histogram(flat_samples(page), "k2_lag_seconds")
    assert buckets == [(0.1, 90.0), (1.0, 200.0), (float("inf"), 200.0)]
    assert percentile([], buckets, 0.25) == pytest.approx(0.1 * 50 / 90)  # rank 50 of the 90 below 0.1
    assert percentile([], buckets, 0.5) == pytest.approx(0.1 + 0.9 * (100 - 90) / 110)  # rank 100: Kraken's slower half counts
