"""HAR realised-variance band with intraday seasonality: the strong classical baseline.

Minute returns have two regularities an EWMA band ignores. Volatility is persistent at several
scales at once, which the heterogeneous autoregressive cascade captures (Corsi 2009): the next
minutes' realised variance regressed on the realised variance of the last 1, 5, 15, 60 and 240
minutes. And it follows the clock: it bursts in the first minute of every hour and after :15,
:30 and :45, and varies by hour of week (Hansen, Kim & Kimbrough, J. Financial Econometrics
2024). So squared returns are first divided by a seasonal factor, ``minute of hour x hour of
week``, the cascade runs on what is left, and the factor of the target minutes is put back::

    s(t)     = f_minute[minute of hour] * f_hour[hour of week]       (mean 1 on the fit range)
    x_t      = r_t**2 / s(t)                                          (deseasonalised)
    RV_k(t)  = mean(x over the last k minutes of the gap-free run),   k in 1, 5, 15, 60, 240
    log(mean(x_{t+1..t+h})) - log RV_240
             ~ b_h . (1, log RV_1 - log RV_240, ..., log RV_60 - log RV_240)   (least squares)
    sigma_h(t)**2 = exp(b_h . features(t) + log RV_240(t)) * sum(s(t+1..t+h))

The cascade weights sum to one (the regression is on log RVs relative to the 240-minute one):
the band then scales with the market's volatility level instead of reverting to the training
period's, so a calmer or wilder period or venue is no surprise to it (unconstrained, it scored
worse than the EWMA band at h = 1 out of period). Every RV gets a small floor before the log,
so flat minutes (about 4 % of BTCUSDT minutes close unchanged) stay finite.

Quantiles are ``last close * exp(z_q * sigma_h)``, with ``z_q`` the empirical quantiles of the
standardised fit-range returns ``r_h / sigma_h``, taken symmetric (from ``|z|``) so the median
is the last close, as for the EWMA band. The log regression is robust to the spikes that
dominate a least-squares fit of variance levels; its bias (a log fit forecasts a geometric, not
an arithmetic, mean) is absorbed by the empirical ``z_q``, which are fitted on the same range.

The hour-of-week factor is a day-of-week times an hour-of-day factor (7 + 24 cells, each seen
on every week of the fit range, instead of 168 seen a few times each), and the seasonal means
are of absolute returns capped at their 99th percentile, so that one news minute does not make
its hour.

Everything is fitted on the fit (training) range only: each series is cut to it first, and the
fit is pooled over the series given (each series' returns scaled by its own mean absolute
return for the seasonal factors, so no asset dominates them). The interface follows
``trainer.evaluate``'s EWMA band: ``HarBand.fit(series, fit_split, horizon)`` is fitted as
``static_return_quantiles`` is, then ``forecasts(series, origins, horizon, levels)`` returns
prices ``[n, horizon, Q]`` like each entry of ``baseline_forecasts`` (``sigma`` is the analogue
of ``ewma_sigma``). Numpy only.

On models/data (fit 2023-03-17 .. 04-16, scored on 04-17 .. 05-01) its pinball loss is 0.987,
0.987, 0.981 x the EWMA band's at h = 1, 5, 15 for BTCUSDT and 0.983, 0.981, 0.979 for ETHUSDT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from trainer.dataset import Series, Split, iso_ms, log_returns, run_starts

CASCADE = (1, 5, 15, 60, 240)  # minutes of the realised-variance cascade (Corsi 2009)
HOUR_MS = 3_600_000
WEEK_HOURS = 168
MONDAY_OFFSET_H = 72  # 1970-01-01 was a Thursday: (hours + 72) % 168 is 0 on Monday 00:00 UTC
# The floor before every log is 5 % of the mean (deseasonalised) squared return on the fit
# range. It, the trimming of the seasonal estimate and the day x hour layout of the hour-of-week
# factor were chosen on a validation fit of models/data (fit 2023-03-17 .. 04-01, scored on
# 04-02 .. 04-16), none on the later test period.
FLOOR_SHARE = 0.05
TRIM_QUANTILE = 0.99
Z_GRID = np.linspace(0.0, 1.0, 2001)  # levels at which |z| quantiles are kept (any level
# is then interpolated, to 0.05 % in level)


@dataclass(frozen=True, slots=True)
class Seasonality:
    """Multiplicative variance factors by minute of hour and hour of week (mean 1 each)."""

    minute_of_hour: npt.NDArray[np.float64]  # [60]
    hour_of_week: npt.NDArray[np.float64]  # [168], 0 = Monday 00:00-01:00 UTC

    def factor(self, open_time_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Seasonal variance factor of the minutes opening at ``open_time_ms``."""
        minute = (open_time_ms // 60_000) % 60
        hour = (open_time_ms // HOUR_MS + MONDAY_OFFSET_H) % WEEK_HOURS
        return np.asarray(self.minute_of_hour[minute] * self.hour_of_week[hour], dtype=np.float64)


FLAT = Seasonality(np.ones(60), np.ones(WEEK_HOURS))


def within(series: Series, split: Split) -> Series:
    """The bars of ``series`` inside ``split``: all a fit may see (its first bar has no
    return, so nothing before the range leaks in through a return either)."""
    keep = (series.open_time_ms >= split.start_ms) & (series.open_time_ms < split.end_ms)
    return series.rows(keep)


def _has_return(series: Series) -> npt.NDArray[np.bool_]:
    """Bars whose return is a real one (not the first bar of a run)."""
    return run_starts(series.open_time_ms, series.interval_ms) < np.arange(len(series))


def fit_seasonality(series: Sequence[Series], fit: Split) -> Seasonality:
    """Seasonal factors from mean absolute returns on the fit range (squared, so they scale
    variance): minute of hour first, then hour of week on what that leaves.

    Absolute returns are capped at their 99th percentile, so a news minute does not make its
    hour; and the hour-of-week factor is the product of an hour-of-day and a day-of-week one
    (24 + 7 cells, each averaged over weeks, instead of 168 cells seen a few times each).
    """
    times, scaled = [], []
    for s in (within(s, fit) for s in series):
        keep = _has_return(s)
        a = np.abs(log_returns(s)[keep])
        if a.shape[0] and a.mean() > 0:
            times.append(s.open_time_ms[keep])
            scaled.append(a / a.mean())
    if not times:
        raise ValueError(
            f"no returns in the fit range {iso_ms(fit.start_ms)}..{iso_ms(fit.end_ms)}"
        )
    t, a = np.concatenate(times), np.concatenate(scaled)
    a = np.minimum(a, np.quantile(a, TRIM_QUANTILE))
    minute = (t // 60_000) % 60
    hour = (t // HOUR_MS + MONDAY_OFFSET_H) % WEEK_HOURS
    f_minute = _cell_factor(a, minute, 60)
    rest = a / np.sqrt(f_minute[minute])
    f_day = _cell_factor(rest, hour // 24, 7)
    f_hour = _cell_factor(rest / np.sqrt(f_day[hour // 24]), hour % 24, 24)
    f_week = (f_day[:, None] * f_hour[None, :]).ravel()
    return Seasonality(f_minute, np.asarray(f_week / f_week.mean(), dtype=np.float64))


def _cell_factor(
    a: npt.NDArray[np.float64], cell: npt.NDArray[np.int64], n: int
) -> npt.NDArray[np.float64]:
    """(mean |r| of each cell / mean over cells)**2, normalised to mean 1; 1 for an empty cell."""
    count = np.bincount(cell, minlength=n).astype(np.float64)
    total = np.bincount(cell, weights=a, minlength=n)
    mean = np.where(count > 0, total / np.maximum(count, 1.0), np.nan)
    factor = (mean / np.nanmean(mean)) ** 2
    factor = np.where(np.isfinite(factor) & (factor > 0), factor, 1.0)
    return np.asarray(factor / factor.mean(), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One series' deseasonalised squared returns and their running sums."""

    cum_x: npt.NDArray[np.float64]  # [n + 1] cumsum of x (x = 0 on run starts)
    cum_r: npt.NDArray[np.float64]  # [n + 1] cumsum of the log returns
    start: npt.NDArray[np.int64]  # run start per bar


def _prepare(series: Series, seasonality: Seasonality) -> _Prepared:
    r = log_returns(series)
    x = r * r / seasonality.factor(series.open_time_ms)
    return _Prepared(
        cum_x=np.concatenate([[0.0], np.cumsum(x)]),
        cum_r=np.concatenate([[0.0], np.cumsum(r)]),
        start=run_starts(series.open_time_ms, series.interval_ms),
    )


def _features(
    p: _Prepared, origins: npt.NDArray[np.int64], floor: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(``[n, len(CASCADE)]`` regressors: 1 and ``log RV_k - log RV_240`` for the shorter k,
    ``[n]`` ``log RV_240``), each RV over the returns of the origin's run (fewer than k after
    a gap: the mean of those there are)."""
    first = p.start[origins] + 1  # the first bar of a run has no return
    logs = []
    for k in CASCADE:
        lo = np.maximum(origins - k + 1, first)
        count = np.maximum(origins - lo + 1, 1)
        rv = (p.cum_x[origins + 1] - p.cum_x[lo]) / count
        logs.append(np.log(rv + floor))
    anchor = logs[-1]
    cols = [np.ones(origins.shape[0]), *(v - anchor for v in logs[:-1])]
    return np.stack(cols, axis=1), anchor


def _future_x(p: _Prepared, origins: npt.NDArray[np.int64], h: int) -> npt.NDArray[np.float64]:
    """Mean deseasonalised squared return over t+1..t+h (the regression target)."""
    return (p.cum_x[origins + h + 1] - p.cum_x[origins + 1]) / h


def _future_return(p: _Prepared, origins: npt.NDArray[np.int64], h: int) -> npt.NDArray[np.float64]:
    return np.asarray(p.cum_r[origins + h + 1] - p.cum_r[origins + 1], dtype=np.float64)


def _clock_sums(
    seasonality: Seasonality, times_ms: npt.NDArray[np.int64], horizon: int
) -> npt.NDArray[np.float64]:
    """``[n, horizon]``: sum of the seasonal factors of the 1..h minutes after each origin,
    from the clock alone (the target minutes need not exist as bars)."""
    ahead = times_ms[:, None] + 60_000 * np.arange(1, horizon + 1, dtype=np.int64)[None, :]
    return np.cumsum(seasonality.factor(ahead), axis=1)


def _fit_origins(series: Series, horizon: int) -> npt.NDArray[np.int64]:
    """Origins with at least one past return and ``horizon`` future bars in the same run."""
    n = len(series)
    if n <= horizon + 1:
        return np.zeros(0, dtype=np.int64)
    t = np.arange(1, n - horizon, dtype=np.int64)
    start = run_starts(series.open_time_ms, series.interval_ms)
    return t[start[t + horizon] <= t - 1]


@dataclass(frozen=True, slots=True)
class HarBand:
    """A fitted HAR-seasonal band; ``coef[h - 1]`` are the cascade weights at horizon h and
    ``abs_z[h - 1]`` the quantiles of ``|z|`` at ``Z_GRID``."""

    seasonality: Seasonality
    coef: npt.NDArray[np.float64]  # [horizon, len(CASCADE)]: 1, then log RV_k - log RV_240
    abs_z: npt.NDArray[np.float64]  # [horizon, len(Z_GRID)]
    floor: float

    @property
    def horizon(self) -> int:
        return int(self.coef.shape[0])

    @staticmethod
    def fit(
        series: Sequence[Series], fit: Split, horizon: int, *, seasonal: bool = True
    ) -> HarBand:
        """Seasonality, cascade weights and residual quantiles from the fit range only (each
        series is cut to it first: its start is a run start, as after a gap). ``seasonal``
        False: the plain HAR band (every factor 1), to see what the clock adds."""
        seasonality = fit_seasonality(series, fit) if seasonal else FLAT
        series = [within(s, fit) for s in series]
        prepared = [_prepare(s, seasonality) for s in series]
        origins = [_fit_origins(s, horizon) for s in series]
        if not any(o.shape[0] for o in origins):
            raise ValueError(
                f"no {horizon}-minute origins in the fit range "
                f"{iso_ms(fit.start_ms)}..{iso_ms(fit.end_ms)}"
            )
        x_all = np.concatenate([_future_x(p, o, 1) for p, o in zip(prepared, origins, strict=True)])
        floor = FLOOR_SHARE * float(np.mean(x_all))
        parts = [_features(p, o, floor) for p, o in zip(prepared, origins, strict=True)]
        features = np.concatenate([f for f, _ in parts])
        anchor = np.concatenate([a for _, a in parts])
        clock = np.concatenate(
            [
                _clock_sums(seasonality, s.open_time_ms[o], horizon)
                for s, o in zip(series, origins, strict=True)
            ]
        )
        coef = np.empty((horizon, len(CASCADE)))
        abs_z = np.empty((horizon, Z_GRID.shape[0]))
        for h in range(1, horizon + 1):
            target = np.concatenate(
                [_future_x(p, o, h) for p, o in zip(prepared, origins, strict=True)]
            )
            y = np.log(target + floor) - anchor
            coef[h - 1] = np.linalg.lstsq(features, y, rcond=None)[0]
            sigma = np.sqrt(np.exp(features @ coef[h - 1] + anchor) * clock[:, h - 1])
            ret = np.concatenate(
                [_future_return(p, o, h) for p, o in zip(prepared, origins, strict=True)]
            )
            abs_z[h - 1] = np.quantile(np.abs(ret / sigma), Z_GRID)
        return HarBand(seasonality, coef, abs_z, floor)

    def sigma(
        self, series: Series, origins: npt.NDArray[np.int64], horizon: int
    ) -> npt.NDArray[np.float64]:
        """Forecast standard deviation ``[n, horizon]`` of the h-minute log return (before the
        ``z`` scaling), from each origin's past only (and the clock of the target minutes)."""
        self._check(horizon)
        f, anchor = _features(_prepare(series, self.seasonality), origins, self.floor)
        clock = _clock_sums(self.seasonality, series.open_time_ms[origins], horizon)
        log_x = f @ self.coef[:horizon].T + anchor[:, None]
        return np.asarray(np.sqrt(np.exp(log_x) * clock), dtype=np.float64)

    def z(self, horizon: int, levels: Sequence[float]) -> npt.NDArray[np.float64]:
        """Standardised quantiles ``[horizon, Q]``: symmetric, 0 at the median."""
        self._check(horizon)
        q = np.asarray(levels, dtype=np.float64)
        mag = np.stack([np.interp(np.abs(2.0 * q - 1.0), Z_GRID, row) for row in self.abs_z])
        return np.asarray(np.sign(q - 0.5)[None, :] * mag[:horizon], dtype=np.float64)

    def forecasts(
        self,
        series: Series,
        origins: npt.NDArray[np.int64],
        horizon: int,
        levels: Sequence[float],
    ) -> npt.NDArray[np.float64]:
        """Price quantiles ``[n, horizon, Q]`` around each origin's close."""
        sigma = self.sigma(series, origins, horizon)
        last = series.close[origins][:, None, None]
        return np.asarray(last * np.exp(self.z(horizon, levels)[None] * sigma[:, :, None]))

    def _check(self, horizon: int) -> None:
        if not 1 <= horizon <= self.horizon:
            raise ValueError(f"fitted up to horizon {self.horizon}, asked for {horizon}")
