"""OnlineEvaluator: hand-computed scores, incomplete bars, eviction by time, bounded pending.

The small cases use round numbers so every figure can be checked by hand; the last test runs
the persistence-plus-band rule of tests/fixtures/models.py over real Binance bars and checks the
figures against a direct computation.
"""

from __future__ import annotations

import math

import pytest
from fixtures.models import band_factors, real_bars

from streamer.core.calibration import Realised
from streamer.core.evaluation import OnlineEvaluator
from streamer.core.types import MINUTE_MS, Bar, Forecast

T0 = 1_747_699_200_000  # 2025-05-20 00:00 UTC
LEVELS = (0.1, 0.5, 0.9)


def forecast(
    t: int,
    last_close: float,
    values: tuple[tuple[float, ...], ...],
    symbol: str = "BTCUSDT",
    levels: tuple[float, ...] = LEVELS,
) -> Forecast:
    return Forecast("binance", symbol, t, last_close, levels, values, "v1", "")


def bar(t: int, close: float, symbol: str = "BTCUSDT", complete: bool = True) -> Bar:
    return Bar("binance", symbol, t, close, close, close, close, 1.0, 1, complete)


def test_hand_computed_scores() -> None:
    ev = OnlineEvaluator([1, 2], LEVELS, window_ms=60 * MINUTE_MS)
    assert ev.record(forecast(T0, 100.0, ((99.0, 100.0, 101.0), (98.0, 100.5, 102.0))))
    assert ev.observe(bar(T0 + MINUTE_MS, 102.0)) == 1
    assert ev.observe(bar(T0 + 2 * MINUTE_MS, 99.0)) == 1
    h1, h2 = ev.figures("binance", "BTCUSDT")
    # h=1: y=102, median 100 -> 2; persistence 100 -> 2; 99..101 misses;
    # pinball: 0.1*3 + 0.5*2 + 0.9*1 = 2.2, / 3
    assert (h1.horizon, h1.n) == (1, 1)
    assert h1.model_mae == 2.0 and h1.persistence_mae == 2.0
    assert h1.skill == 0.0
    assert h1.coverage == 0.0
    assert h1.pinball == pytest.approx(2.2 / 3, rel=1e-12)
    assert h1.model_mae_bps == pytest.approx(200.0, rel=1e-12)
    # h=2: y=99, median 100.5 -> 1.5; persistence 1; 98..102 covers;
    # pinball: 0.1*1 + 0.5*1.5 + 0.1*3 = 1.15, / 3
    assert (h2.horizon, h2.n) == (2, 1)
    assert h2.model_mae == 1.5 and h2.persistence_mae == 1.0
    assert h2.skill == -0.5
    assert h2.coverage == 1.0
    assert h2.pinball == pytest.approx(1.15 / 3, rel=1e-12)
    assert h2.pinball_bps == pytest.approx(1.15 / 3 * 100, rel=1e-12)
    assert ev.scored_total == 2
    assert ev.pending_count() == 0  # fully scored forecasts are dropped


def test_rolling_means_over_several_forecasts() -> None:
    ev = OnlineEvaluator([1], LEVELS, window_ms=60 * MINUTE_MS)
    # three forecasts at consecutive minutes; median errors 1, 3, 2; persistence errors 2, 1, 4
    closes = [100.0, 102.0, 101.0, 105.0]
    medians = [101.0, 104.0, 103.0]
    for i, median in enumerate(medians):
        t = T0 + i * MINUTE_MS
        ev.record(forecast(t, closes[i], ((median - 5, median, median + 5),)))
        ev.observe(bar(t + MINUTE_MS, closes[i + 1]))
    (h1,) = ev.figures("binance", "BTCUSDT")
    assert h1.n == 3
    assert h1.model_mae == 2.0  # (1 + 3 + 2) / 3
    assert h1.persistence_mae == pytest.approx(7 / 3, rel=1e-12)
    assert h1.skill == pytest.approx(1 - 2.0 / (7 / 3), rel=1e-12)
    assert h1.coverage == 1.0


def test_incomplete_bar_is_skipped_until_the_complete_one_arrives_and_never_counts_twice() -> None:
    ev = OnlineEvaluator([1], LEVELS)
    ev.record(forecast(T0, 100.0, ((99.0, 100.0, 101.0),)))
    assert ev.observe(bar(T0 + MINUTE_MS, 150.0, complete=False)) == 0
    assert ev.skipped_incomplete_total == 1
    assert ev.figures("binance", "BTCUSDT")[0].n == 0
    assert ev.observe(bar(T0 + MINUTE_MS, 100.5)) == 1  # the backfilled bar
    assert ev.observe(bar(T0 + MINUTE_MS, 100.5)) == 0  # seen again: already scored
    (h1,) = ev.figures("binance", "BTCUSDT")
    assert (h1.n, h1.model_mae, h1.coverage) == (1, 0.5, 1.0)


def test_scores_leave_the_window_by_exchange_time() -> None:
    ev = OnlineEvaluator([1], LEVELS, window_ms=3 * MINUTE_MS, bucket_ms=MINUTE_MS)
    for i in range(5):  # errors 1, 2, 3, 4, 5 at target minutes 1..5
        t = T0 + i * MINUTE_MS
        ev.record(forecast(t, 100.0, ((90.0, 100.0 + i + 1, 120.0),)))
        ev.observe(bar(t + MINUTE_MS, 100.0))
    (h1,) = ev.figures("binance", "BTCUSDT")
    assert h1.n == 3  # minutes 3, 4, 5: a bucket stays while its start is within 3 minutes
    assert h1.model_mae == 4.0
    # another symbol's newer bar moves exchange time on: two more minutes leave
    ev.observe(bar(T0 + 7 * MINUTE_MS, 1.0, symbol="ETHUSDT"))
    (h1,) = ev.figures("binance", "BTCUSDT")
    assert (h1.n, h1.model_mae) == (1, 5.0)
    ev.observe(bar(T0 + 8 * MINUTE_MS, 1.0, symbol="ETHUSDT"))
    empty = ev.figures("binance", "BTCUSDT")[0]
    assert empty.n == 0 and empty.model_mae is None and empty.skill is None


def test_aggregate_across_symbols_in_bps() -> None:
    ev = OnlineEvaluator([1], LEVELS)
    # BTC: last 100000, median error 10 (1 bp), persistence error 20 (2 bp)
    ev.record(forecast(T0, 100_000.0, ((99_000.0, 100_030.0, 101_000.0),)))
    ev.observe(bar(T0 + MINUTE_MS, 100_020.0))
    # ETH: last 2000, median error 1 (5 bp), persistence error 2 (10 bp), outside the band
    ev.record(forecast(T0, 2000.0, ((2000.5, 2001.0, 2001.5),), symbol="ETHUSDT"))
    ev.observe(bar(T0 + MINUTE_MS, 2002.0, symbol="ETHUSDT"))
    (agg,) = ev.aggregate()
    assert agg.n == 2
    assert agg.model_mae is None and agg.persistence_mae is None and agg.pinball is None
    assert agg.model_mae_bps == pytest.approx(3.0, rel=1e-9)  # (1 + 5) / 2
    assert agg.persistence_mae_bps == pytest.approx(6.0, rel=1e-9)  # (2 + 10) / 2
    assert agg.skill == pytest.approx(0.5, rel=1e-9)
    assert agg.coverage == 0.5
    (btc,) = ev.figures("binance", "BTCUSDT")
    assert btc.model_mae == 10.0 and btc.skill == 0.5
    assert sorted(ev.keys()) == [("binance", "BTCUSDT"), ("binance", "ETHUSDT")]


def test_skill_is_none_when_persistence_is_perfect() -> None:
    ev = OnlineEvaluator([1], LEVELS)
    ev.record(forecast(T0, 100.0, ((99.0, 100.5, 101.0),)))
    ev.observe(bar(T0 + MINUTE_MS, 100.0))
    (h1,) = ev.figures("binance", "BTCUSDT")
    assert h1.persistence_mae == 0.0 and h1.model_mae == 0.5 and h1.skill is None
    numbers = h1.as_numbers()
    assert numbers["n"] == 1.0 and numbers["model_mae"] == 0.5 and math.isnan(numbers["skill"])


def test_horizons_beyond_the_forecast_and_subsets() -> None:
    ev = OnlineEvaluator([1, 3], LEVELS)
    ev.record(forecast(T0, 100.0, ((99.0, 100.0, 101.0), (98.0, 100.0, 102.0))))  # H = 2
    assert ev.observe(bar(T0 + MINUTE_MS, 100.0)) == 1
    assert ev.pending_count() == 0  # horizon 3 is beyond this forecast: nothing left to wait for
    assert ev.observe(bar(T0 + 3 * MINUTE_MS, 100.0)) == 0
    assert [f.n for f in ev.figures("binance", "BTCUSDT")] == [1, 0]
    assert not ev.record(forecast(T0, 100.0, ()))  # no horizon at all
    assert ev.rejected_total["horizon"] == 1


def test_bad_forecasts_are_counted_not_kept() -> None:
    ev = OnlineEvaluator([1], LEVELS)
    assert not ev.record(forecast(T0, 100.0, ((99.0, 100.0),), levels=(0.1, 0.5)))
    assert not ev.record(forecast(T0, 0.0, ((99.0, 100.0, 101.0),)))
    assert not ev.record(forecast(T0, 100.0, ((99.0, math.nan, 101.0),)))
    assert not ev.record(forecast(T0, 100.0, ((99.0, 100.0),)))
    assert dict(ev.rejected_total) == {"levels": 1, "last_close": 1, "values": 2}
    assert ev.pending_count() == 0


def test_forecast_with_more_levels_is_scored_on_the_configured_ones() -> None:
    ev = OnlineEvaluator([1], (0.1, 0.5, 0.9))
    levels = (0.05, 0.1, 0.5, 0.9, 0.95)
    ev.record(forecast(T0, 100.0, ((90.0, 99.0, 100.0, 101.0, 110.0),), levels=levels))
    ev.observe(bar(T0 + MINUTE_MS, 102.0))
    (h1,) = ev.figures("binance", "BTCUSDT")
    assert h1.coverage == 0.0  # the 0.1..0.9 interval, not 0.05..0.95
    assert h1.pinball == pytest.approx(2.2 / 3, rel=1e-12)


def test_pending_is_capped_per_symbol() -> None:
    ev = OnlineEvaluator([1], LEVELS, max_pending_per_symbol=3)
    for i in range(5):
        ev.record(forecast(T0 + i * MINUTE_MS, 100.0, ((99.0, 100.0, 101.0),)))
    assert ev.pending_count() == 3
    assert ev.evicted_unscored_total == 2
    assert ev.observe(bar(T0 + MINUTE_MS, 100.0)) == 0  # its forecast was evicted
    assert ev.observe(bar(T0 + 5 * MINUTE_MS, 100.0)) == 1


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="horizons"):
        OnlineEvaluator([0], LEVELS)
    with pytest.raises(ValueError, match=r"include 0\.5"):
        OnlineEvaluator([1], (0.1, 0.9))
    with pytest.raises(ValueError, match="window_ms"):
        OnlineEvaluator([1], LEVELS, window_ms=1000)


def test_persistence_band_on_real_bars_matches_a_direct_computation() -> None:
    bars = real_bars("ETHUSDT")
    horizons = [1, 5, 15]
    factors = band_factors(15, LEVELS, 0.001).astype(float)
    ev = OnlineEvaluator(horizons, LEVELS)
    for b in bars:
        ev.observe(b)
        values = tuple(tuple(b.close * f for f in row) for row in factors)
        ev.record(Forecast("binance", "ETHUSDT", b.open_time_ms, b.close, LEVELS, values, "v", ""))
        assert ev.pending_count() <= 15
    for fig, h in zip(ev.figures("binance", "ETHUSDT"), horizons, strict=True):
        pairs = [(bars[i].close, bars[i + h].close) for i in range(len(bars) - h)]
        pers = [abs(y - last) for last, y in pairs]
        lo, hi = factors[h - 1][0], factors[h - 1][2]
        covered = [last * lo <= y <= last * hi for last, y in pairs]
        assert fig.n == len(pairs)
        assert fig.persistence_mae == pytest.approx(sum(pers) / len(pers), rel=1e-9)
        assert fig.model_mae == pytest.approx(fig.persistence_mae, rel=1e-9)  # median = last
        assert fig.skill == pytest.approx(0.0, abs=1e-9)
        assert fig.coverage == pytest.approx(sum(covered) / len(covered), rel=1e-12)


def test_each_scored_forecast_is_handed_out_once_as_realised_with_its_recorded_row() -> None:
    """What the calibration learns from: the forecast's row at the scored horizon, at the
    evaluator's levels (ascending, whatever the forecast's order), and the realised close;
    nothing for an incomplete bar, nothing twice, and a repaired bar from before the window
    still counts (the calibration has its own notion of too old)."""
    ev = OnlineEvaluator([1, 2], LEVELS, window_ms=60 * MINUTE_MS)
    rows = ((99.0, 100.0, 101.0), (98.0, 100.5, 102.0))
    shuffled = tuple((r[2], r[0], r[1]) for r in rows)  # levels 0.9, 0.1, 0.5
    assert ev.record(forecast(T0, 100.0, shuffled, levels=(0.9, 0.1, 0.5)))
    out: list[Realised] = []
    assert ev.observe(bar(T0 + MINUTE_MS, 102.0, complete=False), out) == 0
    assert out == []
    assert ev.observe(bar(T0 + MINUTE_MS, 102.0), out) == 1
    assert ev.observe(bar(T0 + MINUTE_MS, 102.0), out) == 0  # seen twice: scored once
    assert out == [Realised("binance", "BTCUSDT", 1, T0, rows[0], 102.0)]
    assert ev.observe(bar(T0 + 2 * MINUTE_MS, 99.0)) == 1  # no list: nothing handed out
    assert len(out) == 1
    # a forecast whose target bar comes long after the window moved on (a late repair)
    ev.record(forecast(T0 + 2 * MINUTE_MS, 99.0, rows))
    ev.observe(bar(T0 + 200 * MINUTE_MS, 99.0, symbol="ETHUSDT"))  # exchange time moves on
    assert ev.observe(bar(T0 + 3 * MINUTE_MS, 98.5), out) == 1
    assert out[-1] == Realised("binance", "BTCUSDT", 1, T0 + 2 * MINUTE_MS, rows[0], 98.5)
    assert ev.figures("binance", "BTCUSDT")[0].n == 0  # out of the window: not in the figures
