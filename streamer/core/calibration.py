"""Online calibration of the published quantile band, per (series, horizon).

A model's band is fixed once trained, so when a market's volatility moves away from the training
period's its coverage drifts. This step keeps it near nominal live, by adaptive conformal
inference (Gibbs & Candès 2021) in its quantile-tracking form (Angelopoulos, Candès &
Tibshirani 2023, "Conformal PID control"): each quantile level ``q`` of each (series, horizon)
has one log-scale ``theta``, and the published quantile is the raw one moved away from the raw
median by ``exp(theta)``::

    published_q = median + (raw_q - median) * exp(theta_q)

Once the horizon has passed and the realised close ``y`` is known, every level takes one step::

    theta_q += step_h * sign(q - 0.5) * (q - [y <= published_q])

(upper levels widen after a miss above, lower ones after a miss below). This is the ACI update
``alpha += step * (alpha - err)`` on each one-sided interval; since ``theta`` stays bounded, the
share of outcomes at or below ``published_q`` over any stretch of ``T`` realised forecasts is
within ``(range of theta) / (step * T)`` of ``q`` whatever the data do. The update uses the band
that was actually published (``theta`` as it was at the forecast's origin, kept in a short ring),
so the guarantee and the calibrated coverage counters are about the published band.

Properties that hold by construction: the median is the raw median (bit for bit); the band is
non-crossing (lower quantiles are kept at or below the median, upper ones at or above it, and
each side is sorted: the monotone rearrangement of Chernozhukov et al. 2010); a fresh state
(``theta`` = 0) publishes the raw band unchanged.

Cost: ``calibrate`` and ``observe_many`` are a few numpy operations per batch, O(horizon x
levels) per forecast and O(levels) per realised forecast (about 3 ms and 8 ms for a minute of
1,000 symbols with 15 horizons, 3 of them tracked; ``observe`` alone costs about 50 us per
event). Memory is fixed per series: ``theta`` and the counters per tracked horizon and level,
and a ring of ``ring_minutes`` snapshots of ``theta`` without the median's (always 0): about
5.4 KB per series with 3 tracked horizons, 7 levels and the default 32-minute ring, 5.5 MB for
1,000 symbols (2.1 MB with 3 levels), see ``nbytes``.
Realised forecasts older than the ring are counted in ``unmatched_total`` and change nothing.

Feeding it: the realised forecasts are the events the online evaluator scores (a forecast's
raw row at one horizon and the realised close, once a complete bar for the target minute has
arrived), passed as ``Realised`` to ``observe_many``. Horizons that are not tracked are
calibrated with ``theta`` interpolated linearly in ``h`` between the tracked ones.

Figures for /metrics: the raw and the published band's counts, summed over all series, in a
``CoverageWindow`` that rolls by exchange time like the online evaluator's (time buckets of the
target minute, a bucket leaving the window as a whole). It is the operator's view, and it can
outlive one calibrator: a model swap starts a fresh ``theta`` (a new model has a new band) and
hands the window on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from streamer.core.types import MINUTE_MS, Forecast

Key = tuple[str, str]

# Step of theta at h = 1; horizon h steps by DEFAULT_STEP / sqrt(h): its realised forecasts
# overlap (h of them share most of their path), so each carries less news. On the bundled replay
# this brings a band that is suddenly 2x too narrow back to 80 +- 3 % coverage within 4, 8 and 12
# hours at h = 1, 5, 15, and costs 1, 2 and 4 % of pinball loss on a band that was calibrated.
DEFAULT_STEP = 0.1
DEFAULT_RING_MINUTES = 32  # longest delay from origin to realisation that still updates
DEFAULT_MAX_LOG_SCALE = math.log(10.0)  # the band is never scaled by more than 10x or 1/10
DAY_MS = 86_400_000


class Realised(msgspec.Struct, frozen=True, gc=False):
    """One forecast at one horizon whose target minute has closed.

    ``values`` is the raw (uncalibrated) forecast row at the calibrator's levels, ``actual``
    the realised close of the bar opening ``horizon`` minutes after ``origin_ms``.
    """

    exchange: str
    symbol: str
    horizon: int
    origin_ms: int
    values: tuple[float, ...]
    actual: float


@dataclass(frozen=True, slots=True)
class CoverageCounts:
    """Realised forecasts at one horizon and, per level, how many closed at or below the raw
    and the published (calibrated) quantile. Totals since start-up, for counters."""

    horizon: int
    n: int
    levels: tuple[float, ...]
    raw_below: tuple[int, ...]
    calibrated_below: tuple[int, ...]

    def coverage(self, lower: float, upper: float, *, calibrated: bool) -> float | None:
        """Share of outcomes in ``(q_lower, q_upper]``; None before the first outcome."""
        if self.n == 0:
            return None
        below = self.calibrated_below if calibrated else self.raw_below
        i, j = self.levels.index(lower), self.levels.index(upper)
        return (below[j] - below[i]) / self.n


def checked_horizons_and_levels(
    horizons: Sequence[int], quantile_levels: Sequence[float]
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``horizons`` sorted and ``quantile_levels`` as floats, in their order; ValueError unless
    the horizons are distinct minutes and the levels lie in (0, 1) and include the median, as
    the calibrator and the evaluator both need."""
    if not horizons or any(h < 1 for h in horizons) or len(set(horizons)) != len(horizons):
        raise ValueError(f"horizons must be distinct minutes >= 1, got {list(horizons)}")
    levels = tuple(float(q) for q in quantile_levels)
    if 0.5 not in levels or any(not 0.0 < q < 1.0 for q in levels):
        raise ValueError(f"quantile levels must lie in (0, 1) and include 0.5, got {levels}")
    return tuple(sorted(horizons)), levels


class CoverageWindow:
    """Raw and published coverage counts, summed over series, per tracked horizon, over the
    last ``window_ms`` of exchange time, in buckets of 1/24 of the window (a minute at least).

    Fixed size whatever the uptime and the number of series: ``[slot, horizon, 1 + 2 * levels]``
    (the count, then the raw and the calibrated at-or-below counts).
    """

    def __init__(
        self,
        horizons: Sequence[int],
        quantile_levels: Sequence[float],
        window_ms: int = DAY_MS,
    ) -> None:
        self.horizons = tuple(horizons)
        self.quantile_levels = tuple(quantile_levels)
        self.window_ms = window_ms
        self.bucket_ms = max(MINUTE_MS, window_ms // 24)
        if window_ms < MINUTE_MS:
            raise ValueError(f"need a window of a minute or more, got {window_ms} ms")
        n_slots = -(-window_ms // self.bucket_ms) + 1
        self._sums = np.zeros((n_slots, len(self.horizons), 1 + 2 * len(self.quantile_levels)))
        self._bucket_ids = np.full(n_slots, -1, dtype=np.int64)
        self.now_ms: int | None = None  # the newest target minute seen

    def add(
        self,
        target_ms: npt.NDArray[np.int64],
        horizon_index: npt.NDArray[np.int64],
        raw_below: npt.NDArray[np.bool_],
        calibrated_below: npt.NDArray[np.bool_],
    ) -> None:
        """One row per realised forecast: its target minute, tracked horizon index, and per
        level whether the outcome closed at or below the raw and the published quantile."""
        if target_ms.size == 0:
            return
        newest = int(target_ms.max())
        if self.now_ms is None or newest > self.now_ms:
            self.now_ms = newest
        rows = np.concatenate(
            [np.ones((target_ms.size, 1)), raw_below, calibrated_below], axis=1, dtype=np.float64
        )
        buckets = target_ms // self.bucket_ms
        oldest = self._oldest_bucket()
        for bucket in sorted(set(buckets.tolist())):  # np.unique would import numpy.ma: 1.2 MB
            if bucket < oldest:
                continue  # a repaired bar from before the window: nothing to add to
            slot = bucket % len(self._bucket_ids)
            if self._bucket_ids[slot] != bucket:
                self._bucket_ids[slot] = bucket
                self._sums[slot] = 0.0
            mine = buckets == bucket
            np.add.at(self._sums[slot], horizon_index[mine], rows[mine])

    def counts(self) -> list[CoverageCounts]:
        """The window's counts per tracked horizon (zeros before the first outcome)."""
        if self.now_ms is None:
            totals = np.zeros(self._sums.shape[1:])
        else:
            totals = self._sums[self._bucket_ids >= self._oldest_bucket()].sum(axis=0)
        n_q = len(self.quantile_levels)
        return [
            CoverageCounts(
                horizon=h,
                n=int(totals[hi, 0]),
                levels=self.quantile_levels,
                raw_below=tuple(int(v) for v in totals[hi, 1 : 1 + n_q]),
                calibrated_below=tuple(int(v) for v in totals[hi, 1 + n_q :]),
            )
            for hi, h in enumerate(self.horizons)
        ]

    def _oldest_bucket(self) -> int:
        """The oldest bucket in the window: its start is after ``now_ms - window_ms``."""
        assert self.now_ms is not None
        return (self.now_ms - self.window_ms) // self.bucket_ms + 1


class OnlineCalibrator:
    """ACI state of every (series, tracked horizon, level); see the module docstring.

    ``horizons`` are the tracked horizons (those realised forecasts arrive for);
    ``quantile_levels`` the levels of the forecasts, ascending, with 0.5; ``steps`` overrides
    the step per horizon. ``window_ms`` is the span of the ``coverage`` window, or
    ``coverage`` an existing one (of the same horizons and levels) to carry on counting in.
    """

    def __init__(
        self,
        horizons: Sequence[int],
        quantile_levels: Sequence[float],
        *,
        steps: Mapping[int, float] | None = None,
        ring_minutes: int = DEFAULT_RING_MINUTES,
        max_log_scale: float = DEFAULT_MAX_LOG_SCALE,
        window_ms: int = DAY_MS,
        coverage: CoverageWindow | None = None,
    ) -> None:
        self.horizons, levels = checked_horizons_and_levels(horizons, quantile_levels)
        if list(levels) != sorted(set(levels)):
            raise ValueError(f"quantile levels must be distinct and ascending, got {levels}")
        if ring_minutes < 1 or not max_log_scale > 0:
            raise ValueError("ring_minutes must be >= 1 and max_log_scale > 0")
        self._horizon_index = {h: i for i, h in enumerate(self.horizons)}
        self.quantile_levels = levels
        self.median_index = levels.index(0.5)
        steps = dict(steps or {})
        self.steps = tuple(steps.get(h, DEFAULT_STEP / math.sqrt(h)) for h in self.horizons)
        if any(not s > 0 for s in self.steps):
            raise ValueError(f"steps must be > 0, got {self.steps}")
        self.ring_minutes = ring_minutes
        self.max_log_scale = max_log_scale
        q = np.asarray(levels)
        self._level = q
        self._side = np.sign(q - 0.5)  # 0 at the median: its theta never moves
        self._index: dict[Key, int] = {}
        n_h, n_q = len(self.horizons), len(levels)
        self._theta = np.zeros((0, n_h, n_q))
        # the ring leaves out the median's theta (always 0): a third of the state at 3 levels
        self._moving = [i for i in range(n_q) if i != self.median_index]
        self._ring = np.zeros((0, ring_minutes, n_h, n_q - 1))
        self._ring_origin = np.zeros((0, ring_minutes), dtype=np.int64)
        self._n = np.zeros((0, n_h), dtype=np.int64)
        self._below = np.zeros((0, n_h, 2, n_q), dtype=np.int64)  # [.., raw|calibrated, level]
        self._weights: dict[int, npt.NDArray[np.float64]] = {}
        if coverage is None:
            coverage = CoverageWindow(self.horizons, levels, window_ms)
        elif (coverage.horizons, coverage.quantile_levels) != (self.horizons, levels):
            raise ValueError("the coverage window is for other horizons or levels")
        self.coverage = coverage
        self.updated_total = 0
        self.unmatched_total = 0

    # --- publishing --------------------------------------------------------------------------

    def calibrate(
        self,
        keys: Sequence[Key],
        origins_ms: Sequence[int],
        values: npt.NDArray[np.floating],
    ) -> npt.NDArray[np.float64]:
        """Calibrated copy of ``values`` (``[n, horizon, levels]``, row ``i`` the raw forecast
        of ``keys[i]`` made at the bar opening at ``origins_ms[i]``), and the ``theta`` used
        is kept for when those forecasts are realised."""
        raw = np.asarray(values, dtype=np.float64)
        if raw.ndim != 3 or raw.shape[0] != len(keys) or raw.shape[2] != len(self._level):
            raise ValueError(
                f"values shape {raw.shape}, expected [{len(keys)}, horizon, {len(self._level)}]"
            )
        if len(origins_ms) != len(keys):
            raise ValueError("one origin per key is needed")
        if not keys:
            return raw.copy()
        rows = np.fromiter((self._row(k) for k in keys), dtype=np.int64, count=len(keys))
        theta = self._theta[rows]  # [n, tracked, levels]
        origins = np.asarray(origins_ms, dtype=np.int64)
        slots = (origins // MINUTE_MS) % self.ring_minutes
        self._ring[rows, slots] = theta[..., self._moving]
        self._ring_origin[rows, slots] = origins
        full = np.einsum("hk,nkq->nhq", self._horizon_weights(raw.shape[1]), theta)
        return _apply(raw, full, self.median_index)

    def calibrate_forecast(self, forecast: Forecast) -> Forecast:
        """``forecast`` with its values calibrated (levels must be the calibrator's)."""
        if forecast.quantile_levels != self.quantile_levels:
            raise ValueError(
                f"forecast levels {forecast.quantile_levels} are not {self.quantile_levels}"
            )
        out = self.calibrate(
            [(forecast.exchange, forecast.symbol)],
            [forecast.bar_time_ms],
            np.asarray(forecast.values, dtype=np.float64)[None],
        )[0]
        return msgspec.structs.replace(forecast, values=tuple(map(tuple, out.tolist())))

    # --- learning ----------------------------------------------------------------------------

    def observe(self, event: Realised) -> bool:
        """One ACI step on the band published for ``event``; False (counted) when that band's
        ``theta`` is no longer known (or never was), or the event is not usable."""
        return self.observe_many((event,)) == 1

    def observe_many(self, events: Iterable[Realised]) -> int:
        """``observe`` for a batch (a minute's worth), in a few numpy operations; returns how
        many were used. The steps only add up, each against its own published band, so the
        order of the events does not matter (but at the bounds of ``theta``)."""
        rows: list[int] = []
        his: list[int] = []
        slots: list[int] = []
        origins: list[int] = []
        values: list[tuple[float, ...]] = []
        actuals: list[float] = []
        width = len(self._level)
        for ev in events:
            row = self._index.get((ev.exchange, ev.symbol))
            hi = self._horizon_index.get(ev.horizon)
            slot = (ev.origin_ms // MINUTE_MS) % self.ring_minutes
            if (
                row is None
                or hi is None
                or self._ring_origin[row, slot] != ev.origin_ms
                or len(ev.values) != width
                or not math.isfinite(ev.actual)
            ):
                self.unmatched_total += 1
                continue
            rows.append(row)
            his.append(hi)
            slots.append(slot)
            origins.append(ev.origin_ms)
            values.append(ev.values)
            actuals.append(ev.actual)
        if not rows:
            return 0
        r, k = np.asarray(rows), np.asarray(his)
        raw = np.asarray(values, dtype=np.float64)
        actual = np.asarray(actuals)[:, None]
        moving = self._ring[r, np.asarray(slots), k]
        published = _apply(
            raw, np.insert(moving, self.median_index, 0.0, axis=1), self.median_index
        )
        cal_below = actual <= published
        step = np.asarray(self.steps)[k][:, None]
        np.add.at(self._theta, (r, k), step * self._side * (self._level - cal_below))
        bound = self.max_log_scale
        self._theta[r, k] = np.clip(self._theta[r, k], -bound, bound)
        raw_below = actual <= raw
        np.add.at(self._n, (r, k), 1)
        np.add.at(self._below[:, :, 0], (r, k), raw_below.astype(np.int64))
        np.add.at(self._below[:, :, 1], (r, k), cal_below.astype(np.int64))
        targets = np.asarray(origins, dtype=np.int64) + np.asarray(self.horizons)[k] * MINUTE_MS
        self.coverage.add(targets, k, raw_below, cal_below)
        self.updated_total += len(rows)
        return len(rows)

    # --- figures -----------------------------------------------------------------------------

    def keys(self) -> list[Key]:
        return list(self._index)

    def counts(self, exchange: str, symbol: str) -> list[CoverageCounts]:
        """Coverage counters of one series, one entry per tracked horizon (zeros if unknown)."""
        row = self._index.get((exchange, symbol))
        if row is None:
            return [self._counts(hi, 0, np.zeros((2, len(self._level)))) for hi in self._his()]
        return [self._counts(hi, self._n[row, hi], self._below[row, hi]) for hi in self._his()]

    def aggregate(self) -> list[CoverageCounts]:
        """Counters summed over all series per horizon (bounded labels for /metrics)."""
        return [
            self._counts(hi, self._n[:, hi].sum(), self._below[:, hi].sum(axis=0))
            for hi in self._his()
        ]

    def nbytes(self) -> int:
        """Bytes held by the state arrays (fixed per series, whatever the uptime)."""
        arrays = (self._theta, self._ring, self._ring_origin, self._n, self._below)
        return sum(a.nbytes for a in arrays)

    def log_scales(self, exchange: str, symbol: str) -> npt.NDArray[np.float64]:
        """Current ``theta`` ``[tracked horizon, level]`` of a series (zeros if unknown)."""
        row = self._index.get((exchange, symbol))
        if row is None:
            return np.zeros(self._theta.shape[1:])
        return np.asarray(self._theta[row].copy(), dtype=np.float64)

    # --- internals ---------------------------------------------------------------------------

    def _his(self) -> range:
        return range(len(self.horizons))

    def _counts(
        self, hi: int, n: int | np.integer, below: npt.NDArray[np.number]
    ) -> CoverageCounts:
        """``below``: ``[raw|calibrated, level]`` counts."""
        return CoverageCounts(
            horizon=self.horizons[hi],
            n=int(n),
            levels=self.quantile_levels,
            raw_below=tuple(int(v) for v in below[0]),
            calibrated_below=tuple(int(v) for v in below[1]),
        )

    def _row(self, key: Key) -> int:
        row = self._index.get(key)
        if row is None:
            row = self._index[key] = len(self._index)
            if row >= self._theta.shape[0]:
                self._grow(max(16, 2 * self._theta.shape[0]))
        return row

    def _grow(self, capacity: int) -> None:
        def grown(a: npt.NDArray[np.generic], fill: float = 0) -> npt.NDArray[np.generic]:
            out = np.full((capacity, *a.shape[1:]), fill, dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        self._theta = np.asarray(grown(self._theta), dtype=np.float64)
        self._ring = np.asarray(grown(self._ring), dtype=np.float64)
        self._ring_origin = np.asarray(grown(self._ring_origin, -1), dtype=np.int64)
        self._n = np.asarray(grown(self._n), dtype=np.int64)
        self._below = np.asarray(grown(self._below), dtype=np.int64)

    def _horizon_weights(self, horizon: int) -> npt.NDArray[np.float64]:
        """``[horizon, tracked]``: theta at h = 1..horizon from the tracked horizons, linear in
        h between them and constant beyond; a tracked horizon takes exactly its own theta."""
        weights = self._weights.get(horizon)
        if weights is None:
            tracked = [h for h in self.horizons if h <= horizon] or [self.horizons[0]]
            weights = np.zeros((horizon, len(self.horizons)))
            for h in range(1, horizon + 1):
                if h <= tracked[0] or h >= tracked[-1]:
                    nearest = tracked[0] if h <= tracked[0] else tracked[-1]
                    weights[h - 1, self.horizons.index(nearest)] = 1.0
                    continue
                right = next(i for i, t in enumerate(tracked) if t >= h)
                a, b = tracked[right - 1], tracked[right]
                w = (h - a) / (b - a)
                weights[h - 1, self.horizons.index(a)] = 1.0 - w
                weights[h - 1, self.horizons.index(b)] = w
            self._weights[horizon] = weights
        return weights


def _apply(
    raw: npt.NDArray[np.float64], theta: npt.NDArray[np.float64], median_index: int
) -> npt.NDArray[np.float64]:
    """Scale each quantile's distance from the median by ``exp(theta)``; the lower quantiles
    are kept at or below the median and the upper ones at or above it (rounding cannot push one
    across), then each side is sorted. ``theta`` = 0 gives ``raw`` back exactly."""
    median = raw[..., median_index : median_index + 1]
    out = raw + (raw - median) * np.expm1(theta)
    lower = np.sort(np.minimum(out[..., :median_index], median), axis=-1)
    upper = np.sort(np.maximum(out[..., median_index + 1 :], median), axis=-1)
    return np.concatenate([lower, median, upper], axis=-1)
