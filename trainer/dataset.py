"""Windows and time splits: which (window, future) pairs a model may learn or be scored on.

An *origin* is the index ``t`` of the last input bar. Its sample uses bars ``t-window+1 .. t``
as input and the closes of ``t+1 .. t+horizon`` as targets. An origin is valid only when all
those bars are consecutive (no gap inside, so a window never spans a gap) and all of them lie
inside the split's time range. Splits are consecutive time ranges separated by an embargo of
``window + horizon`` intervals, so no bar serves two splits and no sample sees its successor
split's data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.core.timefmt import iso_seconds
from streamer.core.timefmt import parse_iso_ms as parse_iso_ms
from trainer.data import BarTable

iso_ms = iso_seconds  # the name trainer.cli and trainer.pipeline know it by


@dataclass(frozen=True, slots=True)
class Series:
    """One exchange/symbol's bars as the model sees them (float32) plus float64 closes."""

    exchange: str
    symbol: str
    interval_ms: int
    open_time_ms: npt.NDArray[np.int64]
    bars: npt.NDArray[np.float32]  # [n, 5]
    close: npt.NDArray[np.float64]  # [n], exact closes for targets and scoring

    @property
    def name(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    @staticmethod
    def from_table(exchange: str, symbol: str, interval_ms: int, table: BarTable) -> Series:
        return Series(
            exchange=exchange,
            symbol=symbol,
            interval_ms=interval_ms,
            open_time_ms=table.open_time_ms.copy(),
            bars=table.ohlcv.astype(np.float32),
            close=table.ohlcv[:, 3].astype(np.float64),
        )

    def __len__(self) -> int:
        return int(self.open_time_ms.shape[0])

    def rows(self, rows: slice | npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> Series:
        """The bars at ``rows`` (a slice, a mask or indices) as a series of their own."""
        return Series(
            self.exchange,
            self.symbol,
            self.interval_ms,
            self.open_time_ms[rows],
            self.bars[rows],
            self.close[rows],
        )


@dataclass(frozen=True, slots=True)
class Split:
    name: str
    start_ms: int  # inclusive
    end_ms: int  # exclusive

    def describe(self) -> dict[str, str]:
        return {"start": iso_seconds(self.start_ms), "end": iso_seconds(self.end_ms)}


def run_starts(open_time_ms: npt.NDArray[np.int64], interval_ms: int) -> npt.NDArray[np.int64]:
    """For each bar, the index of the first bar of its gap-free run."""
    n = open_time_ms.shape[0]
    breaks = np.ones(n, dtype=bool)
    if n > 1:
        breaks[1:] = np.diff(open_time_ms) != interval_ms
    starts = np.where(breaks, np.arange(n), 0)
    return np.maximum.accumulate(starts).astype(np.int64)


def log_returns(series: Series) -> npt.NDArray[np.float64]:
    """1-bar log returns, 0 on the first bar of each gap-free run."""
    r = np.zeros(len(series))
    if len(series) > 1:
        r[1:] = np.log(series.close[1:] / series.close[:-1])
        r[1:][np.diff(series.open_time_ms) != series.interval_ms] = 0.0
    return r


def valid_origins(
    series: Series,
    window: int,
    horizon: int,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> npt.NDArray[np.int64]:
    """Origins whose window and targets are gap-free and lie in ``[start_ms, end_ms)``."""
    n = len(series)
    if n < window + horizon:
        return np.zeros(0, dtype=np.int64)
    t = np.arange(window - 1, n - horizon, dtype=np.int64)
    starts = run_starts(series.open_time_ms, series.interval_ms)
    ok = starts[t + horizon] <= t - window + 1
    if start_ms is not None:
        ok &= series.open_time_ms[t - window + 1] >= start_ms
    if end_ms is not None:
        ok &= series.open_time_ms[t + horizon] < end_ms
    return t[ok]


def windows(series: Series, origins: npt.NDArray[np.int64], window: int) -> npt.NDArray[np.float32]:
    """Raw model input ``[n, window, 5]`` float32 for each origin, oldest bar first."""
    index = origins[:, None] + np.arange(-window + 1, 1, dtype=np.int64)[None, :]
    return np.asarray(series.bars[index], dtype=np.float32)


def future_closes(
    series: Series, origins: npt.NDArray[np.int64], horizon: int
) -> npt.NDArray[np.float64]:
    """Realised closes ``[n, horizon]`` of the bars 1..horizon after each origin."""
    index = origins[:, None] + np.arange(1, horizon + 1, dtype=np.int64)[None, :]
    return np.asarray(series.close[index], dtype=np.float64)


def target_log_returns(
    series: Series, origins: npt.NDArray[np.int64], horizon: int
) -> npt.NDArray[np.float64]:
    """``log(close[t+h] / close[t])`` for h = 1..horizon, the training target."""
    return np.log(future_closes(series, origins, horizon) / series.close[origins][:, None])


def time_splits(
    start_ms: int,
    end_ms: int,
    train_end_ms: int,
    val_end_ms: int,
    embargo_ms: int,
) -> tuple[Split, Split, Split]:
    """train ``[start, train_end)``, val and test after an embargo each; checked for order."""
    splits = (
        Split("train", start_ms, train_end_ms),
        Split("val", train_end_ms + embargo_ms, val_end_ms),
        Split("test", val_end_ms + embargo_ms, end_ms),
    )
    for split in splits:
        if split.end_ms <= split.start_ms:
            raise ValueError(
                f"split {split.name} is empty: {iso_seconds(split.start_ms)} .. "
                f"{iso_seconds(split.end_ms)}"
            )
    return splits


def fraction_splits(
    start_ms: int, end_ms: int, train: float, val: float, embargo_ms: int
) -> tuple[Split, Split, Split]:
    """Splits at fractions of the covered time span (the rest is test)."""
    if not (0 < train < 1 and 0 < val < 1 and train + val < 1):
        raise ValueError(f"split fractions train={train} val={val} must be in (0, 1), sum < 1")
    span = end_ms - start_ms
    return time_splits(
        start_ms,
        end_ms,
        start_ms + int(span * train),
        start_ms + int(span * (train + val)),
        embargo_ms,
    )


@dataclass(frozen=True, slots=True)
class Pool:
    """Origins of several series in one index space, for pooled training.

    ``bars``/``close`` are the series concatenated; ``origins`` index into them. A window never
    crosses from one series into the next because each origin was validated in its own series.
    """

    names: tuple[str, ...]
    bars: npt.NDArray[np.float32]
    close: npt.NDArray[np.float64]
    origins: npt.NDArray[np.int64]
    series_id: npt.NDArray[np.int64]
    open_time_ms: npt.NDArray[np.int64]  # of every bar, concatenated like ``bars``

    @staticmethod
    def build(series: list[Series], window: int, horizon: int, split: Split | None) -> Pool:
        offset = 0
        origins, ids = [], []
        for i, s in enumerate(series):
            o = valid_origins(
                s,
                window,
                horizon,
                split.start_ms if split else None,
                split.end_ms if split else None,
            )
            origins.append(o + offset)
            ids.append(np.full(o.shape[0], i, dtype=np.int64))
            offset += len(s)
        return Pool(
            names=tuple(s.name for s in series),
            bars=np.concatenate([s.bars for s in series])
            if series
            else np.zeros((0, 5), np.float32),
            close=np.concatenate([s.close for s in series]) if series else np.zeros(0),
            origins=np.concatenate(origins) if origins else np.zeros(0, np.int64),
            series_id=np.concatenate(ids) if ids else np.zeros(0, np.int64),
            open_time_ms=np.concatenate([s.open_time_ms for s in series])
            if series
            else np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    def batch(
        self, rows: npt.NDArray[np.int64], window: int, horizon: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """Inputs ``[n, window, 5]`` and target log returns ``[n, horizon]`` of origin rows."""
        t = self.origins[rows]
        x = self.bars[t[:, None] + np.arange(-window + 1, 1, dtype=np.int64)[None, :]]
        future = self.close[t[:, None] + np.arange(1, horizon + 1, dtype=np.int64)[None, :]]
        return x, np.log(future / self.close[t][:, None])

    def bar_time_s(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Open time (epoch seconds) of the last input bar of origin rows: contract 2's
        ``bar_time``."""
        return np.asarray(self.open_time_ms[self.origins[rows]] // 1000, dtype=np.int64)
