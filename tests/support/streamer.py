"""A real Streamer against the replay exchange, in this process or as ``python -m streamer run``,
and reading back what it stored in Redis and exposed on its ops endpoint.

The expected bars are ``expected_bars``: the pure aggregator over the very trades the replay
exchange serves, which for the bundled klines equal the recorded klines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis
from fixtures.models import build_model, build_model_v2, publish_dir
from prometheus_client.parser import text_string_to_metric_families

from streamer.app import Streamer
from streamer.core.bars import BarAggregator
from streamer.core.contracts.redis_bars import bars_key, decode_bar, incomplete_key
from streamer.core.types import MINUTE_MS, Bar, Trade
from streamer.io.forecaster import ForecastSink
from streamer.io.store import RedisBarStore
from streamer.replay.data import Source, bundled_kline_paths, bundled_trade_paths, load_source
from streamer.replay.server import Faults, ReplayServer
from streamer.settings import Settings, load_settings
from support.cli import bare_env
from support.mqtt import Subscriber, subscribed
from support.servers import REPO, ServerProcess
from support.waits import wait_until

# The streamer's clock is the replay clock, i.e. data time of what the server has *sent*; the
# streamer processes a little behind it. Real time lag x speed must stay within the grace, so
# tests replay at a finite speed with a grace scaled to it: 200x with 60 s of data-time grace
# allows 300 ms of real processing lag. (Live, the wall clock and 2 s grace play these roles.)
REPLAY_SPEED = 200.0
REPLAY_GRACE_MS = 60_000
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")  # the bundled real Binance klines (2023-04-27..)
WINDOW, HORIZON = 10, 3  # the fixture model's: forecasts start once 10 bars are stored
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


# --- the replay exchange's data ------------------------------------------------------------


def kline_source(symbol: str, minutes: int | None = None) -> Source:
    """The bundled real Binance klines of ``symbol``: the first ``minutes``, or all."""
    full = load_source(next(p for p in bundled_kline_paths() if p.name.startswith(symbol)))
    return full if minutes is None else dataclasses.replace(full, klines=full.klines[:minutes])


def tardis_source(minutes: int, symbol: str = "BTCUSDT") -> Source:
    """The first ``minutes`` of the densest real trade recording: tardis.dev's Binance USD-M
    BTCUSDT trades (about 80 a minute), under the name ``symbol``."""
    full = load_source(next(p for p in bundled_trade_paths() if "tardis" in p.name), symbol)
    return dataclasses.replace(full, klines=full.klines[:minutes])


def kline_sources(minutes: int, symbols: Sequence[str] = SYMBOLS) -> list[Source]:
    """The first ``minutes`` of the bundled real Binance klines, per symbol."""
    return [kline_source(symbol, minutes) for symbol in symbols]


def expected_bars(source: Source, exchange: str = "binance") -> list[Bar]:
    """What the pure aggregator makes of every trade of the source, every minute closed."""
    agg = BarAggregator(exchange, grace_ms=0)
    bars: list[Bar] = []
    for _, trades in source.minutes():
        for t in trades:
            bars += agg.add(
                Trade(
                    exchange,
                    source.symbol,
                    t.trade_id,
                    t.ts_ms,
                    float(t.price),
                    float(t.qty),
                    "sell" if t.buyer_is_maker else "buy",
                )
            )
    return bars + agg.on_clock(source.end_ms)


def closed_bars(source: Source, end_ms: int, grace_ms: int) -> list[Bar]:
    """The source's bars whose minute had closed (end + grace) by replay time ``end_ms``."""
    return [b for b in expected_bars(source) if b.close_time_ms + grace_ms <= end_ms]


def last_closed_minute(first_ms: int, end_ms: int, grace_ms: int) -> int:
    """Open time of the newest minute from ``first_ms`` on that had closed by ``end_ms``."""
    return max(t for t in range(first_ms, end_ms, MINUTE_MS) if t + MINUTE_MS + grace_ms <= end_ms)


def comparable(bars: Iterable[Bar]) -> list[tuple[object, ...]]:
    return [(b.open_time_ms, b.open, b.high, b.low, b.close, b.volume, b.trades) for b in bars]


def kline_values(source: Source, start_ms: int, end_ms: int) -> list[tuple[object, ...]]:
    """The source's recorded klines opening in [start_ms, end_ms) as ``comparable`` gives bars:
    read from the recording as they are, not through the code under test."""
    return [
        (k.open_time_ms, float(k.open), float(k.high), float(k.low), float(k.close),
         float(k.volume), k.trades)
        for k in source.klines
        if start_ms <= k.open_time_ms < end_ms
    ]  # fmt: skip


def model_file(directory: Path, version: str = "v1") -> Path:
    """The fixture model (``WINDOW``, ``HORIZON``) as a single-file registry."""
    model = directory / "model.onnx"
    model.write_bytes(build_model(version=version, window=WINDOW, horizon=HORIZON))
    return model


def model_registry(directory: Path, version: str = "v1", model: bytes | None = None) -> Path:
    """A directory registry serving ``model`` as ``version``; by default the fixture model
    (``WINDOW``, ``HORIZON``)."""
    registry = directory / "registry"
    if model is None:
        model = build_model(version=version, window=WINDOW, horizon=HORIZON)
    publish_dir(registry, version, model)
    return registry


def fresh_model(
    version: str, window: int, horizon: int, contract: int = 1, **options: Any
) -> bytes:
    """The fixture model of ``contract`` trained now, so that its forecasts are not stale
    (``options``: more arguments of ``build_model``/``build_model_v2``)."""
    trained_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    build = build_model_v2 if contract == 2 else build_model
    return build(version=version, window=window, horizon=horizon, trained_at=trained_at, **options)


# --- a Streamer in this process -------------------------------------------------------------


def settings_for(server: ReplayServer, symbols: Sequence[str], **overrides: Any) -> Settings:
    """Settings of a streamer on ``server`` (Binance dialect), quick to reconnect and tick."""
    base: dict[str, Any] = {
        "grace_ms": REPLAY_GRACE_MS,
        "symbols": [f"binance:{s}" for s in symbols],
        "ws_urls": {"binance": server.ws_url},
        "rest_urls": {"binance": server.rest_url},
        "metrics_port": 0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
        "tick_interval_s": 0.05,
        "stale_feed_s": 5.0,
    }
    base.update(overrides)
    return load_settings(**base)


def replay_streamer(
    server: ReplayServer, sink: ForecastSink | None = None, **overrides: Any
) -> Streamer:
    """A streamer of every symbol of ``SYMBOLS`` on ``server``, on its replay clock."""
    settings = settings_for(server, SYMBOLS, **overrides)
    return Streamer(settings, clock=server.clock_ms, sink=sink)


@contextlib.asynccontextmanager
async def running(streamer: Streamer) -> AsyncIterator[asyncio.Task[None]]:
    """``streamer.run()`` as a task, entered once it has started; stopped in order on exit."""
    task = asyncio.create_task(streamer.run(), name="streamer-under-test")
    try:
        await wait_until(
            streamer.started.is_set, START_TIMEOUT_S, "the streamer to start", task=task
        )
        yield task
    finally:
        streamer.request_stop()
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await task


@contextlib.asynccontextmanager
async def replaying(
    sources: Source | Sequence[Source],
    start_ms: int,
    redis_url: str,
    faults: Faults | None = None,
) -> AsyncIterator[tuple[ReplayServer, Streamer]]:
    """``sources`` (one or several) replayed from ``start_ms`` on into a running streamer of
    their symbols, storing into Redis; the streamer stops in order on exit."""
    replayed = [sources] if isinstance(sources, Source) else list(sources)
    async with ReplayServer(
        replayed, speed=REPLAY_SPEED, start_ms=start_ms, faults=faults
    ) as server:
        settings = settings_for(server, [s.symbol for s in replayed], redis_url=redis_url)
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):
            yield server, streamer


class KlineReplay:
    """The first ``minutes`` of the bundled klines of every symbol of ``SYMBOLS``, replayed from
    minute ``stream_from`` on: a streamer backfills the minutes before over REST."""

    def __init__(self, minutes: int, stream_from: int) -> None:
        self.sources = kline_sources(minutes)
        self.first = self.sources[0].first_open_ms
        self.start = self.at(stream_from)

    def at(self, minute: int, ms: int = 0) -> int:
        """Replay time ``ms`` into ``minute`` of the data."""
        return self.first + minute * MINUTE_MS + ms

    def server(self, faults: Faults | None = None, speed: float = REPLAY_SPEED) -> ReplayServer:
        return ReplayServer(self.sources, speed=speed, start_ms=self.start, faults=faults)

    def last_closed(self, end_ms: int) -> int:
        """The newest minute closed (with ``REPLAY_GRACE_MS``) by replay time ``end_ms``."""
        return last_closed_minute(self.first, end_ms, REPLAY_GRACE_MS)

    @contextlib.asynccontextmanager
    async def publishing(
        self,
        redis: ServerProcess,
        mosquitto: ServerProcess,
        registry: Path,
        speed: float = REPLAY_SPEED,
        **overrides: Any,
    ) -> AsyncIterator[tuple[Subscriber, ReplayServer, Streamer]]:
        """A subscriber to everything on ``mosquitto``, the replay, and a streamer on it
        storing into ``redis``, publishing to ``mosquitto``, serving the models of the directory
        ``registry`` (``overrides``: more settings). On exit the streamer stops in order, and
        the subscriber must then receive its ``offline`` status."""
        async with subscribed(mosquitto.port) as subscriber, self.server(speed=speed) as server:
            streamer = replay_streamer(
                server,
                redis_url=redis.url,
                mqtt_url=mosquitto.url,
                model_registry=str(registry),
                **overrides,
            )
            async with running(streamer):
                yield subscriber, server, streamer
            await wait_until(
                lambda: subscriber.status()[-1:] == [b"offline"], 5, "offline at the stop"
            )

    async def forecast_to_the_end(self, server: ReplayServer, subscriber: Subscriber) -> int:
        """Wait for the replay to end (its clock stops at the end of the data), then for every
        symbol's forecast of the last minute closed by then; that minute's open time."""
        async with asyncio.timeout(60):
            await server.wait_finished()
        last_closed = self.last_closed(server.clock_ms())
        await wait_until(
            lambda: subscriber.has_forecasts_of(last_closed, SYMBOLS),
            30,
            "every symbol's forecast of the last closed minute",
        )
        return last_closed


# --- a ``python -m streamer run`` process ---------------------------------------------------


def daemon_env(server: ReplayServer, symbols: Sequence[str], **settings: str) -> dict[str, str]:
    """The whole environment of a daemon on ``server``'s replay: PATH and ``TICKCAST_*`` only.

    The watermark clock (bars close by trade times) needs no relation between the replay's data
    time and the wall clock. ``settings``: more variables, ``redis_url="..."`` for
    ``TICKCAST_REDIS_URL``."""
    env = {
        "TICKCAST_SYMBOLS": ",".join(f"binance:{s}" for s in symbols),
        "TICKCAST_WS_URLS": json.dumps({"binance": server.ws_url}),
        "TICKCAST_REST_URLS": json.dumps({"binance": server.rest_url}),
        "TICKCAST_CLOCK": "watermark",
        "TICKCAST_METRICS_PORT": "0",
        "TICKCAST_TICK_INTERVAL_S": "0.05",
        "TICKCAST_LOG_LEVEL": "INFO",
    }
    env.update({f"TICKCAST_{name.upper()}": value for name, value in settings.items()})
    return bare_env(env)


@contextlib.asynccontextmanager
async def daemon(env: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m streamer run`` with ``env``, its output appended to ``log``; killed on exit
    unless it has exited."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamer", "run", env=env, cwd=REPO, stdout=out, stderr=out
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


# --- Redis ------------------------------------------------------------------------------------


CLUSTER_SCHEME = "redis+cluster://"

PlainClient = aioredis.Redis | aioredis.RedisCluster


def plain_client(redis_url: str) -> PlainClient:
    """A plain redis-py client, to read Redis as any outside reader would: of a ``redis://``
    URL, or a cluster client with every node of a ``redis+cluster://`` one as a startup node."""
    if not redis_url.startswith(CLUSTER_SCHEME):
        return aioredis.from_url(redis_url)
    hosts = redis_url.removeprefix(CLUSTER_SCHEME).split("/", 1)[0].split(",")
    addresses = [host.rsplit(":", 1) for host in hosts]
    nodes = [aioredis.cluster.ClusterNode(name, int(port)) for name, port in addresses]
    return aioredis.RedisCluster(startup_nodes=nodes)


async def stored_bars(
    client: PlainClient, exchange: str, symbol: str
) -> tuple[list[Bar], set[int]]:
    """The bars Redis holds for a symbol (decoded complete) and the open times marked
    incomplete, in the key layout of the client's engine (a cluster's keys have a hash tag)."""
    cluster = isinstance(client, aioredis.RedisCluster)
    raw = await client.lrange(bars_key(exchange, symbol, cluster=cluster), 0, -1)
    members = await client.zrange(incomplete_key(exchange, symbol, cluster=cluster), 0, -1)
    marks = {int(cast(bytes, m)) for m in members}
    return [decode_bar(exchange, symbol, r) for r in raw], marks


async def read_bars(redis_url: str, exchange: str, symbol: str) -> tuple[list[Bar], set[int]]:
    """``stored_bars`` over a connection of its own (any URL ``plain_client`` takes)."""
    client = plain_client(redis_url)
    try:
        return await stored_bars(client, exchange, symbol)
    finally:
        await client.aclose()


async def seed_bars(redis_url: str, bars: list[Bar], password: str | None = None) -> None:
    """Bars as a previous run left them, written by the product's own store."""
    store = RedisBarStore.from_url(redis_url, password=password)
    try:
        await store.write(bars)
    finally:
        await store.close()


# --- the ops endpoint -----------------------------------------------------------------------


async def http_get(port: int | None, path: str) -> tuple[int, Any]:
    """Status and body (JSON decoded, else text) of a GET on the ops endpoint."""
    assert port is not None
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def is_ready(port: int | None) -> bool:
    return (await http_get(port, "/readyz"))[0] == 200


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(port: int | None) -> Samples:
    """/metrics as {sample name: {sorted labels: value}}."""
    status, text = await http_get(port, "/metrics")
    assert status == 200
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples
