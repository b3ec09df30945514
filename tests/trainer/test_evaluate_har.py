"""The HAR-seasonal band as an evaluation baseline, on real Binance minutes: fitted on the fit
(training) range only, scored on the same origins as every contender, and every model's pinball
ratio to it next to the ratio to the EWMA band, in the JSON report, the table and the summary.

Data: models/data (Binance spot 1-minute klines, 2023-03-16 .. 05-01). Fit 2023-03-17 .. 04-16,
scored on 2023-04-24 (one day), the bundled default model as the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support.trainer_data import EVAL, FIT, MIN, REPO, SYMBOLS, both_series

from trainer.dataset import Series, Split, valid_origins
from trainer.evaluate import (
    BASELINES,
    EvalData,
    OnnxForecaster,
    evaluate,
    har_seasonal,
    markdown_table,
    metrics_summary,
)
from trainer.har import HarBand, within

MODEL = REPO / "models" / "default" / "model.onnx"


@pytest.fixture(scope="module")
def series() -> list[Series]:
    return both_series()


@pytest.fixture(scope="module")
def model() -> OnnxForecaster:
    return OnnxForecaster.from_path(MODEL)


@pytest.fixture(scope="module")
def scored(model: OnnxForecaster, series: list[Series]) -> tuple[dict[str, Any], list[EvalData]]:
    return evaluate({"model": model}, series, EVAL, FIT)


def test_the_har_band_is_scored_with_sane_figures(
    scored: tuple[dict[str, Any], list[EvalData]],
) -> None:
    report, _ = scored
    assert "har_band" in BASELINES and "har_band" in report["baselines"]
    entries = [*report["series"].values(), report["all"]]
    assert len(entries) == 1 + len(SYMBOLS)
    for entry in entries:
        har = entry["contenders"]["har_band"]["per_h"]
        persistence = entry["contenders"]["persistence"]["per_h"]
        assert len(har) == report["horizon"]
        for row, p in zip(har, persistence, strict=True):
            assert row["mae_bps"] == p["mae_bps"]  # its median is the last close
            assert row["skill"] == 0.0
            assert row["pinball_ratio_har"] == 1.0
            # a strong band: about as good as the EWMA band, a little better on average
            assert 0.95 < row["pinball_ratio_ewma"] < 1.01
            assert 0.74 < row["coverage"] < 0.86  # nominal 80 %
            assert row["calibration"] == sorted(row["calibration"])
            for level, seen in zip(report["quantiles"], row["calibration"], strict=True):
                assert abs(seen - level) < 0.07
        widths = [row["width_bps"] for row in har]
        assert widths == sorted(widths) and widths[0] > 0  # wider further ahead
    pooled = report["all"]["contenders"]["har_band"]["mean"]
    assert pooled["pinball_ratio_ewma"] < 1.0


def test_every_contender_has_its_ratio_to_both_bands(
    scored: tuple[dict[str, Any], list[EvalData]],
) -> None:
    report, _ = scored
    for entry in [*report["series"].values(), report["all"]]:
        c = entry["contenders"]
        assert set(c) == {*BASELINES, "model"}
        for rows in c.values():
            for h, row in enumerate(rows["per_h"]):
                ewma = c["ewma_band"]["per_h"][h]["pinball_bps"]
                har = c["har_band"]["per_h"][h]["pinball_bps"]
                assert row["pinball_ratio_ewma"] == pytest.approx(row["pinball_bps"] / ewma)
                assert row["pinball_ratio_har"] == pytest.approx(row["pinball_bps"] / har)
            assert rows["mean"]["pinball_ratio_har"] is not None
    for target in report["targets"]:
        assert target["pinball_har_ok"] == (target["pinball_ratio_har"] <= 0.99)
    summary = metrics_summary(report)
    assert summary["mean"]["model"]["pinball_ratio_har"] == pytest.approx(
        report["all"]["contenders"]["model"]["mean"]["pinball_ratio_har"]
    )
    btc15 = summary["per_series"]["binance:BTCUSDT"]["h15"]
    assert btc15["har_pinball_bps"] == pytest.approx(
        report["series"]["binance:BTCUSDT"]["contenders"]["har_band"]["per_h"][14]["pinball_bps"]
    )
    table = markdown_table(report)
    assert "| pinball EWMA (bp) | ratio to EWMA | pinball HAR (bp) | ratio to HAR |" in table
    row = report["series"]["binance:ETHUSDT"]["contenders"]["model"]["per_h"][4]
    assert f"| {row['pinball_ratio_ewma']:.3f} | " in table
    assert f"| {row['pinball_ratio_har']:.3f} |" in table
    assert "\n| har_band | " in table
    assert "| pinball / HAR (≤ 0.99) |" in table  # a target of every cell


def test_the_har_band_is_fitted_on_the_fit_range_only(
    scored: tuple[dict[str, Any], list[EvalData]], model: OnnxForecaster, series: list[Series]
) -> None:
    _, data = scored
    levels = model.quantiles
    on_fit = HarBand.fit([within(s, FIT) for s in series], FIT, model.horizon)
    on_eval = HarBand.fit(series, EVAL, model.horizon)  # what a leaky fit would give
    for s, d in zip(series, data, strict=True):
        origins = valid_origins(s, model.window, model.horizon, EVAL.start_ms, EVAL.end_ms)
        assert np.array_equal(s.open_time_ms[origins], d.open_time_ms)
        expected = on_fit.forecasts(s, origins, model.horizon, levels)
        assert np.array_equal(d.forecasts["har_band"], expected)
        assert not np.allclose(
            d.forecasts["har_band"], on_eval.forecasts(s, origins, model.horizon, levels)
        )


def test_the_clock_factors_need_a_week_of_minutes(
    scored: tuple[dict[str, Any], list[EvalData]], series: list[Series]
) -> None:
    report, _ = scored
    assert report["har_seasonal"] is True
    assert "HAR band (minute-of-hour and hour-of-week seasonality) fitted on" in (
        markdown_table(report)
    )
    week = Split("fit", FIT.start_ms, FIT.start_ms + 7 * 86_400_000)
    assert har_seasonal(series, week)
    assert not har_seasonal(series, Split("fit", week.start_ms, week.end_ms - MIN))
    daily = [
        Series(s.exchange, s.symbol, 86_400_000, s.open_time_ms, s.bars, s.close) for s in series
    ]
    assert not har_seasonal(daily, FIT)


def test_a_fit_range_too_short_for_the_har_band_is_refused(
    model: OnnxForecaster, series: list[Series]
) -> None:
    # horizon + 1 bars: one pair for the static quantiles, no origin with a past return
    short = Split("fit", FIT.start_ms, FIT.start_ms + (model.horizon + 1) * MIN)
    with pytest.raises(ValueError, match=f"no {model.horizon}-minute origins in the fit range"):
        evaluate({"model": model}, series, EVAL, short)
