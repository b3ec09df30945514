"""The minute-close round with a contract-2 model: each row is fed its own bar time, and a swap
between contract 1 and contract 2 lands between two rounds, so no minute is missed.

The models are the torch-free fixtures of tests/fixtures/models.py: contract 1 is persistence
plus a fixed band, contract 2 widens that band by ``1 + minute_of_week / 10080`` of the bar
time it is fed, so every forecast's band says which time its row carried. Bars are real
Binance minutes (tests/fixtures/bars).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest
from fixtures.models import (
    DEFAULT_LEVELS,
    LEVELS_V2,
    build_model,
    build_model_v2,
    expected_output,
    expected_output_v2,
    real_bars,
)

from streamer.core.contracts import mqtt
from streamer.core.types import Bar, Forecast
from streamer.core.windows import Windows
from streamer.io.forecaster import Forecaster
from streamer.io.model import CHUNK_ROWS, LoadedModel, ModelServer, load_model
from streamer.io.sinks import CollectingSink

WINDOW_V1, WINDOW_V2, HORIZON, BAND = 10, 20, 3, 0.001
WALL_MS = 1_747_710_000_000
Key = tuple[str, str]


class SwapOnFirstSubmit(ModelServer):
    """A real ModelServer that swaps in ``then`` while the first chunk is queued, as a watcher
    could between two awaits of a round."""

    def __init__(self, then: LoadedModel) -> None:
        super().__init__(max_age_s=None)
        self.then: LoadedModel | None = then

    def submit(
        self,
        batch: np.ndarray[Any, np.dtype[np.float32]],
        model: LoadedModel | None = None,
        bar_time_s: np.ndarray[Any, np.dtype[np.int64]] | None = None,
    ) -> Any:
        if self.then is not None:
            self.swap(self.then)
            self.then = None
        return super().submit(batch, model, bar_time_s)


def v1() -> LoadedModel:
    return load_model(build_model(version="v1", window=WINDOW_V1, horizon=HORIZON, band=BAND))


def v2() -> LoadedModel:
    data = build_model_v2(version="v2", window=WINDOW_V2, horizon=HORIZON, band=BAND)
    return load_model(data)


def forecaster_with(server: ModelServer, windows: Windows) -> tuple[Forecaster, CollectingSink]:
    sink = CollectingSink()
    forecaster = Forecaster(
        windows, server, sink, eval_horizons=[1], eval_window_ms=86_400_000,
        wall_clock_ms=lambda: WALL_MS,
    )  # fmt: skip
    return forecaster, sink


async def close_and_round(
    forecaster: Forecaster, windows: Windows, bars: list[Bar]
) -> list[Forecast]:
    windows.apply(bars)
    forecaster.on_bars(bars)
    return await forecaster.forecast_round()


def window_of(bars: list[Bar]) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.array([[b.open, b.high, b.low, b.close, b.volume] for b in bars], dtype=np.float32)


def assert_v2_values(forecast: Forecast, window: list[Bar]) -> None:
    """``forecast`` is what the contract-2 fixture gives for ``window`` at its last bar time."""
    assert forecast.bar_time_ms == window[-1].open_time_ms
    times = np.array([forecast.bar_time_ms // 1000], dtype=np.int64)
    expected = expected_output_v2(window_of(window)[None], times, HORIZON, LEVELS_V2, BAND)[0]
    assert forecast.values == tuple(tuple(float(v) for v in h) for h in expected)


async def test_every_row_of_a_chunked_round_is_fed_its_own_bar_time() -> None:
    """Two and a half chunks of symbols, each ending at a different minute: the band of each
    forecast is the one of its own bar time, so the times were sliced with the chunks."""
    btc = real_bars("BTCUSDT")
    windows = Windows(240)
    server = ModelServer()
    server.swap(v2())
    forecaster, sink = forecaster_with(server, windows)
    n = 2 * CHUNK_ROWS + CHUNK_ROWS // 2
    stretches = {f"S{i:03d}USDT": btc[i : i + WINDOW_V2] for i in range(n)}  # i minutes later
    bars = [msgspec.structs.replace(b, symbol=s) for s, w in stretches.items() for b in w]
    forecasts = await close_and_round(forecaster, windows, bars)
    assert [f.symbol for f in forecasts] == list(stretches)
    assert len({f.bar_time_ms for f in forecasts}) == n
    for forecast in forecasts:
        assert forecast.quantile_levels == LEVELS_V2
        assert_v2_values(forecast, stretches[forecast.symbol])
    assert sink.forecasts == forecasts
    server.close()


async def test_minutes_closed_before_a_round_each_get_their_own_bar_time() -> None:
    btc = real_bars("BTCUSDT")
    windows = Windows(240)
    server = ModelServer()
    server.swap(v2())
    forecaster, _ = forecaster_with(server, windows)
    await close_and_round(forecaster, windows, btc[:WINDOW_V2])
    for bar in btc[WINDOW_V2 : WINDOW_V2 + 3]:
        windows.apply([bar])
        forecaster.on_bars([bar])  # three minutes close; no round between them
    forecasts = await forecaster.forecast_round()
    assert len(forecasts) == 3
    for i, forecast in enumerate(forecasts, start=1):
        assert_v2_values(forecast, btc[i : i + WINDOW_V2])
    server.close()


async def test_a_swap_from_contract_1_to_2_between_rounds_misses_no_minute() -> None:
    btc, eth = real_bars("BTCUSDT"), real_bars("ETHUSDT")
    windows = Windows(240)
    server = ModelServer()
    server.swap(v1())
    forecaster, sink = forecaster_with(server, windows)
    await close_and_round(forecaster, windows, btc[:WINDOW_V2] + eth[:WINDOW_V2])
    for minute in range(WINDOW_V2, WINDOW_V2 + 6):
        if minute == WINDOW_V2 + 3:
            server.swap(v2())  # as the registry watcher does, between two rounds
        await close_and_round(forecaster, windows, [btc[minute], eth[minute]])
    for series in (btc, eth):
        made = [f for f in sink.forecasts if f.symbol == series[0].symbol]
        assert [f.bar_time_ms for f in made] == [
            b.open_time_ms for b in series[WINDOW_V2 - 1 : WINDOW_V2 + 6]
        ]  # every minute once, before, across and after the swap
        assert [f.model_version for f in made] == ["v1"] * 4 + ["v2"] * 3
        for f in made[:4]:
            end = series.index(next(b for b in series if b.open_time_ms == f.bar_time_ms)) + 1
            expected = expected_output(
                window_of(series[end - WINDOW_V1 : end])[None], HORIZON, DEFAULT_LEVELS, BAND
            )[0]
            assert f.quantile_levels == DEFAULT_LEVELS
            assert f.values == tuple(tuple(float(v) for v in h) for h in expected)
        for f in made[4:]:
            end = series.index(next(b for b in series if b.open_time_ms == f.bar_time_ms)) + 1
            assert f.quantile_levels == LEVELS_V2
            assert_v2_values(f, series[end - WINDOW_V2 : end])
    # the payload of a contract-2 forecast carries all seven levels, and validates
    payload = mqtt.forecast_payload(sink.forecasts[-1])
    assert list(payload["quantiles"]) == ["0.05", "0.1", "0.25", "0.75", "0.9", "0.95"]
    assert mqtt.validate_forecast_payload(payload) == []
    assert mqtt.validate_forecast_payload(mqtt.decode_forecast_payload(
        mqtt.encode_forecast(sink.forecasts[-1])
    )) == []  # fmt: skip
    assert forecaster.evaluator is not None
    assert forecaster.evaluator.quantile_levels == LEVELS_V2  # scoring follows the new levels
    server.close()


@pytest.mark.parametrize(("first", "then"), [("v1", "v2"), ("v2", "v1")])
async def test_a_swap_during_a_round_does_not_mix_contracts(first: str, then: str) -> None:
    btc = real_bars("BTCUSDT")
    windows = Windows(240)
    models = {"v1": v1, "v2": v2}
    server = SwapOnFirstSubmit(then=models[then]())
    server.swap(models[first]())
    forecaster, _ = forecaster_with(server, windows)
    symbols = [f"S{i:03d}USDT" for i in range(CHUNK_ROWS + 3)]  # two chunks
    bars = [msgspec.structs.replace(b, symbol=s) for s in symbols for b in btc[:WINDOW_V2]]
    forecasts = await close_and_round(forecaster, windows, bars)
    assert len(forecasts) == len(symbols)
    assert {f.model_version for f in forecasts} == {first}
    nxt = await close_and_round(
        forecaster, windows, [msgspec.structs.replace(btc[WINDOW_V2], symbol=s) for s in symbols]
    )
    assert {f.model_version for f in nxt} == {then} and len(nxt) == len(symbols)
    server.close()
