"""In-memory rolling windows of closed bars, one per (exchange, symbol), held in numpy arrays.

The write-through copy of what Redis holds, for inference: the model input of a minute close is
gathered from these arrays without touching a Python object per bar. Arrays, not ``Bar``
objects, because 1,000 symbols x 1,440 bars as objects took 409 MB (about 300 bytes a bar, every
float boxed) against 57 bytes a bar here; and building the batch from objects took 55 ms at
1,000 symbols (bench/bench_forecast_pipeline.py). A backfilled bar replaces the incomplete one
with the same open time in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from streamer.core.types import MINUTE_MS, Bar

Key = tuple[str, str]

# columns of Series.values
OPEN, HIGH, LOW, CLOSE, VOLUME, TRADES = range(6)
N_VALUES = 6


class Series:
    """One symbol's bars, oldest first, in arrays with room to append before compacting."""

    __slots__ = ("cap", "complete", "n", "times", "values")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        size = cap + max(16, cap // 4)  # appends between two compactions (one memmove each)
        self.times: npt.NDArray[np.int64] = np.zeros(size, dtype=np.int64)
        self.values: npt.NDArray[np.float64] = np.zeros((size, N_VALUES), dtype=np.float64)
        self.complete: npt.NDArray[np.bool_] = np.zeros(size, dtype=np.bool_)
        self.n = 0  # rows used; the window is the last min(n, cap) of them

    @property
    def start(self) -> int:
        return max(0, self.n - self.cap)

    def __len__(self) -> int:
        return self.n - self.start

    def _compact(self) -> None:
        start = self.start
        if start:
            keep = self.n - start
            self.times[:keep] = self.times[start : self.n]
            self.values[:keep] = self.values[start : self.n]
            self.complete[:keep] = self.complete[start : self.n]
            self.n = keep

    def _write(self, i: int, bar: Bar) -> None:
        self.times[i] = bar.open_time_ms
        self.values[i] = (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)
        self.complete[i] = bar.complete

    def add(self, bar: Bar) -> None:
        start, n = self.start, self.n
        t = bar.open_time_ms
        if n == start or t > self.times[n - 1]:
            if n == len(self.times):
                self._compact()
            self._write(self.n, bar)
            self.n += 1
            return
        i = start + int(np.searchsorted(self.times[start:n], t))
        if self.times[i] == t:
            self._write(i, bar)
        elif i > start or len(self) < self.cap:
            # a hole filled by backfill: shift the newer bars up by one
            if n == len(self.times):
                self._compact()
                i -= start
                n = self.n
            self.times[i + 1 : n + 1] = self.times[i:n]
            self.values[i + 1 : n + 1] = self.values[i:n]
            self.complete[i + 1 : n + 1] = self.complete[i:n]
            self._write(i, bar)
            self.n += 1
        # else: older than everything in a full window, it would be trimmed at once

    def bar(self, exchange: str, symbol: str, i: int) -> Bar:
        o, h, lo, c, v, trades = self.values[i].tolist()
        return Bar(
            exchange,
            symbol,
            int(self.times[i]),
            o,
            h,
            lo,
            c,
            v,
            int(trades),
            bool(self.complete[i]),
        )

    def full_ends(self, since_ms: int, window: int) -> list[int]:
        """End rows (exclusive) of the full windows that end at a bar opening at or after
        ``since_ms``, oldest first: the minutes still to forecast when several closed at once."""
        start, n = self.start, self.n
        first = start + int(np.searchsorted(self.times[start:n], since_ms))
        step = (window - 1) * MINUTE_MS
        return [
            end
            for end in range(max(first, start + window - 1) + 1, n + 1)
            if self.times[end - 1] - self.times[end - window] == step
        ]

    def full_tail(self, window: int) -> bool:
        """The newest ``window`` bars are consecutive minutes: fit to forecast."""
        if len(self) < window:
            return False
        n = self.n
        return bool(self.times[n - 1] - self.times[n - window] == (window - 1) * MINUTE_MS)


class Windows:
    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self._series: dict[Key, Series] = {}

    def apply(self, bars: Iterable[Bar]) -> None:
        """Add closed bars; a bar with an open time already held replaces the held one."""
        series = self._series
        for bar in bars:
            s = series.get(bar.key)
            if s is None:
                s = series[bar.key] = Series(self.cap)
            s.add(bar)

    def apply_repair(self, bars: Sequence[Bar]) -> list[Bar]:
        """Add backfilled bars, and re-price the flat bars (no trade) that follow a repaired
        one: a flat bar is the close before it carried on, so one that carried on a close the
        repair changed was wrong too. Returns those re-priced flat bars, to be stored as well."""
        self.apply(bars)
        newest: dict[Key, int] = {}
        for bar in bars:
            newest[bar.key] = max(newest.get(bar.key, bar.open_time_ms), bar.open_time_ms)
        repriced: list[Bar] = []
        for key, minute in newest.items():
            s = self._series[key]
            i = s.start + int(np.searchsorted(s.times[s.start : s.n], minute))
            repriced += _carry_close_on(s, key, i)
        if repriced:
            self.apply(repriced)
        return repriced

    def series(self, key: Key) -> Series | None:
        return self._series.get(key)

    def last(self, key: Key) -> Bar | None:
        s = self._series.get(key)
        if s is None or not len(s):
            return None
        return s.bar(key[0], key[1], s.n - 1)

    def before(self, key: Key, open_time_ms: int) -> Bar | None:
        """The newest bar held that opens before ``open_time_ms``."""
        s = self._series.get(key)
        if s is None:
            return None
        i = s.start + int(np.searchsorted(s.times[s.start : s.n], open_time_ms)) - 1
        return s.bar(key[0], key[1], i) if i >= s.start else None

    def last_open_time(self, key: Key) -> int | None:
        """Open time of the newest bar held (``last`` without building the ``Bar``)."""
        s = self._series.get(key)
        return int(s.times[s.n - 1]) if s is not None and s.n else None

    def tail(self, key: Key, n: int) -> list[Bar]:
        """The newest ``n`` bars as ``Bar`` values, oldest first (fewer if the window is short)."""
        s = self._series.get(key)
        if s is None:
            return []
        first = max(s.start, s.n - n)
        return [s.bar(key[0], key[1], i) for i in range(first, s.n)]

    def batch(
        self, keys: Sequence[Key], window: int, ends: Sequence[int] | None = None
    ) -> npt.NDArray[np.float32]:
        """Model input ``[len(keys), window, 5]`` float32 (o, h, l, c, v), oldest bar first.

        Row ``i`` is the window of ``keys[i]`` that ends before row ``ends[i]`` of its series
        (default: the newest). Every window must be full (``Series.full_tail``, ``full_ends``);
        choosing them is the caller's.
        """
        out = np.empty((len(keys), window, 5), dtype=np.float32)
        for row, key in enumerate(keys):
            s = self._series[key]
            end = s.n if ends is None else ends[row]
            out[row] = s.values[end - window : end, :5]
        return out

    def keys(self) -> list[Key]:
        return list(self._series)

    def __len__(self) -> int:
        return len(self._series)


def _carry_close_on(s: Series, key: Key, i: int) -> list[Bar]:
    """The flat bars right after row ``i`` whose price is not row ``i``'s close (the next
    consecutive minutes without a trade), re-priced at it."""
    close = float(s.values[i, CLOSE])
    out: list[Bar] = []
    minute = int(s.times[i])
    for j in range(i + 1, s.n):
        minute += MINUTE_MS
        o, h, lo, c, v, trades = s.values[j].tolist()
        if int(s.times[j]) != minute or trades or v or not o == h == lo == c:
            break  # a gap in the window, or a minute that traded: its own prices
        if c == close:
            break  # already carries the close on
        flat = Bar(key[0], key[1], minute, close, close, close, close, 0.0, 0, bool(s.complete[j]))
        out.append(flat)
    return out
