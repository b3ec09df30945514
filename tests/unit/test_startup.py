"""The start-up plan: the REST range to fetch, the seed bar, the feed's outage start."""

from __future__ import annotations

from streamer.core.startup import backfill_range, feed_outage_start, resume_point, seed_bar
from streamer.core.types import MINUTE_MS, Bar

T0 = 1_682_553_600_000  # 2023-04-27T00:00:00Z


def bar(minute: int, complete: bool = True) -> Bar:
    p = 29_000.0 + minute
    return Bar("binance", "BTCUSDT", T0 + minute * MINUTE_MS, p, p, p, p, 1.0, 1, complete)


def test_the_window_resumes_at_its_first_incomplete_bar_else_after_its_last() -> None:
    assert resume_point([]) is None
    assert resume_point([bar(0), bar(1), bar(2)]) == T0 + 3 * MINUTE_MS
    assert resume_point([bar(0), bar(1, False), bar(2), bar(3, False)]) == T0 + MINUTE_MS


def test_backfill_covers_the_closed_minutes_from_the_resume_point_to_now() -> None:
    now = T0 + 10 * MINUTE_MS + 25_000  # mid-minute: minute 10 is the feed's
    assert backfill_range([bar(0), bar(1)], now, 1440) == (T0 + 2 * MINUTE_MS, T0 + 10 * MINUTE_MS)
    assert backfill_range([bar(0), bar(4, False), bar(5)], now, 1440) == (
        T0 + 4 * MINUTE_MS,
        T0 + 10 * MINUTE_MS,
    )
    # an empty window (or an old one) reaches back no further than allowed
    assert backfill_range([], now, 3) == (T0 + 7 * MINUTE_MS, T0 + 10 * MINUTE_MS)
    assert backfill_range([bar(0)], now, 3) == (T0 + 7 * MINUTE_MS, T0 + 10 * MINUTE_MS)
    # up to date: nothing to fetch
    assert backfill_range([bar(8), bar(9)], now, 1440) is None


def test_the_seed_is_the_newest_bar_of_a_closed_minute() -> None:
    now = T0 + 10 * MINUTE_MS + 5_000
    assert seed_bar([bar(8), bar(9)], now) == bar(9)
    # a partial bar of the running minute (stored at shutdown) is aggregated again
    assert seed_bar([bar(9), bar(10, False)], now) == bar(9)
    assert seed_bar([], now) is None
    # watermark clock: incomplete bars are passed over, whatever their minute
    assert seed_bar([bar(8), bar(9, False)], None) == bar(8)
    assert seed_bar([bar(9, False)], None) is None


def test_the_feed_outage_starts_at_the_current_minute_or_the_earliest_resume_point() -> None:
    assert feed_outage_start(T0 + 65_000, [None]) == T0 + MINUTE_MS
    assert (
        feed_outage_start(None, [T0 + 5 * MINUTE_MS, None, T0 + 2 * MINUTE_MS])
        == T0 + 2 * MINUTE_MS
    )
    assert feed_outage_start(None, [None, None]) is None
