"""Fault: Redis is killed (SIGKILL) in the middle of a stream and restarted 10 s later.

Expected: the daemon keeps ingesting and forecasting from its in-memory windows, buffers the
closed bars, and writes every one of them once Redis is back; /readyz reports the outage
(503, ``store: false``) while /healthz stays 200; the metrics count it (write errors, Redis down,
bars buffered) and drop nothing.

Checked afterwards: every bar the exchange side sent is in Redis exactly once, equal to the
exchange's bar, and a forecast was made for every symbol at every minute close, outage
included. Redis runs with an fsync-always append-only file (the ``durable_redis`` fixture), so
the kill loses nothing Redis acknowledged. (The writer alone through an outage:
tests/integration/test_store_redis.py; /readyz on a stopped Redis: test_metrics_endpoint.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.faults import FaultRun
from support.servers import ServerProcess
from support.streamer import http_get, is_ready, model_registry, scrape
from support.waits import wait_until

from streamer.core.types import MINUTE_MS

pytestmark = pytest.mark.integration


async def test_redis_killed_mid_stream_buffers_and_writes_everything_once(
    durable_redis: ServerProcess, tmp_path: Path
) -> None:
    run = FaultRun(80)
    sink = run.sink
    async with run.replaying(durable_redis.url, model_registry(tmp_path)) as (server, streamer):
        port = streamer.ops.port
        stats = streamer.metrics.feeds[0]
        await wait_until(lambda: is_ready(port), 10, "/readyz 200 before the fault")
        await wait_until(lambda: server.clock_ms() >= run.start + 3 * MINUTE_MS, 10, "streaming")

        outage_s = 10.0
        durable_redis.stop(kill=True)

        async def outage_reported() -> bool:
            status, body = await http_get(port, "/readyz")
            return status == 503 and body["checks"]["store"] is False

        await wait_until(outage_reported, 10, "/readyz to report the Redis outage")
        trades_then, forecasts_then = stats.trades, len(sink.forecasts)
        await asyncio.sleep(outage_s)  # the fault's length, not a wait for a condition
        during = await scrape(port)
        assert (await http_get(port, "/healthz"))[0] == 200
        assert during["tickcast_redis_up"][()] == 0
        assert during["tickcast_redis_write_errors_total"][()] >= 1
        assert during["tickcast_redis_buffered_bars"][()] == streamer.writer.buffered > 30
        assert during["tickcast_redis_dropped_bars_total"][()] == 0
        assert stats.trades > trades_then + 100  # ingesting on
        assert len(sink.forecasts) > forecasts_then + 3 * 20  # forecasting on

        durable_redis.start()
        await wait_until(
            lambda: streamer.writer.buffered == 0 and streamer.writer.connected,
            20,
            "the buffer to drain into the restarted Redis",
        )
        await wait_until(lambda: is_ready(port), 10, "/readyz 200 after the restart")
        after = await scrape(port)
        assert after["tickcast_redis_up"][()] == 1
        end = await run.finish(server, durable_redis.url)

    assert streamer.writer.dropped_total == 0

    # from the last backfilled minute on: one forecast per minute, outage included
    await run.check(durable_redis.url, end)
