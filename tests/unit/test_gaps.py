"""The outage/gap tracker of the feed's connection plans, with no event loop and no sockets."""

from __future__ import annotations

from streamer.core.clock import ClockMode
from streamer.core.gaps import (
    OPEN_OUTAGE_END_MS,
    Gap,
    Outage,
    OutageTracker,
    TradeIdContinuity,
)
from streamer.core.types import MINUTE_MS

GRACE_MS = 2_000
T0 = 1_700_000_040_000  # 20 s into a minute
MINUTE = T0 - T0 % MINUTE_MS
BTC = ("BTCUSDT",)
ETH_SOL = ("ETHUSDT", "SOLUSDT")


def wall_tracker(*plans: tuple[str, ...], gap_start_ms: int | None = None) -> OutageTracker:
    return OutageTracker("binance", plans or [BTC], ClockMode.WALL, GRACE_MS, gap_start_ms)


def watermark_tracker(*plans: tuple[str, ...], gap_start_ms: int | None = None) -> OutageTracker:
    return OutageTracker("binance", plans or [BTC], ClockMode.WATERMARK, GRACE_MS, gap_start_ms)


def released(tracker: OutageTracker) -> list[Gap]:
    """The gaps handed out once the aggregator has closed every minute so far."""
    tracker.tick(None, 2**62)
    return tracker.take_gaps()


def test_a_drop_opens_an_outage_grace_before_the_last_frame_and_the_next_frame_ends_it() -> None:
    tracker = wall_tracker()
    tracker.first_frame(0, T0 - 5_000, None)  # not in a gap: nothing to decide
    assert (tracker.take_outages(), tracker.take_gaps()) == ([], [])

    tracker.connection_lost(0, T0, None)
    start = T0 - GRACE_MS  # trades still in flight at the last frame are lost too
    assert tracker.take_outages() == [Outage(start, OPEN_OUTAGE_END_MS, BTC)]
    assert tracker.take_gaps() == []
    assert tracker.in_gap(0)

    tracker.first_frame(0, T0 + 7_000, None)
    assert tracker.take_outages() == [Outage(start, T0 + 7_000, BTC)]  # same start: replaces
    assert released(tracker) == [Gap("binance", BTC, start, T0 + 7_000)]
    assert not tracker.in_gap(0)
    assert (tracker.take_outages(), tracker.take_gaps()) == ([], [])  # each decision once


def test_the_outage_stays_open_until_a_connection_delivers() -> None:
    tracker = wall_tracker()
    tracker.connection_lost(0, T0, None)
    tracker.take_outages()
    for later in (T0 + 10_000, T0 + 70_000):  # connections that never delivered a frame
        tracker.connection_lost(0, later, None)
        tracker.tick(None, None)
    assert (tracker.take_outages(), tracker.take_gaps()) == ([], [])
    assert tracker.in_gap(0)

    tracker.first_frame(0, T0 + 90_000, None)
    assert released(tracker) == [Gap("binance", BTC, T0 - GRACE_MS, T0 + 90_000)]


def test_nothing_arrived_since_a_drop_means_no_second_gap() -> None:
    tracker = wall_tracker()
    tracker.connection_lost(0, T0, None)
    tracker.first_frame(0, T0 + 1_000, None)
    assert len(released(tracker)) == 1
    tracker.take_outages()
    # the new connection drops before a second frame: a new gap, from its one frame
    tracker.connection_lost(0, T0 + 1_000, None)
    tracker.connection_lost(0, T0 + 9_000, None)  # and the next one delivers nothing at all
    assert tracker.take_outages() == [Outage(T0 + 1_000 - GRACE_MS, OPEN_OUTAGE_END_MS, BTC)]
    tracker.first_frame(0, T0 + 12_000, None)
    assert released(tracker) == [Gap("binance", BTC, T0 + 1_000 - GRACE_MS, T0 + 12_000)]


def test_a_gap_starts_no_earlier_than_zero_and_ends_no_earlier_than_it_starts() -> None:
    tracker = wall_tracker()
    tracker.connection_lost(0, 500, None)
    tracker.first_frame(0, 0, None)
    assert tracker.take_outages() == [Outage(0, OPEN_OUTAGE_END_MS, BTC), Outage(0, 0, BTC)]
    assert released(tracker) == [Gap("binance", BTC, 0, 0)]


def test_the_start_up_gap_is_open_on_every_plan_until_it_delivers() -> None:
    tracker = wall_tracker(BTC, ETH_SOL, gap_start_ms=MINUTE)
    assert tracker.take_outages() == [
        Outage(MINUTE, OPEN_OUTAGE_END_MS, BTC),
        Outage(MINUTE, OPEN_OUTAGE_END_MS, ETH_SOL),
    ]
    assert tracker.in_gap(0) and tracker.in_gap(1)
    # a drop before the first frame does not move its start
    tracker.connection_lost(1, T0, None)
    assert tracker.take_outages() == []

    tracker.first_frame(1, T0 + 3_000, None)
    tracker.first_frame(0, T0 + 4_000, None)
    assert released(tracker) == [
        Gap("binance", ETH_SOL, MINUTE, T0 + 3_000),
        Gap("binance", BTC, MINUTE, T0 + 4_000),
    ]
    assert tracker.take_outages() == [
        Outage(MINUTE, T0 + 3_000, ETH_SOL),
        Outage(MINUTE, T0 + 4_000, BTC),
    ]


def test_each_connection_plan_has_its_own_gaps_and_symbols() -> None:
    tracker = wall_tracker(BTC, ETH_SOL)
    tracker.connection_lost(1, T0, None)
    assert tracker.take_outages() == [Outage(T0 - GRACE_MS, OPEN_OUTAGE_END_MS, ETH_SOL)]
    assert not tracker.in_gap(0)
    tracker.first_frame(0, T0 + 1_000, None)  # the other plan delivering ends nothing
    assert tracker.take_gaps() == []
    tracker.connection_lost(0, T0 + 2_000, None)
    tracker.first_frame(1, T0 + 5_000, None)
    tracker.first_frame(0, T0 + 6_000, None)
    assert released(tracker) == [
        Gap("binance", ETH_SOL, T0 - GRACE_MS, T0 + 5_000),
        Gap("binance", BTC, T0 + 2_000 - GRACE_MS, T0 + 6_000),
    ]


def test_suspect_minutes_become_a_gap_of_their_symbols() -> None:
    tracker = wall_tracker(BTC, ETH_SOL)
    tracker.suspects(MINUTE, MINUTE + MINUTE_MS, frozenset({"SOLUSDT", "BTCUSDT"}))
    assert released(tracker) == [Gap("binance", ("BTCUSDT", "SOLUSDT"), MINUTE, MINUTE + MINUTE_MS)]
    assert tracker.take_outages() == []


# ---- the watermark clock: no reading, only the newest trade seen ------------------------------


def test_watermark_a_drop_is_dated_by_the_newest_trade_and_nothing_before_the_first() -> None:
    tracker = watermark_tracker()
    tracker.connection_lost(0, None, None)  # no trade yet: nothing to date it by
    assert tracker.take_outages() == [] and not tracker.in_gap(0)
    tracker.connection_lost(0, None, T0)
    assert tracker.take_outages() == [Outage(T0 - GRACE_MS, OPEN_OUTAGE_END_MS, BTC)]


def test_watermark_the_end_is_the_first_trade_after_the_reconnect() -> None:
    tracker = watermark_tracker()
    tracker.connection_lost(0, None, T0)
    tracker.take_outages()
    tracker.first_frame(0, None, T0)  # delivering again, but "now" is not known yet
    tracker.tick(T0, MINUTE)  # no newer trade: the outage stays open
    assert (tracker.take_outages(), tracker.take_gaps()) == ([], [])
    assert tracker.in_gap(0)

    tracker.tick(T0 + 30_000, MINUTE)  # the first trade after the reconnect
    assert tracker.take_outages() == [Outage(T0 - GRACE_MS, T0 + 30_000, BTC)]
    assert not tracker.in_gap(0)
    assert tracker.take_gaps() == []  # its last minute is still open


def test_watermark_a_gap_is_released_only_once_its_last_minute_closed() -> None:
    tracker = watermark_tracker()
    tracker.connection_lost(0, None, T0)
    tracker.first_frame(0, None, T0)
    end = MINUTE + MINUTE_MS + 30_000  # in the next minute
    tracker.tick(end, MINUTE + MINUTE_MS)
    gap = Gap("binance", BTC, T0 - GRACE_MS, end)
    assert tracker.take_gaps() == []
    tracker.tick(end + 40_000, MINUTE + MINUTE_MS)  # the watermark moves, the minute is open
    assert tracker.take_gaps() == []
    tracker.tick(end + 40_000, MINUTE + 2 * MINUTE_MS)  # the aggregator closed end's minute
    assert tracker.take_gaps() == [gap]
    tracker.tick(end + 99_000, MINUTE + 3 * MINUTE_MS)
    assert tracker.take_gaps() == []


def test_watermark_down_again_before_a_trade_dated_the_reconnect_keeps_the_first_start() -> None:
    tracker = watermark_tracker(BTC, ETH_SOL)
    tracker.connection_lost(0, None, T0)
    tracker.first_frame(0, None, T0)
    tracker.connection_lost(0, None, T0)  # dropped again: the reconnect dated nothing
    tracker.tick(T0 + 5_000, None)  # a trade (of the other plan): the outage is still open
    assert tracker.take_outages() == [Outage(T0 - GRACE_MS, OPEN_OUTAGE_END_MS, BTC)]
    assert tracker.in_gap(0)
    tracker.first_frame(0, None, T0 + 5_000)
    tracker.tick(T0 + 8_000, MINUTE + 2 * MINUTE_MS)
    assert tracker.take_gaps() == [Gap("binance", BTC, T0 - GRACE_MS, T0 + 8_000)]


def test_watermark_start_up_gap_ends_at_the_first_trade_of_each_plan() -> None:
    tracker = watermark_tracker(BTC, ETH_SOL, gap_start_ms=MINUTE)
    assert len(tracker.take_outages()) == 2
    tracker.first_frame(1, None, None)  # no trade seen yet: any trade ends it
    tracker.first_frame(0, None, None)
    tracker.tick(T0, MINUTE + MINUTE_MS)
    assert tracker.take_outages() == [Outage(MINUTE, T0, ETH_SOL), Outage(MINUTE, T0, BTC)]
    assert tracker.take_gaps() == [
        Gap("binance", ETH_SOL, MINUTE, T0),
        Gap("binance", BTC, MINUTE, T0),
    ]


def test_the_wall_clock_ignores_the_watermark_and_holds_a_gap_until_its_minute_closes() -> None:
    tracker = wall_tracker()
    tracker.connection_lost(0, T0, T0 - 50_000)  # the clock reading dates it, not the trade
    tracker.first_frame(0, T0 + 1_000, T0 - 50_000)
    # its last minute is still open: a repair now would be overwritten by the live bar
    tracker.tick(T0 + 2_000, MINUTE)
    assert tracker.take_gaps() == []
    tracker.tick(T0 + 2_000, MINUTE + MINUTE_MS)
    assert tracker.take_gaps() == [Gap("binance", BTC, T0 - GRACE_MS, T0 + 1_000)]


# ---- trade-id continuity ----------------------------------------------------------------------


def test_a_trade_id_jump_names_the_stretch_whose_trades_were_missed() -> None:
    ids = TradeIdContinuity()
    assert ids.trade("BTC-USD", 100, 1_000) is None  # where counting starts
    assert ids.trade("BTC-USD", 101, 2_000) is None
    assert ids.trade("BTC-USD", 105, 9_000) == (2_000, 9_000)  # 102..104 never came
    assert ids.trade("BTC-USD", 103, 9_500) is None  # a straggler: the aggregator's to drop
    assert ids.trade("BTC-USD", 105, 9_600) is None  # a duplicate
    assert ids.trade("ETH-USD", 7, 9_700) is None  # each symbol counts on its own
    assert ids.trade("BYBIT", "8f3c-uuid", 9_800) is None  # string ids do not count


def test_a_heartbeat_with_a_newer_last_trade_id_says_a_quiet_product_missed_trades() -> None:
    ids = TradeIdContinuity()
    assert ids.mark("BTC-USD", 50, 1_000) is None  # nothing seen yet: counting starts here
    assert ids.mark("BTC-USD", 50, 2_000) is None  # quiet, nothing missed
    assert ids.trade("BTC-USD", 51, 3_000) is None
    assert ids.mark("BTC-USD", 53, 4_000) == (3_000, 4_000)  # 52 and 53 never came
    assert ids.trade("BTC-USD", 54, 5_000) is None  # counting goes on from the mark


def test_counting_starts_afresh_after_a_lost_connection() -> None:
    ids = TradeIdContinuity()
    ids.trade("BTC-USD", 10, 1_000)
    ids.forget(["BTC-USD"])  # the outage covers what the connection missed
    assert ids.trade("BTC-USD", 40, 9_000) is None


def test_missed_trades_mark_an_outage_and_hand_out_a_gap_once_their_minutes_close() -> None:
    wall = OutageTracker("coinbase", [("BTC-USD", "ETH-USD")], ClockMode.WALL, grace_ms=2_000)
    wall.missed("BTC-USD", 61_000, 125_000)
    assert wall.take_outages() == [Outage(61_000, 125_000, ("BTC-USD",))]
    wall.tick(None, 180_000)
    assert wall.take_gaps() == [Gap("coinbase", ("BTC-USD",), 61_000, 125_000)]
    held = OutageTracker("coinbase", [("BTC-USD",)], ClockMode.WATERMARK, grace_ms=2_000)
    held.missed("BTC-USD", 61_000, 125_000)
    held.tick(watermark_ms=130_000, closed_before_ms=120_000)
    assert held.take_gaps() == []  # its last minute (120 000) has not closed yet
    held.tick(watermark_ms=190_000, closed_before_ms=180_000)
    assert held.take_gaps() == [Gap("coinbase", ("BTC-USD",), 61_000, 125_000)]
