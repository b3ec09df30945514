"""What start-up does for each symbol, decided from what the store still holds.

A restarted streamer continues where its stored window ends. With a clock reading, the minutes
from there (or from the first stored bar still incomplete) to the current minute are fetched
over REST before the feed connects, no further back than ``backfill_max_minutes``; the current
minute is the feed's, and counts as an outage until the feed delivers. On the watermark clock
there is no "now" to fetch up to: the outage runs from the same point until the first trade,
which dates its end. Either way the aggregator is seeded with the newest stored bar of a closed
minute, so that a trade for a minute already stored counts as late and flat bars continue from
its close.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamer.core.types import MINUTE_MS, Bar, floor_minute


def resume_point(stored: Sequence[Bar]) -> int | None:
    """Where the stored window stops being trustworthy: the first incomplete bar, else the end
    of the last bar; None for an empty window."""
    incomplete = [b.open_time_ms for b in stored if not b.complete]
    if incomplete:
        return min(incomplete)
    return stored[-1].close_time_ms if stored else None


def backfill_range(
    stored: Sequence[Bar], now_ms: int, backfill_max_minutes: int
) -> tuple[int, int] | None:
    """``[start, end)`` to fetch over REST at start-up: every closed minute from the resume
    point (an empty window: as far back as allowed) up to the current minute."""
    end = floor_minute(now_ms)
    earliest = end - backfill_max_minutes * MINUTE_MS
    resume = resume_point(stored)
    start = earliest if resume is None else max(resume, earliest)
    return (start, end) if start < end else None


def seed_bar(tail: Sequence[Bar], now_ms: int | None) -> Bar | None:
    """The bar the aggregator continues after: the newest of ``tail`` (the window's last bars,
    oldest first) whose minute has closed. A partial bar stored at shutdown for the minute
    running now is passed over: that minute is aggregated again (as an outage, so backfill
    repairs it once it closes). On the watermark clock, incomplete bars are passed over."""
    current = floor_minute(now_ms) if now_ms is not None else None
    for bar in reversed(tail):
        if current is None and not bar.complete:
            continue
        if current is None or bar.open_time_ms < current:
            return bar
    return None


def feed_outage_start(now_ms: int | None, resume_points: Sequence[int | None]) -> int | None:
    """Where the feed's start-up outage begins: the current minute with a clock reading, else
    (watermark clock) the earliest resume point of the exchange's symbols, None if none."""
    if now_ms is not None:
        return floor_minute(now_ms)
    known = [p for p in resume_points if p is not None]
    return min(known) if known else None
