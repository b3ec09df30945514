"""What the bar writer keeps, what goes in each write round, and what a round's outcome does.

Sans-I/O: the asyncio writer (``streamer.io.store.writer``) takes a round, hands it to the store
and reports the outcome; every decision is made here. Closed bars and repairs (backfilled bars)
queue in one line, oldest first, so that a repair never lands before the bars it repairs. A
round is the oldest run of entries of one kind, at most ``max_round_bars`` of them.

The buffer holds at most ``max_bars``: a bar beyond that evicts the oldest, counted as an
``overflow`` drop. A bar evicted while its round is in flight is still being written, so it is
counted only once the outcome is known: not at all if the round was written, as ``rejected`` if
the store refused the round, as ``overflow`` if the round failed (it is no longer buffered). A
round the store could not take (unavailable, or cancelled by a shutdown's deadline) stays at the
head of the buffer for the next try, so nothing accepted is lost but by overflow; a refused
round is dropped, counted, so that it cannot hold up the bars behind it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import islice

from streamer.core.retry import RetryPolicy
from streamer.core.types import Bar

# Delays between tries while the store is unavailable: short, since bars pile up meanwhile;
# no limit on attempts, since the writer never gives up on bars it accepted.
WRITE_POLICY = RetryPolicy(initial_s=0.1, max_s=5.0)


class Outcome(Enum):
    WRITTEN = "written"
    UNAVAILABLE = "unavailable"  # the store could not be reached: keep the round, an error
    CANCELLED = "cancelled"  # the writer stopped mid-round: keep the round, no error
    REJECTED = "rejected"  # the store refused the round: drop it, counted


@dataclass(frozen=True, slots=True)
class Round:
    """Bars for one store call: ``BarStore.repair`` if ``repair``, else ``BarStore.write``."""

    repair: bool
    bars: tuple[Bar, ...]


class WriteBuffer:
    """Bars waiting for the store, oldest first, and the round in flight."""

    def __init__(self, max_bars: int = 100_000, max_round_bars: int = 10_000) -> None:
        if max_bars < 1 or max_round_bars < 1:
            raise ValueError("max_bars and max_round_bars must be >= 1")
        self.max_bars = max_bars
        self.max_round_bars = max_round_bars
        self._entries: deque[tuple[bool, Bar]] = deque()  # (is a repair, bar)
        # Head entries that belong to the round in flight (None: no round), and how many of the
        # round's entries overflow evicted meanwhile.
        self._in_flight: int | None = None
        self._evicted = 0
        self.dropped_by_reason: dict[str, int] = {"overflow": 0, "rejected": 0}
        self.errors_total = 0
        self.failing = False  # the last round that reached an outcome found the store down

    @property
    def buffered(self) -> int:
        return len(self._entries)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped_by_reason.values())

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def add(self, bars: Sequence[Bar], *, repair: bool = False) -> None:
        """Queue ``bars`` (closed bars, or backfilled ones if ``repair``), evicting the oldest
        entries beyond ``max_bars``."""
        for bar in bars:
            if len(self._entries) >= self.max_bars:
                self._entries.popleft()
                if self._in_flight:
                    self._in_flight -= 1
                    self._evicted += 1
                else:
                    self.dropped_by_reason["overflow"] += 1
            self._entries.append((repair, bar))

    def take_round(self) -> Round | None:
        """The next round, which stays buffered until ``finish_round``; None if empty."""
        if self._in_flight is not None:
            raise RuntimeError("a round is already in flight")
        if not self._entries:
            return None
        repair = self._entries[0][0]
        bars: list[Bar] = []
        for is_repair, bar in islice(self._entries, self.max_round_bars):
            if is_repair != repair:
                break
            bars.append(bar)
        self._in_flight, self._evicted = len(bars), 0
        return Round(repair, tuple(bars))

    def finish_round(self, outcome: Outcome) -> bool:
        """Settle the round in flight; True if ``outcome`` starts or ends an outage."""
        if self._in_flight is None:
            raise RuntimeError("no round in flight")
        remaining, evicted = self._in_flight, self._evicted
        self._in_flight, self._evicted = None, 0
        if outcome in (Outcome.WRITTEN, Outcome.REJECTED):
            for _ in range(remaining):
                self._entries.popleft()
        if outcome is Outcome.REJECTED:
            self.dropped_by_reason["rejected"] += remaining + evicted
            self.errors_total += 1
            return False
        if outcome is Outcome.WRITTEN:
            changed, self.failing = self.failing, False
            return changed
        self.dropped_by_reason["overflow"] += evicted  # they left the buffer, and were not written
        if outcome is Outcome.UNAVAILABLE:
            self.errors_total += 1
            changed, self.failing = not self.failing, True
            return changed
        return False
