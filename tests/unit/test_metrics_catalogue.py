"""What /metrics exposes is exactly the catalogue: every family named, typed and documented as
``streamer.core.contracts.metrics`` defines it, nothing more and nothing missing.

The streamer is built with every part that exposes metrics (Redis writer, MQTT publisher,
model serving) but not run: families are exposed from construction on, samples or not. Labels
need samples, so tests/integration/test_metrics_endpoint.py checks them on a running streamer.
"""

from __future__ import annotations

import pytest
from fixtures.metrics import exposed
from prometheus_client import CollectorRegistry

from streamer.app import Streamer
from streamer.core.contracts import metrics as catalogue
from streamer.core.contracts.metrics import CATALOGUE, CATALOGUE_BY_NAME
from streamer.io.metrics import counter, family, gauge, histogram
from streamer.settings import load_settings


def test_metrics_exposes_exactly_the_catalogue() -> None:
    settings = load_settings(
        symbols=["binance:BTCUSDT"],
        redis_url="redis://127.0.0.1:1",
        mqtt_url="mqtt://127.0.0.1:1",
    )
    streamer = Streamer(settings)  # nothing connects before run()
    text = streamer.metrics.render().decode()
    assert exposed(text) == {m.name: (m.kind.value, m.help) for m in CATALOGUE}


def test_catalogue_by_name_holds_every_entry() -> None:
    assert list(CATALOGUE_BY_NAME.values()) == list(CATALOGUE)
    assert CATALOGUE_BY_NAME["tickcast_trades"] is catalogue.TRADES


def test_a_metric_is_built_only_as_its_catalogue_kind() -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="tickcast_redis_up is a gauge"):
        counter(catalogue.REDIS_UP, registry)
    with pytest.raises(ValueError, match="tickcast_trades is a counter"):
        gauge(catalogue.TRADES, registry)
    with pytest.raises(ValueError, match="tickcast_trades is a counter"):
        histogram(catalogue.TRADES, registry)
    with pytest.raises(ValueError, match="tickcast_inference_seconds"):
        family(catalogue.INFERENCE_SECONDS)
