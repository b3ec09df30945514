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
from streamer.io.model import CHUNK_ROWS, LoadedModel, ModelServer

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

    async def wait_sent(self) -> None:
        """Return once the forecasts handed over so far are out, or cannot be soon."""


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
        self._due_since: dict[Key, int] = {}  # key -> oldest minute closed since the last round
        self._unscored: list[Bar] = []
        self._wake = asyncio.Event()
        self._last_bar_time: dict[Key, int] = {}
        self.published_total = 0
        self.skipped: Counter[str] = Counter()
        self.rounds_total = 0

    def on_bars(self, bars: list[Bar]) -> None:
        """Closed or repaired bars: mark symbols due for a new forecast, score past ones later."""
        now = time.monotonic()
        self._unscored.extend(bars)
        for bar in bars:
            if self.windows.last_open_time(bar.key) == bar.open_time_ms:
                self._due.setdefault(bar.key, now)
                self._due_since.setdefault(bar.key, bar.open_time_ms)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            due, self._due = self._due, {}
            forecasts = await self.forecast_round(due) if due else []
            await self.sink.wait_sent()  # scoring and skill figures keep out of their way
            await self.publish_skill(forecasts)

    async def forecast_round(self, due: dict[Key, float]) -> list[Forecast]:
        """Forecast every due symbol with a full window; returns the forecasts published.

        When several minutes of a symbol closed before the round could run (a burst of closes
        on the watermark clock, a busy loop), each gets its forecast, oldest first.

        Inference runs in chunks of ``CHUNK_ROWS``, each queued on the worker thread as soon as
        it is gathered, and each chunk's forecasts go to the sink as soon as it is done, so the
        loop builds and sends one chunk while the next is computed.
        """
        since, self._due_since = self._due_since, {}
        model = self.server.current
        if model is None:
            self.skipped["no_model"] += len(due)
            return []
        window = model.spec.window
        keys: list[Key] = []  # one row per forecast: a key, and the end of its window
        ends: list[int] = []
        for key in due:
            series = self.windows.series(key)
            if series is None or not series.full_tail(window):
                self.skipped["short_window"] += 1
                continue
            newest = int(series.times[series.n - 1])
            previous = self._last_bar_time.get(key)
            if previous == newest:
                self.skipped["already_forecast"] += 1
                continue
            first = since.get(key, newest)
            if previous is not None:
                first = max(first, previous + MINUTE_MS)
            if first >= newest:
                key_ends = [series.n]
            else:
                key_ends = series.full_ends(first, window)
                missed = (newest - first) // MINUTE_MS + 1 - len(key_ends)
                if missed:  # minutes without a full window (a hole not yet backfilled)
                    self.skipped["short_window"] += missed
            keys += [key] * len(key_ends)
            ends += key_ends
        if not keys:
            return []
        last_times, last_closes = self._last_bars(keys, ends)
        starts = range(0, len(keys), CHUNK_ROWS)
        # each chunk starts computing as soon as it is gathered, while the next one is
        runs = [
            self.server.submit(
                self.windows.batch(keys[i : i + CHUNK_ROWS], window, ends[i : i + CHUNK_ROWS]),
                model,
            )
            for i in starts
        ]
        identity = self._identity(model)
        issued_at_ms = self._wall_ms()
        forecasts: list[Forecast] = []
        inference_s = 0.0
        try:
            for i, run in zip(starts, runs, strict=True):
                output, seconds = await run
                inference_s += seconds
                j = i + CHUNK_ROWS
                chunk, rejected = build_forecasts(
                    keys[i:j], last_times[i:j], last_closes[i:j], output, model.spec, identity,
                    issued_at_ms,
                )  # fmt: skip
                if rejected:
                    self.skipped["bad_output"] += len(rejected)
                    log.warning("model output refused", extra={"symbols": len(rejected)})
                for forecast in chunk:
                    key = (forecast.exchange, forecast.symbol)
                    self.sink.publish_forecast(forecast, due[key])
                    self._last_bar_time[key] = forecast.bar_time_ms
                forecasts += chunk
                await asyncio.sleep(0)  # the publisher sends this chunk while the next computes
        finally:
            for run in runs:
                run.cancel()
        self.published_total += len(forecasts)
        self.rounds_total += 1
        if self._on_round is not None and forecasts:
            closed = min(due[(f.exchange, f.symbol)] for f in forecasts)
            self._on_round(inference_s, time.monotonic() - closed, len(forecasts))
        self._evaluator_for(model)  # the forecasts are recorded with the skill step
        return forecasts

    def _last_bars(self, keys: list[Key], ends: list[int]) -> tuple[list[int], list[float]]:
        """Open time and close of the bar each window ends with."""
        times, closes = [], []
        for key, end in zip(keys, ends, strict=True):
            series = self.windows.series(key)
            assert series is not None
            times.append(int(series.times[end - 1]))
            closes.append(float(series.values[end - 1, CLOSE]))
        return times, closes

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
        """Record ``forecasts`` for scoring, score the bars closed since the last round, then
        publish the skill figures of the symbols just forecast, each every ``skill_every_min``
        minutes (staggered by a stable hash): rolling 24 h figures barely move in a minute, and
        1,000 skill messages a minute would double the MQTT traffic. Computed after the
        forecasts, in slices that yield to the loop, so they never hold up the forecasts."""
        bars, self._unscored = self._unscored, []
        evaluator = self.evaluator
        if evaluator is None:
            return
        # Recorded and scored here, once the forecasts are out: no subscriber waits on it.
        for forecast in forecasts:
            evaluator.record(forecast)
        for bar in bars:
            evaluator.observe(bar)
        every = self.skill_every_min
        keys = sorted(
            {
                (f.exchange, f.symbol)
                for f in forecasts
                if (f.bar_time_ms // MINUTE_MS + _stagger(f.exchange, f.symbol, every)) % every == 0
            }
        )
        for i, (exchange, symbol) in enumerate(keys):
            if i and i % SKILL_SLICE == 0:
                await asyncio.sleep(0)
            figures = evaluator.figures(exchange, symbol)
            if any(f.n for f in figures):
                self.sink.publish_skill(
                    exchange, symbol, {f.horizon: f.as_numbers() for f in figures}
                )
