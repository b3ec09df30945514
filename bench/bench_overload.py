"""Overload: trades arrive faster than the daemon can process them.

Three processes: the daemon (``python -m streamer run`` on the wall clock, 2 s grace, real
Redis and Mosquitto), an exchange (``--exchange``: a Binance-protocol WebSocket and REST server
on loopback) and this one, which only probes. The exchange stamps each trade with the wall
clock when it makes it, and sends in three phases: 40 s at 3,000 trades/s (10 symbols), a
70 s burst as fast as it can make trades (several times what the daemon parses), then 60 s at
3,000/s again. Prices and quantities are the real Binance BTCUSDT trades of the bundled
tardis.dev recording, cycled, with fresh ids; the REST history before the start is that
recording's first hour of real minutes.

What "ticks it cannot handle are counted" means here. The daemon never drops a frame it has
read: its feed reads as fast as it parses and TCP flow control holds the rest back, at the
exchange. A real exchange does not buffer for a slow reader without bound: Binance cuts a
client whose unsent data piles up. This exchange does the same at 4 MB unsent. So the ticks the
daemon cannot handle are (1) lost with a cut connection, which it counts
(``tickcast_feed_reconnects_total``), marks the minutes incomplete and backfills over REST,
and (2) read later than the grace after their minute, which it counts as late
(``tickcast_trades_dropped_total{reason="late"}``) and whose minutes it re-fetches over REST.

Measured: /healthz latency (probed every 100 ms, 5 s timeout) per phase; the daemon's ingest
rate against the exchange's; cuts, late trades, backfilled bars; forecasts published for the
minute closes during the burst; how long after the burst the exchange's backlog drains; and,
at the end, every closed minute in Redis against the exchange's own bars (target: all equal).

    .venv/bin/python bench/bench_overload.py [--burst-s 70] [--symbols 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import benchkit
from benchkit import free_port, note, wait_port

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

NAME = "overload"
MINUTE_MS = 60_000
NORMAL_RATE = 3_000
WARM_S, COOL_S = 40.0, 60.0
SLOW_CONSUMER_BYTES = 4 << 20
HISTORY_MINUTES = 30
GRACE_MS = 2_000
SCALE = Decimal(10) ** 8  # quantities summed exactly, in 1e-8 units


def figure(name: str, value: float, unit: str, target: float | None, better: str) -> None:
    benchkit.figure(f"{NAME}.{name}", value, unit, target, better)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- the exchange (its own process) -------------------------------------------------------


class Minute:
    """The exchange's own bar of one symbol's minute, kept exactly."""

    __slots__ = ("close", "high", "low", "n", "open", "volume")

    def __init__(self, price: str) -> None:
        self.open = self.high = self.low = self.close = price
        self.n = 0
        self.volume = 0  # in 1e-8 units

    def row(self, open_time: int) -> list[Any]:
        volume = str(Decimal(self.volume) / SCALE)
        return [open_time, self.open, self.high, self.low, self.close, volume,
                open_time + MINUTE_MS - 1, "0", self.n, "0", "0", "0"]  # fmt: skip


async def exchange(
    port: int, symbols: list[str], burst_s: float, burst_rate: float, out: Path
) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    from streamer.replay.data import bundled_trade_paths, load_source

    tape = load_source(next(p for p in bundled_trade_paths() if "tardis" in p.name), "X")
    start_minute = wall_ms() // MINUTE_MS * MINUTE_MS
    # REST history: the recording's first real minutes, just before the start
    history = {
        start_minute - (HISTORY_MINUTES - i) * MINUTE_MS: k
        for i, k in enumerate(tape.klines[:HISTORY_MINUTES])
    }
    rows = [t for t in tape.trades if t.ts_ms >= tape.klines[HISTORY_MINUTES].open_time_ms]
    quantities = {t.qty: int(Decimal(t.qty) * SCALE) for t in rows}
    truth: dict[tuple[str, int], Minute] = {}
    clients: dict[ServerConnection, set[str]] = {}
    stats: dict[str, Any] = defaultdict(int)

    def rest(connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if path != "/api/v3/klines":
            return connection.respond(404, "no\n")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        symbol, start = params["symbol"], int(params["startTime"])
        end = min(int(params.get("endTime", 2**62)), wall_ms() - MINUTE_MS)
        body = []
        for minute in range(start - start % MINUTE_MS, end + 1, MINUTE_MS):
            if minute in history:
                k = history[minute]
                body.append([minute, k.open, k.high, k.low, k.close, k.volume,
                             minute + MINUTE_MS - 1, "0", k.trades, "0", "0", "0"])  # fmt: skip
            elif (symbol, minute) in truth:
                body.append(truth[symbol, minute].row(minute))
        stats["rest_requests"] += 1
        response = connection.respond(200, json.dumps(body[:1000]))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def handler(ws: ServerConnection) -> None:
        clients[ws] = set()
        stats["connections"] += 1
        try:
            async for message in ws:
                request = json.loads(message)
                for stream in request.get("params", []):
                    clients[ws].add(stream.split("@")[0].upper())
                await ws.send(json.dumps({"result": None, "id": request.get("id")}))
        except Exception:
            pass
        finally:
            clients.pop(ws, None)

    prefixes = {s: f'{{"stream":"{s.lower()}@trade","data":{{"e":"trade","E":' for s in symbols}
    ids = {s: itertools.count(1_000_000) for s in symbols}
    feed = itertools.cycle(rows)

    def make(n: int, now: int) -> dict[str, list[bytes]]:
        frames: dict[str, list[bytes]] = defaultdict(list)
        minute = now - now % MINUTE_MS
        for i in range(n):
            symbol = symbols[i % len(symbols)]
            t = next(feed)
            tid = next(ids[symbol])
            m = "true" if t.buyer_is_maker else "false"
            payload = (
                f'{prefixes[symbol]}{now},"s":"{symbol}","t":{tid},"p":"{t.price}",'
                f'"q":"{t.qty}","T":{now},"m":{m},"M":true}}}}'
            ).encode()
            frames[symbol].append(b"\x81\x7e" + len(payload).to_bytes(2, "big") + payload)
            bar = truth.get((symbol, minute))
            if bar is None:
                bar = truth[symbol, minute] = Minute(t.price)
            price = float(t.price)
            if price > float(bar.high):
                bar.high = t.price
            if price < float(bar.low):
                bar.low = t.price
            bar.close = t.price
            bar.n += 1
            bar.volume += quantities[t.qty]
        return frames

    def send(frames: dict[str, list[bytes]]) -> int:
        written = 0
        for ws, subscribed in list(clients.items()):
            chunk = [f for s in subscribed for f in frames.get(s, ())]
            if not chunk or ws.transport is None or ws.transport.is_closing():
                continue
            ws.transport.write(b"".join(chunk))
            written += len(chunk)
            if ws.transport.get_write_buffer_size() > SLOW_CONSUMER_BYTES:
                stats["slow_consumer_cuts"] += 1  # as Binance does: cut, the rest is lost
                ws.transport.abort()
        return written

    def backlog() -> int:
        total = 0
        for ws in clients:
            if ws.transport is not None:
                total += ws.transport.get_write_buffer_size()
        return total

    phases = [
        ("warm", WARM_S, NORMAL_RATE),
        ("burst", burst_s, burst_rate or None),
        ("cool", COOL_S, NORMAL_RATE),
    ]
    async with serve(handler, "127.0.0.1", port, process_request=rest, compression=None):
        while not any(clients.values()):  # noqa: ASYNC110  (the daemon's subscription)
            await asyncio.sleep(0.05)
        marks: dict[str, Any] = {}
        for name, seconds, rate in phases:
            begin = time.monotonic()
            marks[name] = {"start_wall_ms": wall_ms()}
            made = written = 0
            while (elapsed := time.monotonic() - begin) < seconds:
                want = 256 if rate is None else min(512, int(rate * elapsed) - made)
                if want <= 0:
                    await asyncio.sleep(0.005)
                    continue
                batch = make(want, wall_ms())
                made += want
                written += send(batch)
                await asyncio.sleep(0)  # REST and the control frames go on
                if name == "cool" and "drained_after_s" not in marks["burst"] and backlog() < 65536:
                    marks["burst"]["drained_after_s"] = round(time.monotonic() - begin, 2)
            marks[name] |= {"end_wall_ms": wall_ms(), "made": made, "written": written,
                            "seconds": seconds}  # fmt: skip
        truth_rows = {f"{s}|{m}": b.row(m) for (s, m), b in truth.items()}
        text = json.dumps({"phases": marks, "stats": stats, "truth": truth_rows})
        await asyncio.to_thread(out.write_text, text)
        await asyncio.Event().wait()  # serve REST for the repairs until stopped


# ---- the probe (this process) -------------------------------------------------------------


async def scrape(session: Any, port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{v}" for k, v in sorted(s.labels.items()) if k != "exchange")
            out[key] += s.value
    return out


def run_probe(args: argparse.Namespace) -> None:
    """Start Redis, Mosquitto, the exchange and the daemon; probe; stop; check Redis."""
    import redis
    from fixtures.models import build_model

    from streamer.core.contracts.redis_bars import bars_key, decode_bar

    tmp = Path(tempfile.mkdtemp(prefix="tickcast-overload-"))
    symbols = [f"S{i}USDT" for i in range(args.symbols)]
    model = tmp / "model.onnx"
    model.write_bytes(build_model(version="v1", window=10, horizon=3))
    redis_port, mqtt_port, ex_port, metrics_port = (free_port() for _ in range(4))
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    quiet = subprocess.DEVNULL
    redis_argv = [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                  "--save", "", "--appendonly", "no", "--dir", str(tmp)]  # fmt: skip
    procs = [
        subprocess.Popen(redis_argv, stdout=quiet, stderr=quiet),
        subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
            stdout=quiet,
            stderr=quiet,
        ),
    ]
    truth_file = tmp / "exchange.json"
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--exchange",
                str(ex_port),
                "--symbols",
                str(args.symbols),
                "--burst-s",
                str(args.burst_s),
                "--burst-rate",
                str(args.burst_rate),
                "--out",
                str(truth_file),
            ],
        )
    )
    for port in (redis_port, mqtt_port, ex_port):
        wait_port(port)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TICKCAST_SYMBOLS": ",".join(f"binance:{s}" for s in symbols),
        "TICKCAST_WS_URLS": json.dumps({"binance": f"ws://127.0.0.1:{ex_port}"}),
        "TICKCAST_REST_URLS": json.dumps({"binance": f"http://127.0.0.1:{ex_port}"}),
        "TICKCAST_CLOCK": "wall",
        "TICKCAST_GRACE_MS": str(GRACE_MS),
        "TICKCAST_BACKFILL_MAX_MINUTES": str(HISTORY_MINUTES),
        "TICKCAST_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TICKCAST_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
        "TICKCAST_MODEL_REGISTRY": str(model),
        "TICKCAST_METRICS_PORT": str(metrics_port),
        "TICKCAST_RECONNECT_INITIAL_S": "0.2",
        "TICKCAST_LOG_LEVEL": "WARNING",
    }
    log = (tmp / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run"], env=env, cwd=REPO, stdout=log, stderr=log
    )
    procs.append(daemon)
    try:
        wait_port(metrics_port)
        probed = asyncio.run(probe(daemon, metrics_port, mqtt_port, truth_file))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        client = redis.Redis(port=redis_port)
        stored: dict[str, Any] = {}
        for s in symbols:
            for raw in client.lrange(bars_key("binance", s), 0, -1):
                bar = decode_bar("binance", s, raw)
                stored[f"{s}|{bar.open_time_ms}"] = bar
        client.close()
        result = json.loads(truth_file.read_text())
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
        log.close()
    report(result, *probed, stored)
    if args.keep:
        note(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


Probed = tuple[list[tuple[int, float]], list[tuple[int, dict[str, float]]], dict[int, set[str]]]


async def probe(
    daemon: subprocess.Popen[bytes], metrics_port: int, mqtt_port: int, truth_file: Path
) -> Probed:
    """/healthz every 100 ms, /metrics every second, forecasts from MQTT, until the exchange
    is done and the daemon's repairs have settled."""
    from datetime import datetime

    import aiohttp
    import aiomqtt

    healthz: list[tuple[int, float]] = []  # (wall ms, seconds; inf on timeout)
    samples: list[tuple[int, dict[str, float]]] = []
    forecasts: dict[int, set[str]] = defaultdict(set)  # bar time -> symbols forecast
    async with aiohttp.ClientSession() as session:

        async def health() -> None:
            timeout = aiohttp.ClientTimeout(total=5)
            url = f"http://127.0.0.1:{metrics_port}/healthz"
            while True:
                t0 = time.monotonic()
                try:
                    async with session.get(url, timeout=timeout) as r:
                        await r.read()
                    healthz.append((wall_ms(), time.monotonic() - t0))
                except (TimeoutError, aiohttp.ClientError):
                    healthz.append((wall_ms(), float("inf")))
                await asyncio.sleep(0.1)

        async def metrics() -> None:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    samples.append((wall_ms(), await scrape(session, metrics_port)))
                await asyncio.sleep(1.0)

        async def subscriber() -> None:
            async with aiomqtt.Client("127.0.0.1", mqtt_port) as client:
                await client.subscribe("tickcast/forecast/#", qos=1)
                async for m in client.messages:
                    assert isinstance(m.payload, bytes)
                    body = json.loads(m.payload)
                    t = datetime.fromisoformat(body["bar_time"].replace("Z", "+00:00"))
                    forecasts[int(t.timestamp() * 1000)].add(body["symbol"])

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(f()) for f in (health, metrics, subscriber)]
            while not await asyncio.to_thread(truth_file.exists):
                await asyncio.sleep(0.5)
                if daemon.poll() is not None:
                    raise RuntimeError(f"daemon exited {daemon.returncode}")
            # the exchange is done: let the daemon finish its repairs (backfill stable)
            last, still = -1.0, 0
            while still < 5:
                await asyncio.sleep(1.0)
                now = samples[-1][1].get("tickcast_backfill_requests_total|ok", 0.0)
                still = still + 1 if now == last else 0
                last = now
            for task in tasks:
                task.cancel()
    return healthz, samples, forecasts


def report(
    result: dict[str, Any],
    healthz: list[tuple[int, float]],
    samples: list[tuple[int, dict[str, float]]],
    forecasts: dict[int, set[str]],
    stored: dict[str, Any],
) -> None:
    phases = result["phases"]
    for name in ("warm", "burst", "cool"):
        p = phases[name]
        lat = [s for t, s in healthz if p["start_wall_ms"] <= t < p["end_wall_ms"]]
        inside = [(t, m) for t, m in samples if p["start_wall_ms"] <= t < p["end_wall_ms"]]
        rate = 0.0
        if len(inside) >= 2:
            (t0, m0), (t1, m1) = inside[0], inside[-1]
            rate = (m1["tickcast_trades_total"] - m0["tickcast_trades_total"]) / ((t1 - t0) / 1e3)
        finite = sorted(x for x in lat if x != float("inf"))
        figure(f"{name}.offered_trades_per_s", round(p["made"] / p["seconds"]), "trades/s", None,
               "higher")  # fmt: skip
        figure(f"{name}.written_trades_per_s", round(p["written"] / p["seconds"]), "trades/s",
               None, "higher")  # fmt: skip
        figure(f"{name}.daemon_trades_per_s", round(rate), "trades/s", None, "higher")
        figure(f"{name}.healthz_p50_ms", round(statistics.median(finite) * 1e3, 1), "ms", None,
               "lower")  # fmt: skip
        p99 = finite[min(len(finite) - 1, int(len(finite) * 0.99))] * 1e3
        figure(f"{name}.healthz_p99_ms", round(p99, 1), "ms", 1000.0, "lower")
        figure(f"{name}.healthz_max_ms", round(max(lat) * 1e3, 1), "ms", 1000.0, "lower")
    final = samples[-1][1]
    cuts = result["stats"].get("slow_consumer_cuts", 0)
    figure("slow_consumer_cuts", cuts, "cuts", None, "lower")
    reconnects = sum(v for k, v in final.items() if k.startswith("tickcast_feed_reconnects"))
    figure("reconnects_counted", reconnects, "reconnects", None, "lower")
    figure("late_trades_counted", final.get("tickcast_trades_dropped_total|late", 0.0), "trades",
           None, "lower")  # fmt: skip
    figure(
        "bars_backfilled", final.get("tickcast_backfill_bars_total", 0.0), "bars", None, "higher"
    )
    figure("backlog_drained_after_burst_s", phases["burst"].get("drained_after_s", float("nan")),
           "s", None, "lower")  # fmt: skip
    burst = phases["burst"]
    closes = [t for t in forecasts if burst["start_wall_ms"] <= t + MINUTE_MS + GRACE_MS
              <= burst["end_wall_ms"]]  # fmt: skip
    figure("burst_minute_closes_published", len(closes), "minutes", 1.0, "higher")
    figure("burst_forecasts_published", sum(len(forecasts[t]) for t in closes), "forecasts",
           None, "higher")  # fmt: skip
    truth = result["truth"]
    now = max(int(k.split("|")[1]) for k in truth)
    checked = mismatched = missing = 0
    for key, row in truth.items():
        minute = int(key.split("|")[1])
        if minute >= now:  # the exchange's last, unfinished minute
            continue
        checked += 1
        bar = stored.get(key)
        if bar is None:
            missing += 1
            continue
        want = (float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]), row[8])
        if (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades) != want:
            mismatched += 1
    figure("bars_checked", checked, "bars", None, "higher")
    figure("bars_missing_after_recovery", missing, "bars", 0, "lower")
    figure("bars_different_after_recovery", mismatched, "bars", 0, "lower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--burst-s", type=float, default=70.0)
    parser.add_argument(
        "--burst-rate", type=float, default=150_000, help="trades/s offered; 0 = all it can"
    )
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--exchange", type=int, help=argparse.SUPPRESS)  # internal: port
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.exchange:
        symbols = [f"S{i}USDT" for i in range(args.symbols)]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(exchange(args.exchange, symbols, args.burst_s, args.burst_rate, args.out))
        return
    run_probe(args)


if __name__ == "__main__":
    main()
