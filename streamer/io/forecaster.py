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
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from streamer.core.evaluation import OnlineEvaluator
from streamer.core.features import contiguous_tail, window_array
from streamer.core.forecasting import ModelIdentity, build_forecasts
from streamer.core.types import Bar, Forecast
from streamer.core.windows import Windows
from streamer.io.model import LoadedModel, ModelServer

log = logging.getLogger(__name__)

Key = tuple[str, str]


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
    ) -> None:
        self.windows = windows
        self.server = server
        self.sink = sink
        self.eval_horizons = eval_horizons
        self.eval_window_ms = eval_window_ms
        self._wall_ms = wall_clock_ms
        # (inference seconds, close-to-publish seconds, forecasts) of each round, for metrics
        self._on_round = on_round
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
            await self.forecast_round(due)

    async def forecast_round(self, due: dict[Key, float]) -> list[Forecast]:
        model = self.server.current
        if model is None:
            self.skipped["no_model"] += len(due)
            return []
        window = model.spec.window
        series: list[list[Bar]] = []
        closed_at: dict[Key, float] = {}
        for key, t in due.items():
            bars = self.windows.tail(key, window)
            if not contiguous_tail(bars, window):
                self.skipped["short_window"] += 1
                continue
            if self._last_bar_time.get(key) == bars[-1].open_time_ms:
                self.skipped["already_forecast"] += 1
                continue
            series.append(bars)
            closed_at[key] = t
        if not series:
            return []
        batch = window_array(series, window)
        t0 = time.monotonic()  # the inference alone: building the batch is not timed here
        output = await self.server.predict(batch, model)
        inference_s = time.monotonic() - t0
        forecasts, rejected = build_forecasts(
            [s[-1] for s in series], output, model.spec, self._identity(model), self._wall_ms()
        )
        if rejected:
            self.skipped["bad_output"] += len(rejected)
            log.warning("model output refused", extra={"symbols": len(rejected)})
        evaluator = self._evaluator_for(model)
        for forecast in forecasts:
            key = (forecast.exchange, forecast.symbol)
            self.sink.publish_forecast(forecast, closed_at[key])
            evaluator.record(forecast)
            self._last_bar_time[key] = forecast.bar_time_ms
        self.published_total += len(forecasts)
        self.rounds_total += 1
        if self._on_round is not None and forecasts:
            self._on_round(inference_s, time.monotonic() - min(closed_at.values()), len(forecasts))
        self._publish_skill({(f.exchange, f.symbol) for f in forecasts})
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

    def _publish_skill(self, keys: set[Key]) -> None:
        evaluator = self.evaluator
        if evaluator is None:
            return
        for exchange, symbol in sorted(keys):
            figures = evaluator.figures(exchange, symbol)
            if any(f.n for f in figures):
                self.sink.publish_skill(
                    exchange, symbol, {f.horizon: f.as_numbers() for f in figures}
                )
