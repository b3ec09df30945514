"""The serving side: model registry watcher, model server, forecaster and the forecast sink.

Composed here so that the app only starts it, feeds it closed bars and stops it; its figures go
to Prometheus through ``metric_families`` at scrape time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client.core import Metric

from streamer.core.contracts import metrics as catalogue
from streamer.core.types import Bar, Forecast
from streamer.core.windows import Windows
from streamer.io.forecaster import Forecaster, ForecastSink
from streamer.io.metrics import family
from streamer.io.model import ModelServer, RegistryWatcher, open_registry
from streamer.io.publisher import MqttPublisher
from streamer.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, str]
SMOKE_SERIES = 8


class Serving:
    def __init__(
        self,
        settings: Settings,
        windows: Windows,
        sink: ForecastSink,
        *,
        publisher: MqttPublisher | None = None,
        wall_clock_ms: Callable[[], int],
        on_round: Callable[[float, float, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.windows = windows
        self.sink = sink
        self.publisher = publisher
        self.server = ModelServer(max_age_s=settings.model_max_age_s)
        self.watcher: RegistryWatcher | None = None
        if settings.model_registry:
            self.watcher = RegistryWatcher(
                open_registry(settings.model_registry),
                self.server,
                poll_interval_s=settings.model_poll_s,
                smoke_windows=self.smoke_windows,
                max_window=settings.window_memory_bars,
            )
        self.forecaster = Forecaster(
            windows,
            self.server,
            self,
            eval_horizons=settings.eval_horizons,
            eval_window_ms=settings.eval_window_s * 1000,
            wall_clock_ms=wall_clock_ms,
            on_round=on_round,
            calibration=settings.calibration == "on",
        )
        self._listed = {tuple(s.split(":", 1)) for s in settings.symbols}
        self._latest: dict[Key, Forecast] = {}

    def on_bars(self, bars: list[Bar]) -> None:
        self.forecaster.on_bars(bars)

    # the forecaster's sink: keep the latest per symbol for the metrics, then pass it on
    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        self._latest[(forecast.exchange, forecast.symbol)] = forecast
        self.sink.publish_forecast(forecast, closed_at)

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        self.sink.publish_skill(exchange, symbol, figures)

    async def wait_sent(self) -> None:
        await self.sink.wait_sent()

    async def close(self) -> None:
        self.server.close()

    def smoke_windows(self, window: int) -> np.ndarray | None:
        """Real recent windows for a candidate model's smoke inference (None: none full yet)."""
        keys = []
        candidates = self.windows.keys()
        for key in candidates:
            series = self.windows.series(key)
            if series is not None and series.full_tail(window):
                keys.append(key)
            if len(keys) == SMOKE_SERIES:
                break
        return self.windows.batch(keys, window) if keys else None

    @property
    def ready(self) -> bool:
        return self.server.ready

    # ---- metrics ----------------------------------------------------------------------------

    def metric_families(self) -> Iterable[Metric]:
        f = self.forecaster
        yield family(catalogue.FORECASTS_PUBLISHED, f.published_total)
        skipped = family(catalogue.FORECASTS_SKIPPED)
        for reason in ("no_model", "short_window", "bad_output", "already_forecast"):
            skipped.add_metric([reason], f.skipped.get(reason, 0))
        yield skipped
        yield from self._model_families()
        yield from self._evaluation_families()
        yield from self._calibration_families()
        yield from self._listed_symbol_families()
        if self.publisher is not None:
            yield from self._mqtt_families(self.publisher)

    def _model_families(self) -> Iterable[Metric]:
        model = self.server.current
        yield family(catalogue.MODEL_LOADED, 1 if model else 0)
        info = family(catalogue.MODEL_INFO)
        age = family(catalogue.MODEL_AGE)
        if model is not None:
            info.add_metric([model.version, model.trained_at], 1)
            model_age = model.age_s(time.time_ns() // 1_000_000)
            if model_age is not None:
                age.add_metric([], model_age)
        yield info
        yield age
        yield family(catalogue.MODEL_STALE, 1 if model is not None and self.server.stale() else 0)
        w = self.watcher
        failures = family(catalogue.MODEL_RELOAD_FAILURES)
        if w is not None:
            for reason, n in sorted(w.reload_failures_total.items()):
                failures.add_metric([reason], n)
        yield family(catalogue.MODEL_RELOADS, w.reload_successes_total if w else 0)
        yield failures
        yield family(catalogue.MODEL_REGISTRY_ERRORS, w.registry_errors_total if w else 0)

    def _evaluation_families(self) -> Iterable[Metric]:
        evaluator = self.forecaster.evaluator
        metrics = {
            "skill": catalogue.ONLINE_SKILL,
            "model_mae_bps": catalogue.ONLINE_MAE,
            "persistence_mae_bps": catalogue.ONLINE_PERSISTENCE_MAE,
            "coverage": catalogue.ONLINE_COVERAGE,
            "pinball_bps": catalogue.ONLINE_PINBALL,
            "n": catalogue.ONLINE_SCORED,
        }
        families = {key: family(metric) for key, metric in metrics.items()}
        if evaluator is not None:
            for figures in evaluator.aggregate():
                numbers = figures.as_numbers()
                for key, fam in families.items():
                    value = numbers[key]
                    if not math.isnan(value):
                        fam.add_metric([str(figures.horizon)], value)
        yield from families.values()

    def _calibration_families(self) -> Iterable[Metric]:
        """Raw and calibrated coverage over the evaluation window, summed over symbols."""
        f = self.forecaster
        yield family(catalogue.CALIBRATION_ENABLED, 1 if f.calibration else 0)
        coverage = family(catalogue.CALIBRATION_COVERAGE)
        below = family(catalogue.CALIBRATION_BELOW)
        realised = family(catalogue.CALIBRATION_REALISED)
        calibrator = f.calibrator
        for counts in calibrator.coverage.counts() if calibrator is not None else []:
            horizon = str(counts.horizon)
            realised.add_metric([horizon], counts.n)
            if counts.n == 0:
                continue
            for band, calibrated in (("raw", False), ("calibrated", True)):
                if {0.1, 0.9} <= set(counts.levels):
                    share = counts.coverage(0.1, 0.9, calibrated=calibrated)
                    if share is not None:
                        coverage.add_metric([horizon, band], share)
                shares = counts.calibrated_below if calibrated else counts.raw_below
                for level, n_below in zip(counts.levels, shares, strict=True):
                    below.add_metric([horizon, str(level), band], n_below / counts.n)
        yield coverage
        yield below
        yield realised

    def _listed_symbol_families(self) -> Iterable[Metric]:
        """Price and forecast per configured symbol: operators list them, so labels stay bounded."""
        close = family(catalogue.PRICE_CLOSE)
        forecast = family(catalogue.FORECAST_PRICE)
        bar_time = family(catalogue.FORECAST_BAR_TIME)
        horizons = set(self.settings.eval_horizons)
        for key in sorted(self._listed):
            exchange, symbol = key
            last = self.windows.last((exchange, symbol))
            if last is not None:
                close.add_metric([exchange, symbol], last.close)
            fc = self._latest.get((exchange, symbol))
            if fc is None:
                continue
            bar_time.add_metric([exchange, symbol], fc.bar_time_ms / 1000)
            for h_index, row in enumerate(fc.values):
                if h_index + 1 not in horizons:
                    continue
                for level, value in zip(fc.quantile_levels, row, strict=True):
                    forecast.add_metric([exchange, symbol, str(h_index + 1), str(level)], value)
        yield close
        yield forecast
        yield bar_time

    @staticmethod
    def _mqtt_families(publisher: MqttPublisher) -> Iterable[Metric]:
        yield family(catalogue.MQTT_PUBLISHED, publisher.published_total)
        yield family(catalogue.MQTT_DROPPED, publisher.dropped_total)
        yield family(catalogue.MQTT_ERRORS, publisher.errors_total)
        yield family(catalogue.MQTT_QUEUED, publisher.queued)
        yield family(catalogue.MQTT_UP, int(publisher.connected))
