"""BarAggregator with text trade ids (Bybit's UUIDs): de-duplication and order work as for ints.

The ids are real: the first trade ids of cryptofeed's Bybit recording
(tests/fixtures/ws/bybit_linear_v2.jsonl).
"""

from __future__ import annotations

import itertools

from streamer.core.bars import RECENT_CLOSED_MINUTES, BarAggregator
from streamer.core.types import MINUTE_MS, Bar, Trade

M0 = 1_618_677_780_000  # 2021-04-17 16:43 UTC, a minute start
GRACE = 2000
IDS = [
    "01cacfe9-8d1c-5ee4-995d-d79a43f955a6",
    "a6492be8-54bb-55b2-8b46-69ad3c70a3b5",
    "34a0c539-d0f2-5fac-8ceb-0737c5e36a0f",
    "21e82307-f328-5fbc-8566-b3823e847b48",
]


def trade(tid: str, ts: int, price: float, qty: float = 0.5) -> Trade:
    return Trade("bybit", "BCHUSDT", tid, ts, price, qty, "buy")


def test_a_resent_text_id_in_an_open_minute_is_a_duplicate() -> None:
    agg = BarAggregator("bybit", grace_ms=GRACE)
    agg.add(trade(IDS[0], M0 + 100, 1053.9, 0.14))
    agg.add(trade(IDS[1], M0 + 900, 1054.45, 0.82))
    agg.add(trade(IDS[0], M0 + 100, 1053.9, 0.14))  # resent
    agg.add(trade(IDS[1], M0 + 5000, 9999.0, 9.0))  # same id, other values: still the same trade
    assert (agg.accepted, agg.duplicates) == (2, 2)
    assert agg.on_clock(M0 + MINUTE_MS + GRACE) == [
        Bar("bybit", "BCHUSDT", M0, 1053.9, 1054.45, 1053.9, 1054.45, 0.96, 2)
    ]


def test_a_resent_text_id_of_a_recently_closed_minute_is_a_duplicate_not_late() -> None:
    agg = BarAggregator("bybit", grace_ms=GRACE)
    agg.add(trade(IDS[0], M0 + 100, 1053.9))
    agg.on_clock(M0 + MINUTE_MS + GRACE)
    agg.add(trade(IDS[0], M0 + 100, 1053.9))  # resent after a reconnect
    agg.add(trade(IDS[1], M0 + 200, 1053.9))  # unknown id for the closed minute
    assert (agg.duplicates, agg.late) == (1, 1)
    assert RECENT_CLOSED_MINUTES >= 1


def test_equal_timestamps_order_by_the_text_whatever_the_arrival() -> None:
    """Open and close of trades of one millisecond come from the ids' text order, so the bar is
    the same for every arrival order."""
    ts = M0 + 1000
    trades = [
        trade(tid, ts, price) for tid, price in zip(IDS, [10.0, 11.0, 12.0, 13.0], strict=True)
    ]
    bars = set()
    for order in itertools.permutations(trades):
        agg = BarAggregator("bybit", grace_ms=GRACE)
        for t in order:
            agg.add(t)
        (bar,) = agg.on_clock(M0 + MINUTE_MS + GRACE)
        bars.add(bar)
    # smallest text: "01cacfe9-..." (10.0); largest: "a6492be8-..." (11.0)
    assert bars == {Bar("bybit", "BCHUSDT", M0, 10.0, 13.0, 10.0, 11.0, 2.0, 4)}
