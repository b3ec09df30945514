"""In-memory rolling windows of closed bars, one per (exchange, symbol).

The write-through copy of what Redis holds: inference reads windows from memory, never from the
network, and a backfilled bar replaces the incomplete one with the same open time in place.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

from streamer.core.types import Bar

Key = tuple[str, str]


class Windows:
    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self._bars: dict[Key, deque[Bar]] = {}

    def apply(self, bars: Iterable[Bar]) -> None:
        """Add closed bars; a bar with an open time already held replaces the held one."""
        for bar in bars:
            window = self._bars.get(bar.key)
            if window is None:
                window = self._bars[bar.key] = deque(maxlen=self.cap)
            if not window or bar.open_time_ms > window[-1].open_time_ms:
                window.append(bar)
            else:
                self._merge(window, bar)

    def _merge(self, window: deque[Bar], bar: Bar) -> None:
        times = [b.open_time_ms for b in window]
        i = bisect.bisect_left(times, bar.open_time_ms)
        if i < len(times) and times[i] == bar.open_time_ms:
            window[i] = bar
        elif i > 0 or len(window) < self.cap:
            window.insert(i, bar)
            # older than everything in a full window: it would be trimmed at once, so ignore it

    def last(self, key: Key) -> Bar | None:
        window = self._bars.get(key)
        return window[-1] if window else None

    def tail(self, key: Key, n: int) -> list[Bar]:
        """The newest ``n`` bars, oldest first (fewer if the window is shorter)."""
        window = self._bars.get(key)
        if not window:
            return []
        if n >= len(window):
            return list(window)
        return [window[i] for i in range(len(window) - n, len(window))]

    def keys(self) -> list[Key]:
        return list(self._bars)

    def __len__(self) -> int:
        return len(self._bars)
