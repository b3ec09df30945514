"""Which forecasts a minute-close round makes: the due rows, as a pure plan.

Closed or repaired bars mark their symbol due when they are its newest bar. A round then makes
one row per (symbol, bar time) still to forecast: every minute that closed since the symbol's
last forecast, oldest first, each from the full window ending at it (several minutes close at
once on a burst of the watermark clock or a busy loop). A symbol is forecast at most once per
bar time, which is what makes a model swap or a repaired bar neither skip nor duplicate a
minute. Rows that cannot be made are counted by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from streamer.core.types import MINUTE_MS, Bar
from streamer.core.windows import Windows

Key = tuple[str, str]

SKIP_REASONS = ("no_model", "short_window", "bad_output", "already_forecast")


@dataclass(slots=True)
class Rows:
    """One row per forecast: its symbol and the end (exclusive row) of its window."""

    keys: list[Key] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


class ForecastPlan:
    def __init__(self) -> None:
        self._due: dict[Key, float] = {}  # key -> when its bar closed (caller's seconds)
        self._due_since: dict[Key, int] = {}  # key -> oldest minute closed since its last round
        self._last_forecast: dict[Key, int] = {}  # key -> bar time of its last forecast
        self.skipped: Counter[str] = Counter()

    def on_bars(self, bars: list[Bar], windows: Windows, closed_at: float) -> bool:
        """Mark the symbols whose newest bar is among ``bars`` due; True if any is."""
        marked = False
        for bar in bars:
            if windows.last_open_time(bar.key) == bar.open_time_ms:
                self._due.setdefault(bar.key, closed_at)
                self._due_since.setdefault(bar.key, bar.open_time_ms)
                marked = True
        return marked

    @property
    def due(self) -> dict[Key, float]:
        """The symbols due for the next round, with when their bar closed (read only)."""
        return dict(self._due)

    def take_due(self) -> tuple[dict[Key, float], dict[Key, int]]:
        """The symbols due now (with when their bar closed) and since when; the plan starts
        collecting the next round's."""
        due, since = self._due, self._due_since
        self._due, self._due_since = {}, {}
        return due, since

    def no_model(self, due: dict[Key, float]) -> None:
        self.skipped["no_model"] += len(due)

    def rows(
        self, due: dict[Key, float], since: dict[Key, int], windows: Windows, window: int
    ) -> Rows:
        """The rows of a round for a model of ``window`` bars."""
        rows = Rows()
        for key in due:
            series = windows.series(key)
            if series is None or not series.full_tail(window):
                self.skipped["short_window"] += 1
                continue
            newest = int(series.times[series.n - 1])
            previous = self._last_forecast.get(key)
            if previous == newest:
                self.skipped["already_forecast"] += 1
                continue
            first = since.get(key, newest)
            if previous is not None:
                first = max(first, previous + MINUTE_MS)
            if first >= newest:
                ends = [series.n]
            else:
                ends = series.full_ends(first, window)
                missed = (newest - first) // MINUTE_MS + 1 - len(ends)
                if missed:  # minutes without a full window (a hole not yet backfilled)
                    self.skipped["short_window"] += missed
            rows.keys += [key] * len(ends)
            rows.ends += ends
        return rows

    def forecast_made(self, key: Key, bar_time_ms: int) -> None:
        self._last_forecast[key] = bar_time_ms

    def bad_output(self, count: int) -> None:
        self.skipped["bad_output"] += count
