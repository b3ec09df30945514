"""The minute-close round: a real ModelServer with the fixture model, real Binance bars.

The model is the torch-free persistence-plus-band fixture (tests/fixtures/models.py), so every
output is known in closed form. The server is a real ``ModelServer`` whose ``predict`` is
wrapped only to count the calls and their batch sizes; the sink records what it is given.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgspec
import numpy as np
import pytest
from fixtures.models import build_model, expected_output, real_bars

from streamer.core.types import Bar, Forecast
from streamer.core.windows import Windows
from streamer.io.forecaster import Forecaster
from streamer.io.model import CHUNK_ROWS, LoadedModel, ModelServer, load_model
from streamer.io.serving import Serving
from streamer.settings import load_settings

WINDOW, HORIZON, BAND = 10, 3, 0.001
LEVELS = (0.1, 0.5, 0.9)
WALL_MS = 1_747_710_000_000
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Key = tuple[str, str]


class CountingServer(ModelServer):
    """A real ModelServer that remembers the batch shape of each predict call. Given ``then``,
    it swaps that model in while its first predict is in flight, as a watcher could."""

    def __init__(self, then: LoadedModel | None = None) -> None:
        super().__init__(max_age_s=None)
        self.batches: list[tuple[int, ...]] = []
        self.then = then

    def submit(
        self,
        batch: FloatArray,
        model: LoadedModel | None = None,
        bar_time_s: np.ndarray[Any, np.dtype[np.int64]] | None = None,
    ) -> asyncio.Future[tuple[FloatArray, float]]:
        if self.then is not None:
            self.swap(self.then)
            self.then = None
        self.batches.append(batch.shape)
        return super().submit(batch, model, bar_time_s)


class RecordingSink:
    def __init__(self) -> None:
        self.forecasts: list[tuple[Forecast, float]] = []
        self.skills: list[tuple[str, str, dict[int, dict[str, float]]]] = []
        self.received = asyncio.Event()

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        self.forecasts.append((forecast, closed_at))
        self.received.set()

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        self.skills.append((exchange, symbol, figures))

    async def wait_sent(self) -> None:
        return None


def model(version: str, band: float = BAND) -> LoadedModel:
    data = build_model(version=version, window=WINDOW, horizon=HORIZON, band=band)
    return load_model(data, source="test")


@pytest.fixture
def btc() -> list[Bar]:
    bars: list[Bar] = real_bars("BTCUSDT")
    return bars


@pytest.fixture
def eth() -> list[Bar]:
    bars: list[Bar] = real_bars("ETHUSDT")
    return bars


def make(
    windows: Windows, current: LoadedModel | None = None
) -> tuple[Forecaster, CountingServer, RecordingSink]:
    server = CountingServer()
    if current is not None:
        server.swap(current)
    sink = RecordingSink()
    forecaster = Forecaster(
        windows,
        server,
        sink,
        eval_horizons=[1, 2],
        eval_window_ms=86_400_000,
        wall_clock_ms=lambda: WALL_MS,
        skill_every_min=1,
    )
    return forecaster, server, sink


def swapping_mid_round(windows: Windows) -> tuple[Forecaster, CountingServer, RecordingSink]:
    """v1 serves; v2 (a wider band) is swapped in during the first round's first chunk."""
    server = CountingServer(then=model("v2", band=0.004))
    server.swap(model("v1"))
    sink = RecordingSink()
    forecaster = Forecaster(
        windows, server, sink, eval_horizons=[1], eval_window_ms=86_400_000,
        wall_clock_ms=lambda: WALL_MS,
    )  # fmt: skip
    return forecaster, server, sink


def close(forecaster: Forecaster, windows: Windows, bars: list[Bar]) -> dict[Key, float]:
    """What the app does with closed bars: windows first, then the forecaster; the due set."""
    windows.apply(bars)
    forecaster.on_bars(bars)
    return forecaster.plan.due


async def close_and_round(
    forecaster: Forecaster, windows: Windows, bars: list[Bar]
) -> list[Forecast]:
    close(forecaster, windows, bars)
    return await forecaster.forecast_round()


async def test_full_windows_forecast_in_one_batch_short_and_holed_ones_skipped(
    btc: list[Bar], eth: list[Bar]
) -> None:
    windows = Windows(1440)
    forecaster, server, sink = make(windows, model("v1"))
    sol = [msgspec.structs.replace(b, symbol="SOLUSDT") for b in btc[: WINDOW - 1]]
    # a hole: XRPUSDT has 20 bars with the 5th newest missing (an outage not yet backfilled)
    xrp = [msgspec.structs.replace(b, symbol="XRPUSDT") for b in eth[:20]]
    del xrp[-5]
    due = close(forecaster, windows, btc[:30] + eth[:30] + sol + xrp)
    assert set(due) == {("binance", s) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")}
    forecasts = await forecaster.forecast_round()
    assert server.batches == [(2, WINDOW, 5)]  # one call for every full window
    assert [(f.symbol, f.bar_time_ms) for f in forecasts] == [
        ("BTCUSDT", btc[29].open_time_ms),
        ("ETHUSDT", eth[29].open_time_ms),
    ]
    assert forecaster.skipped == {"short_window": 2}
    batch = np.array(
        [[[b.open, b.high, b.low, b.close, b.volume] for b in s[20:30]] for s in (btc, eth)],
        dtype=np.float32,
    )
    expected = expected_output(batch, HORIZON, LEVELS, BAND)
    for f, rows in zip(forecasts, expected, strict=True):
        assert f.values == tuple(tuple(float(v) for v in h) for h in rows)
        assert (f.model_version, f.issued_at_ms, f.stale) == ("v1", WALL_MS, False)
    assert [f for f, _ in sink.forecasts] == forecasts
    assert [t for _, t in sink.forecasts] == [due[("binance", "BTCUSDT")]] * 2
    assert forecaster.published_total == 2 and forecaster.rounds_total == 1


async def test_a_round_larger_than_a_chunk_is_inferred_in_chunks_and_published_whole(
    btc: list[Bar],
) -> None:
    """Two and a half chunks of symbols: each chunk is published as soon as it is inferred,
    every symbol gets its own row, in order, and a swap mid-round does not touch the round."""
    windows = Windows(1440)
    forecaster, server, sink = swapping_mid_round(windows)
    n = 2 * CHUNK_ROWS + CHUNK_ROWS // 2
    symbols = [f"S{i:03d}USDT" for i in range(n)]
    # each symbol its own stretch of the real series, so every row of the batch differs
    bars = [
        msgspec.structs.replace(b, symbol=symbol)
        for i, symbol in enumerate(symbols)
        for b in btc[i % 50 : i % 50 + WINDOW]
    ]
    forecasts = await close_and_round(forecaster, windows, bars)
    assert server.batches == [(CHUNK_ROWS, WINDOW, 5)] * 2 + [(CHUNK_ROWS // 2, WINDOW, 5)]
    assert [f.symbol for f in forecasts] == symbols
    assert [f for f, _ in sink.forecasts] == forecasts
    assert {f.model_version for f in forecasts} == {"v1"}  # v2 was swapped in mid-round
    batch = np.array(
        [[[b.open, b.high, b.low, b.close, b.volume] for b in btc[i % 50 : i % 50 + WINDOW]]
         for i in range(n)],
        dtype=np.float32,
    )  # fmt: skip
    expected = expected_output(batch, HORIZON, LEVELS, BAND)
    for f, rows in zip(forecasts, expected, strict=True):
        assert f.values == tuple(tuple(float(v) for v in h) for h in rows)
    await forecaster.publish_skill(forecasts)
    assert forecaster.evaluator is not None and forecaster.evaluator.pending_count() == n


async def test_minutes_that_closed_before_the_round_ran_each_get_their_forecast(
    btc: list[Bar],
) -> None:
    """Three minutes close before the forecaster's round runs (a burst on the watermark
    clock): each is forecast from the window ending at it, oldest first; none is skipped."""
    windows = Windows(1440)
    forecaster, server, _ = make(windows, model("v1"))
    await close_and_round(forecaster, windows, btc[:WINDOW])
    for bar in btc[WINDOW : WINDOW + 3]:
        close(forecaster, windows, [bar])  # each minute closes on its own; no round between
    forecasts = await forecaster.forecast_round()
    assert [f.bar_time_ms for f in forecasts] == [b.open_time_ms for b in btc[WINDOW : WINDOW + 3]]
    assert server.batches[-1] == (3, WINDOW, 5)  # one call for the three
    batch = np.array(
        [[[b.open, b.high, b.low, b.close, b.volume] for b in btc[i + 1 : i + 1 + WINDOW]]
         for i in range(3)],
        dtype=np.float32,
    )  # fmt: skip
    expected = expected_output(batch, HORIZON, LEVELS, BAND)
    for f, rows, bar in zip(forecasts, expected, btc[WINDOW : WINDOW + 3], strict=True):
        assert f.last_close == bar.close
        assert f.values == tuple(tuple(float(v) for v in h) for h in rows)
    assert not forecaster.skipped
    # the round after that forecasts only the new minute
    nxt = await close_and_round(forecaster, windows, [btc[WINDOW + 3]])
    assert [f.bar_time_ms for f in nxt] == [btc[WINDOW + 3].open_time_ms]


async def test_a_repaired_last_bar_is_not_forecast_twice(btc: list[Bar]) -> None:
    windows = Windows(1440)
    forecaster, server, sink = make(windows, model("v1"))
    first = await close_and_round(forecaster, windows, btc[:WINDOW])
    assert [f.bar_time_ms for f in first] == [btc[WINDOW - 1].open_time_ms]
    # backfill replaces the newest bar with the exchange's (different volume): due again, but
    # that minute already has its forecast
    repaired = msgspec.structs.replace(btc[WINDOW - 1], volume=btc[WINDOW - 1].volume + 1.0)
    due = close(forecaster, windows, [repaired])
    assert due.keys() == {("binance", "BTCUSDT")}
    assert await forecaster.forecast_round() == []
    assert forecaster.skipped == {"already_forecast": 1}
    assert len(server.batches) == 1 and len(sink.forecasts) == 1
    # a repair of an older bar does not even make the symbol due
    older = msgspec.structs.replace(btc[3], volume=0.5)
    assert close(forecaster, windows, [older]) == {}
    # the next minute is forecast as usual
    nxt = await close_and_round(forecaster, windows, [btc[WINDOW]])
    assert [f.bar_time_ms for f in nxt] == [btc[WINDOW].open_time_ms]


async def test_no_model_counts_every_due_symbol(btc: list[Bar], eth: list[Bar]) -> None:
    windows = Windows(1440)
    forecaster, server, sink = make(windows)
    assert len(close(forecaster, windows, btc[:WINDOW] + eth[:WINDOW])) == 2
    assert await forecaster.forecast_round() == []
    assert forecaster.skipped == {"no_model": 2}
    assert server.batches == [] and sink.forecasts == []


async def test_a_swap_between_rounds_serves_from_the_next_round(btc: list[Bar]) -> None:
    windows = Windows(1440)
    v1, v2 = model("v1"), model("v2", band=0.004)
    forecaster, server, sink = make(windows, v1)
    rounds = [btc[:WINDOW], [btc[WINDOW]], [btc[WINDOW + 1]], [btc[WINDOW + 2]]]
    versions = []
    for i, bars in enumerate(rounds):
        if i == 2:
            server.swap(v2)  # lands between two rounds, as the registry watcher swaps
        out = await close_and_round(forecaster, windows, bars)
        versions += [(f.bar_time_ms, f.model_version) for f in out]
    times = [b.open_time_ms for b in btc[WINDOW - 1 : WINDOW + 3]]
    assert versions == list(zip(times, ["v1", "v1", "v2", "v2"], strict=True))
    last = sink.forecasts[-1][0]
    close_now = btc[WINDOW + 2].close
    # v2's wider band: the 0.9 quantile at +1 min is close * (1 + 1.2816 * 0.004)
    assert last.values[0][2] == pytest.approx(close_now * (1 + 1.2815516 * 0.004), rel=1e-6)


async def test_realised_closes_are_scored_and_skill_figures_published(btc: list[Bar]) -> None:
    windows = Windows(1440)
    forecaster, _, sink = make(windows, model("v1"))
    await forecaster.publish_skill(await close_and_round(forecaster, windows, btc[:WINDOW]))
    assert sink.skills == []  # nothing realised yet
    first = sink.forecasts[0][0]
    assert forecaster.evaluator is not None
    assert forecaster.evaluator.pending_count() == 1
    # the next bar realises horizon 1 of the first forecast
    await forecaster.publish_skill(await close_and_round(forecaster, windows, [btc[WINDOW]]))
    assert len(sink.skills) == 1
    exchange, symbol, figures = sink.skills[0]
    assert (exchange, symbol) == ("binance", "BTCUSDT")
    actual = btc[WINDOW].close
    h1 = figures[1]
    assert h1["n"] == 1
    assert h1["model_mae"] == abs(actual - first.values[0][1])
    assert h1["persistence_mae"] == abs(actual - first.last_close)
    assert h1["coverage"] == (1.0 if first.values[0][0] <= actual <= first.values[0][2] else 0.0)
    assert h1["persistence_mae"] > 0  # the real close moved: 105970.52 -> 105951.16
    assert h1["skill"] == 1.0 - h1["model_mae"] / h1["persistence_mae"]
    assert figures[2]["n"] == 0 and math.isnan(figures[2]["model_mae"])
    # one more bar: horizon 2 of the first and horizon 1 of the second are realised
    await forecaster.publish_skill(await close_and_round(forecaster, windows, [btc[WINDOW + 1]]))
    figures = sink.skills[-1][2]
    assert (figures[1]["n"], figures[2]["n"]) == (2, 1)
    assert figures[2]["persistence_mae"] == abs(btc[WINDOW + 1].close - first.last_close)


async def test_run_loop_forecasts_what_on_bars_marks_due(btc: list[Bar]) -> None:
    windows = Windows(1440)
    forecaster, server, sink = make(windows, model("v1"))
    task = asyncio.create_task(forecaster.run())
    try:
        windows.apply(btc[:WINDOW])
        forecaster.on_bars(btc[:WINDOW])
        await asyncio.wait_for(sink.received.wait(), 10)
    finally:
        task.cancel()
    assert [f.bar_time_ms for f, _ in sink.forecasts] == [btc[WINDOW - 1].open_time_ms]
    assert server.batches == [(1, WINDOW, 5)]


async def test_a_swap_during_a_round_does_not_mix_models(btc: list[Bar], eth: list[Bar]) -> None:
    windows = Windows(1440)
    forecaster, _, _ = swapping_mid_round(windows)
    out = await close_and_round(forecaster, windows, btc[:WINDOW] + eth[:WINDOW])
    # the round took v1 once: every forecast of it is v1's, values included (band 0.001)
    assert [f.model_version for f in out] == ["v1", "v1"]
    assert out[0].values[0][2] == pytest.approx(btc[WINDOW - 1].close * (1 + 1.2815516 * BAND))
    nxt = await close_and_round(forecaster, windows, [btc[WINDOW], eth[WINDOW]])
    assert [f.model_version for f in nxt] == ["v2", "v2"]


async def test_skill_is_published_every_few_minutes_per_symbol_staggered(btc: list[Bar]) -> None:
    windows = Windows(1440)
    forecaster, _, sink = make(windows, model("v1"))
    forecaster.skill_every_min = 5
    await close_and_round(forecaster, windows, btc[:WINDOW])
    for i in range(12):  # 12 minutes: the figures of BTCUSDT go out at 2 or 3 of them
        await forecaster.publish_skill(
            await close_and_round(forecaster, windows, [btc[WINDOW + i]])
        )
    minutes = [i for i, (_, symbol, _) in enumerate(sink.skills) if symbol == "BTCUSDT"]
    assert 2 <= len(sink.skills) <= 3 and len(minutes) == len(sink.skills)


# --- online calibration --------------------------------------------------------------------


async def run_minutes(forecaster: Forecaster, windows: Windows, bars: list[Bar]) -> list[Forecast]:
    """The first window closes at once, then one bar a minute, each round followed by its
    skill step (where the realised forecasts reach the calibrator)."""
    published = await close_and_round(forecaster, windows, bars[:WINDOW])
    await forecaster.publish_skill(published)
    for bar in bars[WINDOW:]:
        out = await close_and_round(forecaster, windows, [bar])
        await forecaster.publish_skill(out)
        published += out
    return published


def raw_values(bars: list[Bar], end: int, band: float) -> tuple[tuple[float, ...], ...]:
    """The fixture model's output for the window ending before ``bars[end]``."""
    window = np.array(
        [[[b.open, b.high, b.low, b.close, b.volume] for b in bars[end - WINDOW : end]]],
        dtype=np.float32,
    )
    return tuple(
        tuple(float(v) for v in h) for h in expected_output(window, HORIZON, LEVELS, band)[0]
    )


NARROW = 0.0001  # a band far too narrow for real BTC minutes: the calibration must widen it


async def narrow_band_run(
    btc: list[Bar], *, on: bool
) -> tuple[Forecaster, list[Bar], list[Forecast]]:
    """130 real BTC minutes through v1 with the ``NARROW`` band, calibration ``on`` or off:
    the forecaster, the bars and every forecast it published."""
    windows = Windows(1440)
    forecaster, _, _ = make(windows, model("v1", band=NARROW))
    forecaster.calibration = on
    bars = btc[:130]
    return forecaster, bars, await run_minutes(forecaster, windows, bars)


async def test_the_published_band_is_calibrated_and_the_evaluator_scores_the_raw_one(
    btc: list[Bar],
) -> None:
    forecaster, bars, published = await narrow_band_run(btc, on=True)
    assert {f.band for f in published} == {"calibrated"}
    first, last = published[0], published[-1]
    assert first.values == raw_values(bars, WINDOW, NARROW)  # a fresh state: the raw band
    raw_last = raw_values(bars, len(bars), NARROW)
    for h in range(HORIZON):
        assert last.values[h][1] == raw_last[h][1]  # the median is the model's, bit for bit
        assert last.values[h][2] - last.values[h][1] > 2 * (raw_last[h][2] - raw_last[h][1])
        assert last.values[h][1] - last.values[h][0] > 2 * (raw_last[h][1] - raw_last[h][0])
    calibrator, evaluator = forecaster.calibrator, forecaster.evaluator
    assert calibrator is not None and evaluator is not None
    # every realised forecast reached the calibrator: h = 1 and 2 of each minute's forecast
    minutes = len(bars) - WINDOW + 1
    assert calibrator.updated_total == (minutes - 1) + (minutes - 2)
    h1 = calibrator.counts("binance", "BTCUSDT")[0]
    raw_cov = h1.coverage(0.1, 0.9, calibrated=False)
    cal_cov = h1.coverage(0.1, 0.9, calibrated=True)
    assert raw_cov is not None and cal_cov is not None
    # the evaluator scored the raw forecasts: its coverage is the raw band's
    assert evaluator.figures("binance", "BTCUSDT")[0].coverage == pytest.approx(raw_cov)
    assert raw_cov < 0.3 and cal_cov > raw_cov + 0.25
    assert calibrator.coverage.counts()[0] == h1  # one symbol: the window holds its counts


async def test_calibration_off_publishes_the_raw_band_and_still_computes_the_calibrated_one(
    btc: list[Bar],
) -> None:
    forecaster, bars, published = await narrow_band_run(btc, on=False)
    assert {f.band for f in published} == {"raw"}
    assert published[-1].values == raw_values(bars, len(bars), NARROW)
    calibrator = forecaster.calibrator
    assert calibrator is not None
    h1 = calibrator.coverage.counts()[0]
    raw_cov = h1.coverage(0.1, 0.9, calibrated=False)
    cal_cov = h1.coverage(0.1, 0.9, calibrated=True)
    assert raw_cov is not None and cal_cov is not None and cal_cov > raw_cov + 0.25


async def test_a_model_swap_starts_a_fresh_calibration_and_keeps_the_coverage_window(
    btc: list[Bar],
) -> None:
    windows = Windows(1440)
    forecaster, server, _ = make(windows, model("v1", band=NARROW))
    bars = btc[:80]
    await run_minutes(forecaster, windows, bars)
    before = forecaster.calibrator
    assert before is not None and np.any(before.log_scales("binance", "BTCUSDT") != 0)
    window, counts = before.coverage, before.coverage.counts()
    server.swap(model("v2", band=NARROW))
    out = await close_and_round(forecaster, windows, [btc[80]])
    after = forecaster.calibrator
    assert after is not None and after is not before and after.coverage is window
    assert out[0].values == raw_values(btc, 81, NARROW)  # v2's own band: nothing learnt yet
    await forecaster.publish_skill(out)
    # v1's forecasts realised now are not v2's band: they change nothing and are not counted
    assert after.updated_total == 0 and after.unmatched_total == 2
    assert window.counts() == counts


@pytest.mark.parametrize(("setting", "on"), [(None, True), ("on", True), ("off", False)])
def test_the_setting_chooses_the_published_band_and_metrics_say_which(
    setting: str | None, on: bool
) -> None:
    overrides = {} if setting is None else {"calibration": setting}
    settings = load_settings(symbols=["binance:BTCUSDT"], **overrides)
    serving = Serving(settings, Windows(10), RecordingSink(), wall_clock_ms=lambda: WALL_MS)
    assert serving.forecaster.calibration is on
    enabled = next(f for f in serving.metric_families() if f.name == "tickcast_calibration_enabled")
    assert [s.value for s in enabled.samples] == [1.0 if on else 0.0]
