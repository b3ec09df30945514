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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streamer.core.types import Bar, Forecast
from streamer.core.windows import Windows
from streamer.io.forecaster import Forecaster, ForecastSink
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
            )
        self.forecaster = Forecaster(
            windows,
            self.server,
            self,
            eval_horizons=settings.eval_horizons,
            eval_window_ms=settings.eval_window_s * 1000,
            wall_clock_ms=wall_clock_ms,
            on_round=on_round,
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
        published = CounterMetricFamily(
            "tickcast_forecasts_published", "Forecasts handed to the sink (MQTT or console)"
        )
        published.add_metric([], f.published_total)
        yield published
        skipped = CounterMetricFamily(
            "tickcast_forecasts_skipped",
            "Symbols due at a minute close but not forecast, by reason",
            labels=["reason"],
        )
        for reason in ("no_model", "short_window", "bad_output", "already_forecast"):
            skipped.add_metric([reason], f.skipped.get(reason, 0))
        yield skipped
        yield from self._model_families()
        yield from self._evaluation_families()
        yield from self._listed_symbol_families()
        if self.publisher is not None:
            yield from self._mqtt_families(self.publisher)

    def _model_families(self) -> Iterable[Metric]:
        model = self.server.current
        loaded = GaugeMetricFamily("tickcast_model_loaded", "1 while a model serves")
        loaded.add_metric([], 1 if model else 0)
        yield loaded
        info = GaugeMetricFamily(
            "tickcast_model_info", "The serving model", labels=["version", "trained_at"]
        )
        age = GaugeMetricFamily("tickcast_model_age_seconds", "Seconds since the model trained")
        if model is not None:
            info.add_metric([model.version, model.trained_at], 1)
            model_age = model.age_s(time.time_ns() // 1_000_000)
            if model_age is not None:
                age.add_metric([], model_age)
        yield info
        yield age
        stale = GaugeMetricFamily("tickcast_model_stale", "1 when forecasts are marked stale")
        stale.add_metric([], 1 if model is not None and self.server.stale() else 0)
        yield stale
        w = self.watcher
        successes = CounterMetricFamily("tickcast_model_reloads", "Models swapped in")
        failures = CounterMetricFamily(
            "tickcast_model_reload_failures",
            "Candidate models refused (the old one kept serving), by reason",
            labels=["reason"],
        )
        registry_errors = CounterMetricFamily(
            "tickcast_model_registry_errors", "Failed reads of the model registry"
        )
        successes.add_metric([], w.reload_successes_total if w else 0)
        registry_errors.add_metric([], w.registry_errors_total if w else 0)
        if w is not None:
            for reason, n in sorted(w.reload_failures_total.items()):
                failures.add_metric([reason], n)
        yield successes
        yield failures
        yield registry_errors

    def _evaluation_families(self) -> Iterable[Metric]:
        evaluator = self.forecaster.evaluator
        names = {
            "skill": ("tickcast_online_skill", "1 - model MAE / persistence MAE (rolling)"),
            "model_mae_bps": ("tickcast_online_mae_bps", "Model median MAE, basis points"),
            "persistence_mae_bps": (
                "tickcast_online_persistence_mae_bps",
                "Persistence ('price stays') MAE, basis points",
            ),
            "coverage": ("tickcast_online_coverage_ratio", "Share inside the outer interval"),
            "pinball_bps": ("tickcast_online_pinball_bps", "Mean pinball loss, basis points"),
            "n": ("tickcast_online_scored", "Forecasts scored in the rolling window"),
        }
        families = {
            k: GaugeMetricFamily(name, doc, labels=["horizon"]) for k, (name, doc) in names.items()
        }
        if evaluator is not None:
            for figures in evaluator.aggregate():
                numbers = figures.as_numbers()
                for key, family in families.items():
                    value = numbers[key]
                    if not math.isnan(value):
                        family.add_metric([str(figures.horizon)], value)
        yield from families.values()

    def _listed_symbol_families(self) -> Iterable[Metric]:
        """Price and forecast per configured symbol: operators list them, so labels stay bounded."""
        close = GaugeMetricFamily(
            "tickcast_price_close", "Close of the last closed bar", labels=["exchange", "symbol"]
        )
        forecast = GaugeMetricFamily(
            "tickcast_forecast_price",
            "Latest forecast close at a quantile and horizon (minutes), issued a horizon ago "
            "for comparison with tickcast_price_close",
            labels=["exchange", "symbol", "horizon", "quantile"],
        )
        bar_time = GaugeMetricFamily(
            "tickcast_forecast_bar_time_seconds",
            "Open time of the bar the latest forecast was made at",
            labels=["exchange", "symbol"],
        )
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
        yield CounterMetricFamily(
            "tickcast_mqtt_published",
            "Messages acknowledged by the broker",
            value=publisher.published_total,
        )
        yield CounterMetricFamily(
            "tickcast_mqtt_dropped",
            "Messages dropped (queue full, or cut off unacknowledged)",
            value=publisher.dropped_total,
        )
        yield CounterMetricFamily(
            "tickcast_mqtt_errors",
            "Failed connects, lost connections, failed publishes",
            value=publisher.errors_total,
        )
        yield GaugeMetricFamily(
            "tickcast_mqtt_queued_messages",
            "Messages waiting to be published",
            value=publisher.queued,
        )
        yield GaugeMetricFamily(
            "tickcast_mqtt_up", "1 while connected to the broker", value=int(publisher.connected)
        )
