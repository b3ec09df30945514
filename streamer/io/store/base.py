"""What every bar store offers, the errors it raises, and the grouping both stores start from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from streamer.core.retry import Permanent, Transient
from streamer.core.types import Bar

DEFAULT_CAP = 1440


class StoreError(Exception):
    """A bar store call failed; the subclass says whether retrying can help."""


class StoreUnavailable(StoreError, Transient):
    """The store could not be reached in time; the round may or may not have been applied."""


class StoreRejected(StoreError, Permanent):
    """The store refused the call; retrying the same round will not help."""


class BarStore(Protocol):
    async def write(self, bars: Sequence[Bar]) -> None:
        """Append closed bars newer than each window's last one, all symbols in one round."""

    async def repair(self, bars: Sequence[Bar]) -> None:
        """Merge backfilled bars: replace same open times, fill missing minutes, keep the cap."""

    async def load(self, exchange: str, symbol: str, count: int) -> list[Bar]:
        """The newest ``count`` bars, oldest first, ``complete`` flags restored."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def by_window(bars: Sequence[Bar]) -> dict[tuple[str, str], list[Bar]]:
    """Bars grouped per (exchange, symbol), sorted by open time; of equal open times the last wins.

    Both stores start from this so that they agree on what a round means.
    """
    groups: dict[tuple[str, str], list[Bar]] = {}
    for bar in bars:
        group = groups.get((bar.exchange, bar.symbol))
        if group is None:
            groups[bar.exchange, bar.symbol] = [bar]
        else:
            group.append(bar)
    for key, group in groups.items():
        if len(group) > 1:
            latest = {bar.open_time_ms: bar for bar in group}
            groups[key] = [latest[t] for t in sorted(latest)]
    return groups


def check_cap(cap: int) -> int:
    if cap < 1:
        raise ValueError(f"bar store cap must be >= 1, got {cap}")
    return cap
