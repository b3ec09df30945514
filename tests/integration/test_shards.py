"""Several shards at once, and resharding, as real processes on one replay, one Redis, one broker.

Each shard is the real daemon, ``python -m streamer run``, configured as a StatefulSet pod is:
``TICKCAST_SHARD_COUNT`` and the ordinal in ``HOSTNAME`` (``tickcast-streamer-N``), the pod name
as its instance and MQTT client id. Nine real series (the three bundled Binance kline files at
day offsets 0, 1 and 2, shifted side by side) are replayed under names that the stable hash
spreads over every shard of three and of four. The daemons run on the watermark clock (the
data is from 2023). Redis holds the first ``STREAM_FROM`` minutes before the shards start, as
a previous run left them, so the forecasts start at the first live minute close.

Three shards: every symbol is handled by exactly one of them (its ``/metrics`` shows only its
own symbols), every minute of every symbol is forecast once on MQTT, and Redis holds exactly the
aggregator's bars. Three to four: all three stop on SIGTERM mid-minute while the replay runs on,
four start; each symbol's new owner restores its window from Redis and backfills the gap over
REST, and Redis ends with every minute once. The minutes that closed while no shard ran are in
Redis (backfilled) but get no forecast: the forecaster forecasts a symbol when a bar becomes its
newest, and the backfilled ones are older than the first live bar by the time they arrive. The
new owner's forecasts start at the first minute it closes live (or the last backfilled one, if
the backfill lands first), and no minute is forecast twice. The test prints, per symbol, the
minutes of replay time between the old owner's last forecast and the new owner's first.

The Redis engine is a fixture parameter: one redis-server, and a Redis Cluster of 3 primaries
and 3 replicas (``support.redis_topologies``, a ``redis+cluster://`` URL); Redis is read back
with a plain redis-py client in the engine's key layout (``support.faults.stored_exactly_once``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.faults import stored_exactly_once, wait_stored_exactly_once
from support.mqtt import Subscriber, subscribed
from support.redis_topologies import running_cluster
from support.servers import ServerProcess, free_port, redis_process, serve
from support.streamer import (
    Samples,
    daemon,
    daemon_env,
    expected_bars,
    http_get,
    log_tail,
    model_file,
    scrape,
    seed_bars,
)
from support.waits import wait_until

from streamer.app import SHUTDOWN_TIMEOUT_S
from streamer.core.contracts.mqtt import forecast_topic
from streamer.core.timefmt import parse_iso_ms
from streamer.core.types import MINUTE_MS, floor_minute
from streamer.replay.data import Source, bundled_kline_paths, load_source
from streamer.replay.server import ReplayServer
from streamer.replay.timeline import shift_kline

pytestmark = pytest.mark.integration

SPEED = 20.0  # a data minute every 3 s
GRACE_MS = 10_000  # data time
STREAM_FROM = 20  # minutes 0-19 are in Redis before the shards start
DOWN_MINUTES = 3  # resharding: data minutes from the old shards' stop to the new ones' start
WINDOW = 10  # the fixture model's window
# spread by crc32 over 3 shards as 3/3/3 and over 4 as 3/3/1/2 (checked in the test)
NAMES = (
    "S09USDT",
    "S20USDT",
    "S28USDT",
    "S03USDT",
    "S21USDT",
    "S36USDT",
    "S11USDT",
    "S24USDT",
    "S32USDT",
)
START_TIMEOUT_S = 60.0  # several interpreters starting at once on a loaded 2-core machine
POD = "tickcast-streamer"


# --- the Redis engine: a fixture parameter ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RedisEngine:
    """What the shards are pointed at: a ``redis://`` or ``redis+cluster://`` URL."""

    kind: str
    url: str


REDIS_ENGINES = ["single", "cluster"]


@pytest.fixture(params=REDIS_ENGINES)
def redis_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisEngine]:
    """One redis-server, or a Redis Cluster of 3 primaries and 3 replicas."""
    if request.param == "cluster":
        if request.node.get_closest_marker("integration") is None:
            pytest.fail("a test that starts a Redis Cluster must be marked integration")
        with running_cluster(tmp_path / "cluster") as cluster:
            yield RedisEngine("cluster", cluster.url)
        return
    for server in serve(request, redis_process(tmp_path)):
        yield RedisEngine("single", server.url)


@dataclasses.dataclass(frozen=True)
class Deployment:
    """Where the shards run: the Redis engine and the broker they write to, the model file
    they serve, and the directory of their logs."""

    engine: RedisEngine
    mosquitto: ServerProcess
    model: Path
    logs: Path


@pytest.fixture
def deployment(
    redis_engine: RedisEngine, mosquitto_server: ServerProcess, tmp_path: Path
) -> Deployment:
    return Deployment(redis_engine, mosquitto_server, model_file(tmp_path), tmp_path)


# --- the data ---------------------------------------------------------------------------------


def shifted_sources(minutes: int) -> list[Source]:
    """Nine real series side by side: bundled file ``i % 3`` from day ``i // 3`` on, its
    timestamps moved to the files' common start (prices and volumes verbatim)."""
    bundled = [load_source(p) for p in sorted(bundled_kline_paths())]
    start = bundled[0].first_open_ms
    sources = []
    for i, name in enumerate(NAMES):
        base = bundled[i % len(bundled)]
        klines = base.klines[(i // len(bundled)) * 1440 :][:minutes]
        shift = start - klines[0].open_time_ms
        moved = tuple(shift_kline(k, shift, 0) for k in klines)
        sources.append(dataclasses.replace(base, symbol=name, klines=moved))
    return sources


def owner(symbol: str, count: int) -> int:
    """The shard of ``symbol``, computed here as the docs state it (crc32 modulo the count)."""
    return zlib.crc32(f"binance:{symbol}".encode()) % count


# --- the shards -------------------------------------------------------------------------------


@dataclasses.dataclass
class Shard:
    ordinal: int
    count: int
    metrics_port: int
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def symbols(self) -> set[str]:
        return {s for s in NAMES if owner(s, self.count) == self.ordinal}


@contextlib.asynccontextmanager
async def shards(
    count: int,
    server: ReplayServer,
    engine: RedisEngine,
    mqtt_url: str,
    model: Path,
    logs: Path,
) -> AsyncIterator[list[Shard]]:
    """``count`` daemons as the pods of a StatefulSet with ``replicas: count``; killed on exit
    unless stopped."""
    group = [Shard(i, count, free_port(), logs / f"shard-{count}-{i}.log") for i in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for shard in group:
            env = daemon_env(
                server,
                NAMES,
                grace_ms=str(GRACE_MS),
                redis_url=engine.url,
                mqtt_url=mqtt_url,
                model_registry=str(model),
                shard_count=str(count),
                instance=f"{POD}-{shard.ordinal}",
                mqtt_client_id=f"{POD}-{shard.ordinal}",
                metrics_port=str(shard.metrics_port),
                reconnect_initial_s="0.05",
                reconnect_max_s="0.2",
            )
            env["HOSTNAME"] = f"{POD}-{shard.ordinal}"  # the StatefulSet ordinal is the shard
            shard.proc = await stack.enter_async_context(daemon(env, shard.log))
        yield group


def alive(group: list[Shard]) -> None:
    for shard in group:
        assert shard.proc is not None
        assert shard.proc.returncode is None, log_tail(shard.log)


async def readiness(shard: Shard) -> dict[str, Any]:
    """The checks of ``/readyz`` (empty while the ops server is not up yet)."""
    try:
        _, body = await http_get(shard.metrics_port, "/readyz")
    except OSError:
        return {}
    return dict(body["checks"]) if isinstance(body, dict) else {}


async def wait_started(group: list[Shard]) -> None:
    """Every shard past start-up (model loaded, Redis and MQTT connected), its feed still
    refused: the replay clock then starts when they all connect, within a moment."""

    async def started() -> bool:
        alive(group)
        checks = [await readiness(s) for s in group]
        return all(c and all(v for k, v in c.items() if k != "feeds") for c in checks)

    await wait_until(started, START_TIMEOUT_S, "every shard started")


async def wait_ready(group: list[Shard]) -> None:
    async def ready() -> bool:
        alive(group)
        checks = [await readiness(s) for s in group]
        return all(c and all(c.values()) for c in checks)

    await wait_until(ready, START_TIMEOUT_S, "every shard ready (feeds connected)")


async def stop(group: list[Shard]) -> None:
    """SIGTERM to every shard at once, as a StatefulSet update does; each must stop cleanly."""
    for shard in group:
        assert shard.proc is not None
        shard.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + 10):
        codes = [await s.proc.wait() for s in group if s.proc is not None]
    assert codes == [0] * len(group), [log_tail(s.log) for s in group]


def symbols_in_metrics(samples: Samples) -> set[str]:
    return {dict(labels)["symbol"] for labels in samples.get("tickcast_price_close", {})}


async def check_metrics(group: list[Shard]) -> None:
    """Each shard's ``/metrics`` shows exactly its own symbols, and together they cover all."""
    seen: list[set[str]] = []
    for shard in group:
        shown = symbols_in_metrics(await scrape(shard.metrics_port))
        assert shown == shard.symbols, (shard.ordinal, shown)
        seen.append(shown)
    assert sorted(s for shown in seen for s in shown) == sorted(NAMES)


# --- what Redis and MQTT hold -----------------------------------------------------------------


def minutes(first_ms: int, last_ms: int) -> list[int]:
    return list(range(first_ms, last_ms + 1, MINUTE_MS))


def forecast_times(sub: Subscriber, symbol: str, since: float = 0.0) -> list[int]:
    """Bar times of the forecasts of ``symbol`` that arrived at ``since`` (monotonic) or later,
    in arrival order."""
    topic = forecast_topic("tickcast", "binance", symbol)
    return [
        parse_iso_ms(json.loads(m.payload)["bar_time"])
        for m in sub.messages
        if m.topic == topic and m.at >= since
    ]


async def seed(engine: RedisEngine, sources: list[Source]) -> None:
    """The bars a previous run left: minutes 0..STREAM_FROM-1 of every source."""
    await seed_bars(engine.url, [b for s in sources for b in expected_bars(s)[:STREAM_FROM]])


def check_spread() -> None:
    for count in (3, 4):
        assert {owner(s, count) for s in NAMES} == set(range(count)), count


async def per_shard_totals(group: list[Shard], counter: str) -> list[float]:
    """Each shard's ``counter`` on its ``/metrics``, summed over the labels."""
    return [sum((await scrape(s.metrics_port))[counter].values()) for s in group]


@dataclasses.dataclass(frozen=True)
class ShardRun:
    """The replay the shards of a deployment run on, and the subscriber that records their
    forecasts."""

    deployment: Deployment
    sources: list[Source]
    server: ReplayServer
    sub: Subscriber

    @property
    def first_live(self) -> int:
        """The first minute streamed live: the ones before it are in Redis at the start."""
        return self.sources[0].first_open_ms + STREAM_FROM * MINUTE_MS

    @property
    def last(self) -> int:
        """On the watermark clock the data's last minute never closes: the one before it."""
        return self.sources[0].klines[-2].open_time_ms

    @property
    def end(self) -> int:
        """The watermark once the replay has ended: its last trade, 45 s into the last minute."""
        return self.sources[0].klines[-1].open_time_ms + 45_000

    @property
    def redis_url(self) -> str:
        return self.deployment.engine.url

    def shards(self, count: int) -> contextlib.AbstractAsyncContextManager[list[Shard]]:
        d = self.deployment
        return shards(count, self.server, d.engine, d.mosquitto.url, d.model, d.logs)

    async def redis_problems(self) -> list[str]:
        """``stored_exactly_once`` at the end: what is wrong in Redis, whatever the engine."""
        return await stored_exactly_once(self.redis_url, self.sources, self.end, GRACE_MS)

    async def finish(self, group: list[Shard]) -> None:
        """Wait for the replay to end, for Redis to hold every closed minute once and for every
        symbol's forecast of the last closed minute; then check the shards' ``/metrics``."""
        await self.server.wait_finished()
        await wait_stored_exactly_once(
            self.redis_url,
            self.sources,
            self.end,
            GRACE_MS,
            30,
            "every closed minute in Redis once",
        )
        await wait_until(
            lambda: all(self.last in forecast_times(self.sub, s) for s in NAMES),
            15,
            "the last forecasts",
        )
        await check_metrics(group)


@contextlib.asynccontextmanager
async def three_shards_streaming(
    deployment: Deployment, minutes: int
) -> AsyncIterator[tuple[ShardRun, list[Shard]]]:
    """The first ``minutes`` of the sources, Redis seeded, a subscriber, the replay and three
    shards started together on it."""
    check_spread()
    sources = shifted_sources(minutes)
    await seed(deployment.engine, sources)
    start = sources[0].first_open_ms + STREAM_FROM * MINUTE_MS
    async with (
        subscribed(deployment.mosquitto.port, ("tickcast/forecast/#",)) as sub,
        ReplayServer(sources, speed=SPEED, start_ms=start) as server,
    ):
        run = ShardRun(deployment, sources, server, sub)
        # refused until all three are up, so that none misses the first live minute
        server.refuse_connections(3600)
        async with run.shards(3) as group:
            await wait_started(group)
            server.refuse_connections(0)
            await wait_ready(group)
            yield run, group


@pytest.mark.timeout(180)
async def test_three_shards_split_the_symbols(deployment: Deployment) -> None:
    async with three_shards_streaming(deployment, STREAM_FROM + 8) as (run, group):
        await run.finish(group)
        published = sum(await per_shard_totals(group, "tickcast_forecasts_published_total"))
        await stop(group)

    assert await run.redis_problems() == []
    for symbol in NAMES:
        assert forecast_times(run.sub, symbol) == minutes(run.first_live, run.last), symbol
    assert published == len(NAMES) * len(minutes(run.first_live, run.last))


@pytest.mark.timeout(300)
async def test_resharding_three_to_four_while_the_replay_runs(deployment: Deployment) -> None:
    async with three_shards_streaming(deployment, STREAM_FROM + 22) as (run, old):
        sub, server, first_live, last = run.sub, run.server, run.first_live, run.last

        # stop mid-minute, once every symbol's forecast of the minute before is out
        def mid_minute_all_forecast() -> bool:
            now = server.clock_ms()
            before = floor_minute(now) - MINUTE_MS
            return (
                floor_minute(now) >= first_live + 3 * MINUTE_MS
                and 20_000 <= now % MINUTE_MS < 40_000
                and all(before in forecast_times(sub, s) for s in NAMES)
            )

        await wait_until(mid_minute_all_forecast, 60, "mid-minute, every forecast out")
        stopped_in = floor_minute(server.clock_ms())
        await stop(old)
        switched_at = time.monotonic()  # forecasts from here on are the new owners'
        old_last = {s: max(forecast_times(sub, s)) for s in NAMES}
        # no shard for a few minutes: more than a pod restart takes, so that the gap to
        # backfill spans whole minutes whatever this machine's speed
        await wait_until(
            lambda: server.clock_ms() >= stopped_in + DOWN_MINUTES * MINUTE_MS, 30, "downtime"
        )

        async with run.shards(4) as new:
            await wait_ready(new)
            ready_minute = floor_minute(server.clock_ms())
            assert ready_minute < last, "the replay ended before the new shards were up"
            await run.finish(new)
            backfilled = await per_shard_totals(new, "tickcast_backfill_bars_total")
            await stop(new)

    assert await run.redis_problems() == []
    assert all(n > 0 for n in backfilled), backfilled  # every new owner filled its gap
    gaps = {}
    for symbol in NAMES:
        times = forecast_times(sub, symbol)
        assert len(times) == len(set(times)), symbol  # no minute forecast twice
        before = [t for t in times if t <= old_last[symbol]]
        after = forecast_times(sub, symbol, since=switched_at)
        assert old_last[symbol] == stopped_in - MINUTE_MS, symbol
        assert before == minutes(first_live, old_last[symbol]), symbol
        # the new owner: at the first minute it closed live, or the last backfilled one; the
        # window it forecast from needs WINDOW bars, more than it saw live: restored from Redis
        assert after[0] <= ready_minute + MINUTE_MS, symbol
        assert (after[0] - stopped_in) // MINUTE_MS + 1 < WINDOW, symbol
        assert after == minutes(after[0], last), symbol
        gaps[symbol] = (after[0] - old_last[symbol]) // MINUTE_MS - 1
    print(
        f"\nresharding 3 -> 4 ({deployment.engine.kind} Redis): stopped in minute "
        f"{(stopped_in - first_live) // MINUTE_MS} of the live replay; minutes without a "
        f"forecast between the old owner's last and the new owner's first: {gaps}; "
        f"bars backfilled per new shard: {backfilled}"
    )
