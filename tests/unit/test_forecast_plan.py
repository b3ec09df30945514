"""The forecast plan without an event loop or a model: which rows a round makes."""

from __future__ import annotations

import msgspec
from fixtures.models import real_bars

from streamer.core.forecast_plan import ForecastPlan
from streamer.core.windows import Windows

WINDOW = 10
BTC = ("binance", "BTCUSDT")


def test_the_newest_bar_makes_a_symbol_due_an_older_repair_does_not() -> None:
    bars = real_bars("BTCUSDT")[:20]
    windows, plan = Windows(1440), ForecastPlan()
    windows.apply(bars)
    assert plan.on_bars(bars, windows, 1.5) and plan.due == {BTC: 1.5}
    plan.take_due()
    older = msgspec.structs.replace(bars[3], volume=0.5)
    windows.apply([older])
    assert not plan.on_bars([older], windows, 2.0) and plan.due == {}


def test_a_burst_of_closes_gives_one_row_per_minute_and_each_minute_once() -> None:
    bars = real_bars("BTCUSDT")[:15]
    windows, plan = Windows(1440), ForecastPlan()
    windows.apply(bars[:WINDOW])
    plan.on_bars(bars[:WINDOW], windows, 0.0)
    rows = plan.rows(*plan.take_due(), windows, WINDOW)
    assert rows.keys == [BTC] and rows.ends == [WINDOW]
    plan.forecast_made(BTC, bars[WINDOW - 1].open_time_ms)
    for bar in bars[WINDOW:13]:  # three minutes close before the next round
        windows.apply([bar])
        plan.on_bars([bar], windows, 0.0)
    rows = plan.rows(*plan.take_due(), windows, WINDOW)
    assert rows.ends == [11, 12, 13] and plan.skipped == {}
    plan.forecast_made(BTC, bars[12].open_time_ms)
    # the newest bar repaired: due again, but its minute has its forecast
    windows.apply([bars[12]])
    plan.on_bars([bars[12]], windows, 0.0)
    assert len(plan.rows(*plan.take_due(), windows, WINDOW)) == 0
    assert plan.skipped == {"already_forecast": 1}


def test_short_windows_and_holes_are_counted_not_forecast() -> None:
    bars = real_bars("BTCUSDT")[:30]
    windows, plan = Windows(1440), ForecastPlan()
    short = [msgspec.structs.replace(b, symbol="SOLUSDT") for b in bars[: WINDOW - 1]]
    holed = [msgspec.structs.replace(b, symbol="XRPUSDT") for b in bars[:20]]
    del holed[-5]
    windows.apply(short + holed)
    plan.on_bars(short + holed, windows, 0.0)
    assert len(plan.rows(*plan.take_due(), windows, WINDOW)) == 0
    assert plan.skipped == {"short_window": 2}
    plan.no_model({BTC: 0.0})
    assert plan.skipped["no_model"] == 1
