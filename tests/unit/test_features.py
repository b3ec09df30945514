"""window_array and contiguous_tail on real Binance bars (tests/fixtures/bars, see SOURCE.md)."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
from fixtures.features import contiguous_tail, window_array
from fixtures.models import real_bars
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.types import MINUTE_MS, Bar

BTC = real_bars("BTCUSDT")
ETH = real_bars("ETHUSDT")


def test_exact_values_oldest_first_newest_window() -> None:
    got = window_array([BTC[:3], ETH[:4]], 2)
    assert got.dtype == np.float32
    assert got.shape == (2, 2, 5)
    # rows 2-3 of the BTC file and 3-4 of the ETH file, in file order (oldest first)
    expected = np.array(
        [
            [
                [105554.32, 105609.89, 105554.31, 105604.68, 6.48334],
                [BTC[2].open, BTC[2].high, BTC[2].low, BTC[2].close, BTC[2].volume],
            ],
            [
                [ETH[2].open, ETH[2].high, ETH[2].low, ETH[2].close, ETH[2].volume],
                [ETH[3].open, ETH[3].high, ETH[3].low, ETH[3].close, ETH[3].volume],
            ],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0, 3] == np.float32(105604.68)  # close column of the second BTC bar


def test_accepts_deques_and_exact_length_series() -> None:
    got = window_array([deque(BTC[:60]), BTC[:60]], 60)
    np.testing.assert_array_equal(got[0], got[1])
    assert got[0, 0, 0] == np.float32(BTC[0].open)
    assert got[0, -1, 4] == np.float32(BTC[59].volume)


def test_empty_batch_has_the_right_shape() -> None:
    assert window_array([], 60).shape == (0, 60, 5)


def test_short_series_and_bad_window_raise() -> None:
    with pytest.raises(ValueError, match="series 1 has 59 bars, the window needs 60"):
        window_array([BTC[:60], BTC[:59]], 60)
    with pytest.raises(ValueError, match="window must be >= 1"):
        window_array([BTC], 0)


@settings(max_examples=50, deadline=None)
@given(
    window=st.integers(1, 40),
    extra=st.lists(st.integers(0, 80), min_size=1, max_size=8),
    which=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_matches_a_per_bar_copy(window: int, extra: list[int], which: list[bool]) -> None:
    series = [(BTC if which[i] else ETH)[: window + n] for i, n in enumerate(extra)]
    got = window_array(series, window)
    for i, bars in enumerate(series):
        for t, bar in enumerate(bars[-window:]):
            row = [bar.open, bar.high, bar.low, bar.close, bar.volume]
            np.testing.assert_array_equal(got[i, t], np.array(row, dtype=np.float32))


def test_contiguous_tail() -> None:
    assert contiguous_tail(BTC, 60)
    assert contiguous_tail(BTC[:60], 60)
    assert not contiguous_tail(BTC[:59], 60)
    holed = BTC[:30] + BTC[31:61]  # minute 30 missing: 60 bars spanning 61 minutes
    assert len(holed) == 60
    assert not contiguous_tail(holed, 60)
    assert contiguous_tail(holed, 30)  # the newest 30 are consecutive
    assert not contiguous_tail(holed, 31)
    assert not contiguous_tail(BTC, 0)


def test_real_fixture_is_contiguous_minutes() -> None:
    gaps = {b.open_time_ms - a.open_time_ms for a, b in itertools.pairwise(BTC)}
    assert gaps == {MINUTE_MS}
    assert all(isinstance(b, Bar) for b in BTC) and len(BTC) == 240
