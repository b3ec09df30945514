"""``build_forecasts``: model output rows to ``Forecast`` values, bad rows refused by key.

Pure: no model, no loop. The last bars are real Binance bars (tests/fixtures/bars); the output
arrays are what a persistence-plus-band model gives for them, plus rows broken on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.models import real_bars
from support.forecasts import (
    HORIZON,
    ISSUED_AT,
    LEVELS,
    SPEC,
    TRAINED_AT,
    band_output,
    last_columns,
)

from streamer.core.contracts import mqtt
from streamer.core.contracts.model import ModelSpec
from streamer.core.forecasting import ModelIdentity, build_forecasts
from streamer.core.types import Bar, Forecast

IDENTITY = ModelIdentity("v3", TRAINED_AT, stale=True)


def build(bars: list[Bar], output: np.ndarray) -> tuple[list[Forecast], list[tuple[str, str]]]:
    """``build_forecasts`` for the last bars of the series: keys, open times and closes."""
    return build_forecasts(*last_columns(bars), output, SPEC, IDENTITY, ISSUED_AT)


def last_bars() -> list[Bar]:
    """Three real last bars: BTCUSDT and ETHUSDT at their last minute, BTCUSDT a minute before."""
    btc, eth = real_bars("BTCUSDT"), real_bars("ETHUSDT")
    return [btc[-1], eth[-1], btc[-2]]


def test_one_forecast_per_row_carrying_values_levels_and_identity_exactly() -> None:
    bars = last_bars()
    output = band_output(bars)
    forecasts, rejected = build(bars, output)
    assert rejected == []
    assert len(forecasts) == 3
    for bar, row, f in zip(bars, output, forecasts, strict=True):
        assert (f.exchange, f.symbol) == (bar.exchange, bar.symbol)
        assert f.bar_time_ms == bar.open_time_ms
        assert f.last_close == bar.close
        assert f.quantile_levels == LEVELS
        # float32 -> float64 is exact: the payload carries exactly what the model produced
        assert f.values == tuple(tuple(float(v) for v in h) for h in row)
        assert all(type(v) is float for h in f.values for v in h)
        assert f.horizon == HORIZON
        assert (f.model_version, f.model_trained_at, f.stale) == ("v3", IDENTITY.trained_at, True)
        assert f.issued_at_ms == ISSUED_AT


def test_non_finite_and_crossing_rows_are_refused_by_key_and_the_rest_kept() -> None:
    bars = last_bars()
    output = band_output(bars)
    output[0, 2, 1] = np.nan  # BTCUSDT: a NaN median at +3 min
    output[1, 0, 0], output[1, 0, 2] = output[1, 0, 2], output[1, 0, 0]  # ETHUSDT: crossing
    forecasts, rejected = build(bars, output)
    assert rejected == [("binance", "BTCUSDT"), ("binance", "ETHUSDT")]
    assert [(f.symbol, f.bar_time_ms) for f in forecasts] == [("BTCUSDT", bars[2].open_time_ms)]
    assert forecasts[0].values == tuple(tuple(float(v) for v in h) for h in output[2])


def test_infinite_row_is_refused() -> None:
    bars = last_bars()[:1]
    output = band_output(bars)
    output[0, -1, -1] = np.inf
    forecasts, rejected = build(bars, output)
    assert (forecasts, rejected) == ([], [("binance", "BTCUSDT")])


def test_equal_quantiles_do_not_cross() -> None:
    bars = last_bars()[:1]
    output = np.full((1, HORIZON, 3), bars[0].close, dtype=np.float32)
    forecasts, rejected = build(bars, output)
    assert rejected == [] and len(forecasts) == 1
    assert forecasts[0].values[0] == (float(np.float32(bars[0].close)),) * 3


@pytest.mark.parametrize(
    "shape",
    [(2, HORIZON, 3), (3, HORIZON + 1, 3), (3, HORIZON, 5), (3, HORIZON * 3)],
    ids=["rows", "horizon", "levels", "rank"],
)
def test_output_of_the_wrong_shape_is_an_error(shape: tuple[int, ...]) -> None:
    output = np.ones(shape, dtype=np.float32)
    with pytest.raises(ValueError, match="model output shape"):
        build(last_bars(), output)


def test_empty_batch_gives_nothing() -> None:
    output = np.empty((0, HORIZON, 3), dtype=np.float32)
    assert build([], output) == ([], [])


def test_seven_levels_of_a_contract_2_model_become_forecasts_whose_payloads_validate() -> None:
    """Forecasts carry whatever levels the model declares; with contract 2's seven, the MQTT
    payload has the median plus six quantile keys and passes its own validation."""
    levels = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
    spec = ModelSpec(60, HORIZON, 60, levels, "c2", {}, {}, contract=2)
    bars = last_bars()
    output = band_output(bars, levels)
    forecasts, rejected = build_forecasts(*last_columns(bars), output, spec, IDENTITY, ISSUED_AT)
    assert rejected == [] and len(forecasts) == 3
    for f, row in zip(forecasts, output, strict=True):
        assert f.quantile_levels == levels
        assert f.values == tuple(tuple(float(v) for v in h) for h in row)
        payload = mqtt.forecast_payload(f)
        assert list(payload["quantiles"]) == ["0.05", "0.1", "0.25", "0.75", "0.9", "0.95"]
        assert payload["median"] == [float(v) for v in row[:, 3]]
        assert mqtt.validate_forecast_payload(payload) == []
    crossing = output.copy()
    crossing[1, 0, 1], crossing[1, 0, 2] = crossing[1, 0, 2], crossing[1, 0, 1]  # 0.1 > 0.25
    _, rejected = build_forecasts(
        [b.key for b in bars], [b.open_time_ms for b in bars], [b.close for b in bars],
        crossing, spec, IDENTITY, ISSUED_AT,
    )  # fmt: skip
    assert rejected == [bars[1].key]
