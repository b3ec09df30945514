"""tickcast under Redis Sentinel: a primary, its replica and 3 sentinels (``redis-server
--sentinel``) on loopback ports, down-after 1 s.

Real recorded trades stream through a streamer whose ``TICKCAST_REDIS_URL`` is the
``redis+sentinel://`` URL of the three sentinels. The primary is killed mid-stream; the
sentinels promote the replica; the streamer buffers the bars meanwhile and writes them to the
promoted replica, where every closed minute ends up exactly once, as aggregated. The model
registry is read through the same URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fixtures.models import build_model
from support.faults import replay_stored, stored_exactly_once
from support.manifests import dated_manifest
from support.redis_topologies import MASTER_NAME, kill_primary_under, running_sentinels
from support.streamer import REPLAY_GRACE_MS, replaying, stored_bars, tardis_source
from support.waits import wait_until

from streamer.core.types import MINUTE_MS
from streamer.io.model.registries import open_registry
from streamer.io.store import RedisBarStore
from streamer.io.store.packing import PackedSentinelConnection
from trainer.registry import RedisRegistry

pytestmark = pytest.mark.integration

SYMBOLS = ("BTCUSDT", "ETHUSDT")  # real Binance BTCUSDT trades (tardis.dev), under two names


async def test_the_streamer_follows_a_sentinel_failover_and_loses_no_bar(tmp_path: Path) -> None:
    sources = [tardis_source(45, symbol) for symbol in SYMBOLS]
    start = sources[0].first_open_ms + 5 * MINUTE_MS  # minutes 0-4 from the start-up backfill
    with running_sentinels(tmp_path) as group:
        assert group.url.startswith("redis+sentinel://") and f"/{MASTER_NAME}/" in group.url
        old = aioredis.Redis(port=group.primary.port)
        new = aioredis.Redis(port=group.replica.port)
        promoted = f"redis://127.0.0.1:{group.replica.port}/0"
        try:
            async with replaying(sources, start, group.url) as (server, streamer):
                pool = streamer.store._client.connection_pool  # type: ignore[attr-defined]
                assert pool.connection_class is PackedSentinelConnection

                async def streamed() -> bool:
                    bars, _ = await stored_bars(old, "binance", SYMBOLS[0])
                    return len(bars) >= 12

                await wait_until(streamed, 20, "bars written to the first primary")
                writer = streamer.writer
                failover = await kill_primary_under(writer, lambda: group.primary.stop(kill=True))
                assert group.master_port() == group.replica.port  # the sentinels promoted
                assert failover.most_buffered > 0
                end = await replay_stored(
                    server, promoted, sources, "every closed minute on the new primary"
                )
            assert writer.dropped_total == 0
            assert await stored_exactly_once(promoted, sources, end, REPLAY_GRACE_MS) == []
            print(
                f"\nsentinel failover: {failover.without_writes_s:.1f} s without writes, "
                f"{failover.most_buffered} bars buffered at most, 0 lost"
            )
        finally:
            await old.aclose()
            await new.aclose()


async def test_the_registry_and_the_store_work_through_sentinel(tmp_path: Path) -> None:
    with running_sentinels(tmp_path) as group:
        data = build_model(version="s1", window=10, horizon=3)
        writer = RedisRegistry(group.url)
        version = writer.publish(data, dated_manifest(1, data, 10, 3), promote=True)
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
