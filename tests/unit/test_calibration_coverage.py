"""CoverageWindow: the raw and published coverage counts /metrics shows, rolling by exchange time
of the realised minute, summed over series, and carried from one calibrator to the next."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.core.calibration import CoverageWindow, OnlineCalibrator, Realised
from streamer.core.types import MINUTE_MS

LEVELS = (0.1, 0.5, 0.9)
HOUR_MS = 60 * MINUTE_MS
ROW = (99.0, 100.0, 101.0)


def realise(cal: OnlineCalibrator, symbol: str, origin_ms: int, actual: float) -> bool:
    cal.calibrate([("binance", symbol)], [origin_ms], np.asarray([[ROW]]))
    return cal.observe(Realised("binance", symbol, 1, origin_ms, ROW, actual))


def test_counts_sum_over_series_and_leave_the_window_a_bucket_at_a_time() -> None:
    cal = OnlineCalibrator([1], LEVELS, window_ms=HOUR_MS)  # buckets of 2.5 minutes
    assert cal.coverage.counts()[0].n == 0
    assert realise(cal, "A", 0, 100.5)  # inside the 0.1-0.9 band
    assert realise(cal, "B", 0, 105.0)  # above it
    first = cal.coverage.counts()[0]
    assert (first.horizon, first.n) == (1, 2)
    assert first.raw_below == (0, 0, 1) and first.coverage(0.1, 0.9, calibrated=False) == 0.5
    # an hour later (by the realised minutes) the first bucket has left the window
    assert realise(cal, "A", HOUR_MS, 98.0)
    latest = cal.coverage.counts()[0]
    assert latest.n == 1 and latest.raw_below == (1, 1, 1)
    # a late realisation of a minute from before the window changes the figures no more
    # (it still teaches the calibrator)
    assert realise(cal, "C", 0, 100.0)
    assert cal.coverage.counts()[0] == latest
    assert cal.updated_total == 4


def test_a_window_is_carried_into_a_new_calibrator_of_the_same_shape_only() -> None:
    first = OnlineCalibrator([1, 5], LEVELS, window_ms=HOUR_MS)
    assert realise(first, "A", 0, 100.5)
    carried = OnlineCalibrator([1, 5], LEVELS, coverage=first.coverage)
    assert carried.coverage is first.coverage and carried.coverage.counts()[0].n == 1
    assert np.all(carried.log_scales("binance", "A") == 0)  # the state itself is fresh
    with pytest.raises(ValueError, match="other horizons or levels"):
        OnlineCalibrator([1], LEVELS, coverage=first.coverage)
    with pytest.raises(ValueError):
        CoverageWindow([1], LEVELS, window_ms=1000)
