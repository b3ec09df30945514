"""tickcast on a real Redis Cluster: 3 primaries and 3 replicas of ``redis-server`` on loopback
ports, joined by ``redis-cli --cluster create``.

* The bar store writes each round as one script call per hash slot in one pipeline, with the
  cluster key layout (the window as a hash tag); what it wrote is read back key by key, by the
  streamer's restore and by the trainer's Redis import.
* The model registry: the trainer publishes, promotes, rolls back and prunes in transactions
  over several keys (one slot thanks to the hash tag), the streamer's reader fetches and hears
  the announcements.
* Real recorded trades stream through a streamer into the cluster; the primary that holds one
  symbol is killed mid-stream, its replica takes over, and Redis ends with exactly the pure
  aggregator's bars: none lost, none twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.models import build_model
from redis.crc import key_slot
from support.faults import replay_stored, stored_exactly_once
from support.manifests import dated_manifest
from support.redis_topologies import Cluster, kill_primary_under, running_cluster
from support.streamer import (
    REPLAY_GRACE_MS,
    comparable,
    expected_bars,
    plain_client,
    replaying,
    seed_bars,
    stored_bars,
    tardis_source,
)
from support.waits import wait_until

from streamer.core.contracts import registry as contract
from streamer.core.contracts.redis_bars import bars_key, incomplete_key
from streamer.core.redis_url import parse_redis_url
from streamer.core.types import MINUTE_MS, Bar
from streamer.io.model.registries import RedisRegistry as RegistryReader
from streamer.io.redis_clients import async_client
from streamer.io.store import RedisBarStore
from streamer.io.store.packing import PackedConnection
from trainer.data import HistoryStore
from trainer.pipeline import pull_redis
from trainer.registry import RedisRegistry, sha256_hex

pytestmark = pytest.mark.integration

# Real Binance BTCUSDT trades (tardis.dev recording), replayed under three names whose windows
# hash to the three primaries' slot ranges (0-5460, 5461-10922, 10923-16383).
SYMBOLS = ("ETHUSDT", "BTCUSDT", "DOTUSDT")
VICTIM = "BTCUSDT"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that kill nothing."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def window_slot(symbol: str) -> int:
    return key_slot(bars_key("binance", symbol, cluster=True).encode())


def test_the_window_is_the_hash_tag_so_each_windows_keys_share_a_slot() -> None:
    for symbol in (*SYMBOLS, "SOLUSDT", "BTC-USD"):
        assert key_slot(bars_key("binance", symbol, True).encode()) == key_slot(
            incomplete_key("binance", symbol, True).encode()
        )
    # the single-server keys have no hash tag: their braces in the docs are a placeholder
    assert "{" not in bars_key("binance", "BTCUSDT")
    assert key_slot(bars_key("binance", "BTCUSDT").encode()) != key_slot(
        incomplete_key("binance", "BTCUSDT").encode()
    )
    # and the test symbols are spread over the three primaries' slot ranges
    assert sorted(window_slot(s) * 3 // 16384 for s in SYMBOLS) == [0, 1, 2]


async def test_rounds_over_many_slots_are_written_repaired_restored_and_imported(
    cluster: Cluster, tmp_path: Path
) -> None:
    symbols = [f"S{i:03d}USDT" for i in range(300)]
    t0 = 1_682_553_600_000
    minutes = 5

    def bar(symbol: str, minute: int, complete: bool = True) -> Bar:
        price = 100.0 + minute + len(symbol)
        t = t0 + minute * MINUTE_MS
        return Bar("binance", symbol, t, price, price + 2, price - 1, price + 1, 3.5, 7, complete)

    store = RedisBarStore.from_url(cluster.url, cap=4)
    client = plain_client(cluster.url)  # reads each window key by key, in the cluster layout
    try:
        assert store.cluster
        # one round per minute, every symbol, minute 2 partial (a feed outage); each round twice,
        # as a writer retrying a round that was applied does
        for minute in range(minutes):
            round_ = [bar(s, minute, complete=minute != 2) for s in symbols]
            await store.write(round_)
            await store.write(round_)
        # the store's connections pack with hiredis, on every primary
        primaries = store._client.get_primaries()  # type: ignore[union-attr]
        assert len(primaries) == 3
        assert {type(c) for n in primaries for c in n._connections} == {PackedConnection}

        expected = [bar("S007USDT", m, complete=m != 2) for m in range(1, minutes)]  # the cap
        stored, marks = await stored_bars(client, "binance", "S007USDT")
        assert comparable(stored) == comparable(expected)
        assert marks == {t0 + 2 * MINUTE_MS}
        # a window's keys are the hash-tagged ones; the plain ones do not exist
        assert await client.exists(bars_key("binance", "S007USDT")) == 0

        await store.repair([bar(s, 2) for s in symbols])  # backfill replaced the partial bars
        for symbol in (symbols[0], symbols[-1]):
            restored = await store.load("binance", symbol, 10)
            assert comparable(restored) == comparable([bar(symbol, m) for m in range(1, minutes)])
            assert all(b.complete for b in restored)
            assert (await stored_bars(client, "binance", symbol))[1] == set()

        # a round is one batch per primary: count what each connection sends
        sends: list[tuple[str, int]] = []

        class Counting(PackedConnection):
            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                sends.append((f"{self.host}:{self.port}", len(command)))
                await super().send_packed_command(command, check_health)

        counting = RedisBarStore(
            async_client(parse_redis_url(cluster.url), connection_class=Counting), cap=4
        )
        try:
            await counting.write([bar(s, minutes) for s in symbols])  # caches the slot map
            sends.clear()
            await counting.write([bar(s, minutes + 1) for s in symbols])
        finally:
            await counting.close()
        assert sorted(node for node, _ in sends) == sorted(n.name for n in primaries)

        history = HistoryStore(tmp_path / "history")
        assert pull_redis(history, cluster.url, None, lambda _: None) == 300 * 4
        assert len(history.load("binance", "S123USDT")) == 4
    finally:
        await store.close()
        await client.aclose()


async def test_the_model_registry_publishes_promotes_and_announces_on_a_cluster(
    cluster: Cluster,
) -> None:
    writer = RedisRegistry(cluster.url)
    reader = RegistryReader.from_url(cluster.url)
    wake = asyncio.Event()
    listening = asyncio.create_task(reader.listen(wake))
    try:
        await wait_until(lambda: reader.subscribed, 10, "the reader to subscribe")
        wake.clear()
        models = {n: build_model(version=f"m{n}", window=10, horizon=3) for n in (1, 2, 3)}
        v1 = writer.publish(models[1], dated_manifest(1, models[1], 10, 3), promote=True)
        assert await wait_until_set(wake), "no announcement of the promotion"
        assert await reader.current() == v1
        artifact = await reader.fetch(v1)
        assert artifact.data == models[1] and artifact.sha256 == sha256_hex(models[1])

        v2 = writer.publish(models[2], dated_manifest(2, models[2], 10, 3), promote=False)
        v3 = writer.publish(models[3], dated_manifest(3, models[3], 10, 3), promote=False)
        assert writer.manifest(v2)["parent_version"] == v1
        wake.clear()
        writer.promote(v3)
        assert await wait_until_set(wake)
        assert await reader.current() == v3
        assert writer.rollback() == v1
        assert await reader.current() == v1
        assert writer.prune(keep=1) == [v2]
        assert [m["version"] for m in writer.list_versions()] == [v3, v1]
        data, manifest = writer.fetch(v3)
        assert data == models[3] and manifest["status"] == "rolled_back"

        # every key is in the one slot of the cluster prefix's hash tag
        keys = [k.decode() for k in writer.client.scan_iter(match="*tickcast:models*")]
        assert sorted(keys) == sorted(
            [
                contract.CLUSTER_KEYS.current,
                contract.CLUSTER_KEYS.versions,
                *(contract.CLUSTER_KEYS.onnx(v) for v in (v1, v3)),
                *(contract.CLUSTER_KEYS.manifest(v) for v in (v1, v3)),
            ]
        )
        assert {key_slot(k.encode()) for k in keys} == {key_slot(b"{tickcast:models}")}
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await reader.aclose()
        writer.close()


async def wait_until_set(event: asyncio.Event, timeout_s: float = 10.0) -> bool:
    try:
        await wait_until(event.is_set, timeout_s, "the event")
    except AssertionError:
        return False
    return True


async def test_a_killed_primary_is_replaced_and_no_bar_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    sources = [tardis_source(50, symbol) for symbol in SYMBOLS]
    first = sources[0].first_open_ms
    seeded = 10  # minutes a previous run left in the cluster: the streamer restores them
    start = first + seeded * MINUTE_MS
    with running_cluster(tmp_path / "cluster") as cluster:
        client = plain_client(cluster.url)
        await seed_bars(cluster.url, [b for s in sources for b in expected_bars(s)[:seeded]])
        victim = cluster.primary_of_slot(window_slot(VICTIM))
        replica = cluster.replica_of(victim)
        try:
            async with replaying(sources, start, cluster.url) as (server, streamer):
                for source in sources:  # restored from the cluster, not fetched again
                    window = streamer.windows.tail(("binance", source.symbol), 1000)
                    assert comparable(window[:seeded]) == comparable(expected_bars(source)[:seeded])
                assert streamer.metrics.backfill_bars.labels("binance")._value.get() == 0

                async def victim_written() -> bool:
                    bars, _ = await stored_bars(client, "binance", VICTIM)
                    return len(bars) >= seeded + 8

                await wait_until(victim_written, 20, "bars streamed into the cluster")
                writer = streamer.writer
                failover = await kill_primary_under(writer, lambda: victim.stop(kill=True))
                assert cluster.primary_of_slot(window_slot(VICTIM)) is replica
                assert failover.most_buffered > 0
                end = await replay_stored(
                    server, cluster.url, sources, "every closed minute in the cluster"
                )
            assert writer.dropped_total == 0
            assert await stored_exactly_once(cluster.url, sources, end, REPLAY_GRACE_MS) == []
            print(
                f"\ncluster failover: {failover.without_writes_s:.1f} s without writes, "
                f"{failover.most_buffered} bars buffered at most, 0 lost, 0 doubled"
            )
        finally:
            await client.aclose()
