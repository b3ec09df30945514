"""Soak: a week of real 1-minute data for 50 symbols, replayed fast, with periodic faults.

The daemon is the real process, ``python -m streamer run``, configured by ``TICKCAST_*``
variables, with real Redis (append-only file, fsync every second) and real Mosquitto started
here, and the replay exchange served from this process. It runs on the watermark clock (bars
close by trade time alone): data from 2021-2025 replayed at hundreds of times real speed has no
relation to the wall clock, and the watermark needs none. Faults, by simulated time:

* every 6 h   the exchange drops every connection and refuses new ones for 0.3 s;
* every 24 h  Redis is restarted (SIGTERM, down 2 s of real time);
* every 12 h  the trainer promotes another model (the bundled LSTM and the torch-free fixture
              model alternate, both contract-conforming, window 60).

Sampled all along: the daemon's resident memory (VmRSS of its process) against simulated time.
After warm-up (the first 36 simulated hours: the online evaluation keeps a 24 h window) the
slope is fitted by least squares. At the end every closed minute of every symbol is compared
with the exchange's bar in Redis (the Redis cap is raised to hold the whole week), and every
minute close is checked for a forecast on MQTT.

Data: ``../shared/data/klines_1m/`` (Binance spot, USD-M perpetual and Binance.US segments of
2021-2025): 50 windows of 7 contiguous days with no missing and no zero-volume minute, taken
from different segments and symbols, each shifted to one common start time (prices and volumes
verbatim; only the timestamps move, so that all 50 series run side by side) and named S00..S49.
When that directory is missing, the bundled 4 days of BTCUSDT, ETHUSDT and SOLUSDT are looped
under 50 names. Not part of ``make test``; ``make soak`` runs it.

    .venv/bin/python bench/soak.py [--days 7] [--symbols 50] [--speed 700] [--max-minutes 18]

Prints one JSON line per figure: {"bench", "value", "unit", "target", "better"}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import aiomqtt
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fixtures.models import build_model  # noqa: E402  (tests/fixtures: torch-free ONNX builder)

from streamer.core.bars import BarAggregator  # noqa: E402
from streamer.core.codec import bars_key, decode_bar, incomplete_key  # noqa: E402
from streamer.core.types import MINUTE_MS, Bar, Side, Trade  # noqa: E402
from streamer.replay.data import Source, bundled_kline_paths, load_source  # noqa: E402
from streamer.replay.server import ReplayServer  # noqa: E402

SHARED_KLINES = REPO.parent / "shared" / "data" / "klines_1m"
DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
HOUR_MS = 60 * MINUTE_MS
WARMUP_H = 36.0
DROP_EVERY_H, REDIS_EVERY_H, SWAP_EVERY_H = 6.0, 24.0, 12.0
GRACE_MS = 60_000
NAME = "soak"


def figure(name: str, value: float, unit: str, target: float | None, better: str) -> None:
    line = {"bench": f"{NAME}.{name}", "value": value, "unit": unit, "target": target}
    print(json.dumps(line | {"better": better}), flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing on port {port}")


# ---- data ---------------------------------------------------------------------------------


def _rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return list(reader)


def real_windows(minutes: int, count: int) -> list[list[list[str]]]:
    """Up to ``count`` runs of ``minutes`` contiguous, traded minutes from the shared data,
    taken round-robin over the files so that the symbols and years mix."""
    files = sorted(SHARED_KLINES.glob("binance_*/*/*_1m_*.csv.gz"))
    runs_per_file: list[list[list[list[str]]]] = []
    for path in files:
        rows = _rows(path)
        runs, begin = [], 0
        for i in range(1, len(rows) + 1):
            broken = i == len(rows) or (
                int(rows[i][0]) != int(rows[i - 1][0]) + MINUTE_MS or float(rows[i][5]) <= 0
            )
            if broken:
                run = rows[begin:i]
                runs += [run[j : j + minutes] for j in range(0, len(run) - minutes + 1, minutes)]
                begin = i + 1 if i < len(rows) and float(rows[i][5]) <= 0 else i
        if runs:
            runs_per_file.append(runs)
    out: list[list[list[str]]] = []
    while len(out) < count and any(runs_per_file):
        for runs in runs_per_file:
            if runs and len(out) < count:
                out.append(runs.pop(0))
    return out


def prepare_sources(days: float, n: int, tmp: Path) -> tuple[list[Source], str]:
    minutes = int(days * 1440) + 2
    if SHARED_KLINES.is_dir():
        windows = real_windows(minutes, n)
        if len(windows) == n:
            start = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE_MS  # one common start
            sources = []
            for i, rows in enumerate(windows):
                shift = start - int(rows[0][0])
                path = tmp / f"S{i:02d}.csv"
                with path.open("w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["open_time_ms", "open", "high", "low", "close", "volume"])
                    w.writerows([int(r[0]) + shift, *r[1:6]] for r in rows)
                sources.append(load_source(path, f"S{i:02d}USDT"))
            return sources, f"{n} real 7-day windows from {SHARED_KLINES}"
    bundled = [load_source(p) for p in bundled_kline_paths()]
    return [
        load_source(bundled[i % len(bundled)].path, f"S{i:02d}USDT") for i in range(n)
    ], "bundled 4 days x 3 symbols, looped under 50 names"


def expected(source: Source, laps: int = 1, span_ms: int = 0) -> dict[int, Bar]:
    """The exchange's bars: the pure aggregator over the trades the replay serves (with
    ``laps`` of a looped replay, each shifted by the span: same values, later times)."""
    agg = BarAggregator("binance", grace_ms=0)
    out: dict[int, Bar] = {}
    for _, trades in source.minutes():
        for t in trades:
            side: Side = "sell" if t.buyer_is_maker else "buy"
            trade = Trade("binance", source.symbol, t.trade_id, t.ts_ms, float(t.price),
                          float(t.qty), side)  # fmt: skip
            for bar in agg.add(trade):
                out[bar.open_time_ms] = bar
    if laps > 1:
        first_lap = list(out.values())
        for lap in range(1, laps):
            for bar in first_lap:
                when = bar.open_time_ms + lap * span_ms
                out[when] = Bar("binance", bar.symbol, when, bar.open, bar.high, bar.low, bar.close,
                             bar.volume, bar.trades)  # fmt: skip
    return out


# ---- servers ------------------------------------------------------------------------------


class Proc:
    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def redis_server(tmp: Path) -> Proc:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(tmp)]  # fmt: skip
    return Proc(argv, port)


def mosquitto(tmp: Path) -> Proc:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nset_tcp_nodelay true\n"
    )
    return Proc([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], port)


def publish_model(root: Path, version: str, data: bytes) -> None:
    """The trainer's directory registry layout, written atomically."""
    import hashlib

    vdir = root / "versions" / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.onnx").write_bytes(data)
    manifest = {"version": version, "sha256": hashlib.sha256(data).hexdigest(),
                "created_at": datetime.now(UTC).isoformat()}  # fmt: skip
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    tmp = root / ".current.tmp"
    tmp.write_text(json.dumps({"version": version}))
    os.replace(tmp, root / "current")


def comparable(bar: Bar) -> tuple[float | int, ...]:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


async def wait_reconnected(server: ReplayServer) -> None:
    while server.connection_count == 0 and not server.finished:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- the run ------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tickcast-soak-"))
    t_load = time.monotonic()
    sources, what = prepare_sources(args.days, args.symbols, tmp)
    note(f"data: {what}; loaded in {time.monotonic() - t_load:.0f} s")
    loop = "looped" in what
    first = sources[0].first_open_ms
    models = [DEFAULT_MODEL.read_bytes() if DEFAULT_MODEL.exists() else b"",
              build_model(version="fixture", window=60, horizon=15)]  # fmt: skip
    models = [m for m in models if m]
    registry = tmp / "registry"
    publish_model(registry, "m0", models[0])
    redis, mqtt = redis_server(tmp), mosquitto(tmp)
    redis.start()
    mqtt.start()
    metrics_port = free_port()
    forecasts: dict[str, set[int]] = defaultdict(set)
    duplicates = 0
    rss: list[tuple[float, float, float]] = []  # (simulated hours, real minutes, MB)
    faults: dict[str, int] = defaultdict(int)
    outages: list[tuple[int, int]] = []  # data times: before the drop, after the reconnect
    daemon: asyncio.subprocess.Process | None = None
    log = (tmp / "daemon.log").open("wb")
    try:
        async with ReplayServer(sources, speed=args.speed, start_ms=first, loop=loop) as server:

            async def subscriber() -> None:
                nonlocal duplicates
                async with aiomqtt.Client("127.0.0.1", mqtt.port) as c:
                    await c.subscribe("tickcast/forecast/#", qos=1)
                    async for m in c.messages:
                        symbol = str(m.topic).rsplit("/", 1)[1]
                        assert isinstance(m.payload, bytes)
                        payload = json.loads(m.payload)
                        bar_time = int(
                            datetime.fromisoformat(
                                payload["bar_time"].replace("Z", "+00:00")
                            ).timestamp()
                            * 1000
                        )
                        if bar_time in forecasts[symbol]:
                            duplicates += 1
                        forecasts[symbol].add(bar_time)

            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "TICKCAST_SYMBOLS": ",".join(f"binance:{s.symbol}" for s in sources),
                "TICKCAST_WS_URLS": json.dumps({"binance": server.ws_url}),
                "TICKCAST_REST_URLS": json.dumps({"binance": server.rest_url}),
                "TICKCAST_CLOCK": "watermark",
                "TICKCAST_GRACE_MS": str(GRACE_MS),
                "TICKCAST_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                "TICKCAST_WINDOW_CAP": str(int(args.days * 1440) + 1440),
                "TICKCAST_MQTT_URL": f"mqtt://127.0.0.1:{mqtt.port}",
                "TICKCAST_MODEL_REGISTRY": str(registry),
                "TICKCAST_MODEL_POLL_S": "1",
                "TICKCAST_METRICS_PORT": str(metrics_port),
                "TICKCAST_TICK_INTERVAL_S": "0.05",
                "TICKCAST_LOG_LEVEL": "WARNING",
            }
            async with asyncio.TaskGroup() as tg:
                sub_task = tg.create_task(subscriber(), name="soak-subscriber")
                await asyncio.sleep(0.5)
                daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "streamer", "run", env=env, cwd=REPO,
                    stdout=log, stderr=log,
                )  # fmt: skip
                t0 = time.monotonic()
                next_drop, next_redis, next_swap = DROP_EVERY_H, REDIS_EVERY_H, SWAP_EVERY_H
                swaps = 0
                budget_s = args.max_minutes * 60
                while not server.finished and time.monotonic() - t0 < budget_s:
                    await asyncio.sleep(1.0)
                    if daemon.returncode is not None:
                        raise RuntimeError(f"daemon exited with {daemon.returncode}")
                    sim_h = (server.clock_ms() - first) / HOUR_MS
                    rss.append((sim_h, (time.monotonic() - t0) / 60, rss_mb(daemon.pid)))
                    if sim_h >= next_drop:
                        next_drop += DROP_EVERY_H
                        faults["drops"] += 1
                        dropped_at = server.clock_ms()
                        await server.drop_connections(refuse_s=0.3)
                        await wait_reconnected(server)
                        reconnected_at = server.clock_ms() + 2 * MINUTE_MS
                        # minutes still open at the drop (end + grace not yet reached) close
                        # together with the outage's at the first trade after the reconnect
                        outages.append((dropped_at - 2 * MINUTE_MS - GRACE_MS, reconnected_at))
                    if sim_h >= next_swap:
                        next_swap += SWAP_EVERY_H
                        swaps += 1
                        faults["model_swaps"] += 1
                        publish_model(registry, f"m{swaps}", models[swaps % len(models)])
                    if sim_h >= next_redis:
                        next_redis += REDIS_EVERY_H
                        faults["redis_restarts"] += 1
                        redis.stop()
                        await asyncio.sleep(2.0)
                        redis.start()
                replayed_ms = server.clock_ms() - first
                real_s = time.monotonic() - t0
                span_ms = server.span_ms
                laps = replayed_ms // span_ms + 1 if loop else 1
                # let the daemon finish what was sent: its trade count stops moving
                async with aiohttp.ClientSession() as session:
                    last, still = -1.0, 0
                    while still < 3:
                        await asyncio.sleep(1.0)
                        now = await metric(session, metrics_port, "tickcast_trades_total")
                        still = still + 1 if now == last else 0
                        last = now
                    figures = {
                        name: await metric(session, metrics_port, f"tickcast_{name}")
                        for name in (
                            "trades_dropped_total",
                            "backfill_bars_total",
                            "redis_dropped_bars_total",
                            "model_reload_failures_total",
                            "model_reloads_total",
                        )
                    }
                await asyncio.sleep(2.0)  # the last forecasts reach the subscriber
                daemon.send_signal(signal.SIGTERM)
                await asyncio.wait_for(daemon.wait(), 30)
                sub_task.cancel()
    finally:
        if daemon is not None and daemon.returncode is None:
            daemon.kill()
        log.close()

    # ---- checks ----
    client = aioredis.from_url(f"redis://127.0.0.1:{redis.port}/0")
    watermark = first + replayed_ms
    lost = different = incomplete = checked = 0
    missing_forecasts = missing_outside = forecast_due = 0
    forecast_from = first + 61 * MINUTE_MS  # the model's window (60) is full from here on
    try:
        for source in sources:
            truth = expected(source, laps, span_ms)
            raw = await client.lrange(bars_key("binance", source.symbol), 0, -1)
            key = incomplete_key("binance", source.symbol)
            marks = {int(m) for m in await client.zrange(key, 0, -1)}  # type: ignore[arg-type]
            stored: dict[int, Bar] = {}
            for item in raw:
                bar = decode_bar("binance", source.symbol, item)
                if bar.open_time_ms in stored:
                    different += 1  # stored twice
                stored[bar.open_time_ms] = bar
            closed = [t for t in truth if t + MINUTE_MS + GRACE_MS <= watermark - 15_000]
            for t in closed:
                checked += 1
                found = stored.get(t)
                if found is None:
                    lost += 1
                elif comparable(found) != comparable(truth[t]):
                    different += 1
                if t in marks:
                    incomplete += 1
            due = [t for t in closed if t >= forecast_from]
            forecast_due += len(due)
            missing = [t for t in due if t not in forecasts[source.symbol]]
            missing_forecasts += len(missing)
            unexplained = [t for t in missing if not any(a <= t <= b for a, b in outages)]
            missing_outside += len(unexplained)
            if unexplained:
                hours = [round((t - first) / HOUR_MS, 3) for t in unexplained[:5]]
                note(f"{source.symbol}: no forecast at simulated hours {hours}")
    finally:
        await client.aclose()
        redis.stop()
        mqtt.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    sim_days = replayed_ms / (1440 * MINUTE_MS)
    if args.trace is not None:
        with args.trace.open("w") as f:
            f.write("simulated_hours,real_minutes,rss_mb\n")
            f.writelines(f"{h:.3f},{m:.3f},{mb:.1f}\n" for h, m, mb in rss)
    after = [(h, m, mb) for h, m, mb in rss if h >= args.warmup_hours]
    figure("simulated_days", round(sim_days, 2), "days", 7.0, "higher")
    figure("symbols", len(sources), "symbols", 50.0, "higher")
    figure("real_minutes", round(real_s / 60, 1), "min", 20.0, "lower")
    figure("rss_start", round(rss[0][2], 1), "MB", None, "lower")
    figure("rss_end", round(rss[-1][2], 1), "MB", None, "lower")
    figure("rss_max", round(max(mb for *_, mb in rss), 1), "MB", 150.0, "lower")
    figure("rss_slope_after_warmup", round(slope([(h, mb) for h, _, mb in after]), 4),
           "MB/simulated-hour", 0.0, "lower")  # fmt: skip
    half = [(h, mb) for h, _, mb in rss if h >= (args.warmup_hours + sim_days * 24) / 2]
    figure("rss_slope_last_half", round(slope(half), 4), "MB/simulated-hour", 0.0, "lower")
    per_minute = round(slope([(m, mb) for _, m, mb in after]), 4)
    figure("rss_slope_after_warmup_per_real_minute", per_minute, "MB/real-minute", 0.0, "lower")
    figure("bars_checked", checked, "bars", None, "higher")
    figure("bars_lost", lost, "bars", 0, "lower")
    figure("bars_different_or_twice", different, "bars", 0, "lower")
    figure("bars_left_incomplete", incomplete, "bars", 0, "lower")
    figure("redis_bars_dropped", figures["redis_dropped_bars_total"], "bars", 0, "lower")
    figure("forecast_minutes_due", forecast_due, "forecasts", None, "higher")
    # on the watermark clock the minutes of an outage close together at the first trade after
    # the reconnect and get one forecast, the newest; every other minute close must have one
    figure("forecasts_missing_in_outages", missing_forecasts - missing_outside, "forecasts",
           None, "lower")  # fmt: skip
    figure("forecasts_missing_outside_outages", missing_outside, "forecasts", 0, "lower")
    figure("forecasts_duplicated", duplicates, "forecasts", 0, "lower")
    figure("trades_dropped", figures["trades_dropped_total"], "trades", 0, "lower")
    figure("bars_backfilled", figures["backfill_bars_total"], "bars", None, "higher")
    figure("faults_drops", faults["drops"], "faults", None, "higher")
    figure("faults_redis_restarts", faults["redis_restarts"], "faults", None, "higher")
    figure("faults_model_swaps", faults["model_swaps"], "faults", None, "higher")
    figure("model_reloads", figures["model_reloads_total"], "reloads", None, "higher")
    figure("model_refusals", figures["model_reload_failures_total"], "refusals", 0, "lower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--speed", type=float, default=700.0, help="data ms per wall ms")
    parser.add_argument("--max-minutes", type=float, default=18.0, help="replay time budget")
    parser.add_argument("--warmup-hours", type=float, default=WARMUP_H, help="simulated")
    parser.add_argument("--trace", type=Path, help="write the RSS samples to this CSV file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
