"""Fault: Redis is killed (SIGKILL) in the middle of a stream and restarted 10 s later.

Expected: the daemon keeps ingesting and forecasting from its in-memory windows, buffers the
closed bars, and writes every one of them once Redis is back; /readyz reports the outage
(503, ``store: false``) while /healthz stays 200; the metrics count it (write errors, Redis down,
bars buffered) and drop nothing.

Checked afterwards: every bar the exchange side sent is in Redis exactly once, equal to the
exchange's bar, and a forecast was made for every symbol at every minute close, outage
included. Redis runs with an fsync-always append-only file (``faultkit.durable_redis``), so the
kill loses nothing Redis acknowledged. (The writer alone through an outage:
tests/integration/test_store_redis.py; /readyz on a stopped Redis: test_metrics_endpoint.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import ServerProcess
from faultkit import (
    HORIZON,
    SYMBOLS,
    WINDOW,
    RecordingSink,
    durable_redis,
    http_get,
    kline_sources,
    missing_forecast_minutes,
    scrape,
    stored_exactly_once,
    wait_for,
    wait_until,
)
from fixtures.models import build_model, publish_dir
from harness import REPLAY_GRACE_MS, REPLAY_SPEED, running, settings_for

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration
__all__ = ["durable_redis"]  # the fixture, imported for pytest

OUTAGE_S = 10.0


async def test_redis_killed_mid_stream_buffers_and_writes_everything_once(
    durable_redis: ServerProcess, tmp_path: Path
) -> None:
    sources = kline_sources(80)
    first = sources[0].first_open_ms
    start = first + 20 * MINUTE_MS  # minutes 0-19 come from the start-up backfill
    registry = tmp_path / "registry"
    publish_dir(registry, "v1", build_model(version="v1", window=WINDOW, horizon=HORIZON))
    sink = RecordingSink()
    async with ReplayServer(sources, speed=REPLAY_SPEED, start_ms=start) as server:
        settings = settings_for(
            server, list(SYMBOLS), redis_url=durable_redis.url, model_registry=str(registry)
        )
        streamer = Streamer(settings, clock=server.clock_ms, sink=sink)
        async with running(streamer):
            port = streamer.ops.port
            stats = streamer.metrics.feeds[0]

            async def ready() -> bool:
                return (await http_get(port, "/readyz"))[0] == 200

            await wait_until(ready, 10, "/readyz 200 before the fault")
            await wait_for(lambda: server.clock_ms() >= start + 3 * MINUTE_MS, 10, "streaming")

            durable_redis.stop(kill=True)

            async def outage_reported() -> bool:
                status, body = await http_get(port, "/readyz")
                return status == 503 and body["checks"]["store"] is False

            await wait_until(outage_reported, 10, "/readyz to report the Redis outage")
            trades_then, forecasts_then = stats.trades, len(sink.forecasts)
            await asyncio.sleep(OUTAGE_S)  # the fault's length, not a wait for a condition
            during = await scrape(port)
            assert (await http_get(port, "/healthz"))[0] == 200
            assert during["tickcast_redis_up"][()] == 0
            assert during["tickcast_redis_write_errors_total"][()] >= 1
            assert during["tickcast_redis_buffered_bars"][()] == streamer.writer.buffered > 30
            assert during["tickcast_redis_dropped_bars_total"][()] == 0
            assert stats.trades > trades_then + 100  # ingesting on
            assert len(sink.forecasts) > forecasts_then + 3 * 20  # forecasting on

            durable_redis.start()
            await wait_for(
                lambda: streamer.writer.buffered == 0 and streamer.writer.connected,
                20,
                "the buffer to drain into the restarted Redis",
            )
            await wait_until(ready, 10, "/readyz 200 after the restart")
            after = await scrape(port)
            assert after["tickcast_redis_up"][()] == 1
            await server.wait_finished()
            end = server.clock_ms()

            async def all_stored() -> bool:
                problems = await stored_exactly_once(
                    durable_redis.url, sources, end, REPLAY_GRACE_MS
                )
                return not problems

            await wait_until(all_stored, 20, "every closed minute in Redis")
        assert streamer.writer.dropped_total == 0

    assert await stored_exactly_once(durable_redis.url, sources, end, REPLAY_GRACE_MS) == []
    last_closed = max(
        t for t in range(first, end, MINUTE_MS) if t + MINUTE_MS + REPLAY_GRACE_MS <= end
    )
    for symbol in SYMBOLS:
        # from the last backfilled minute on: one forecast per minute, outage included
        gaps = missing_forecast_minutes(sink.bar_times(symbol), start - MINUTE_MS, last_closed)
        assert gaps == [], (symbol, gaps)
