"""HAR-seasonal band on real Binance minutes: fitted on an earlier period only, it beats the EWMA
band out of sample, covers near nominal, sees the top-of-hour burst, and never looks ahead.

Data: models/data (Binance spot BTCUSDT and ETHUSDT 1-minute klines, 2023-03-16 22:15 ..
2023-05-01 21:01 UTC, one real 80-minute gap on 2023-03-24). Fit on 2023-03-17 .. 04-16, scored
on 2023-04-17 .. 05-01 with the origins ``trainer.evaluate`` uses (a gap-free 60-bar window and
15 bars ahead), against the EWMA band as ``trainer.evaluate`` builds it.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.trainer_data import MIN, both_series

from trainer.dataset import Series, Split, future_closes, parse_iso_ms, valid_origins
from trainer.evaluate import baseline_forecasts, ewma_sigma, horizon_metrics
from trainer.har import HarBand, fit_seasonality

FIT = Split("fit", parse_iso_ms("2023-03-17"), parse_iso_ms("2023-04-16"))
TEST = Split("test", parse_iso_ms("2023-04-17"), parse_iso_ms("2023-05-02"))
WINDOW, HORIZON = 60, 15
LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
GAP_END = parse_iso_ms("2023-03-24T14:00:00Z")  # first bar after the 80 missing minutes


@pytest.fixture(scope="module")
def series() -> list[Series]:
    return both_series()


@pytest.fixture(scope="module")
def band(series: list[Series]) -> HarBand:
    return HarBand.fit(series, FIT, HORIZON)


def test_beats_the_ewma_band_out_of_sample_and_covers_near_nominal(
    series: list[Series], band: HarBand
) -> None:
    for s in series:
        origins = valid_origins(s, WINDOW, HORIZON, TEST.start_ms, TEST.end_ms)
        assert origins.shape[0] > 20_000
        actual, last = future_closes(s, origins, HORIZON), s.close[origins]
        ewma = baseline_forecasts(
            s, origins, WINDOW, HORIZON, LEVELS, np.zeros((HORIZON, len(LEVELS))),
            ewma_sigma(s, WINDOW),
        )["ewma_band"]  # fmt: skip
        har = band.forecasts(s, origins, HORIZON, LEVELS)
        e = horizon_metrics(ewma, actual, last, LEVELS, point_only=False)
        m = horizon_metrics(har, actual, last, LEVELS, point_only=False)
        for h in (1, 5, 15):
            ratio = m[h - 1]["pinball_bps"] / e[h - 1]["pinball_bps"]
            assert ratio < 0.995, (s.symbol, h, ratio)
            below = m[h - 1]["calibration"]
            inner = below[LEVELS.index(0.9)] - below[LEVELS.index(0.1)]
            assert abs(inner - 0.80) <= 0.025, (s.symbol, h, inner)
            for q, share in zip(LEVELS, below, strict=True):
                if q != 0.5:  # the median is the last close (flat minutes sit on it)
                    assert abs(share - q) <= 0.02, (s.symbol, h, q, below)


def test_seasonal_factor_shows_the_top_of_hour_burst(series: list[Series]) -> None:
    season = fit_seasonality(series, FIT)
    minute = season.minute_of_hour
    median = float(np.median(minute))
    for m in (0, 15, 30, 45):  # the first minute of the hour and of each quarter
        assert minute[m] > 1.1 * median, (m, minute[m], median)
    assert minute.mean() == pytest.approx(1.0)
    assert season.hour_of_week.shape == (168,)
    # weekends are calmer than weekdays (index 0 = Monday 00:00 UTC)
    weekday, weekend = season.hour_of_week[: 5 * 24].mean(), season.hour_of_week[5 * 24 :].mean()
    assert weekend < 0.8 * weekday


def test_the_band_widens_ahead_of_the_burst(series: list[Series], band: HarBand) -> None:
    """The clock is in the band: a 1-minute band whose target is the first minute of the hour
    is wider than one for minute 3, by more than the same band fitted without the clock gives.
    (Out of sample the burst is mild in this period, so the clock moves pinball by < 0.1 %.)"""
    flat = HarBand.fit(series, FIT, HORIZON, seasonal=False)
    for s in series:
        origins = valid_origins(s, WINDOW, HORIZON, TEST.start_ms, TEST.end_ms)
        target_minute = (s.open_time_ms[origins] // MIN + 1) % 60
        ratios = []
        for b in (band, flat):
            sigma = b.sigma(s, origins, 1)[:, 0]
            ratios.append(
                float(np.median(sigma[target_minute == 0]) / np.median(sigma[target_minute == 3]))
            )
        assert ratios[0] > ratios[1] + 0.03, (s.symbol, ratios)


def test_fitted_on_the_fit_range_only(series: list[Series], band: HarBand) -> None:
    inside = [
        s.rows((s.open_time_ms >= FIT.start_ms) & (s.open_time_ms < FIT.end_ms)) for s in series
    ]
    again = HarBand.fit(inside, FIT, HORIZON)
    assert np.array_equal(again.coef, band.coef)
    assert np.array_equal(again.abs_z, band.abs_z)
    assert np.array_equal(again.seasonality.hour_of_week, band.seasonality.hour_of_week)


def test_forecasts_use_the_past_only_and_no_window_spans_the_gap(
    series: list[Series], band: HarBand
) -> None:
    btc = series[0]
    origins = valid_origins(btc, WINDOW, HORIZON)
    sigma = band.sigma(btc, origins, HORIZON)
    # the future is not used: scrambling every close after an origin changes nothing at it
    t = int(origins[len(origins) // 2])
    rng = np.random.default_rng(1)
    close = btc.close.copy()
    close[t + 1 :] *= np.exp(rng.normal(0.0, 0.01, close.shape[0] - t - 1))
    scrambled = Series(btc.exchange, btc.symbol, MIN, btc.open_time_ms, btc.bars, close)
    at_t = np.searchsorted(origins, t)
    assert np.array_equal(band.sigma(scrambled, origins[: at_t + 1], HORIZON), sigma[: at_t + 1])
    # after the real gap only post-gap returns count: as if the series started there
    after = int(np.searchsorted(btc.open_time_ms, GAP_END))
    assert btc.open_time_ms[after] == GAP_END and btc.open_time_ms[after - 1] < GAP_END - MIN
    post = origins[(origins >= after) & (origins < after + 300)]
    cut = btc.rows(slice(after, None))
    assert np.allclose(band.sigma(cut, post - after, HORIZON), band.sigma(btc, post, HORIZON))


def test_band_shape_median_and_order(series: list[Series], band: HarBand) -> None:
    s = series[1]
    origins = valid_origins(s, WINDOW, HORIZON, TEST.start_ms, TEST.end_ms)[:500]
    out = band.forecasts(s, origins, 5, LEVELS)
    assert out.shape == (500, 5, len(LEVELS))
    assert np.array_equal(out[:, :, LEVELS.index(0.5)], np.repeat(s.close[origins, None], 5, 1))
    assert np.all(np.diff(out, axis=-1) > 0)
    assert np.all(np.diff(out[:, :, -1] - out[:, :, 0], axis=1) > 0)  # wider further ahead
    with pytest.raises(ValueError, match="horizon"):
        band.forecasts(s, origins, HORIZON + 1, LEVELS)
    with pytest.raises(ValueError, match="fit range"):
        HarBand.fit(series, Split("empty", 0, 1), HORIZON)
