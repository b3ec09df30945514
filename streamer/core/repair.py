"""Gap repair as a bounded queue in which no failing item blocks another.

A feed gap becomes one item per symbol: the range of minutes to fetch over REST once they have
all closed. Items are served oldest first among those that are due: closed by the clock (or
released by the feed already, on the watermark clock) and past their retry time. A transient
failure sends the item back with a delay from the retry policy while later items go ahead; a
permanent one (a 400 for a delisted symbol) sets it aside for good, counted. A gap counts as
repaired once each of its items has been filled or set aside.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from streamer.core.retry import Backoff, Decision, RetryPolicy
from streamer.core.types import MINUTE_MS, floor_minute

DEFAULT_CAPACITY = 1000  # gaps
REPAIR_POLICY = RetryPolicy(initial_s=5.0, max_s=300.0)


class Gap(Protocol):
    """A stretch of exchange time in which these symbols may have missed trades
    (``streamer.core.gaps.Gap``)."""

    @property
    def exchange(self) -> str: ...
    @property
    def symbols(self) -> tuple[str, ...]: ...
    @property
    def start_ms(self) -> int: ...
    @property
    def end_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RepairItem:
    """One symbol's minutes ``[start_ms, end_ms)`` of one gap."""

    exchange: str
    symbol: str
    start_ms: int
    end_ms: int
    gap_id: int


@dataclass(slots=True)
class _Waiting:
    item: RepairItem
    backoff: Backoff
    not_before_s: float = 0.0  # monotonic seconds


@dataclass(slots=True)
class _GapState:
    gap: Gap
    open_items: int
    set_aside: int = 0


@dataclass(slots=True)
class RepairStats:
    gaps_repaired: int = 0  # every symbol filled
    gaps_partly_repaired: int = 0  # some symbol set aside
    gaps_dropped: int = 0  # the queue was full
    items_set_aside: int = 0
    retries: int = 0
    dropped_by_exchange: dict[str, int] = field(default_factory=dict)
    set_aside_by_exchange: dict[str, int] = field(default_factory=dict)


class RepairQueue:
    """Gaps waiting for REST repair; pure: the caller passes the clock readings in."""

    def __init__(
        self, policy: RetryPolicy = REPAIR_POLICY, capacity: int = DEFAULT_CAPACITY
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.policy = policy
        self.capacity = capacity
        self.stats = RepairStats()
        self._items: OrderedDict[RepairItem, _Waiting] = OrderedDict()
        self._gaps: dict[int, _GapState] = {}
        self._next_id = 0

    def __len__(self) -> int:
        """Gaps not yet repaired."""
        return len(self._gaps)

    def add(self, gap: Gap) -> bool:
        """Queue ``gap``'s symbols; False (counted) when the queue is full."""
        if len(self._gaps) >= self.capacity:
            self.stats.gaps_dropped += 1
            by = self.stats.dropped_by_exchange
            by[gap.exchange] = by.get(gap.exchange, 0) + 1
            return False
        gap_id, self._next_id = self._next_id, self._next_id + 1
        start = floor_minute(gap.start_ms)
        end = floor_minute(gap.end_ms) + MINUTE_MS  # the gap's last minute, exclusive
        self._gaps[gap_id] = _GapState(gap, len(gap.symbols))
        for symbol in gap.symbols:
            item = RepairItem(gap.exchange, symbol, start, end, gap_id)
            self._items[item] = _Waiting(item, self.policy.backoff())
        if not gap.symbols:
            self._finish(gap_id)
        return True

    def gaps(self) -> list[Gap]:
        """The gaps not yet repaired, in the order they came."""
        return [state.gap for state in self._gaps.values()]

    def next_due(self, clock_ms: int | None, now_s: float, settle_ms: int) -> RepairItem | None:
        """The oldest item whose minutes have all closed (``clock_ms`` past their end plus
        ``settle_ms``; None: no clock, the feed releases gaps once closed) and whose retry
        time has come."""
        for waiting in self._items.values():
            item = waiting.item
            if clock_ms is not None and clock_ms < item.end_ms + settle_ms:
                continue
            if waiting.not_before_s <= now_s:
                return item
        return None

    def wake_in(self, clock_ms: int | None, now_s: float, settle_ms: int) -> float | None:
        """Seconds until the earliest retry time among settled items; None when none waits on
        a retry (the clock moving is what the others wait on)."""
        times = [
            w.not_before_s - now_s
            for w in self._items.values()
            if clock_ms is None or clock_ms >= w.item.end_ms + settle_ms
        ]
        return max(min(times), 0.0) if times else None

    def succeeded(self, item: RepairItem) -> Gap | None:
        """``item`` was filled; returns its gap once every item of it is done."""
        del self._items[item]
        return self._item_done(item)

    def failed(self, item: RepairItem, error: BaseException, now_s: float) -> Decision:
        """``item`` failed with ``error``: it waits for its retry, or is set aside for good."""
        waiting = self._items[item]
        decision = self.policy.decide(error, waiting.backoff)
        if decision.retry:
            self.stats.retries += 1
            waiting.not_before_s = now_s + decision.delay_s
            self._items.move_to_end(item)  # later items go first meanwhile
            return decision
        del self._items[item]
        self.stats.items_set_aside += 1
        by = self.stats.set_aside_by_exchange
        by[item.exchange] = by.get(item.exchange, 0) + 1
        self._gaps[item.gap_id].set_aside += 1
        self._item_done(item)
        return decision

    def _item_done(self, item: RepairItem) -> Gap | None:
        state = self._gaps[item.gap_id]
        state.open_items -= 1
        return self._finish(item.gap_id) if state.open_items == 0 else None

    def _finish(self, gap_id: int) -> Gap:
        state = self._gaps.pop(gap_id)
        if state.set_aside:
            self.stats.gaps_partly_repaired += 1
        else:
            self.stats.gaps_repaired += 1
        return state.gap
