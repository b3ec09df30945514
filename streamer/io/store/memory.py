"""In-process bar windows with RedisBarStore's semantics: the demo without Redis, and tests."""

from __future__ import annotations

from collections.abc import Sequence

from streamer.core.types import Bar
from streamer.io.store.base import DEFAULT_CAP, by_window, check_cap


class MemoryBarStore:
    """In-process windows with the same semantics as RedisBarStore (demo without Redis, tests)."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = check_cap(cap)
        self._windows: dict[tuple[str, str], list[Bar]] = {}

    async def write(self, bars: Sequence[Bar]) -> None:
        for key, fresh in by_window(bars).items():
            window = self._windows.setdefault(key, [])
            for bar in fresh:
                if not window or bar.open_time_ms > window[-1].open_time_ms:
                    window.append(bar)
            del window[: max(0, len(window) - self.cap)]

    async def repair(self, bars: Sequence[Bar]) -> None:
        for key, backfilled in by_window(bars).items():
            merged = {bar.open_time_ms: bar for bar in self._windows.get(key, [])}
            merged.update((bar.open_time_ms, bar) for bar in backfilled)
            self._windows[key] = [merged[t] for t in sorted(merged)][-self.cap :]

    async def load(self, exchange: str, symbol: str, count: int) -> list[Bar]:
        if count <= 0:
            return []
        return self._windows.get((exchange, symbol), [])[-count:]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
