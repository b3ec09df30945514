"""Forecasting end to end: replay exchange, streamer, real Redis and real Mosquitto.

A subscriber must receive a schema-valid forecast for every symbol at every minute close; a
model swap in the middle of the stream misses and duplicates no minute; a corrupt model is
refused while the old one keeps serving; the online skill figures appear on /metrics.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.models import publish_dir
from support.servers import ServerProcess
from support.streamer import SYMBOLS, KlineReplay, fresh_model, model_registry, scrape
from support.waits import wait_until

from streamer.core.contracts.mqtt import validate_forecast_payload
from streamer.core.timefmt import iso_seconds
from streamer.core.types import MINUTE_MS

pytestmark = pytest.mark.integration

WINDOW, HORIZON = 10, 5


async def test_forecasts_every_minute_with_swap_and_refusal(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    replay = KlineReplay(40, stream_from=20)
    swap_at = replay.at(28, 30_000)
    corrupt_at = replay.at(33)

    v1 = fresh_model("v1", WINDOW, HORIZON)
    v2 = fresh_model("v2", WINDOW, HORIZON, band=0.002)
    registry = model_registry(tmp_path, "v1", v1)

    async with replay.publishing(
        redis_server, mosquitto_server, registry, model_poll_s=0.05, eval_horizons=[1, 5]
    ) as (subscriber, server, streamer):
        await wait_until(lambda: server.clock_ms() >= swap_at, 30, "minute 28:30")
        publish_dir(registry, "v2", v2)
        await wait_until(lambda: server.clock_ms() >= corrupt_at, 30, "minute 33")
        publish_dir(registry, "v3", v1, model_bytes=v1[: len(v1) // 2])  # truncated
        last_closed = await replay.forecast_to_the_end(server, subscriber)
        metrics = await scrape(streamer.ops.port)
        watcher = streamer.serving.watcher
        assert watcher is not None
        refusals = dict(watcher.reload_failures_total)

    for payload in subscriber.forecasts():
        assert validate_forecast_payload(payload) == [], payload
    per_symbol = subscriber.forecasts_by_symbol()
    # the window was warmed over REST: the first forecast is at the last backfilled minute,
    # then one at every minute close, none missing, none twice
    first_forecast = replay.start - MINUTE_MS
    expected_times = [iso_seconds(t) for t in range(first_forecast, last_closed + 1, MINUTE_MS)]
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
