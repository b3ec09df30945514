"""tickcast under Redis Sentinel: a primary, its replica and 3 sentinels (``redis-server
--sentinel``) on loopback ports, down-after 1 s.

Real recorded trades stream through a streamer whose ``TICKCAST_REDIS_URL`` is the
``redis+sentinel://`` URL of the three sentinels. The primary is killed mid-stream; the
sentinels promote the replica; the streamer buffers the bars meanwhile and writes them to the
promoted replica, where every closed minute ends up exactly once, as aggregated. The model
registry is read through the same URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fixtures.models import build_model
from support.faults import stored_exactly_once
from support.redis_topologies import MASTER_NAME, running_sentinels
from support.streamer import REPLAY_GRACE_MS, REPLAY_SPEED, running, settings_for, stored_bars
from support.waits import wait_until

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS
from streamer.io.model.registries import open_registry
from streamer.io.store import RedisBarStore
from streamer.io.store.packing import PackedSentinelConnection
from streamer.replay.data import Source, bundled_trade_paths, load_source
from streamer.replay.server import ReplayServer
from trainer.registry import RedisRegistry, build_manifest, sha256_hex

pytestmark = pytest.mark.integration

SYMBOLS = ("BTCUSDT", "ETHUSDT")  # real Binance BTCUSDT trades (tardis.dev), under two names


def trade_sources(minutes: int) -> list[Source]:
    path = next(p for p in bundled_trade_paths() if "tardis" in p.name)
    sources = []
    for symbol in SYMBOLS:
        source = load_source(path, symbol)
        sources.append(dataclasses.replace(source, klines=source.klines[:minutes]))
    return sources


async def test_the_streamer_follows_a_sentinel_failover_and_loses_no_bar(tmp_path: Path) -> None:
    sources = trade_sources(45)
    start = sources[0].first_open_ms + 5 * MINUTE_MS  # minutes 0-4 from the start-up backfill
    with running_sentinels(tmp_path) as group:
        assert group.url.startswith("redis+sentinel://") and f"/{MASTER_NAME}/" in group.url
        old = aioredis.Redis(port=group.primary.port)
        new = aioredis.Redis(port=group.replica.port)
        try:
            async with ReplayServer(sources, speed=REPLAY_SPEED, start_ms=start) as server:
                settings = settings_for(server, list(SYMBOLS), redis_url=group.url)
                streamer = Streamer(settings, clock=server.clock_ms)
                pool = streamer.store._client.connection_pool  # type: ignore[attr-defined]
                assert pool.connection_class is PackedSentinelConnection
                async with running(streamer):

                    async def streamed() -> bool:
                        bars, _ = await stored_bars(old, "binance", SYMBOLS[0])
                        return len(bars) >= 12

                    await wait_until(streamed, 20, "bars written to the first primary")
                    writer = streamer.writer
                    most_buffered = 0

                    async def sample() -> None:
                        nonlocal most_buffered
                        while True:
                            most_buffered = max(most_buffered, writer.buffered)
                            await asyncio.sleep(0.01)

                    sampler = asyncio.create_task(sample())
                    killed_at = time.monotonic()
                    group.primary.stop(kill=True)
                    await wait_until(lambda: not writer.connected, 10, "the writer to notice")
                    await wait_until(
                        lambda: writer.connected and writer.buffered == 0,
                        30,
                        "the buffer to drain into the promoted replica",
                    )
                    without_writes = time.monotonic() - killed_at
                    sampler.cancel()
                    assert group.master_port() == group.replica.port  # the sentinels promoted
                    assert most_buffered > 0
                    await server.wait_finished()
                    end = server.clock_ms()
                    problems: list[str] = []
                    promoted = f"redis://127.0.0.1:{group.replica.port}/0"

                    async def all_stored() -> bool:
                        nonlocal problems
                        problems = await stored_exactly_once(
                            promoted, sources, end, REPLAY_GRACE_MS
                        )
                        return not problems

                    try:
                        await wait_until(all_stored, 20, "every closed minute on the new primary")
                    except AssertionError as timed_out:
                        raise AssertionError(f"{timed_out}: {problems}") from None
                assert writer.dropped_total == 0
            assert await stored_exactly_once(promoted, sources, end, REPLAY_GRACE_MS) == []
            print(
                f"\nsentinel failover: {without_writes:.1f} s without writes, "
                f"{most_buffered} bars buffered at most, 0 lost"
            )
        finally:
            await old.aclose()
            await new.aclose()


async def test_the_registry_and_the_store_work_through_sentinel(tmp_path: Path) -> None:
    with running_sentinels(tmp_path) as group:
        data = build_model(version="s1", window=10, horizon=3)
        manifest = build_manifest(
            f"20230501T000000Z-{sha256_hex(data)[:8]}",
            data,
            {"window": 10, "horizon": 3, "quantiles": [0.1, 0.5, 0.9], "interval_s": 60},
            {"trained_at": "2023-05-01T00:00:00Z", "symbols": ["BTCUSDT"]},
            {"mean": {"model": {"pinball_bps": 4.0}}},
            "tickcast test",
            None,
        )
        writer = RedisRegistry(group.url)
        version = writer.publish(data, manifest, promote=True)
        writer.close()
        reader = open_registry(group.url)
        store = RedisBarStore.from_url(group.url)
        try:
            assert await reader.current() == version
            assert (await reader.fetch(version)).data == data
            assert await store.ping()
        finally:
            await reader.aclose()  # type: ignore[union-attr]
            await store.close()
