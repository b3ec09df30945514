"""Online evaluation: each forecast scored against the realised closes as they arrive.

This is how an operator sees, live, whether the model beats "the price stays where it is". A
forecast issued at the close of bar ``T`` is scored at horizon ``h`` when the complete bar that
opens at ``T + h`` minutes arrives (its close is the realised price), on four figures:
absolute error of the median, absolute error of persistence (the last close), whether the
outer quantile interval covered the outcome, and the pinball loss averaged over the levels.

Incomplete bars (a feed outage overlapped the minute) are not scored: their close may be wrong.
The forecast stays pending until the backfilled, complete bar for that minute arrives, or until
the per-symbol cap on pending forecasts pushes it out (counted in ``evicted_unscored``).
Each (forecast, horizon) is scored at most once, so a bar seen twice never counts twice.

Each scored (forecast, horizon) can also be handed out as a ``Realised`` (the forecast's row at
that horizon and the realised close) for the online calibration to learn from: ``observe``
appends them to the list it is given, repaired bars from before the window included.

Memory is bounded whatever the uptime: scores are summed into time buckets (default 1/24 of the
window) in a fixed ring per symbol, and a bucket leaves the window as a whole, by exchange time
(the newest bar open time seen). A figure therefore covers between ``window_ms - bucket_ms`` and
``window_ms`` of scores. With 1,000 symbols, 3 horizons and the defaults this is about 5 MB.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from streamer.core import scoring
from streamer.core.calibration import Realised, checked_horizons_and_levels
from streamer.core.types import MINUTE_MS, Bar, Forecast

DAY_MS = 86_400_000
DEFAULT_PENDING_SLACK = 15  # minutes a forecast may wait beyond its horizon for a backfilled bar

Key = tuple[str, str]

# columns of the per-bucket sums
_N, _MODEL, _PERS, _COVERED, _PINBALL, _MODEL_BPS, _PERS_BPS, _PINBALL_BPS = range(8)
_N_SUMS = 8


@dataclass(frozen=True, slots=True)
class HorizonFigures:
    """Rolling figures at one horizon (minutes); every figure is None while ``n`` is 0.

    Price-unit figures are per symbol only (None in the aggregate across symbols, where prices
    of different assets cannot be added); the ``_bps`` ones are in basis points of the last
    close. ``skill`` is 1 - model MAE / persistence MAE (from the bps sums in the aggregate);
    None when persistence made no error at all.
    """

    horizon: int
    n: int
    model_mae: float | None
    persistence_mae: float | None
    pinball: float | None
    model_mae_bps: float | None
    persistence_mae_bps: float | None
    pinball_bps: float | None
    skill: float | None
    coverage: float | None

    def as_numbers(self) -> dict[str, float]:
        """Every figure but ``horizon`` as a float, NaN for None (for gauges and payloads)."""
        numbers: dict[str, float] = {}
        for name in _FIGURE_NAMES:
            value = getattr(self, name)
            numbers[name] = math.nan if value is None else float(value)
        return numbers


_FIGURE_NAMES = (
    "n",
    "model_mae",
    "persistence_mae",
    "pinball",
    "model_mae_bps",
    "persistence_mae_bps",
    "pinball_bps",
    "skill",
    "coverage",
)


class _Pending(msgspec.Struct, gc=False):
    """What scoring needs of a recorded forecast waiting for its targets: 1,000 symbols keep
    tens of thousands waiting, so only the tracked horizons' values at the scored levels are
    kept, unboxed (outside the GC too)."""

    last_close: float
    horizon: int
    values: array[float]  # [horizon index * n_levels + level index], the evaluator's order
    scored: int  # bit i set: horizon index i scored
    remaining: int


class _Ring:
    """Per-symbol score sums: ``[slot, horizon index, column]``, slot = bucket % n_slots."""

    __slots__ = ("bucket_ids", "sums")

    def __init__(self, n_slots: int, n_horizons: int) -> None:
        self.sums: npt.NDArray[np.float64] = np.zeros((n_slots, n_horizons, _N_SUMS))
        self.bucket_ids: npt.NDArray[np.int64] = np.full(n_slots, -1, dtype=np.int64)

    def add(self, bucket: int, horizon_index: int, row: Sequence[float]) -> None:
        slot = bucket % len(self.bucket_ids)
        if self.bucket_ids[slot] != bucket:
            self.bucket_ids[slot] = bucket
            self.sums[slot] = 0.0
        self.sums[slot, horizon_index] += row

    def totals(self, oldest_bucket: int) -> npt.NDArray[np.float64]:
        """``[horizon index, column]`` sums over the buckets still in the window."""
        live = self.bucket_ids >= oldest_bucket
        return np.asarray(self.sums[live].sum(axis=0), dtype=np.float64)


class OnlineEvaluator:
    """Pending forecasts per (exchange, symbol) and rolling scores per horizon.

    ``horizons`` are the horizons tracked, in minutes (1..H of the model, or a subset such as
    [1, 5, 15]); ``quantile_levels`` are the levels scored, which a forecast must all carry (the
    outer interval is lowest..highest, and 0.5 is the median).
    """

    def __init__(
        self,
        horizons: Sequence[int],
        quantile_levels: Sequence[float],
        window_ms: int = DAY_MS,
        *,
        bucket_ms: int | None = None,
        max_pending_per_symbol: int | None = None,
    ) -> None:
        self.horizons, levels = checked_horizons_and_levels(horizons, quantile_levels)
        if window_ms < MINUTE_MS:
            raise ValueError(f"window_ms must be at least a minute, got {window_ms}")
        self.quantile_levels = tuple(sorted(set(levels)))
        self.window_ms = window_ms
        self.bucket_ms = bucket_ms or max(MINUTE_MS, window_ms // 24)
        if not 0 < self.bucket_ms <= window_ms:
            raise ValueError(f"bucket_ms must be in (0, window_ms], got {self.bucket_ms}")
        self._n_slots = -(-window_ms // self.bucket_ms) + 1
        self.max_pending = max_pending_per_symbol or max(self.horizons) + DEFAULT_PENDING_SLACK
        self._pending: dict[Key, dict[int, _Pending]] = {}
        self._rings: dict[Key, _Ring] = {}
        self._median = self.quantile_levels.index(0.5)
        # a forecast's quantile_levels -> where each scored level sits in them (None: missing)
        self._positions: dict[tuple[float, ...], tuple[int, ...] | None] = {}
        self._now_ms: int | None = None
        self.scored_total = 0
        self.skipped_incomplete_total = 0
        self.evicted_unscored_total = 0
        self.rejected_total: Counter[str] = Counter()

    # --- input -------------------------------------------------------------------------------

    def record(self, forecast: Forecast) -> bool:
        """Keep ``forecast`` until its targets arrive; False (counted) when it cannot be scored."""
        positions = self._positions_for(forecast.quantile_levels)
        if positions is None:
            return self._reject("levels")
        last = forecast.last_close
        if not (math.isfinite(last) and last > 0):
            return self._reject("last_close")
        remaining = sum(1 for h in self.horizons if h <= forecast.horizon)
        if remaining == 0:
            return self._reject("horizon")
        width = len(forecast.quantile_levels)
        values = array("d")
        for h in self.horizons:
            if h > forecast.horizon:
                values.extend([math.nan] * len(positions))
                continue
            row = forecast.values[h - 1]
            if len(row) != width or not all(map(math.isfinite, row)):
                return self._reject("values")
            values.extend([row[i] for i in positions])
        pending = self._pending.setdefault((forecast.exchange, forecast.symbol), {})
        pending.pop(forecast.bar_time_ms, None)  # a re-issued forecast replaces the first one
        pending[forecast.bar_time_ms] = _Pending(last, forecast.horizon, values, 0, remaining)
        while len(pending) > self.max_pending:
            del pending[next(iter(pending))]
            self.evicted_unscored_total += 1
        return True

    def observe(self, bar: Bar, realised: list[Realised] | None = None) -> int:
        """Score the pending forecasts whose target minute ``bar`` is; returns how many.

        ``realised``: where to append each scored forecast's row and outcome (at the
        evaluator's levels, ascending), for the calibration."""
        if self._now_ms is None or bar.open_time_ms > self._now_ms:
            self._now_ms = bar.open_time_ms
        pending = self._pending.get(bar.key)
        if not pending:
            return 0
        scored = 0
        for hi, h in enumerate(self.horizons):
            origin = bar.open_time_ms - h * MINUTE_MS
            entry = pending.get(origin)
            if entry is None or h > entry.horizon or (entry.scored >> hi) & 1:
                continue
            if not bar.complete:
                self.skipped_incomplete_total += 1
                continue
            if realised is not None:
                width = len(self.quantile_levels)
                realised.append(
                    Realised(
                        bar.exchange,
                        bar.symbol,
                        h,
                        origin,
                        tuple(entry.values[hi * width : (hi + 1) * width]),
                        bar.close,
                    )
                )
            self._score(bar.key, entry, hi, bar.close, bar.open_time_ms)
            scored += 1
            entry.scored |= 1 << hi
            entry.remaining -= 1
            if entry.remaining == 0:
                del pending[origin]
        self.scored_total += scored
        return scored

    # --- output ------------------------------------------------------------------------------

    def keys(self) -> list[Key]:
        """(exchange, symbol) pairs with scores (in or out of the window)."""
        return list(self._rings)

    def figures(self, exchange: str, symbol: str) -> list[HorizonFigures]:
        """Rolling figures of one symbol, one entry per tracked horizon."""
        ring = self._rings.get((exchange, symbol))
        if ring is None or self._now_ms is None:
            return [self._empty(h) for h in self.horizons]
        totals = ring.totals(self._oldest_bucket(self._now_ms))
        return [_figures(h, totals[hi], per_symbol=True) for hi, h in enumerate(self.horizons)]

    def aggregate(self) -> list[HorizonFigures]:
        """Figures across all symbols per horizon (bps and ratios only), for bounded labels."""
        if not self._rings or self._now_ms is None:
            return [self._empty(h) for h in self.horizons]
        oldest = self._oldest_bucket(self._now_ms)
        totals = np.zeros((len(self.horizons), _N_SUMS))
        for ring in self._rings.values():
            totals += ring.totals(oldest)
        return [_figures(h, totals[hi], per_symbol=False) for hi, h in enumerate(self.horizons)]

    def pending_count(self) -> int:
        return sum(len(p) for p in self._pending.values())

    # --- internals ---------------------------------------------------------------------------

    def _reject(self, reason: str) -> bool:
        self.rejected_total[reason] += 1
        return False

    def _empty(self, horizon: int) -> HorizonFigures:
        return _figures(horizon, np.zeros(_N_SUMS), per_symbol=True)

    def _oldest_bucket(self, now_ms: int) -> int:
        """The oldest bucket in the window: its start is after ``now_ms - window_ms``."""
        return (now_ms - self.window_ms) // self.bucket_ms + 1

    def _positions_for(self, levels: tuple[float, ...]) -> tuple[int, ...] | None:
        if levels not in self._positions:
            where = {q: i for i, q in enumerate(levels)}
            found = all(q in where for q in self.quantile_levels)
            self._positions[levels] = (
                tuple(where[q] for q in self.quantile_levels) if found else None
            )
        return self._positions[levels]

    def _score(self, key: Key, entry: _Pending, hi: int, actual: float, target_ms: int) -> None:
        bucket = target_ms // self.bucket_ms
        assert self._now_ms is not None
        if bucket < self._oldest_bucket(self._now_ms):
            return  # a repaired bar from before the window: nothing to add to
        n_levels = len(self.quantile_levels)
        row = entry.values[hi * n_levels : (hi + 1) * n_levels]
        model_err = abs(actual - row[self._median])
        persistence_err = abs(actual - entry.last_close)
        inside = 1.0 if scoring.covered(actual, row[0], row[-1]) else 0.0
        pinball = (
            math.fsum(
                scoring.pinball_loss(actual - v, q)
                for q, v in zip(self.quantile_levels, row, strict=True)
            )
            / n_levels
        )
        to_bps = 1e4 / entry.last_close
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(self._n_slots, len(self.horizons))
        ring.add(
            bucket,
            hi,
            (
                1.0,
                model_err,
                persistence_err,
                inside,
                pinball,
                model_err * to_bps,
                persistence_err * to_bps,
                pinball * to_bps,
            ),
        )


def _figures(horizon: int, sums: npt.NDArray[np.float64], *, per_symbol: bool) -> HorizonFigures:
    n = int(sums[_N])
    if n == 0:
        return HorizonFigures(horizon, 0, None, None, None, None, None, None, None, None)
    model, pers = float(sums[_MODEL]) / n, float(sums[_PERS]) / n
    model_bps, pers_bps = float(sums[_MODEL_BPS]) / n, float(sums[_PERS_BPS]) / n
    return HorizonFigures(
        horizon=horizon,
        n=n,
        model_mae=model if per_symbol else None,
        persistence_mae=pers if per_symbol else None,
        pinball=float(sums[_PINBALL]) / n if per_symbol else None,
        model_mae_bps=model_bps,
        persistence_mae_bps=pers_bps,
        pinball_bps=float(sums[_PINBALL_BPS]) / n,
        skill=scoring.skill(model, pers) if per_symbol else scoring.skill(model_bps, pers_bps),
        coverage=float(sums[_COVERED]) / n,
    )
