"""Fault: Mosquitto is stopped in the middle of a stream and started again 3 s later.

Expected: the daemon goes on forecasting into its bounded queue while the broker is away and
reports it (/readyz ``mqtt: false``, ``tickcast_mqtt_up`` 0); once the broker is back it
reconnects, says ``online`` again on the retained status topic, publishes what it queued,
and republishes the newest payload of any topic with nothing newer queued, so the restarted
broker (no persistence: it lost every retained message) again holds the newest forecast per
symbol. Publishing resumes at every minute close and nothing is dropped.

The status topic goes ``offline`` and back: a Mosquitto stopped with SIGTERM sends the last
will of each connected client (ours: ``offline``, retained) to the subscribers still connected
before it exits, and the daemon says ``online`` again on reconnecting. (The last will on process
death: tests/integration/test_publisher.py; the publisher alone across broker restarts:
test_publisher.py::test_broker_restart_resumes_and_republishes_the_newest_per_topic.)

Checked afterwards: every bar the exchange side sent is in Redis exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import ServerProcess
from faultkit import (
    HORIZON,
    SYMBOLS,
    WINDOW,
    http_get,
    kline_sources,
    missing_forecast_minutes,
    scrape,
    stored_exactly_once,
    wait_for,
    wait_until,
)
from fixtures.models import build_model, publish_dir
from harness import REPLAY_GRACE_MS, running, settings_for

from streamer.app import Streamer
from streamer.core.payloads import iso_seconds
from streamer.core.types import MINUTE_MS
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

SPEED = 100.0  # a data minute every 0.6 s
STATUS = "tickcast/status/tickcast"


class Subscriber:
    """Stays subscribed to ``tickcast/#`` across broker restarts, reconnecting at once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, bytes, bool]] = []
        self.sessions = 0

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, timeout=2) as client:
                    await client.subscribe("tickcast/#", qos=1)
                    self.sessions += 1
                    async for m in client.messages:
                        assert isinstance(m.payload, bytes)
                        self.messages.append((str(m.topic), m.payload, m.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.02)

    def forecasts(self, symbol: str) -> list[dict[str, Any]]:
        topic = f"tickcast/forecast/binance/{symbol}"
        return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def status(self) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == STATUS]


@contextlib.asynccontextmanager
async def subscribed(port: int) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(port)
    task = asyncio.create_task(subscriber.run(), name="test-subscriber")
    try:
        await wait_for(lambda: subscriber.sessions == 1, 10, "the test subscriber")
        yield subscriber
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def retained(port: int) -> dict[str, bytes]:
    """What a new subscriber gets at once: the broker's retained messages."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("tickcast/#", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for m in client.messages:
                    if m.retain and isinstance(m.payload, bytes):
                        got[str(m.topic)] = m.payload
    return got


def ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def test_broker_restart_resumes_publishing_and_restores_the_retained_state(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    sources = kline_sources(44)
    first = sources[0].first_open_ms
    start = first + 20 * MINUTE_MS
    registry = tmp_path / "registry"
    publish_dir(registry, "v1", build_model(version="v1", window=WINDOW, horizon=HORIZON))
    async with (
        subscribed(mosquitto_server.port) as sub,
        ReplayServer(sources, speed=SPEED, start_ms=start) as server,
    ):
        settings = settings_for(
            server,
            list(SYMBOLS),
            redis_url=redis_server.url,
            mqtt_url=mosquitto_server.url,
            model_registry=str(registry),
        )
        streamer = Streamer(settings, clock=server.clock_ms)
        publisher = streamer.publisher
        assert publisher is not None
        async with running(streamer):
            port = streamer.ops.port
            await wait_for(
                lambda: all(len(sub.forecasts(s)) >= 3 for s in SYMBOLS), 20, "forecasts"
            )
            assert sub.status() == [b"online"]
            before_stop = {s: sub.forecasts(s)[-1]["bar_time"] for s in SYMBOLS}

            mosquitto_server.stop()  # SIGTERM: it sends our will, then exits

            async def mqtt_down() -> bool:
                status, body = await http_get(port, "/readyz")
                return status == 503 and body["checks"] == {
                    "feeds": True, "store": True, "mqtt": False, "model": True,
                }  # fmt: skip

            await wait_until(mqtt_down, 10, "/readyz to report MQTT down")
            made = streamer.serving.forecaster.published_total
            await wait_for(
                lambda: streamer.serving.forecaster.published_total >= made + 3 * len(SYMBOLS),
                10,
                "forecasts made while the broker is away",
            )
            down = await scrape(port)
            assert down["tickcast_mqtt_up"][()] == 0
            assert down["tickcast_mqtt_queued_messages"][()] == publisher.queued > 0

            mosquitto_server.start()
            await wait_for(
                lambda: publisher.connected and publisher.queued == 0,
                15,
                "reconnect and drain",
            )
            assert publisher.connections_total == 2
            await wait_until(lambda: _ready(port), 10, "/readyz 200 once MQTT is back")
            newest_before = await scrape(port)
            state = await retained(mosquitto_server.port)
            newest_after = await scrape(port)
            assert state[STATUS] == b"online"
            for symbol in SYMBOLS:
                key = (("exchange", "binance"), ("symbol", symbol))
                low = newest_before["tickcast_forecast_bar_time_seconds"][key] * 1000
                high = newest_after["tickcast_forecast_bar_time_seconds"][key] * 1000
                kept = json.loads(state[f"tickcast/forecast/binance/{symbol}"])
                assert low <= ms(kept["bar_time"]) <= high, symbol
                assert f"tickcast/skill/binance/{symbol}" in state
            resumed_at = server.clock_ms()
            await server.wait_finished()
            end = server.clock_ms()
            last_closed = max(
                t for t in range(first, end, MINUTE_MS) if t + MINUTE_MS + REPLAY_GRACE_MS <= end
            )
            await wait_for(
                lambda: all(
                    sub.forecasts(s)[-1]["bar_time"] == iso_seconds(last_closed) for s in SYMBOLS
                ),
                10,
                "the last minute's forecasts",
            )
        # the ordered stop after the test says offline, and nothing was ever dropped
        await wait_for(lambda: sub.status()[-1:] == [b"offline"], 5, "offline at the stop")
        assert publisher.dropped_total == 0
        assert publisher.errors_total >= 1

    # online; the will at the broker's stop; online on reconnecting; offline at our stop
    assert sub.status() == [b"online", b"offline", b"online", b"offline"]
    for symbol in SYMBOLS:
        times = [ms(f["bar_time"]) for f in sub.forecasts(symbol)]
        # every minute, once; minutes published while the test subscriber itself was
        # reconnecting may be missing, but only inside the outage
        gaps = missing_forecast_minutes(times, start - MINUTE_MS, last_closed)
        assert all(ms(before_stop[symbol]) < t < resumed_at for t in gaps), (symbol, gaps)
        after_restart = [t for t in times if t >= resumed_at - MINUTE_MS]
        assert missing_forecast_minutes(after_restart, after_restart[0], last_closed) == []
    assert await stored_exactly_once(redis_server.url, sources, end, REPLAY_GRACE_MS) == []


async def _ready(port: int | None) -> bool:
    return (await http_get(port, "/readyz"))[0] == 200
