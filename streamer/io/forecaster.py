"""The minute-close forecast round: windows -> one batched inference -> checked forecasts out.

Closed bars mark their symbols due; the round forecasts every due symbol with a full window in
one onnxruntime call on the model server's worker thread, so feeds never stall. Each symbol is
forecast at most once per bar time, which is what makes a model swap neither skip nor duplicate a
minute: the round takes the current model once and uses it for the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from streamer.core.evaluation import OnlineEvaluator
from streamer.core.forecasting import ModelIdentity, build_forecasts
from streamer.core.types import MINUTE_MS, Bar, Forecast
from streamer.core.windows import CLOSE, Windows
from streamer.io.model import LoadedModel, ModelServer

log = logging.getLogger(__name__)

Key = tuple[str, str]
SKILL_SLICE = 100  # symbols whose skill figures are computed between two yields to the loop
SKILL_EVERY_MIN = 5


def _stagger(exchange: str, symbol: str, every: int) -> int:
    return zlib.crc32(f"{exchange}:{symbol}".encode()) % every


class ForecastSink(Protocol):
    """Where forecasts and skill figures go: MQTT in production, the console in the demo."""

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        """``closed_at``: ``time.monotonic()`` when the forecast's bar closed (for latency)."""

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None: ...


class Forecaster:
    def __init__(
        self,
        windows: Windows,
        server: ModelServer,
        sink: ForecastSink,
        *,
        eval_horizons: list[int],
        eval_window_ms: int,
        wall_clock_ms: Callable[[], int],
        on_round: Callable[[float, float, int], None] | None = None,
        skill_every_min: int = SKILL_EVERY_MIN,
    ) -> None:
        self.windows = windows
        self.server = server
        self.sink = sink
        self.eval_horizons = eval_horizons
        self.eval_window_ms = eval_window_ms
        self._wall_ms = wall_clock_ms
        # (inference seconds, close-to-publish seconds, forecasts) of each round, for metrics
        self._on_round = on_round
        self.skill_every_min = skill_every_min
        self.evaluator: OnlineEvaluator | None = None
        self._due: dict[Key, float] = {}  # key -> monotonic time its bar closed
        self._wake = asyncio.Event()
        self._last_bar_time: dict[Key, int] = {}
        self.published_total = 0
        self.skipped: Counter[str] = Counter()
        self.rounds_total = 0

    def on_bars(self, bars: list[Bar]) -> None:
        """Closed or repaired bars: score past forecasts, mark symbols due for a new one."""
        now = time.monotonic()
        evaluator = self.evaluator
        for bar in bars:
            if evaluator is not None:
                evaluator.observe(bar)
            last = self.windows.last(bar.key)
            if last is not None and last.open_time_ms == bar.open_time_ms:
                self._due.setdefault(bar.key, now)
        if self._due:
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            due, self._due = self._due, {}
            forecasts = await self.forecast_round(due)
            await self.publish_skill(forecasts)

    async def forecast_round(self, due: dict[Key, float]) -> list[Forecast]:
        model = self.server.current
        if model is None:
            self.skipped["no_model"] += len(due)
            return []
        window = model.spec.window
        keys: list[Key] = []
        last_times: list[int] = []
        last_closes: list[float] = []
        for key in due:
            series = self.windows.series(key)
            if series is None or not series.full_tail(window):
                self.skipped["short_window"] += 1
                continue
            last_time = int(series.times[series.n - 1])
            if self._last_bar_time.get(key) == last_time:
                self.skipped["already_forecast"] += 1
                continue
            keys.append(key)
            last_times.append(last_time)
            last_closes.append(float(series.values[series.n - 1, CLOSE]))
        if not keys:
            return []
        batch = self.windows.batch(keys, window)
        t0 = time.monotonic()
        output = await self.server.predict(batch, model)
        inference_s = time.monotonic() - t0
        forecasts, rejected = build_forecasts(
            keys,
            last_times,
            last_closes,
            output,
            model.spec,
            self._identity(model),
            self._wall_ms(),
        )
        if rejected:
            self.skipped["bad_output"] += len(rejected)
            log.warning("model output refused", extra={"symbols": len(rejected)})
        for forecast in forecasts:
            key = (forecast.exchange, forecast.symbol)
            self.sink.publish_forecast(forecast, due[key])
            self._last_bar_time[key] = forecast.bar_time_ms
        self.published_total += len(forecasts)
        self.rounds_total += 1
        if self._on_round is not None and forecasts:
            closed = min(due[(f.exchange, f.symbol)] for f in forecasts)
            self._on_round(inference_s, time.monotonic() - closed, len(forecasts))
        evaluator = self._evaluator_for(model)
        for forecast in forecasts:
            evaluator.record(forecast)
        return forecasts

    def _identity(self, model: LoadedModel) -> ModelIdentity:
        return ModelIdentity(model.version, model.trained_at, self.server.stale(model=model))

    def _evaluator_for(self, model: LoadedModel) -> OnlineEvaluator:
        levels = model.spec.quantiles
        horizons = [h for h in self.eval_horizons if h <= model.spec.horizon] or [1]
        current = self.evaluator
        if current is None or current.quantile_levels != tuple(sorted(levels)):
            current = OnlineEvaluator(horizons, levels, self.eval_window_ms)
            self.evaluator = current
        return current

    async def publish_skill(self, forecasts: list[Forecast]) -> None:
        """Skill figures of the symbols just forecast, each symbol every ``skill_every_min``
        minutes (staggered by a stable hash): rolling 24 h figures barely move in a minute, and
        1,000 skill messages a minute would double the MQTT traffic. Computed after the
        forecasts, in slices that yield to the loop, so they never hold up the forecasts."""
        evaluator = self.evaluator
        if evaluator is None:
            return
        every = self.skill_every_min
        keys = sorted(
            (f.exchange, f.symbol)
            for f in forecasts
            if (f.bar_time_ms // MINUTE_MS + _stagger(f.exchange, f.symbol, every)) % every == 0
        )
        for i, (exchange, symbol) in enumerate(keys):
            if i and i % SKILL_SLICE == 0:
                await asyncio.sleep(0)
            figures = evaluator.figures(exchange, symbol)
            if any(f.n for f in figures):
                self.sink.publish_skill(
                    exchange, symbol, {f.horizon: f.as_numbers() for f in figures}
                )
