"""A feed gap that cannot be queued for REST repair is counted on /metrics, never lost silently
(DESIGN: every queue is bounded and every drop is counted in a metric)."""

from __future__ import annotations

from prometheus_client import generate_latest

from streamer.app import Streamer
from streamer.core.gaps import Gap
from streamer.core.repair import DEFAULT_CAPACITY
from streamer.settings import load_settings


def test_a_full_gap_queue_counts_each_gap_it_drops() -> None:
    streamer = Streamer(load_settings(symbols=["binance:BTCUSDT"], metrics_port=0))
    gaps = [
        Gap("binance", ("BTCUSDT",), i * 60_000, i * 60_000 + 1)
        for i in range(DEFAULT_CAPACITY + 3)
    ]
    for gap in gaps:
        streamer._on_gap(gap)
    assert streamer.repairs.gaps() == gaps[:DEFAULT_CAPACITY]  # the first ones, in order
    text = generate_latest(streamer.metrics.registry).decode()
    assert 'tickcast_gaps_dropped_total{exchange="binance"} 3.0' in text
