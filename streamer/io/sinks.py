"""Forecast sinks: MQTT for the service, lines for scripts and logs, a list for benches and tests.

Each takes ``Forecast`` values and skill figures from the forecaster; the MQTT and line sinks
write the payload of docs/contracts.md (``streamer.core.contracts.mqtt``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from streamer.core.contracts.mqtt import encode_forecast, encode_skill, forecast_topic, skill_topic
from streamer.core.types import Forecast
from streamer.io.forecaster import ForecastSink
from streamer.io.publisher import MqttPublisher

LatencyObserver = Callable[[float], None]
SENT_WAIT_S = 2.0  # the longest the skill step waits for a minute's forecasts to be ACKed


class MqttSink:
    """Forecasts and skill figures to MQTT; close-to-ACK latency observed per forecast topic."""

    def __init__(
        self,
        publisher: MqttPublisher,
        window_s: int,
        wall_clock_ms: Callable[[], int],
        observe_latency: LatencyObserver | None = None,
    ) -> None:
        self.publisher = publisher
        self.window_s = window_s
        self._wall_ms = wall_clock_ms
        self._observe = observe_latency
        self._closed_at: dict[str, float] = {}  # forecast topic -> when its bar closed
        publisher.on_published = self._on_published

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        topic = forecast_topic(self.publisher.options.prefix, forecast.exchange, forecast.symbol)
        self._closed_at[topic] = closed_at
        self.publisher.publish(topic, encode_forecast(forecast))

    def _on_published(self, topic: str, _enqueue_to_ack_s: float) -> None:
        closed_at = self._closed_at.pop(topic, None)
        if closed_at is not None and self._observe is not None:
            self._observe(time.monotonic() - closed_at)

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        topic = skill_topic(self.publisher.options.prefix, exchange, symbol)
        payload = encode_skill(
            exchange, symbol, figures, window_s=self.window_s, updated_at_ms=self._wall_ms()
        )
        self.publisher.publish(topic, payload)

    async def wait_sent(self) -> None:
        await self.publisher.wait_sent(SENT_WAIT_S)


class DiscardSink:
    """No destination configured: forecasts are still made and scored, just not sent. Also the
    base of the sinks that take forecasts only: skill figures dropped, nothing to wait for."""

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        return None

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        return None

    async def wait_sent(self) -> None:
        return None


class CollectingSink(DiscardSink):
    """Every forecast kept in order, for scripts and tests that read what a streamer made."""

    def __init__(self) -> None:
        self.forecasts: list[Forecast] = []

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        self.forecasts.append(forecast)


class LineSink(DiscardSink):
    """One JSON line per forecast (the MQTT payload), for runs without a terminal."""

    def __init__(
        self, out: TextIO | None = None, observe_latency: LatencyObserver | None = None
    ) -> None:
        self.out = out or sys.stdout
        self._observe = observe_latency

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        self.out.write(encode_forecast(forecast).decode() + "\n")
        self.out.flush()
        if self._observe is not None:
            self._observe(time.monotonic() - closed_at)


class FanOutSink:
    """Each forecast and skill figure to several sinks: the demo's console view and MQTT."""

    def __init__(self, *sinks: ForecastSink) -> None:
        self.sinks = sinks

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        for sink in self.sinks:
            sink.publish_forecast(forecast, closed_at)

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        for sink in self.sinks:
            sink.publish_skill(exchange, symbol, figures)

    async def wait_sent(self) -> None:
        for sink in self.sinks:
            await sink.wait_sent()
