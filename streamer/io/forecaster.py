"""The minute-close forecast round: windows -> one batched inference -> checked forecasts out.

Closed bars mark their symbols due; the round forecasts every due symbol with a full window in
one onnxruntime call on the model server's worker thread, so feeds never stall. Each symbol is
forecast at most once per bar time, which is what makes a model swap neither skip nor duplicate a
minute: the round takes the current model once and uses it for the whole batch, with that
model's window and, for a contract-2 model, the bar time of every row.

Online calibration: every good row is calibrated per (symbol, horizon) by the
``OnlineCalibrator``; the calibrated band is published when ``calibration`` is on, and computed
all the same when it is off, so that the raw and the calibrated coverage on /metrics can be
compared first. The evaluator records the raw forecasts (its figures are the model's own) and
hands each realised one to the calibrator, once per round. A model swap starts a fresh
calibration state (a new model has a new band); the coverage window carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import numpy as np

from streamer.core.calibration import OnlineCalibrator, Realised
from streamer.core.evaluation import OnlineEvaluator
from streamer.core.forecast_plan import ForecastPlan
from streamer.core.forecasting import Built, ModelIdentity, build_calibrated
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
        calibration: bool = True,
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
        self.calibration = calibration  # publish the calibrated band (else the raw one)
        self.calibrator: OnlineCalibrator | None = None
        self._calibrated_version: str | None = None  # the model the calibrator's state is for
        self.plan = ForecastPlan()
        self._unscored: list[Bar] = []
        self._unrecorded: list[Built] = []  # chunks whose raw forecasts await the evaluator
        self._wake = asyncio.Event()
        self.published_total = 0
        self.rounds_total = 0

    @property
    def skipped(self) -> Counter[str]:
        return self.plan.skipped

    def on_bars(self, bars: list[Bar]) -> None:
        """Closed or repaired bars: mark symbols due for a new forecast, score past ones later."""
        self._unscored.extend(bars)
        self.plan.on_bars(bars, self.windows, time.monotonic())
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            forecasts = await self.forecast_round()
            await self.sink.wait_sent()  # scoring and skill figures keep out of their way
            await self.publish_skill(forecasts)

    async def forecast_round(self) -> list[Forecast]:
        """Forecast every due symbol with a full window; returns the forecasts published.

        When several minutes of a symbol closed before the round could run (a burst of closes
        on the watermark clock, a busy loop), each gets its forecast, oldest first.

        Inference runs in chunks of ``CHUNK_ROWS``, each queued on the worker thread as soon as
        it is gathered, and each chunk's forecasts go to the sink as soon as it is done, so the
        loop builds and sends one chunk while the next is computed.
        """
        due, since = self.plan.take_due()
        if not due:
            return []
        model = self.server.current
        if model is None:
            self.plan.no_model(due)
            return []
        rows = self.plan.rows(due, since, self.windows, model.spec.window)
        if not rows:
            return []
        keys, ends, window = rows.keys, rows.ends, model.spec.window
        last_times, last_closes = self._last_bars(keys, ends)
        bar_time_s = np.asarray(last_times, dtype=np.int64) // 1000  # contract 2's bar_time
        starts = range(0, len(keys), CHUNK_ROWS)
        # each chunk starts computing as soon as it is gathered, while the next one is
        runs = [
            self.server.submit(
                self.windows.batch(keys[i : i + CHUNK_ROWS], window, ends[i : i + CHUNK_ROWS]),
                model,
                bar_time_s[i : i + CHUNK_ROWS],
            )
            for i in starts
        ]
        identity = self._identity(model)
        calibrator = self._calibrator_for(model)
        issued_at_ms = self._wall_ms()
        forecasts: list[Forecast] = []
        inference_s = 0.0
        try:
            for i, run in zip(starts, runs, strict=True):
                output, seconds = await run
                inference_s += seconds
                j = i + CHUNK_ROWS
                built = build_calibrated(
                    keys[i:j], last_times[i:j], last_closes[i:j], output, model.spec, identity,
                    issued_at_ms, calibrator, publish_calibrated=self.calibration,
                )  # fmt: skip
                if built.rejected:
                    self.plan.bad_output(len(built.rejected))
                    log.warning("model output refused", extra={"symbols": len(built.rejected)})
                for forecast in built.published:
                    key = (forecast.exchange, forecast.symbol)
                    self.sink.publish_forecast(forecast, due[key])
                    self.plan.forecast_made(key, forecast.bar_time_ms)
                forecasts += built.published
                self._unrecorded.append(built)
                await asyncio.sleep(0)  # the publisher sends this chunk while the next computes
        finally:
            for run in runs:
                run.cancel()
        self.published_total += len(forecasts)
        self.rounds_total += 1
        if self._on_round is not None and forecasts:
            closed = min(due[(f.exchange, f.symbol)] for f in forecasts)
            self._on_round(inference_s, time.monotonic() - closed, len(forecasts))
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

    def _calibrator_for(self, model: LoadedModel) -> OnlineCalibrator:
        """The calibrator of ``model``: fresh for every model swapped in, on the evaluator's
        horizons and levels (the realised forecasts come from it); the coverage window is
        carried on while those stay the same."""
        evaluator = self._evaluator_for(model)
        current = self.calibrator
        shape = (evaluator.horizons, evaluator.quantile_levels)
        if (
            current is not None
            and self._calibrated_version == model.version
            and (current.horizons, current.quantile_levels) == shape
        ):
            return current
        kept = current.coverage if current is not None else None
        if kept is not None and (kept.horizons, kept.quantile_levels) != shape:
            kept = None
        current = OnlineCalibrator(*shape, window_ms=self.eval_window_ms, coverage=kept)
        self.calibrator, self._calibrated_version = current, model.version
        return current

    async def publish_skill(self, forecasts: list[Forecast]) -> None:
        """Record the raw forecasts of the rounds since the last call for scoring, score the
        bars closed since then (the realised forecasts go to the calibrator in one batch), then
        publish the skill figures of the symbols just forecast (``forecasts``), each every
        ``skill_every_min`` minutes (staggered by a stable hash): rolling 24 h figures barely
        move in a minute, and 1,000 skill messages a minute would double the MQTT traffic.
        Computed after the forecasts, in slices that yield to the loop, so they never hold up
        the forecasts."""
        bars, self._unscored = self._unscored, []
        chunks, self._unrecorded = self._unrecorded, []
        evaluator = self.evaluator
        if evaluator is None:
            return
        # Recorded and scored here, once the forecasts are out: no subscriber waits on it.
        for chunk in chunks:
            for forecast in chunk.raw_forecasts():
                evaluator.record(forecast)
        realised: list[Realised] = []
        for bar in bars:
            evaluator.observe(bar, realised)
        if self.calibrator is not None and realised:
            self.calibrator.observe_many(realised)
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
