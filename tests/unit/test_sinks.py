"""Forecast sinks: LineSink writes the DESIGN 3.2 payload as one line; MqttSink queues it on
the forecast topic and observes close-to-ACK latency when the publisher's ACK hook fires.

The publisher is a real (unconnected) MqttPublisher that also records what it is given; its
``on_published`` hook is called the way its connection task calls it after a broker ACK.
Forecast values come from real Binance bars (tests/fixtures/bars) and a 0.1 % band.
"""

from __future__ import annotations

import io
import json
import time

import pytest
from fixtures.models import real_bars

from streamer.core.contracts.mqtt import forecast_payload, validate_forecast_payload
from streamer.core.types import MINUTE_MS, Forecast
from streamer.io.publisher import MqttOptions, MqttPublisher
from streamer.io.sinks import LineSink, MqttSink

WALL_MS = 1_747_710_000_000


def real_forecast(symbol: str = "BTCUSDT", index: int = -1) -> Forecast:
    bar = real_bars(symbol)[index]
    c = bar.close
    values = tuple((c * (1 - 0.001 * h), c, c * (1 + 0.001 * h)) for h in (1, 2, 3))
    return Forecast(
        "binance", symbol, bar.open_time_ms, c, (0.1, 0.5, 0.9), values, "v9",
        "2025-08-18T18:27:00Z", stale=False, issued_at_ms=bar.open_time_ms + MINUTE_MS + 42,
    )  # fmt: skip


class RecordingPublisher(MqttPublisher):
    def __init__(self, options: MqttOptions) -> None:
        super().__init__(options)
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))
        super().publish(topic, payload)


def test_line_sink_writes_the_design_payload_as_one_json_line() -> None:
    out = io.StringIO()
    latencies: list[float] = []
    sink = LineSink(out, observe_latency=latencies.append)
    fc, fc2 = real_forecast("BTCUSDT"), real_forecast("ETHUSDT")
    closed_at = time.monotonic() - 0.25
    sink.publish_forecast(fc, closed_at)
    sink.publish_forecast(fc2, time.monotonic())
    sink.publish_skill("binance", "BTCUSDT", {1: {"n": 1.0, "skill": 0.1}})  # not printed
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and out.getvalue().endswith("\n")
    obj = json.loads(lines[0])
    assert validate_forecast_payload(obj) == []
    assert obj == forecast_payload(fc)
    assert obj["bar_time"] == "2025-05-20T03:59:00Z"
    assert obj["median"] == [fc.last_close] * 3
    assert obj["quantiles"] == {"0.1": [r[0] for r in fc.values], "0.9": [r[2] for r in fc.values]}
    assert json.loads(lines[1])["symbol"] == "ETHUSDT"
    assert len(latencies) == 2 and 0.25 <= latencies[0] < 5.0


async def test_mqtt_sink_queues_forecast_and_observes_latency_on_ack() -> None:
    publisher = RecordingPublisher(MqttOptions(url="mqtt://127.0.0.1:1", prefix="tc"))
    latencies: list[float] = []
    sink = MqttSink(publisher, 3600, lambda: WALL_MS, latencies.append)
    fc = real_forecast("BTCUSDT")
    closed_at = time.monotonic() - 0.5
    sink.publish_forecast(fc, closed_at)
    topic = "tc/forecast/binance/BTCUSDT"
    assert [t for t, _ in publisher.sent] == [topic]
    assert json.loads(publisher.sent[0][1]) == forecast_payload(fc)
    assert publisher.queued == 1
    assert latencies == []  # nothing until the broker ACKs
    assert publisher.on_published is not None
    publisher.on_published(topic, 0.001)  # what the connection task calls after the PUBACK
    assert len(latencies) == 1 and 0.5 <= latencies[0] < 5.0
    publisher.on_published(topic, 0.001)  # a republish after reconnect: no second observation
    assert len(latencies) == 1


async def test_mqtt_sink_skill_payload_and_no_latency_for_skill_acks() -> None:
    publisher = RecordingPublisher(MqttOptions(url="mqtt://127.0.0.1:1", prefix="tc"))
    latencies: list[float] = []
    sink = MqttSink(publisher, 3600, lambda: WALL_MS, latencies.append)
    sink.publish_skill("binance", "ETHUSDT", {5: {"n": 3.0, "skill": float("nan")}})
    topic, payload = publisher.sent[0]
    assert topic == "tc/skill/binance/ETHUSDT"
    assert json.loads(payload) == {
        "schema": 1,
        "exchange": "binance",
        "symbol": "ETHUSDT",
        "window_s": 3600,
        "horizons": {"5": {"n": 3.0, "skill": None}},
        "updated_at": "2025-05-20T03:00:00.000Z",
    }
    assert publisher.on_published is not None
    publisher.on_published(topic, 0.002)
    assert latencies == []


async def test_mqtt_sink_without_observer_still_publishes() -> None:
    publisher = RecordingPublisher(MqttOptions(url="mqtt://127.0.0.1:1"))
    sink = MqttSink(publisher, 60, lambda: WALL_MS)
    sink.publish_forecast(real_forecast(), time.monotonic())
    assert publisher.on_published is not None
    publisher.on_published("tickcast/forecast/binance/BTCUSDT", 0.001)
    assert [t for t, _ in publisher.sent] == ["tickcast/forecast/binance/BTCUSDT"]


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_line_sink_defaults_to_stdout(symbol: str, capsys: pytest.CaptureFixture[str]) -> None:
    LineSink().publish_forecast(real_forecast(symbol), time.monotonic())
    assert json.loads(capsys.readouterr().out)["symbol"] == symbol
