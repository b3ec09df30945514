"""Which clock closes a quiet minute: a clock reading, or exchange time alone.

``ClockMode.WALL``: a clock reading (the wall clock live, the replay exchange's clock in tests)
closes minutes in which no trade arrives. ``ClockMode.WATERMARK``: there is no reading, only
the newest exchange timestamp seen (a replay whose data time is not now); quiet minutes close
when a later trade arrives. Exchange time still decides which minute a trade belongs to in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class ClockMode(StrEnum):
    WALL = "wall"
    WATERMARK = "watermark"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _no_reading() -> int:
    raise RuntimeError("the watermark clock has no reading")


@dataclass(frozen=True, slots=True)
class Clock:
    """``read()`` gives epoch ms and exists only in ``WALL`` mode; ``now()`` is None otherwise."""

    mode: ClockMode
    read: Callable[[], int] = _no_reading

    @staticmethod
    def wall(read: Callable[[], int] = wall_clock_ms) -> Clock:
        return Clock(ClockMode.WALL, read)

    @staticmethod
    def watermark() -> Clock:
        return Clock(ClockMode.WATERMARK)

    @property
    def has_reading(self) -> bool:
        return self.mode is ClockMode.WALL

    def now(self) -> int | None:
        return self.read() if self.mode is ClockMode.WALL else None
