"""Forecasting end to end: replay exchange, streamer, real Redis and real Mosquitto.

A subscriber must receive a schema-valid forecast for every symbol at every minute close; a
model swap in the middle of the stream misses and duplicates no minute; a corrupt model is
refused while the old one keeps serving; the online skill figures appear on /metrics.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fixtures.models import build_model, publish_dir
from support.mqtt import subscribed
from support.servers import ServerProcess
from support.streamer import (
    REPLAY_GRACE_MS,
    REPLAY_SPEED,
    SYMBOLS,
    kline_sources,
    last_closed_minute,
    replay_streamer,
    running,
    scrape,
)
from support.waits import wait_until

from streamer.core.contracts.mqtt import validate_forecast_payload
from streamer.core.timefmt import iso_seconds
from streamer.core.types import MINUTE_MS
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

WINDOW, HORIZON = 10, 5


async def test_forecasts_every_minute_with_swap_and_refusal(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    sources = kline_sources(40)
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

    async with (
        subscribed(mosquitto_server.port) as subscriber,
        ReplayServer(sources, speed=REPLAY_SPEED, start_ms=start) as server,
    ):
        streamer = replay_streamer(
            server,
            redis_url=redis_server.url,
            mqtt_url=mosquitto_server.url,
            model_registry=str(registry),
            model_poll_s=0.05,
            eval_horizons=[1, 5],
        )
        async with running(streamer):
            await wait_until(lambda: server.clock_ms() >= swap_at, 30, "minute 28:30")
            publish_dir(registry, "v2", v2)
            await wait_until(lambda: server.clock_ms() >= corrupt_at, 30, "minute 33")
            publish_dir(registry, "v3", v1, model_bytes=v1[: len(v1) // 2])  # truncated
            async with asyncio.timeout(60):
                await server.wait_finished()
            # the replay clock stops at the end of the data
            last_closed = last_closed_minute(first, server.clock_ms(), REPLAY_GRACE_MS)
            await wait_until(
                lambda: subscriber.has_forecasts_of(last_closed, SYMBOLS),
                30,
                "every symbol's forecast of the last closed minute",
            )
            metrics = await scrape(streamer.ops.port)
            watcher = streamer.serving.watcher
            assert watcher is not None
            refusals = dict(watcher.reload_failures_total)
        await wait_until(lambda: subscriber.status()[-1:] == [b"offline"], 5, "offline at the stop")

    for payload in subscriber.forecasts():
        assert validate_forecast_payload(payload) == [], payload
    per_symbol = subscriber.forecasts_by_symbol()
    # the window was warmed over REST: the first forecast is at the last backfilled minute,
    # then one at every minute close, none missing, none twice
    expected_times = [iso_seconds(t) for t in range(start - MINUTE_MS, last_closed + 1, MINUTE_MS)]
    for symbol in SYMBOLS:
        times = [p["bar_time"] for p in per_symbol[symbol]]
        assert times == expected_times, symbol
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
    skill_topics = {m.topic for m in subscriber.under("tickcast/skill/")}
    assert skill_topics == {f"tickcast/skill/binance/{s}" for s in SYMBOLS}
    statuses = subscriber.status()
    assert statuses[0] == b"online" and statuses[-1] == b"offline"
