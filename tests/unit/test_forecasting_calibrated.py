"""``build_calibrated``: the rows are checked on the raw output, the good ones calibrated, and the
published band is the calibrated one only when calibration is on.

Pure: no model, no loop. The last bars are real Binance bars (tests/fixtures/bars), the output
what a persistence-plus-band model gives for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fixtures.models import real_bars
from support.forecasts import ISSUED_AT, LEVELS, SPEC, TRAINED_AT, band_output, last_columns

from streamer.core.calibration import OnlineCalibrator, Realised
from streamer.core.contracts.model import bad_output_rows
from streamer.core.forecasting import ModelIdentity, build_calibrated, build_forecasts
from streamer.core.types import MINUTE_MS, Bar

IDENTITY = ModelIdentity("v3", TRAINED_AT, stale=False)


def build(bars: list[Bar], output: np.ndarray, calibrator: OnlineCalibrator, *, on: bool) -> Any:
    return build_calibrated(
        *last_columns(bars), output, SPEC, IDENTITY, ISSUED_AT, calibrator, publish_calibrated=on
    )


def widened(bars: list[Bar]) -> OnlineCalibrator:
    """A calibrator that has learnt to widen every symbol's band: forecasts made a minute
    before ``bars`` all missed far above and below."""
    cal = OnlineCalibrator([1], LEVELS, steps={1: 0.5})
    before = [
        Bar(b.exchange, b.symbol, b.open_time_ms - MINUTE_MS, b.close, b.close, b.close, b.close,
            1.0, 1)
        for b in bars
    ]  # fmt: skip
    out = band_output(before)
    cal.calibrate([b.key for b in before], [b.open_time_ms for b in before], out)
    for b, row in zip(before, out, strict=True):
        raw = tuple(float(v) for v in row[0])
        for actual in (b.close * 1.1, b.close * 0.9):
            cal.observe(Realised(b.exchange, b.symbol, 1, b.open_time_ms, raw, actual))
    return cal


def last_bars() -> list[Bar]:
    btc, eth = real_bars("BTCUSDT"), real_bars("ETHUSDT")
    return [btc[-1], eth[-1]]


def test_on_publishes_the_calibrated_band_and_keeps_the_raw_one_for_the_evaluator() -> None:
    bars = last_bars()
    output = band_output(bars)
    built = build(bars, output, widened(bars), on=True)
    raw, rejected = build_forecasts(*last_columns(bars), output, SPEC, IDENTITY, ISSUED_AT)
    assert rejected == built.rejected == []
    assert built.raw_forecasts() == raw and {f.band for f in raw} == {"raw"}
    assert {f.band for f in built.published} == {"calibrated"}
    for pub, r in zip(built.published, raw, strict=True):
        assert (pub.symbol, pub.bar_time_ms, pub.last_close) == (
            r.symbol,
            r.bar_time_ms,
            r.last_close,
        )
        for p_row, r_row in zip(pub.values, r.values, strict=True):
            assert p_row[1] == r_row[1]  # the median is the model's
            assert p_row[0] < r_row[0] and p_row[2] > r_row[2]  # wider on both sides


def test_off_publishes_the_raw_band_but_the_calibrator_still_keeps_what_it_would_publish() -> None:
    bars = last_bars()
    cal = widened(bars)
    built = build(bars, band_output(bars), cal, on=False)
    assert built.raw_forecasts() is built.published
    assert {f.band for f in built.published} == {"raw"}
    # the calibrated band of these forecasts was computed and kept: their realisations count
    row = tuple(float(v) for v in band_output(bars)[0, 0])
    assert cal.observe(Realised("binance", "BTCUSDT", 1, bars[0].open_time_ms, row, bars[0].close))


def test_a_crossing_raw_row_is_refused_though_calibrating_it_would_uncross_it() -> None:
    bars = last_bars()
    output = band_output(bars)
    output[1, 2, 0], output[1, 2, 2] = output[1, 2, 2], output[1, 2, 0]  # ETHUSDT h = 3 crosses
    cal = widened(bars)
    uncrossed = cal.calibrate([bars[1].key], [0], output[1:2])
    assert not bad_output_rows(uncrossed.astype(np.float32)).any()  # sorting would hide it
    built = build(bars, output, cal, on=True)
    assert built.rejected == [bars[1].key]
    assert [f.symbol for f in built.published] == ["BTCUSDT"]
    assert [f.symbol for f in built.raw_forecasts()] == ["BTCUSDT"]
