"""Forecast sinks: MQTT for the service, plain lines for scripts and logs.

Both take ``Forecast`` values and skill figures from the forecaster; the payload format is the
one of DESIGN.md section 3.2 (``streamer.core.payloads``) for both.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from streamer.core.payloads import encode_forecast, encode_skill, skill_topic
from streamer.core.types import Forecast
from streamer.io.publisher import MqttPublisher


class MqttSink:
    def __init__(
        self, publisher: MqttPublisher, window_s: int, wall_clock_ms: Callable[[], int]
    ) -> None:
        self.publisher = publisher
        self.window_s = window_s
        self._wall_ms = wall_clock_ms

    def publish_forecast(self, forecast: Forecast) -> None:
        self.publisher.publish_forecast(forecast)

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        topic = skill_topic(self.publisher.options.prefix, exchange, symbol)
        payload = encode_skill(
            exchange, symbol, figures, window_s=self.window_s, updated_at_ms=self._wall_ms()
        )
        self.publisher.publish(topic, payload)


class LineSink:
    """One JSON line per forecast (the DESIGN 3.2 payload), for runs without a terminal."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def publish_forecast(self, forecast: Forecast) -> None:
        self.out.write(encode_forecast(forecast).decode() + "\n")
        self.out.flush()

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        return None
