"""An MQTT subscriber that records what the daemon published, and the broker's retained state.

``Subscriber`` stays subscribed across broker restarts (it reconnects at once and counts its
sessions), and keeps every message with its retained flag and arrival time.
``retained_messages`` reads what a new subscriber gets at once, deterministically: it publishes
a marker after subscribing and reads until the marker, which the broker delivers after the
retained messages it queued for the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from streamer.core.contracts.mqtt import forecast_topic, status_topic
from streamer.core.timefmt import iso_seconds, parse_iso_ms
from support.waits import wait_until

PREFIX = "tickcast"
STATUS = status_topic(PREFIX, "tickcast")
RECONNECT_S = 0.02


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() on arrival


class Subscriber:
    """Every message under ``topics``; ``client_options`` go to ``aiomqtt.Client`` (username,
    password, tls_params, identifier, ...)."""

    def __init__(
        self, port: int, topics: Sequence[str] = (f"{PREFIX}/#",), **client_options: Any
    ) -> None:
        self.port = port
        self.topics = tuple(topics)
        self.client_options = client_options
        self.messages: list[Received] = []
        self.sessions = 0  # subscriptions made: 1, then one more per broker restart

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, **self.client_options) as c:
                    for topic in self.topics:
                        await c.subscribe(topic, qos=1)
                    self.sessions += 1
                    async for m in c.messages:
                        assert isinstance(m.payload, bytes)
                        self.messages.append(
                            Received(str(m.topic), m.payload, m.retain, time.monotonic())
                        )
            except aiomqtt.MqttError:
                await asyncio.sleep(RECONNECT_S)  # the broker is away: try again

    def on(self, topic: str) -> list[bytes]:
        """The payloads received on ``topic``, in order."""
        return [m.payload for m in self.messages if m.topic == topic]

    def under(self, prefix: str) -> list[Received]:
        """The messages whose topic starts with ``prefix``."""
        return [m for m in self.messages if m.topic.startswith(prefix)]

    def status(self) -> list[bytes]:
        return self.on(STATUS)

    def forecasts(
        self, symbol: str | None = None, exchange: str = "binance"
    ) -> list[dict[str, Any]]:
        """Forecast payloads, decoded: of one symbol, or of all."""
        if symbol is None:
            return [json.loads(m.payload) for m in self.under(f"{PREFIX}/forecast/")]
        return [json.loads(p) for p in self.on(forecast_topic(PREFIX, exchange, symbol))]

    def bar_times(self, symbol: str, exchange: str = "binance") -> list[int]:
        """Epoch ms of the bar of each forecast of ``symbol``, in arrival order."""
        return [parse_iso_ms(f["bar_time"]) for f in self.forecasts(symbol, exchange)]

    def forecast_symbols(self) -> set[str]:
        return {m.topic.rsplit("/", 1)[1] for m in self.under(f"{PREFIX}/forecast/")}

    def forecasts_by_symbol(self) -> dict[str, list[dict[str, Any]]]:
        """Every forecast payload, decoded, under the symbol it names, in arrival order."""
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for payload in self.forecasts():
            grouped[payload["symbol"]].append(payload)
        return grouped

    def has_forecasts_of(self, bar_time_ms: int, symbols: Iterable[str]) -> bool:
        """Whether each of ``symbols`` has a forecast of the bar opening at ``bar_time_ms``."""
        got = {(f["symbol"], f["bar_time"]) for f in self.forecasts()}
        return all((s, iso_seconds(bar_time_ms)) in got for s in symbols)


@contextlib.asynccontextmanager
async def subscribed(
    port: int, topics: Sequence[str] = (f"{PREFIX}/#",), **client_options: Any
) -> AsyncIterator[Subscriber]:
    """A running ``Subscriber``, entered once its first subscription is in place."""
    subscriber = Subscriber(port, topics, **client_options)
    task = asyncio.create_task(subscriber.run(), name="test-subscriber")
    try:
        await wait_until(lambda: subscriber.sessions >= 1, 10, "the test subscriber", task=task)
        yield subscriber
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def retained_messages(
    port: int, topic: str = f"{PREFIX}/#", timeout_s: float = 10.0, **client_options: Any
) -> dict[str, bytes]:
    """The broker's retained messages under ``topic``, as a new subscriber gets them.

    The broker queues the retained messages of a subscription when it handles the SUBSCRIBE, so
    a marker published by the same client afterwards (QoS 1, delivered in order) comes after
    all of them: no quiet period to guess."""
    marker = f"tickcast-test/marker/{uuid.uuid4().hex}"
    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, **client_options) as client:
        await client.subscribe(topic, qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"end", qos=1)
        async with asyncio.timeout(timeout_s):
            async for m in client.messages:
                if str(m.topic) == marker:
                    return got
                if m.retain and isinstance(m.payload, bytes):
                    got[str(m.topic)] = m.payload
    raise AssertionError("the broker closed the connection before the marker came back")
