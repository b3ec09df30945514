"""Scale: N shard processes x M symbols each, one Redis, one Mosquitto, the replay at speed.

Each shard is the real daemon, ``python -m streamer run``, configured as a StatefulSet pod is
(``TICKCAST_SHARD_COUNT``, the ordinal in ``HOSTNAME``), with the bundled default model (window
60). The symbol names are picked so that the product's hash gives every shard exactly M. The
data is real: the bundled Binance klines of BTCUSDT, ETHUSDT and SOLUSDT (4 days each), cut
into overlapping windows at different offsets and shifted side by side (prices and volumes
verbatim, only the timestamps move), replayed on the watermark clock at ``--speed`` data minutes
per minute, so each shard closes a minute every 60/speed seconds, all shards at the same moment
as on one machine live. Redis holds the first ``SEED_MINUTES`` of every symbol before the
shards start (a model window's worth), so forecasts start at the first live minute close.

Measured over ``--minutes`` data minutes after a warm-up, from each shard's ``/metrics`` and
``/proc``: bars written to Redis per second (all shards), the Redis write round p99 (the
``tickcast_redis_write_seconds`` histogram: one round per minute close, all of the shard's
symbols; on a cluster a round is one pipeline over the nodes, so this is per shard, not per
node), the minute close -> last PUBACK p99 (``tickcast_close_to_publish_seconds``), the broker
messages per second acknowledged, CPU time per minute close, and resident memory. The p99s are
interpolated inside the histogram's buckets, as Prometheus' ``histogram_quantile`` does.

    .venv/bin/python bench/bench_scale.py [--shards 4] [--symbols 500] [--minutes 20]
        [--speed 30] [--redis-cluster]

``--symbols`` is per shard (the default runs 2,000 symbols). ``--redis-cluster`` starts a
3-primary, 3-replica Redis Cluster (``tests/support/redis_topologies.py``) instead of one
redis-server. Prints one JSON line per figure; notes on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import benchkit
import redis.asyncio as aioredis
from benchkit import free_port, note, wait_port
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from streamer.core.bars import BarAggregator  # noqa: E402
from streamer.core.contracts.redis_bars import bars_key  # noqa: E402
from streamer.core.redis_url import RedisMode, parse_redis_url  # noqa: E402
from streamer.core.types import MINUTE_MS, Bar, Side, Trade  # noqa: E402
from streamer.io.redis_clients import async_client  # noqa: E402
from streamer.io.store import RedisBarStore  # noqa: E402
from streamer.replay.data import Source, bundled_kline_paths, load_source  # noqa: E402
from streamer.replay.server import ReplayServer  # noqa: E402
from streamer.replay.timeline import shift_kline  # noqa: E402

NAME = "scale"
MODEL = REPO / "models" / "default" / "model.onnx"
SEED_MINUTES = 62  # the default model's window (60) and a little more
WARMUP_MINUTES = 3
GRACE_MS = 10_000  # data time: the watermark clock closes a minute 10 s of data after its end
START_TIMEOUT_S = 180.0
POD = "tickcast-streamer"
# targets: the single-process figures of docs/performance.md (a shard should do no worse)
TARGET_REDIS_P99_MS = 30.0
TARGET_PUBACK_P99_MS = 250.0
TARGET_RSS_MB = 150.0


def figure(name: str, value: float, unit: str, target: float | None, better: str) -> None:
    benchkit.figure(f"{NAME}.{name}", value, unit, target, better)


# ---- data ---------------------------------------------------------------------------------


def shard_of(symbol: str, count: int) -> int:
    """The product's placement (``streamer.settings.shard_of``), restated."""
    return zlib.crc32(f"binance:{symbol}".encode()) % count


def pick_names(shards: int, per_shard: int) -> list[str]:
    """Names ``S00000USDT``, ... kept while their shard has fewer than ``per_shard``."""
    counts = [0] * shards
    names: list[str] = []
    i = 0
    while len(names) < shards * per_shard:
        name = f"S{i:05d}USDT"
        shard = shard_of(name, shards)
        if counts[shard] < per_shard:
            counts[shard] += 1
            names.append(name)
        i += 1
    return names


def sources_for(names: list[str], minutes: int) -> list[Source]:
    """Symbol ``i``: bundled file ``i % 3`` from an offset that steps through its 4 days,
    shifted to the files' common start."""
    bundled = [load_source(p) for p in sorted(bundled_kline_paths())]
    start = bundled[0].first_open_ms
    per_file = math.ceil(len(names) / len(bundled))
    span = min(len(b.klines) for b in bundled) - minutes
    step = max(1, span // per_file)
    out = []
    for i, name in enumerate(names):
        base = bundled[i % len(bundled)]
        offset = (i // len(bundled)) * step % span
        klines = base.klines[offset : offset + minutes]
        shift = start - klines[0].open_time_ms
        moved = tuple(shift_kline(k, shift, 0) for k in klines)
        out.append(dataclasses.replace(base, symbol=name, klines=moved))
    return out


def seed_bars(source: Source, minutes: int) -> list[Bar]:
    """The first ``minutes`` bars as the streamer makes them from the replayed trades."""
    agg = BarAggregator("binance", grace_ms=0)
    bars: list[Bar] = []
    for index, (_, trades) in enumerate(source.minutes()):
        if index > minutes:
            break
        for t in trades:
            side: Side = "sell" if t.buyer_is_maker else "buy"
            trade = Trade("binance", source.symbol, t.trade_id, t.ts_ms, float(t.price),
                          float(t.qty), side)  # fmt: skip
            bars += agg.add(trade)
    return bars[:minutes]


# ---- servers ------------------------------------------------------------------------------


@dataclasses.dataclass
class Redis:
    url: str
    pids: list[int]  # every redis-server process (a cluster's replicas too)
    data_ports: list[int]  # the servers that hold the data: one, or a cluster's primaries


@contextlib.contextmanager
def redis_single(tmp: Path) -> Iterator[Redis]:
    port = free_port()
    argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port)]
    argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield Redis(f"redis://127.0.0.1:{port}/0", [proc.pid], [port])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def redis_cluster(tmp: Path) -> Iterator[Redis]:
    from support.redis_topologies import running_cluster  # tests/support: real redis-servers

    with running_cluster(tmp / "cluster") as cluster:
        pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        yield Redis(cluster.url, pids, [n.port for n in cluster.primaries()])


@contextlib.contextmanager
def mosquitto(tmp: Path) -> Iterator[tuple[str, int]]:
    """The broker's URL and process id."""
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nset_tcp_nodelay true\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield f"mqtt://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def used_memory(ports: list[int]) -> int:
    """``used_memory`` summed over the data servers, bytes."""
    out = 0
    for port in ports:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            out += int((await client.info("memory"))["used_memory"])
        finally:
            await client.aclose()
    return out


# ---- shards -------------------------------------------------------------------------------


@dataclasses.dataclass
class Shard:
    ordinal: int
    metrics_port: int
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@contextlib.asynccontextmanager
async def shards(
    count: int, names: list[str], server: ReplayServer, redis_url: str, mqtt_url: str, tmp: Path
) -> AsyncIterator[list[Shard]]:
    group = [Shard(i, free_port(), tmp / f"shard-{i}.log") for i in range(count)]
    for shard in group:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": f"{POD}-{shard.ordinal}",  # the StatefulSet ordinal is the shard
            "TICKCAST_SYMBOLS": ",".join(f"binance:{s}" for s in names),
            "TICKCAST_WS_URLS": json.dumps({"binance": server.ws_url}),
            "TICKCAST_REST_URLS": json.dumps({"binance": server.rest_url}),
            "TICKCAST_CLOCK": "watermark",
            "TICKCAST_GRACE_MS": str(GRACE_MS),
            "TICKCAST_SHARD_COUNT": str(count),
            "TICKCAST_INSTANCE": f"{POD}-{shard.ordinal}",
            "TICKCAST_MQTT_CLIENT_ID": f"{POD}-{shard.ordinal}",
            "TICKCAST_REDIS_URL": redis_url,
            "TICKCAST_MQTT_URL": mqtt_url,
            "TICKCAST_MODEL_REGISTRY": str(MODEL),
            "TICKCAST_MODEL_MAX_AGE_S": str(10 * 365 * 86400),  # the bundled model is old
            "TICKCAST_METRICS_PORT": str(shard.metrics_port),
            "TICKCAST_RECONNECT_INITIAL_S": "0.05",
            "TICKCAST_RECONNECT_MAX_S": "0.2",
            "TICKCAST_LOG_LEVEL": "WARNING",
        }
        with shard.log.open("ab") as out:
            shard.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streamer", "run", env=env, cwd=REPO, stdout=out, stderr=out
            )
    try:
        yield group
    finally:
        for shard in group:
            if shard.proc is not None and shard.proc.returncode is None:
                shard.proc.send_signal(signal.SIGTERM)
        for shard in group:
            if shard.proc is not None:
                try:
                    async with asyncio.timeout(30):
                        await shard.proc.wait()
                except TimeoutError:
                    shard.proc.kill()
                    await shard.proc.wait()


async def readiness(session: aiohttp.ClientSession, shard: Shard) -> dict[str, bool]:
    try:
        async with session.get(f"http://127.0.0.1:{shard.metrics_port}/readyz") as response:
            body = await response.json()
    except (aiohttp.ClientError, OSError, ValueError):
        return {}
    return dict(body.get("checks", {}))


async def wait_all(
    session: aiohttp.ClientSession, group: list[Shard], feeds: bool, what: str
) -> None:
    """Every shard's checks pass (``feeds``: the feed check too, else every other one)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        for shard in group:
            assert shard.proc is not None
            if shard.proc.returncode is not None:
                tail = shard.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"shard {shard.ordinal} exited: {tail}")
        checks = [await readiness(session, s) for s in group]
        if all(c and all(v for k, v in c.items() if feeds or k != "feeds") for c in checks):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {checks}")
        await asyncio.sleep(0.2)


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(session: aiohttp.ClientSession, shard: Shard) -> Samples:
    async with session.get(f"http://127.0.0.1:{shard.metrics_port}/metrics") as response:
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: Samples, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def delta(before: list[Samples], after: list[Samples], name: str) -> float:
    """Growth of a counter between two scrapes, summed over the shards."""
    return sum(total(a, name) - total(b, name) for a, b in zip(after, before, strict=True))


def buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram, in bound order."""
    rows = [(float(labels["le"]), v) for labels, v in samples.get(f"{name}_bucket", [])]
    return sorted(rows)


Buckets = list[tuple[float, float]]


def quantile(q: float, before: Buckets, after: Buckets) -> float:
    """``histogram_quantile(q)`` of the observations between two scrapes, in seconds."""
    counts = [(b, a - c) for (b, a), (_, c) in zip(after, before, strict=True)]
    n = counts[-1][1] if counts else 0
    if n <= 0:
        return math.nan
    rank = q * n
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound  # above the highest bound: Prometheus reports that bound
            share = (rank - lower_count) / (cumulative - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the run ------------------------------------------------------------------------------


async def seed(redis_url: str, sources: list[Source]) -> None:
    store = RedisBarStore.from_url(redis_url, cap=1440)
    try:
        for i in range(0, len(sources), 100):
            await store.write([b for s in sources[i : i + 100] for b in seed_bars(s, SEED_MINUTES)])
    finally:
        await store.close()


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    names = pick_names(args.shards, args.symbols)
    live = WARMUP_MINUTES + args.minutes + 3
    sources = sources_for(names, SEED_MINUTES + live)
    note(
        f"{args.shards} shards x {args.symbols} symbols = {len(names)}; "
        f"{SEED_MINUTES} seeded + {live} live minutes each at {args.speed:g}x "
        f"(a minute close every {60 / args.speed:.1f} s)"
    )
    engine = redis_cluster if args.redis_cluster else redis_single
    kind = "a Redis Cluster (3 primaries, 3 replicas)" if args.redis_cluster else "one redis-server"
    with engine(tmp) as redis, mosquitto(tmp) as (mqtt_url, mqtt_pid):
        note(f"Redis: {kind}")
        empty = await used_memory(redis.data_ports)
        await seed(redis.url, sources)
        start = sources[0].first_open_ms + SEED_MINUTES * MINUTE_MS
        async with (
            ReplayServer(sources, speed=args.speed, start_ms=start) as server,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            server.refuse_connections(3600)  # until every shard is up: none misses a minute
            async with shards(args.shards, names, server, redis.url, mqtt_url, tmp) as group:
                t_start = time.monotonic()
                await wait_all(session, group, feeds=False, what="every shard started")
                note(f"shards started in {time.monotonic() - t_start:.1f} s")
                server.refuse_connections(0)
                await wait_all(session, group, feeds=True, what="every shard ready")
                await measure(args, session, server, group, start, redis, mqtt_pid, names)
        stored = await stored_bars(redis.url, names)
        per_bar = (await used_memory(redis.data_ports) - empty) / stored
        figure("redis_bytes_per_bar", round(per_bar, 1), "bytes", None, "lower")
        note(f"{stored} bars in Redis at the end, {per_bar:.0f} bytes each (used_memory)")
    shutil.rmtree(tmp, ignore_errors=True)


async def stored_bars(redis_url: str, names: list[str]) -> int:
    """Bars Redis holds for ``names`` (LLEN of each bars key, in one pipeline)."""
    target = parse_redis_url(redis_url)
    client: Any = (
        aioredis.from_url(redis_url) if target.mode is RedisMode.SINGLE else async_client(target)
    )
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(bars_key("binance", name, cluster=target.cluster))
        return int(sum(await pipe.execute()))
    finally:
        await client.aclose()


async def caught_up(
    session: aiohttp.ClientSession,
    group: list[Shard],
    before: list[Samples],
    bars: int,
    stored: Callable[[], Awaitable[int]],
) -> tuple[list[Samples], int]:
    """The shards' samples and the bars in Redis once the shards have closed ``bars`` bars
    since ``before`` and Redis holds them (a loaded machine may leave the shards behind the
    replay); as they are after 60 s otherwise."""
    deadline = time.monotonic() + 60
    while True:
        after = [await scrape(session, s) for s in group]
        closed = delta(before, after, "tickcast_bars_closed_total")
        written = await stored()
        if (closed >= bars and written >= bars) or time.monotonic() > deadline:
            if closed < bars or written < bars:
                note(f"behind: {closed:.0f} of {bars} bars closed, {written} written")
            return after, written
        await asyncio.sleep(0.05)


async def wait_data_time(server: ReplayServer, when_ms: int) -> None:
    while server.clock_ms() < when_ms:
        if server.finished:
            raise RuntimeError("the replay ended early")
        await asyncio.sleep(0.05)


async def measure(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    server: ReplayServer,
    group: list[Shard],
    start: int,
    redis: Redis,
    mqtt_pid: int,
    names: list[str],
) -> None:
    """The figures over ``args.minutes`` minute closes after the warm-up."""
    # the stretch starts and ends mid-minute, between closes (trades at +0, 15, 30, 45 s)
    t0_data = start + WARMUP_MINUTES * MINUTE_MS + 35_000
    t1_data = t0_data + args.minutes * MINUTE_MS
    await wait_data_time(server, t0_data)
    before = [await scrape(session, s) for s in group]
    stored0 = await stored_bars(redis.url, names)
    cpu0 = [cpu_s(s.pid) for s in group]
    redis_cpu0, mqtt_cpu0 = sum(cpu_s(p) for p in redis.pids), cpu_s(mqtt_pid)
    t0 = time.monotonic()
    rss_peak = [0.0] * len(group)
    while server.clock_ms() < t1_data:
        rss_peak = [max(p, rss_mb(s.pid)) for p, s in zip(rss_peak, group, strict=True)]
        await wait_data_time(server, min(t1_data, server.clock_ms() + 5_000))

    cpu1 = [cpu_s(s.pid) for s in group]  # before the polling below adds to Redis' share
    redis_cpu1, mqtt_cpu1 = sum(cpu_s(p) for p in redis.pids), cpu_s(mqtt_pid)

    async def written() -> int:
        return await stored_bars(redis.url, names) - stored0

    symbols = args.shards * args.symbols
    after, bars = await caught_up(session, group, before, symbols * args.minutes, written)
    seconds = time.monotonic() - t0
    closes = args.minutes

    acked = delta(before, after, "tickcast_mqtt_published_total")
    figure("bars_written_per_s", round(bars / seconds, 1), "bars/s", None, "higher")
    figure("bars_written_per_close", round(bars / closes, 1), "bars", symbols, "higher")
    closed = delta(before, after, "tickcast_bars_closed_total") / closes
    figure("bars_closed_per_close", round(closed, 1), "bars", symbols, "higher")
    forecasts = delta(before, after, "tickcast_forecasts_published_total") / closes
    figure("forecasts_per_close", round(forecasts, 1), "forecasts", symbols, "higher")
    figure("mqtt_acked_per_s", round(acked / seconds, 1), "messages/s", None, "higher")
    figure("mqtt_acked_per_close", round(acked / closes, 1), "messages", None, "higher")
    redis_ms = (redis_cpu1 - redis_cpu0) / closes * 1000
    figure("redis_cpu_per_close", round(redis_ms, 1), "ms", None, "lower")
    figure("mosquitto_cpu_per_close", round((mqtt_cpu1 - mqtt_cpu0) / closes * 1000, 1), "ms",
           None, "lower")  # fmt: skip
    redis_p99, puback_p99 = [], []
    for shard, b, a, c0, c1, peak in zip(group, before, after, cpu0, cpu1, rss_peak, strict=True):
        name = f"shard{shard.ordinal}"
        r99 = 1000 * quantile(0.99, buckets(b, "tickcast_redis_write_seconds"),
                              buckets(a, "tickcast_redis_write_seconds"))  # fmt: skip
        p99 = 1000 * quantile(0.99, buckets(b, "tickcast_close_to_publish_seconds"),
                              buckets(a, "tickcast_close_to_publish_seconds"))  # fmt: skip
        p50 = 1000 * quantile(0.5, buckets(b, "tickcast_close_to_publish_seconds"),
                              buckets(a, "tickcast_close_to_publish_seconds"))  # fmt: skip
        redis_p99.append(r99)
        puback_p99.append(p99)
        figure(f"{name}.close_to_puback_p50", round(p50, 1), "ms", None, "lower")
        figure(f"{name}.redis_round_p99", round(r99, 1), "ms", TARGET_REDIS_P99_MS, "lower")
        figure(f"{name}.close_to_puback_p99", round(p99, 1), "ms", TARGET_PUBACK_P99_MS, "lower")
        figure(f"{name}.rss", round(peak, 1), "MB", TARGET_RSS_MB, "lower")
        figure(f"{name}.cpu_per_close", round((c1 - c0) / closes * 1000, 1), "ms", None, "lower")
    figure("redis_round_p99_max", round(max(redis_p99), 1), "ms", TARGET_REDIS_P99_MS, "lower")
    figure(
        "close_to_puback_p99_max", round(max(puback_p99), 1), "ms", TARGET_PUBACK_P99_MS, "lower"
    )
    note(
        f"{closes} minute closes in {seconds:.1f} s; {symbols} symbols; p99s interpolated in the "
        "histogram buckets (0.01, 0.025, 0.05, 0.1, 0.25, 0.5 s, ...); load average "
        f"{os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--symbols", type=int, default=500, help="per shard")
    parser.add_argument("--minutes", type=int, default=20, help="data minutes measured")
    parser.add_argument("--speed", type=float, default=30.0, help="data minutes per minute")
    parser.add_argument("--redis-cluster", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
