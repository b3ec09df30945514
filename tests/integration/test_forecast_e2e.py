"""Forecasting end to end: replay exchange, streamer, real Redis and real Mosquitto.

A subscriber must receive a schema-valid forecast for every symbol at every minute close; a
model swap in the middle of the stream misses and duplicates no minute; a corrupt model is
refused while the old one keeps serving; the online skill figures appear on /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from conftest import ServerProcess
from fixtures.models import build_model, publish_dir
from harness import REPLAY_GRACE_MS, REPLAY_SPEED, running, settings_for
from prometheus_client.parser import text_string_to_metric_families

from streamer.app import Streamer
from streamer.core.payloads import validate_forecast_payload
from streamer.core.types import MINUTE_MS
from streamer.replay.data import bundled_kline_paths, load_source
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
WINDOW, HORIZON = 10, 5


class Subscriber:
    """Collects every message under ``tickcast/#`` from the broker."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="test-subscriber") as client:
            await client.subscribe("tickcast/#", qos=1)
            self.subscribed.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                self.messages.append((str(message.topic), payload))

    def forecasts(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages if t.startswith("tickcast/forecast/")]


async def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_forecasts_every_minute_with_swap_and_refusal(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    sources = []
    for symbol in SYMBOLS:
        full = load_source(next(p for p in bundled_kline_paths() if symbol in p.name))
        sources.append(dataclasses.replace(full, klines=full.klines[:40]))
    first = sources[0].first_open_ms
    start = first + 20 * MINUTE_MS
    swap_at = first + 28 * MINUTE_MS + 30_000
    corrupt_at = first + 33 * MINUTE_MS

    registry = tmp_path / "registry"
    trained_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    v1 = build_model(version="v1", window=WINDOW, horizon=HORIZON, trained_at=trained_at)
    v2 = build_model(
        version="v2", window=WINDOW, horizon=HORIZON, band=0.002, trained_at=trained_at
    )
    publish_dir(registry, "v1", v1)

    subscriber = Subscriber(mosquitto_server.port)
    sub_task = asyncio.create_task(subscriber.run())
    await asyncio.wait_for(subscriber.subscribed.wait(), 10)

    async with ReplayServer(sources, speed=REPLAY_SPEED, start_ms=start) as server:
        settings = settings_for(
            server,
            list(SYMBOLS),
            redis_url=redis_server.url,
            mqtt_url=mosquitto_server.url,
            model_registry=str(registry),
            model_poll_s=0.05,
            eval_horizons=[1, 5],
        )
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):

            async def operator() -> None:
                # the replay clock has no event to wait on: poll it
                while server.clock_ms() < swap_at:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                publish_dir(registry, "v2", v2)
                while server.clock_ms() < corrupt_at:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                publish_dir(registry, "v3", v1, model_bytes=v1[: len(v1) // 2])  # truncated

            await asyncio.wait_for(asyncio.gather(operator(), server.wait_finished()), 60)
            end = server.clock_ms()
            last_closed = max(
                t for t in range(first, end, MINUTE_MS) if t + MINUTE_MS + REPLAY_GRACE_MS <= end
            )

            def complete() -> bool:
                got = {(f["symbol"], f["bar_time"]) for f in subscriber.forecasts()}
                return all((s, _iso(last_closed)) in got for s in SYMBOLS)

            for _ in range(600):
                if complete():
                    break
                await asyncio.sleep(0.05)
            metrics = await scrape(streamer.ops.port)  # type: ignore[arg-type]
            watcher = streamer.serving.watcher
            assert watcher is not None
            refusals = dict(watcher.reload_failures_total)
        sub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub_task

    forecasts = subscriber.forecasts()
    for payload in forecasts:
        assert validate_forecast_payload(payload) == [], payload
    per_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payload in forecasts:
        per_symbol[payload["symbol"]].append(payload)
    # the window was warmed over REST: the first forecast is at the last backfilled minute,
    # then one at every minute close, none missing, none twice
    expected_times = [_iso(t) for t in range(start - MINUTE_MS, last_closed + 1, MINUTE_MS)]
    for symbol in SYMBOLS:
        times = [p["bar_time"] for p in per_symbol[symbol]]
        assert times[: len(expected_times)] == expected_times, symbol
        versions = [p["model"]["version"] for p in per_symbol[symbol]]
        # one switch from v1 to v2, mid-stream; the truncated v3 never served
        switch = versions.index("v2")
        assert 0 < switch < len(versions) - 3
        assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
        assert all(p["stale"] is False and p["exchange"] == "binance" for p in per_symbol[symbol])
        assert len(per_symbol[symbol][0]["median"]) == HORIZON
    assert refusals.get("sha256", 0) + refusals.get("corrupt", 0) >= 1
    # the online evaluation is live on /metrics and on the skill topics
    scored = metrics["tickcast_online_scored"][(("horizon", "1"),)]
    assert scored > 0
    assert (("horizon", "1"),) in metrics["tickcast_online_skill"]
    assert metrics["tickcast_model_reloads_total"][()] == 2  # v1 at start, v2 mid-stream
    skill_topics = {t for t, _ in subscriber.messages if t.startswith("tickcast/skill/")}
    assert skill_topics == {f"tickcast/skill/binance/{s}" for s in SYMBOLS}
    statuses = [p for t, p in subscriber.messages if t == "tickcast/status/tickcast"]
    assert statuses[0] == b"online" and statuses[-1] == b"offline"


def _iso(ms: int) -> str:
    from streamer.core.payloads import iso_seconds

    return iso_seconds(ms)
