"""Restart on the watermark clock (replays): SIGTERM or SIGKILL mid-minute, a few minutes of
downtime, then a second real process. The downtime and the interrupted minute must be
repaired over REST, so that every bar the exchange side sent is in Redis exactly once.
"""

import signal
from pathlib import Path

import pytest
from conftest import ServerProcess
from faultkit import SYMBOLS, kline_sources, stored_exactly_once, wait_for, wait_until
from test_restart import (
    GRACE_MS,
    SPEED,
    STREAM_FROM,
    daemon,
    daemon_env,
    model_file,
    seed_redis,
    subscribed,
)

from streamer.core.types import MINUTE_MS, floor_minute
from streamer.replay.server import ReplayServer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_watermark_restart_as_subprocesses(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path, sig
) -> None:
    sources = kline_sources(STREAM_FROM + 12)
    first = sources[0].first_open_ms
    start = first + STREAM_FROM * MINUTE_MS
    await seed_redis(redis_server.url, sources)
    model = model_file(tmp_path)
    async with (
        subscribed(mosquitto_server.port) as sub,
        ReplayServer(sources, speed=SPEED, start_ms=start) as server,
    ):
        env = daemon_env(server, redis_server.url, mosquitto_server.url, model)
        async with daemon(env, tmp_path / "run1.log") as proc:
            await wait_for(lambda: all(len(sub.forecasts(s)) >= 3 for s in SYMBOLS), 30, "run 1")
            await wait_for(lambda: 20_000 <= server.clock_ms() % MINUTE_MS < 25_000, 5, "mid")
            stopped = floor_minute(server.clock_ms())
            proc.send_signal(sig)
            await proc.wait()
        await wait_for(lambda: server.clock_ms() >= stopped + 3 * MINUTE_MS, 10, "downtime")
        async with daemon(env, tmp_path / "run2.log") as proc:
            await server.wait_finished()
            end = sources[0].klines[-1].open_time_ms + 45_000

            async def ok() -> bool:
                return not await stored_exactly_once(redis_server.url, sources, end, GRACE_MS)

            await wait_until(ok, 15, "every bar the exchange sent stored exactly once")
    # after the second run's ordered stop: nothing lost, nothing twice, nothing left incomplete
    assert await stored_exactly_once(redis_server.url, sources, end, GRACE_MS) == []
